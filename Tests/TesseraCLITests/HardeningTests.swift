import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraTraining
import TestSupport
import XCTest

/// Inputs that once crashed, hung, lost or faked work (issue #11, "Seen"): each gives a clear error
/// or the right result now.
final class HardeningTests: TemporaryDirectoryTestCase {
  /// Three classes of small PPM images.
  func makeData(classes: [String] = ["a", "b", "c"], perClass: Int = 4, side: Int = 16) throws -> URL {
    let root = dir.appendingPathComponent("data")
    var g = SeededGenerator(seed: 9)
    for c in classes {
      let d = root.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<perClass {
        let px = (0..<(side * side * 3)).map { _ in UInt8(g.next() % 256) }
        try (Data("P6 \(side) \(side) 255\n".utf8) + Data(px)).write(to: d.appendingPathComponent("\(i).ppm"))
      }
    }
    return root
  }

  func write(_ text: String, _ name: String) throws -> String {
    let u = dir.appendingPathComponent(name)
    try Data(text.utf8).write(to: u)
    return u.path
  }

  /// A refusal, not a crash: exit 1 or 64 (usage), no signal, no "Fatal error", and the message.
  func assertRefused(_ args: [String], _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let r = try CLI.run(args)
    XCTAssert(r.status == 1 || r.status == 64, "\(args): exit \(r.status)\n\(r.stderr.suffix(600))", file: file, line: line)
    XCTAssertFalse(r.stderr.contains("Fatal error") || r.stderr.contains("Backtrace"), "\(args): \(r.stderr.suffix(600))", file: file, line: line)
    XCTAssert(r.stderr.contains(expected), "\(args): expected '\(expected)' in: \(r.stderr.suffix(600))", file: file, line: line)
  }

