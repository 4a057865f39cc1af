import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TestSupport
import XCTest

final class TrainCLITests: TemporaryDirectoryTestCase {
  /// Two colour classes of small JPEGs of varying sizes.
  func makeData() throws -> URL { try Self.makeData(in: dir) }

  static func makeData(in dir: URL) throws -> URL {
    let root = dir.appendingPathComponent("data")
    var g = SeededGenerator(seed: 5)
    for (ci, c) in ["red", "blue"].enumerated() {
      let d = root.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<16 {
        let w = 24 + Int(g.next() % 16), h = 24 + Int(g.next() % 16)
        var px = [UInt8]()
        for _ in 0..<(w * h) {
          let n = UInt8(g.next() % 60)
          px += ci == 0 ? [150 + n, n, n] : [n, n, 150 + n]
        }
        try JPEGEncoder.encode(px, width: w, height: h).write(to: d.appendingPathComponent("\(i).jpg"))
      }
    }
    return root
  }

  func trainArgs(_ data: URL, _ out: URL, epochs: Int) -> [String] {
    ["train", "--data", data.path, "--image-size", "32", "--epochs", "\(epochs)", "--batch", "4", "--lr", "0.05",
     "--seed", "3", "--threads", "2", "--out", out.path]
  }

  /// `train --tile`: the stem streamed in 4 tiles gives the plain run's losses and held-out losses
  /// (running statistics from the whole images). Learning rate 0: a training run on tiny BatchNorm
  /// maps amplifies float rounding step after step (2.6e-6 → 5e-5 in six steps in a library check
  /// on random 128² inputs), so updated weights part ways at the 1e-3 level after a few epochs; the
  /// step-level equivalence is tested in StreamingTests.
  func testStreamedTrainingMatchesPlain() throws {
    let data = try makeData()
    func losses(_ out: URL, _ extra: [String]) throws -> [Double] {
      let r = try CLI.run(trainArgs(data, out, epochs: 2).map { $0 == "0.05" ? "0" : $0 } + extra)
      XCTAssertEqual(r.status, 0, r.stderr)
      if !extra.isEmpty { XCTAssert(r.stderr.contains("streaming 1 block (stem) in 4 tiles of 16 px"), r.stderr) }
      let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
      return try lines.flatMap { l -> [Double] in
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any])
        return [o["loss"] as? Double ?? .nan, o["val_loss"] as? Double ?? .nan]
      }
    }
    let plain = try losses(dir.appendingPathComponent("plain"), [])
    let streamed = try losses(dir.appendingPathComponent("streamed"), ["--tile", "16", "--stream-blocks", "1"])
    XCTAssertEqual(plain.count, 4)
    for (a, b) in zip(streamed, plain) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b)), "\(streamed) vs \(plain)") }
    // eval --tile: the held-out loss, streamed, is the whole-image one (and the last epoch's).
    var losses = [Double]()
    for extra in [[], ["--tile", "64"]] {
      let r = try CLI.run(["eval", "--run", dir.appendingPathComponent("streamed").path, "--last", "--json"] + extra)
      XCTAssertEqual(r.status, 0, r.stderr)
      let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
      losses.append(o["loss"] as? Double ?? .nan)
    }
    XCTAssertEqual(losses[1], losses[0], accuracy: 1e-5 * max(1, abs(losses[0])))
    XCTAssertEqual(losses[0], streamed[3], accuracy: 1e-5 * max(1, abs(streamed[3])))
  }

  func testTrainWritesARunFolderAndRefusesWhatDoesNotFit() throws {
    let data = try makeData(), out = dir.appendingPathComponent("run")
    var r = try CLI.run(trainArgs(data, out, epochs: 2) + ["--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stderr.contains("plan: fcn-large") && r.stderr.contains("predicted peak"), r.stderr)
    for f in ["config.json", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.json", "classes.json"] {
      XCTAssert(FileManager.default.fileExists(atPath: out.appendingPathComponent(f).path), f)
    }
    let lines = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(lines.count, 2)
    let model = Zoo.fcnLarge(classes: 2)
    try model.load(from: out.appendingPathComponent("best.safetensors"))  // loads with the documented names
    // eval and predict from the run folder.
    r = try CLI.run(["eval", "--run", out.path, "--data", data.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let ev = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertEqual(ev["samples"] as? Int, 32)
    XCTAssertEqual((ev["confusion"] as? [[Int]])?.flatMap { $0 }.reduce(0, +), 32)
    XCTAssertEqual(ev["classes"] as? [String], ["blue", "red"])
    let img = data.appendingPathComponent("red/0.jpg").path
    r = try CLI.run(["predict", "--run", out.path, img, "--top", "2", "--csv"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(r.stdout.split(separator: "\n").count, 3)  // header + 2 ranks
    // `eval` on the run's own held-out split with the last checkpoint: the numbers of the last epoch.
    r = try CLI.run(["eval", "--run", out.path, "--last", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let e2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    let lastEpoch = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as? [String: Any])
    XCTAssertEqual(e2["accuracy"] as? Double, lastEpoch["val_accuracy"] as? Double)
    XCTAssertEqual(e2["loss"] as? Double ?? -1, lastEpoch["val_loss"] as? Double ?? -2, accuracy: 1e-9)
    // The checkpoint in Python's safetensors (skipped, with a message, without Python + safetensors).
    try checkpointLoadsInPython(out.appendingPathComponent("last.safetensors"))
    // Tiled inference with heatmaps, and a tile that does not align.
    let hm = dir.appendingPathComponent("hm")
    r = try CLI.run(["predict", "--run", out.path, img, "--tile", "64", "--heatmaps", hm.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(FileManager.default.fileExists(atPath: hm.appendingPathComponent("0.red.png").path))
    r = try CLI.run(["predict", "--run", out.path, img, "--tile", "100"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("multiple of the model's output stride 64"), r.stderr)
    r = try CLI.run(["predict", "--run", out.path, dir.appendingPathComponent("missing.jpg").path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("missing.jpg"), r.stderr)
    r = try CLI.run(trainArgs(data, dir.appendingPathComponent("r2"), epochs: 1) + ["--budget", "1MiB"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("does not fit"), r.stderr)
    r = try CLI.run(["train", "--data", data.path, "--image-size", "32", "--epochs", "1", "--batch", "auto", "--budget", "160MiB",
                     "--out", dir.appendingPathComponent("r3").path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let s = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertLessThanOrEqual(s["predictedPeakBytes"] as? Int ?? .max, 160 << 20)
    XCTAssertLessThanOrEqual(s["peakBytes"] as? Int ?? .max, 160 << 20, "the real run stayed within the budget")
    XCTAssert(r.stderr.contains("mode: ") && r.stderr.contains("the fastest that fits"), r.stderr)
  }

  func checkpointLoadsInPython(_ url: URL) throws {
    let python = ProcessInfo.processInfo.environment["TESSERA_PYTHON"] ?? "python3"
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("scripts/read_safetensors.py")
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [python, script.path, url.path, "--require-safetensors"]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    do { try p.run() } catch { throw XCTSkip("no \(python): the Python safetensors check was skipped") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
      print("skipping the Python check: \(python) has no safetensors package (pip install safetensors numpy)")
      return
    }
    let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    XCTAssertEqual(obj["reader"] as? String, "safetensors")
    let tensors = try XCTUnwrap(obj["tensors"] as? [String: [String: Any]])
    XCTAssertEqual(tensors["stem.conv.weight"]?["shape"] as? [Int], [16, 3, 7, 7])
    XCTAssertEqual(tensors["head.weight"]?["shape"] as? [Int], [2, 256, 1, 1])
    XCTAssertNotNil(tensors["stage4.bn2.running_var"])
    XCTAssertNotNil(tensors["optimizer.head.weight.momentum"])
  }

  /// SIGKILL mid-run, resume, and end with the same parameters as an uninterrupted run, bit for bit
  /// (the kernels are deterministic for a given thread count).
  func testKillAndResumeEqualsUninterrupted() throws {
    let data = try makeData()
    let a = dir.appendingPathComponent("a"), b = dir.appendingPathComponent("b")
    let epochs = 5
    var r = try CLI.run(trainArgs(data, a, epochs: epochs))
    XCTAssertEqual(r.status, 0, r.stderr)
    // Interrupted run: killed as soon as its first checkpoint exists.
    let p = Process()
    p.executableURL = CLI.binary
    p.arguments = trainArgs(data, b, epochs: epochs)
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    let state = b.appendingPathComponent("state.json")
    let deadline = Date().addingTimeInterval(120)
    while !FileManager.default.fileExists(atPath: state.path) && p.isRunning && Date() < deadline { usleep(5000) }
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
    let killedAt = (try? JSONSerialization.jsonObject(with: Data(contentsOf: state)) as? [String: Any])?["epoch"] as? Int
    XCTAssertNotNil(killedAt, "the run was killed before its first checkpoint")
    r = try CLI.run(trainArgs(data, b, epochs: epochs) + ["--resume"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertLessThan(killedAt ?? epochs, epochs, "the kill came after the run had finished")
    XCTAssert(r.stderr.contains("resuming"), r.stderr)
    let fa = try SafeTensors.read(a.appendingPathComponent("last.safetensors"))
    let fb = try SafeTensors.read(b.appendingPathComponent("last.safetensors"))
    XCTAssertEqual(Set(fa.tensors.keys), Set(fb.tensors.keys))
    for (k, t) in fa.tensors { XCTAssertEqual(t.toArray(), fb.tensors[k]!.toArray(), k) }
    let lines = try String(contentsOf: b.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(lines.count, epochs)
  }
}
