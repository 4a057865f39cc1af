import Foundation
import Tessera
import TesseraData
import TestSupport
import XCTest

/// The HTML report, the plan page and TensorBoard event files, as a user makes and opens them:
/// checked with TensorBoard's own reader and rendered in headless Chromium where they are installed
/// (scripts/setup_peers.sh; Debian `chromium`, which .ci/run installs).
final class ReportCLITests: TemporaryDirectoryTestCase {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

  static func run(_ exe: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
  }

  /// Headless Chromium (TESSERA_CHROMIUM, or chromium on the PATH), or nil.
  static let chromium: String? = {
    var candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/chromium-headless-shell"]
    if let c = ProcessInfo.processInfo.environment["TESSERA_CHROMIUM"] { candidates.insert(c, at: 0) }
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
  }()

  /// Opens `page` in headless Chromium: no console error, the DOM holds every id in `ids`, and the
  /// screenshot is not blank. Skips (with a message) where Chromium is absent.
  func checkInBrowser(_ page: URL, ids: [String]) throws {
    let chrome = try XCTUnwrap(Self.chromium)
    let common = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]
    let t0 = Date()
    let dom = try Self.run(chrome, common + ["--dump-dom", page.absoluteString])
    let seconds = Date().timeIntervalSince(t0)
    XCTAssertEqual(dom.status, 0, dom.stderr)
    let consoleErrors = dom.stderr.split(separator: "\n").filter {
      ($0.contains("CONSOLE") && ($0.contains("ERROR") || $0.lowercased().contains("error"))) || $0.contains("Uncaught") || $0.contains("Failed to load resource")
    }
    XCTAssertEqual(consoleErrors, [], "console errors opening \(page.lastPathComponent)")
    for id in ids { XCTAssert(dom.stdout.contains("id=\"\(id)\""), "\(page.lastPathComponent): the rendered page lacks #\(id)") }
    XCTAssert(dom.stdout.contains("<svg"), "charts rendered")
    let shot = dir.appendingPathComponent(page.deletingPathExtension().lastPathComponent + ".png")
    let s = try Self.run(chrome, common + ["--screenshot=\(shot.path)", "--window-size=1100,1600", page.absoluteString])
    XCTAssertEqual(s.status, 0, s.stderr)
    let img = try ImageReader().read(shot).pixels.toArray()
    let mean = img.reduce(0, +) / Float(img.count)
    let variance = img.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Float(img.count)
    XCTAssertGreaterThan(variance, 0.005, "the screenshot of \(page.lastPathComponent) is blank")
    print("chromium: \(page.lastPathComponent) loaded and dumped in \(String(format: "%.2f", seconds)) s (browser start included)")
  }

  func testTrainWritesAReportTensorBoardAndStepLines() throws {
    let data = try TrainCLITests.makeData(in: dir)
    let out = dir.appendingPathComponent("run"), tb = dir.appendingPathComponent("tb")
    let r = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "3", "--batch", "4", "--lr", "0.05", "--seed", "3",
                         "--threads", "2", "--out", out.path, "--report", "--log-every", "2", "--tensorboard", tb.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stderr.contains("report.html"), r.stderr)
    // metrics.jsonl: three epoch lines with confusion matrices, and a step line every second update.
    let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
      .map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
    let epochs = lines.filter { $0["kind"] == nil }, steps = lines.filter { $0["kind"] as? String == "step" }
    XCTAssertEqual(epochs.map { $0["epoch"] as? Int }, [1, 2, 3])
    let total = try XCTUnwrap(epochs.last?["step"] as? Int)
    XCTAssertEqual(steps.map { $0["step"] as? Int ?? 0 }, Array(stride(from: 2, through: total, by: 2)))
    XCTAssertEqual((epochs.last?["val_confusion"] as? [[Int]])?.flatMap { $0 }.reduce(0, +), 10)
    // The final report: no reload, predictions drawn.
    let html = try String(contentsOf: out.appendingPathComponent("report.html"), encoding: .utf8)
    XCTAssertFalse(html.contains("http-equiv=\"refresh\""))
    for id in ["chart-loss", "chart-accuracy", "chart-lr", "chart-memory", "chart-confusion", "chart-plan-layers", "grid-predictions", "table-steps"] {
      XCTAssert(html.contains("id=\"\(id)\""), id)
    }
    XCTAssert(html.contains("data:image/jpeg;base64,"))
    // TensorBoard's reader sees what metrics.jsonl says.
    let py = Self.root.appendingPathComponent(".venv-peers/bin/python").path
    if FileManager.default.isExecutableFile(atPath: py), (try? Self.run(py, ["-c", "import tensorboard"]))?.status == 0 {
      let t = try Self.run(py, [Self.root.appendingPathComponent("scripts/read_tensorboard.py").path, tb.path, out.appendingPathComponent("metrics.jsonl").path])
      XCTAssertEqual(t.status, 0, t.stdout + t.stderr)
      let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(t.stdout.utf8)) as? [String: Any])
      XCTAssertEqual(o["compared"] as? Int, 3 * 8 + 2 * steps.count)
    } else {
      print("skipped the TensorBoard read-back: tensorboard is not installed (scripts/setup_peers.sh installs it)")
    }
    // `tessera report` remakes it; --json names the sections.
    let rep = try CLI.run(["report", out.path, "--out", dir.appendingPathComponent("r.html").path, "--json"])
    XCTAssertEqual(rep.status, 0, rep.stderr)
    let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(rep.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(o["sections"] as? [String], ["settings", "curves", "lr", "speed", "confusion", "plan", "predictions"])
    XCTAssertLessThan(o["bytes"] as? Int ?? .max, 2_000_000)
  }

  /// The report and the plan page in a real browser (skipped where Chromium is absent).
  func testReportAndPlanPageRenderInChromium() throws {
    guard Self.chromium != nil else {
      throw XCTSkip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    }
    let data = try TrainCLITests.makeData(in: dir)
    let out = dir.appendingPathComponent("run")
    let r = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "2", "--batch", "4", "--lr", "0.05", "--seed", "3",
                         "--threads", "2", "--out", out.path, "--report"])
    XCTAssertEqual(r.status, 0, r.stderr)
    try checkInBrowser(out.appendingPathComponent("report.html"),
                       ids: ["chart-loss", "chart-confusion", "table-precision-recall", "chart-plan-layers", "grid-predictions"])
    let page = dir.appendingPathComponent("plan.html")
    let p = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x1024x1024", "--batch", "2", "--budget", "2GiB", "--classes", "2", "--html", page.path])
    XCTAssertEqual(p.status, 0, p.stderr)
    try checkInBrowser(page, ids: ["chart-plan-layers", "chart-rf", "chart-modes"])
  }

  func testPlanPageAndReportErrors() throws {
    let page = dir.appendingPathComponent("plan.html")
    let r = try CLI.run(["plan", "--model", "resnet18", "--input", "3x224x224", "--batch", "8", "--budget", "1GiB", "--classes", "10", "--html", page.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let html = try String(contentsOf: page, encoding: .utf8)
    for id in ["chart-plan-layers", "chart-plan-layers-total", "chart-rf", "chart-modes", "chart-modes-table"] {
      XCTAssert(html.contains("id=\"\(id)\""), id)
    }
    // Not a run folder; a damaged config; an unwritable output.
    let bad = try CLI.run(["report", dir.path])
    XCTAssertNotEqual(bad.status, 0)
    XCTAssert(bad.stderr.contains("not a run folder"), bad.stderr)
    let damaged = dir.appendingPathComponent("damaged")
    try FileManager.default.createDirectory(at: damaged, withIntermediateDirectories: true)
    try Data("{nope".utf8).write(to: damaged.appendingPathComponent("config.json"))
    let d = try CLI.run(["report", damaged.path])
    XCTAssert(d.status != 0 && d.stderr.contains("config.json") && d.stderr.contains("damaged"), d.stderr)
    // Event files that cannot be written: refused before the run folder is made.
    let data = try TrainCLITests.makeData(in: dir)
    let out = dir.appendingPathComponent("never")
    let tb = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "1", "--out", out.path,
                          "--tensorboard", "/proc/no-such-folder/tb"])
    XCTAssert(tb.status != 0 && tb.stderr.contains("--tensorboard"), tb.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written for a refused run")
  }
}