  func testInputsThatCrashedAreRefusedByName() throws {
    let data = try makeData()
    let out = dir.appendingPathComponent("run").path
    try assertRefused(["plan", "--classes", "0"], "--classes must be between 1 and")
    try assertRefused(["plan", "--classes", "9223372036854775807"], "--classes must be between 1 and")
    try assertRefused(["plan", "--input", "3x99999999x99999999"], "--input height must be between 1 and")
    try assertRefused(["plan", "--input", "3x9999999x9999999"], "more than 2^40 values")
    try assertRefused(["plan", "--batch", "9223372036854775807"], "--batch must be between 1 and")
    try assertRefused(["plan", "--tile", "9223372036854775807"], "--tile must be a number of pixels")
    try assertRefused(["plan", "--batch", "-1"], "--batch must be between 1 and")  // not "Missing value"
    try assertRefused(["train", "--data", data.path, "--image-size", "2147483648", "--out", out], "--image-size must be between")
    try assertRefused(["train", "--data", data.path, "--lr", "-1", "--out", out], "--lr must be a number ≥ 0")
    let img = data.appendingPathComponent("a/0.ppm").path
    try assertRefused(["preview", img, "--size", "100000", "--out", dir.appendingPathComponent("p.png").path], "--size")
    try assertRefused(["pca", "fit", "--data", data.path, "--size", "100000", "--out", out], "--size must be between")
    try assertRefused(["pca", "fit", "--data", data.path, "--patch", "1000000", "--out", out], "--patch must be between")
    // bench conv's sizes (0 once reached the layer's precondition: a trap).
    for flag in ["--out-channels", "--kernel", "--stride", "--dilation", "--groups", "--runs", "--max-pool"] {
      try assertRefused(["bench", "conv", "--input", "3x16x16", flag, "0"], "\(flag) must be between 1 and")
    }
    try assertRefused(["bench", "conv", "--input", "3x16x16", "--groups", "2"], "--groups 2 must divide the 3 input")

    // Model specs: channels, huge padding, nesting, an alias bomb — refused with file and line.
    let head = "  - conv: {filters: 3, kernel: 3}\n  - gap: {}\n"
    try assertRefused(["plan", "--model", try write("input_channels: 0\nlayers:\n" + head, "c0.yaml")], "'input_channels' must be a whole number")
    try assertRefused(["plan", "--model", try write("input_channels: -1\nlayers:\n" + head, "cm1.yaml")], "'input_channels' must be a whole number")
    try assertRefused(["plan", "--model", try write("layers:\n  - conv: {filters: 3, kernel: 3, padding: 2147483648}\n  - gap: {}\n", "pad.yaml")],
                      "pad.yaml:2: layer 0: padding must be")
    let deep = "layers: " + String(repeating: "[{sequential: ", count: 5000) + "[]" + String(repeating: "}]", count: 5000) + "\n"
    try assertRefused(["plan", "--model", try write(deep, "deep.yaml")], "deep.yaml:1: nested more than 64 levels deep")
    var bomb = "x:\n  a: &a [{relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}, {relu: {}}]\n"
    var prev = "a"
    for n in ["b", "c", "d", "e", "f", "g", "h", "i"] {
      bomb += "  \(n): &\(n) [{sequential: [" + Array(repeating: "*\(prev)", count: 10).joined(separator: ",") + "]}]\n"
      prev = n
    }
    bomb += "layers: *i\n"
    let t0 = Date()
    try assertRefused(["plan", "--model", try write(bomb, "bomb.yaml")], "values once aliases are expanded")
    XCTAssertLessThan(Date().timeIntervalSince(t0), 10, "the alias bomb is refused quickly")

    // Found by fuzzing: YAML 1.1 base-60 integers overflowed inside the YAML library (a trap).
    XCTAssertThrowsError(try ModelSpec.parse(yaml: "::0:3:34:30:3:34:30:3:340:3:34:3"))
    XCTAssertThrowsError(try ModelSpec.parse(yaml: "layers:\n  - conv: {filters: 1:30:00:00:00:00:00:00:00:00:00:00, kernel: 3}\n").build()) {
      XCTAssert("\($0)".contains("'filters' must be a whole number"), "\($0)")
    }
    try assertRefused(["plan", "--model", try write("layers:\n  - conv: {filters: 9:9:9:9:9:9:9:9:9:9:9:9:9:9, kernel: 3}\n", "b60.yaml")],
                      "b60.yaml:2: layer 0: 'filters' must be a whole number")

    // A head of 5 outputs on 3 classes: refused before training (it once died in the metrics).
    let five = try write("layers:\n  - conv: {filters: 5, kernel: 3}\n  - gap: {}\n", "five.yaml")
    try assertRefused(["train", "--data", data.path, "--model", five, "--image-size", "16", "--epochs", "1", "--out", out],
                      "the head gives 5 scores per image but the data has 3 classes")
    XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a refused run leaves no folder behind")

    // Without --budget, the machine's memory is the ceiling: refused before anything starts.
    try assertRefused(["train", "--data", data.path, "--image-size", "100000", "--epochs", "1", "--out", out],
                      "does not fit the memory this machine has available")
    XCTAssertFalse(FileManager.default.fileExists(atPath: out))

    // A streamed input is not held: the advice says so (it once said "does NOT fit").
    var rs = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x4096x4096", "--budget", "300MiB", "--tile", "auto",
                          "--streamed-input", "--json"])
    XCTAssertEqual(rs.status, 0, rs.stderr)
    let pj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(rs.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(pj["fits"] as? Bool, true)
    XCTAssertLessThanOrEqual((pj["bytes"] as? [String: Int])?["peakTraining"] ?? .max, (300 - 96) << 20)
    rs = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x4096x4096", "--budget", "300MiB", "--tile", "auto", "--streamed-input"])
    XCTAssertFalse(rs.stdout.contains("does NOT fit"), rs.stdout)

    // Small tiles on a large image plan quickly (the tile layout is shared across the planner's tries).
    let t1 = Date()
    let r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x16384x16384", "--tile", "64", "--budget", "2GiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertLessThan(Date().timeIntervalSince(t1), 60, "a hang guard (it took over 60 s in release before; 0.2 s now)")
  }

  func testStepRefusesNaNAndZeroChannelBatches() throws {
    let nanInput = Tensor(shape: [1, 3, 32, 32], values: [Float](repeating: .nan, count: 3 * 32 * 32))
    let b = dir.appendingPathComponent("nan.safetensors")
    try SafeTensors.write([("input", nanInput), ("labels", .labels([0], dtype: .int64))], to: b)
    let out = dir.appendingPathComponent("g.safetensors").path
    var r = try CLI.run(["step", "--classes", "2", "--batch", b.path, "--out", out, "--json"])
    XCTAssertEqual(r.status, 1, r.stderr)
    XCTAssert(r.stderr.contains("NaN") && r.stderr.contains("nan.safetensors"), r.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    let zero = dir.appendingPathComponent("zero.safetensors")
    try SafeTensors.write([("input", Tensor(zeros: [1, 0, 32, 32])), ("labels", .labels([0], dtype: .int64))], to: zero)
    r = try CLI.run(["step", "--classes", "2", "--batch", zero.path, "--out", out])
    XCTAssertEqual(r.status, 1, r.stderr)
    XCTAssert(r.stderr.contains("zero.safetensors"), r.stderr)
  }

  func testManifestWrittenElsewhereTrainsTheSameFiles() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 5)
    let elsewhere = dir.appendingPathComponent("elsewhere")
    try FileManager.default.createDirectory(at: elsewhere, withIntermediateDirectories: true)
    let csv = elsewhere.appendingPathComponent("split.csv")
    var r = try CLI.run(["split", "--data", data.path, "--out", csv.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(try String(contentsOf: csv, encoding: .utf8).hasPrefix("# root: ../data\n"))
    r = try CLI.run(["train", "--manifest", csv.path, "--image-size", "16", "--epochs", "1", "--batch", "2",
                     "--out", dir.appendingPathComponent("run").path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let lines = try String(contentsOf: dir.appendingPathComponent("run/metrics.jsonl"), encoding: .utf8)
    XCTAssert(lines.contains("\"skipped_files\":0"), lines)
    // --data names the root explicitly.
    let ds = try ImageDataset.manifest(csv, root: data)
    XCTAssertEqual(ds.samples.count, 10)

    // Columns by header name, in any order; a header without label is refused.
    let m = try write("label,split,path\na,train,a/0.ppm\nb,test,b/0.ppm\n", "data/m.csv")
    let d2 = try ImageDataset.manifest(URL(fileURLWithPath: m))
    XCTAssertEqual(d2.samples.map(\.relativePath), ["a/0.ppm", "b/0.ppm"])
    XCTAssertEqual(d2.samples.map(\.split), ["train", "test"])
    let bad = try write("path,split\na/0.ppm,train\n", "data/bad.csv")
    XCTAssertThrowsError(try ImageDataset.manifest(URL(fileURLWithPath: bad))) { XCTAssert("\($0)".contains("no 'label' column"), "\($0)") }

    // A symbolic link inside the root that leads out of it.
    let outside = dir.appendingPathComponent("secret.ppm")
    try FileManager.default.copyItem(at: data.appendingPathComponent("a/0.ppm"), to: outside)
    try FileManager.default.createSymbolicLink(at: data.appendingPathComponent("a/link.ppm"), withDestinationURL: outside)
    XCTAssertThrowsError(try ImageDataset.folder(data)) { XCTAssert("\($0)".contains("outside the data set root"), "\($0)") }
    let sl = try write("path,label\na/link.ppm,a\n", "data/sl.csv")
    XCTAssertThrowsError(try ImageDataset.manifest(URL(fileURLWithPath: sl))) { XCTAssert("\($0)".contains("symbolic link"), "\($0)") }
  }

  func testRunThatSkipsEveryFileFails() throws {
    let root = dir.appendingPathComponent("broken")
    for c in ["a", "b"] {
      let d = root.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<4 { try Data("not an image".utf8).write(to: d.appendingPathComponent("\(i).jpg")) }
    }
    let r = try CLI.run(["train", "--data", root.path, "--image-size", "16", "--epochs", "1", "--out", dir.appendingPathComponent("run").path])
    XCTAssertEqual(r.status, 1, r.stderr)
    XCTAssert(r.stderr.contains("could not be read"), r.stderr)
  }

  func testRunFolderIsNeverLostOrMixed() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 6)
    let out = dir.appendingPathComponent("run")
    func train(_ extra: [String]) throws -> CLIResult {
      try CLI.run(["train", "--data", data.path, "--image-size", "16", "--epochs", "2", "--batch", "2", "--seed", "1",
                   "--out", out.path] + extra)
    }
    var r = try train([])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stdout.contains("best held-out accuracy"), r.stdout)
    let weights = try Data(contentsOf: out.appendingPathComponent("last.safetensors"))
    // Again without --resume: refused, nothing replaced.
    r = try train([])
    XCTAssertEqual(r.status, 1)
    XCTAssert(r.stderr.contains("already holds a run; --resume to continue it, --overwrite"), r.stderr)
    XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent("last.safetensors")), weights)
    // --resume with another image size: refused by name.
    r = try CLI.run(["train", "--data", data.path, "--image-size", "24", "--epochs", "3", "--batch", "2", "--seed", "1",
                     "--out", out.path, "--resume"])
    XCTAssertEqual(r.status, 1)
    XCTAssert(r.stderr.contains("imageSize 16 → 24"), r.stderr)
    // --resume with more epochs and another lr: continues, and the change is recorded.
    r = try train(["--resume", "--lr", "0.002"].map { $0 })
    XCTAssertEqual(r.status, 1, "epochs 2 are done: asks for more")
    XCTAssert(r.stderr.contains("already trained 2 epochs"), r.stderr)
    r = try CLI.run(["train", "--data", data.path, "--image-size", "16", "--epochs", "3", "--batch", "2", "--seed", "1",
                     "--out", out.path, "--resume", "--lr", "0.002"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as? [String: Any])
    let resumes = try XCTUnwrap(cfg["resumes"] as? [[String: Any]])
    XCTAssertEqual((resumes.last?["changed"] as? [String: String])?["lr"], "0.01 → 0.002")
    // only what was changed (a flag read back from config.json is not "0 → false")
    XCTAssertEqual(Set((resumes.last?["changed"] as? [String: String] ?? [:]).keys), ["lr", "epochs"])
    let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(metrics.count, 3)
    // --overwrite replaces it.
    r = try train(["--overwrite", "--epochs", "1"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").count, 1)
    // --resume where nothing was saved.
    r = try CLI.run(["train", "--data", data.path, "--image-size", "16", "--out", dir.appendingPathComponent("new").path, "--resume"])
    XCTAssertEqual(r.status, 1)
    XCTAssert(r.stderr.contains("nothing to resume"), r.stderr)
    // A second train on a folder in use is refused.
    let lock = try RunLock(out)
    r = try train(["--resume", "--epochs", "5"])
    XCTAssertEqual(r.status, 1)
    XCTAssert(r.stderr.contains("is in use by another tessera train"), r.stderr)
    withExtendedLifetime(lock) {}
  }

  func testDivergingRunStopsWithAClearErrorAndAConsistentFolder() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 6)
    let out = dir.appendingPathComponent("run")
    let r = try CLI.run(["train", "--data", data.path, "--image-size", "16", "--epochs", "3", "--batch", "2", "--lr", "1e30",
                         "--out", out.path, "--json"])
    XCTAssertEqual(r.status, 1, r.stderr)
    XCTAssert(r.stderr.contains("training diverged"), r.stderr)
    XCTAssertFalse(r.stderr.contains("NSCocoaErrorDomain"), r.stderr)
    // Every metrics line parses; the checkpoint (if any) matches the last line.
    let text = (try? String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
    for l in text.split(separator: "\n") { XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(l.utf8))) }
  }

  /// Ctrl-C (a real SIGINT, raised by the test hook after a given number of batches) finishes the
  /// update, saves the position in the epoch and exits 130; --resume ends with the same weights as
  /// a run never interrupted, and every metrics line.
  func testSIGINTSavesMidEpochAndResumeIsBitIdentical() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 8)
    func args(_ out: URL) -> [String] {
      ["train", "--data", data.path, "--image-size", "16", "--epochs", "2", "--batch", "2", "--seed", "4", "--test", "0.25",
       "--out", out.path, "--log-every", "1"]
    }
    let plain = dir.appendingPathComponent("plain"), cut = dir.appendingPathComponent("cut")
    var r = try CLI.run(args(plain))
    XCTAssertEqual(r.status, 0, r.stderr)
    r = try CLI.run(args(cut), environment: ["TESSERA_TEST_SIGINT_AFTER_BATCHES": "3"])
    XCTAssertEqual(r.status, 130, r.stderr)
    XCTAssert(r.stderr.contains("interrupted in epoch 1 after batch 3 of 6"), r.stderr)
    r = try CLI.run(args(cut) + ["--resume"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stderr.contains("and 3 batches of epoch 1"), r.stderr)
    let a = try SafeTensors.read(plain.appendingPathComponent("last.safetensors"))
    let b = try SafeTensors.read(cut.appendingPathComponent("last.safetensors"))
    XCTAssertEqual(a.names, b.names)
    for n in a.names { XCTAssertEqual(a.tensors[n]!.toArray(), b.tensors[n]!.toArray(), n) }
    func lines(_ u: URL) throws -> [[String: Any]] {
      try String(contentsOf: u.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").map {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
      }
    }
    // Two epoch lines and a step line per update (--log-every 1), none lost or repeated by the cut.
    let la = try lines(plain), lb = try lines(cut)
    XCTAssertEqual(la.count, 2 + 12)
    XCTAssertEqual(lb.count, 2 + 12)
    for (x, y) in zip(la, lb) {
      for k in ["kind", "epoch", "batch", "loss", "accuracy", "val_loss", "step"] where x[k] != nil || y[k] != nil {
        XCTAssertEqual(x[k].map { "\($0)" }, y[k].map { "\($0)" }, k)
      }
    }
  }

  func testSafeTensorsIsAsStrictAsTheReferenceReader() throws {
    func file(_ header: String, body: Int) throws -> URL {
      var d = Data()
      var n = UInt64(header.utf8.count).littleEndian
      d.append(Data(bytes: &n, count: 8))
      d.append(Data(header.utf8))
      d.append(Data(count: body))
      let u = dir.appendingPathComponent(UUID().uuidString + ".safetensors")
      try d.write(to: u)
      return u
    }
    let dup = try file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, body: 8)
    XCTAssertThrowsError(try SafeTensors.read(dup)) { XCTAssert("\($0)".contains("'a' appears twice"), "\($0)") }
    let trailing = try file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, body: 12)
    XCTAssertThrowsError(try SafeTensors.read(trailing)) { XCTAssert("\($0)".contains("8 bytes after the last tensor"), "\($0)") }
    let gap = try file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, body: 8)
    XCTAssertThrowsError(try SafeTensors.read(gap)) { XCTAssert("\($0)".contains("belong to no tensor"), "\($0)") }
    // Names that only look alike inside values are fine.
    let ok = try file(#"{"__metadata__":{"a":"x"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, body: 4)
    XCTAssertEqual(try SafeTensors.read(ok).names, ["a"])
  }

  /// `train --budget`: the ledger's peak and the process's max RSS stay under the budget.
  func testTrainKeepsTheLedgerAndRSSUnderTheBudget() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 10, side: 40)
    let r = try CLI.run(["train", "--data", data.path, "--image-size", "64", "--epochs", "1", "--batch", "auto",
                         "--budget", "160MiB", "--out", dir.appendingPathComponent("run").path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    let budget = 160 << 20
    let peak = try XCTUnwrap(s["peakBytes"] as? Int), planned = try XCTUnwrap(s["predictedPeakBytes"] as? Int)
    let rss = try XCTUnwrap(s["maxRSSBytes"] as? Int)
    XCTAssertLessThanOrEqual(peak, planned)
    XCTAssertLessThanOrEqual(planned, budget)
    XCTAssertLessThanOrEqual(rss, budget, "max RSS \(rss >> 20) MiB")
    XCTAssertEqual(s["heldOut"] as? Bool, true)
  }

  /// eval and predict: a damaged or missing run, a budget, --tile auto, CSV and heatmap names.
  func testEvalAndPredictCheckBeforeTheyRun() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 4, side: 24)
    let run = dir.appendingPathComponent("run")
    var r = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "1", "--batch", "2", "--out", run.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    try assertRefused(["eval", "--run", dir.appendingPathComponent("nowhere").path], "not a run folder (no readable config.json)")
    try assertRefused(["eval", "--run", run.path, "--budget", "20MiB"], "more than --budget")
    let img = data.appendingPathComponent("a/0.ppm").path, img2 = data.appendingPathComponent("b/0.ppm").path
    try assertRefused(["predict", "--run", run.path, img, "--tile", "64", "--budget", "10MiB"], "tiles of 64 px need")
    r = try CLI.run(["predict", "--run", run.path, img, img2, "--tile", "auto", "--csv", "--heatmaps", dir.appendingPathComponent("hm").path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(r.stdout.split(separator: "\n").first, "path,rank,class,probability")
    XCTAssertEqual(r.stdout.split(separator: "\n").count, 5)
    // Two images named 0.ppm: two sets of heatmaps.
    let maps = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("hm").path).sorted()
    XCTAssertEqual(maps, ["0-1.a.png", "0-1.b.png", "0-2.a.png", "0-2.b.png", "heatmaps.json"])
    // The folder's index (what `tessera report` draws) lists both images with their maps.
    let index = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("hm/heatmaps.json"))) as? [[String: Any]])
    XCTAssertEqual(index.compactMap { ($0["maps"] as? [String: String])?.count }, [2, 2])
    // A huge header scored tile by tile: refused before the score map is allocated.
    let huge = dir.appendingPathComponent("huge.ppm")
    try (Data("P6 99999999 99999999 255\n".utf8) + Data(count: 64)).write(to: huge)
    try assertRefused(["predict", "--run", run.path, huge.path, "--tile", "64"], "more than this machine has available")
    try assertRefused(["predict", "--run", run.path, huge.path, "--tile", "auto"], "no tile fits")
    // A hand-edited config.json: values that would size allocations are refused by name.
    let cfgURL = run.appendingPathComponent("config.json")
    var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: cfgURL)) as? [String: Any])
    for (k, v) in [("policy", "none" as Any), ("imageSize", 1 << 40 as Any)] {
      var c = cfg
      c[k] = v
      try JSONSerialization.data(withJSONObject: c).write(to: cfgURL)
      try assertRefused(["eval", "--run", run.path], "\(k) must be")
    }
    cfg["imageSize"] = 32
    try JSONSerialization.data(withJSONObject: cfg).write(to: cfgURL)
    r = try CLI.run(["eval", "--run", run.path, "--tile", "auto", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    // With a small budget, eval and predict keep the ledger and the process under it.
    let budget = 150 << 20
    r = try CLI.run(["eval", "--run", run.path, "--budget", "150MiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    var o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertLessThanOrEqual(o["peakBytes"] as? Int ?? .max, o["plannedPeakBytes"] as? Int ?? 0)
    XCTAssertLessThanOrEqual(o["plannedPeakBytes"] as? Int ?? .max, budget)
    XCTAssertLessThanOrEqual(o["maxRSSBytes"] as? Int ?? .max, budget)
    r = try CLI.run(["predict", "--run", run.path, img, "--tile", "auto", "--budget", "150MiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertLessThanOrEqual(o["peakBytes"] as? Int ?? .max, budget - (96 << 20))
    XCTAssertLessThanOrEqual(o["maxRSSBytes"] as? Int ?? .max, budget)
  }

  /// plan --budget and train --batch auto count the same things (step, loader, runtime) and so choose
  /// the same mode and batch.
  func testPlanAndTrainChooseTheSameMode() throws {
    let data = try makeData(classes: ["a", "b"], perClass: 12, side: 40)
    for budget in ["140MiB", "200MiB"] {
      var r = try CLI.run(["plan", "--model", "fcn-large", "--classes", "2", "--input", "3x128x128", "--budget", budget, "--json"])
      XCTAssertEqual(r.status, 0, r.stderr)
      let p = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
      let chosen = try XCTUnwrap(p["chosenMode"] as? [String: Any])
      r = try CLI.run(["train", "--data", data.path, "--image-size", "128", "--epochs", "1", "--batch", "auto", "--budget", budget,
                       "--test", "0", "--out", dir.appendingPathComponent("run-\(budget)").path, "--json"])
      XCTAssertEqual(r.status, 0, r.stderr)
      let description = try XCTUnwrap(chosen["description"] as? String)
      XCTAssert(r.stderr.contains("mode: \(description) —"), "plan chose \(description); train said: \(r.stderr)")
      let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
      XCTAssertEqual(s["batch"] as? Int, min(24, chosen["maxBatch"] as? Int ?? 0), "\(budget)")
      XCTAssertEqual(s["heldOut"] as? Bool, false)
    }
    // Without held-out images the summary says what it measured.
    let r = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "1", "--batch", "4", "--test", "0",
                         "--out", dir.appendingPathComponent("no-held-out").path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stdout.contains("best training accuracy (no held-out images)"), r.stdout)
    XCTAssertFalse(r.stdout.contains("best held-out accuracy"), r.stdout)
  }
}
