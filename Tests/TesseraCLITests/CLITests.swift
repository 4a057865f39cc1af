import Foundation
import Tessera
import TestSupport
import TesseraData
import TesseraKernels
import XCTest

final class CLITests: TemporaryDirectoryTestCase {

  func json(_ s: String) throws -> [String: Any] {
    let line = s.split(separator: "\n").last.map(String.init) ?? ""
    return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(s)")
  }

  func writeBatch(_ name: String, input: Tensor, labels: Tensor) throws -> String {
    let url = dir.appendingPathComponent(name)
    try SafeTensors.write([("input", input), ("labels", labels)], to: url)
    return url.path
  }

  func testStepWritesLossLogitsAndEveryGradient() throws {
    let batch = try writeBatch("b.safetensors", input: randomTensor([2, 3, 64, 64], seed: 1),
                               labels: .labels([1, 3], dtype: .int64))
    let out = dir.appendingPathComponent("out.safetensors").path
    var r = try CLI.run(["step", "--model", "fcn-large", "--classes", "5", "--batch", batch, "--out", out, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let summary = try json(r.stdout)
    let file = try SafeTensors.read(URL(fileURLWithPath: out))
    XCTAssertEqual(file.tensors["logits"]?.shape, [2, 5])
    let loss = try XCTUnwrap(file.tensors["loss"]).toArray()
    XCTAssertEqual(loss.count, 1)
    XCTAssertEqual(Double(loss[0]), summary["loss"] as? Double ?? -1, accuracy: 1e-6)
    // Same numbers as the library computes for the same seed.
    let model = Zoo.fcnLarge(classes: 5)
    model.initializeParameters(seed: 0)
    let input = try SafeTensors.read(URL(fileURLWithPath: batch)).tensors["input"]!
    let res = try model.trainingStep(input: input, labels: [1, 3])
    XCTAssertEqual(loss[0], res.loss, accuracy: 1e-5)
    for (name, p) in model.namedParameters() where p.trainable {
      let g = try XCTUnwrap(file.tensors["grad." + name], "missing grad.\(name)")
      assertClose(g.toArray(), p.grad!.toArray(), rtol: 1e-4, atol: 1e-6, name)
    }
    XCTAssertNil(file.tensors["grad.stem.bn.running_mean"], "running statistics are not trainable")

    // --checkpointing: the same gradients.
    let outC = dir.appendingPathComponent("outc.safetensors").path
    r = try CLI.run(["step", "--model", "fcn-large", "--classes", "5", "--batch", batch, "--out", outC, "--checkpointing", "all"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let fc = try SafeTensors.read(URL(fileURLWithPath: outC))
    for (name, t) in file.tensors { XCTAssertLessThanOrEqual(maxRelativeError(fc.tensors[name]!.toArray(), t.toArray()), 1e-5, name) }

    // --tile: streamed (stem and stage1 in 9 tiles of 64 px), the same gradients. (160²: at 64² the
    // last BatchNorm normalises 2 numbers per channel, which turns summation-order rounding into 3e-5.)
    let big = try writeBatch("big.safetensors", input: randomTensor([2, 3, 160, 160], seed: 2),
                             labels: .labels([0, 4], dtype: .int64))
    let outP = dir.appendingPathComponent("outp.safetensors").path, outS = dir.appendingPathComponent("outs.safetensors").path
    // Both on the direct kernel: Winograd's rounding depends on where its 4×4 tiles fall in each
    // crop (StreamingTests.testWinogradTrainingStreamsWithinItsRounding).
    let direct = ["TESSERA_WINOGRAD_TRAINING": "0"]
    r = try CLI.run(["step", "--model", "fcn-large", "--classes", "5", "--batch", big, "--out", outP], environment: direct)
    XCTAssertEqual(r.status, 0, r.stderr)
    let fp = try SafeTensors.read(URL(fileURLWithPath: outP))
    // One segment (stem and stage1); two (the stem in 64-px tiles, stages 1–2 in 16-px tiles of its
    // output); three (stem | stage1 | stage2): each the plain step's gradients.
    for (flags, line) in [(["--stream-blocks", "2"], "streaming 2 blocks (stem, stage1) in 9 tiles of 64 px"),
                          (["--stream-blocks", "3", "--stream-split", "1"], "streaming 3 blocks (stem | stage1, stage2) in 9 tiles of 64 px"),
                          (["--stream-blocks", "3", "--stream-split", "1,2"], "streaming 3 blocks (stem | stage1 | stage2) in 9 tiles of 64 px")] {
      r = try CLI.run(["step", "--model", "fcn-large", "--classes", "5", "--batch", big, "--out", outS, "--tile", "64"] + flags,
                      environment: direct)
      XCTAssertEqual(r.status, 0, r.stderr)
      XCTAssert(r.stderr.contains(line), r.stderr)
      let fs = try SafeTensors.read(URL(fileURLWithPath: outS))
      for (name, t) in fp.tensors {
        XCTAssertLessThanOrEqual(maxRelativeError(fs.tensors[name]!.toArray(), t.toArray()), 1e-5, "\(flags) \(name)")
      }
    }
    // Cuts that are not increasing, not inside the blocks or not numbers: refused by name.
    for bad in ["2,1", "1,1", "x", "3"] {
      r = try CLI.run(["step", "--model", "fcn-large", "--batch", big, "--out", outS, "--tile", "64", "--stream-blocks", "3",
                       "--stream-split", bad])
      XCTAssertNotEqual(r.status, 0, bad)
      XCTAssert(r.stderr.contains("--stream-split needs --stream-blocks K and J (0 ≤ J < K) or increasing J1,J2,…"), r.stderr)
      XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr)
    }
    r = try CLI.run(["step", "--model", "fcn-large", "--batch", batch, "--out", outS, "--tile", "30", "--stream-blocks", "2"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("tile 30 is not a multiple of the streamed part's output stride 8; use 24 or 32"), r.stderr)

    // --weights: load what a model saved, get the same loss.
    let w = dir.appendingPathComponent("w.safetensors")
    try model.save(to: w)
    let r2 = try CLI.run(["step", "--classes", "5", "--weights", w.path, "--batch", batch, "--out", out, "--json"])
    XCTAssertEqual(r2.status, 0, r2.stderr)
    XCTAssertEqual(try json(r2.stdout)["loss"] as? Double ?? -1, Double(res.loss), accuracy: 1e-4)
  }

  func testStepRejectsBadInputWithClearErrors() throws {
    let out = dir.appendingPathComponent("never.safetensors").path
    // Missing labels.
    let noLabels = dir.appendingPathComponent("nolabels.safetensors")
    try SafeTensors.write([("input", randomTensor([1, 3, 32, 32], seed: 1))], to: noLabels)
    var r = try CLI.run(["step", "--batch", noLabels.path, "--out", out])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("labels") && r.stderr.contains(noLabels.path), r.stderr)
    // A 1-channel batch with weights made for 3 channels: the error names tensor, shapes and file.
    let gray = try writeBatch("gray.safetensors", input: randomTensor([1, 1, 32, 32], seed: 1), labels: .labels([0]))
    let weights = dir.appendingPathComponent("w3.safetensors")
    let m = Zoo.fcnLarge(classes: 10)
    try m.save(to: weights)
    r = try CLI.run(["step", "--weights", weights.path, "--batch", gray, "--out", out])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("stem.conv.weight") && r.stderr.contains("[16, 1, 7, 7]")
              && r.stderr.contains(weights.path), r.stderr)
    // A label outside the classes.
    let bad = try writeBatch("bad.safetensors", input: randomTensor([1, 3, 32, 32], seed: 1), labels: .labels([12]))
    r = try CLI.run(["step", "--batch", bad, "--out", out])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("label 12"), r.stderr)
    // Weights whose head has the wrong shape name the tensor and file.
    r = try CLI.run(["step", "--classes", "4", "--weights", weights.path, "--batch", bad, "--out", out])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("head.weight") && r.stderr.contains(weights.path), r.stderr)
    // A header claiming 10 GB.
    let huge = dir.appendingPathComponent("huge.safetensors")
    var d = Data()
    withUnsafeBytes(of: UInt64(10_000_000_000).littleEndian) { d.append(contentsOf: $0) }
    d.append(Data("{}".utf8))
    _ = FileManager.default.createFile(atPath: huge.path, contents: d)
    r = try CLI.run(["step", "--batch", huge.path, "--out", out])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains(huge.path) && r.stderr.contains("10000000000"), r.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a failed step wrote its output")
  }

  func testDemoQuickAndBenchJSON() throws {
    var r = try CLI.run(["demo", "--quick", "--json", "--threads", "2"], environment: ["TESSERA_CACHE_DIR": dir.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let demo = try json(r.stdout)
    for key in ["fullResolution", "downsampled"] {
      let d = try XCTUnwrap(demo[key] as? [String: Any], key)
      XCTAssertNotNil(d["accuracy"] as? Double, key)
      XCTAssertNotNil(d["seconds"] as? Double, key)
      XCTAssertGreaterThan(d["peakBytes"] as? Int ?? 0, 0, key)
      XCTAssertEqual((d["inputSize"] as? [Int])?.count, 3, key)
    }
    r = try CLI.run(["bench", "gemm", "--size", "64", "--runs", "1", "--no-peer", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertGreaterThan(try json(r.stdout)["gflops"] as? Double ?? 0, 0)
    r = try CLI.run(["bench", "train", "--input", "3x64x64", "--batch", "2", "--steps", "1", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let t = try json(r.stdout)
    for key in ["gflops", "images_per_second", "peak_bytes", "max_rss_bytes"] { XCTAssertNotNil(t[key], key) }
    // With --budget the block cache keeps a resident ceiling: here nothing reaches it; with the
    // process made to look 600 MiB larger (a test hook), every freed block goes back, the same step.
    let budgeted = ["bench", "train", "--input", "3x512x512", "--batch", "2", "--steps", "2", "--warmup", "1",
                    "--budget", "500MiB", "--json"]
    r = try CLI.run(budgeted)
    XCTAssertEqual(r.status, 0, r.stderr)
    let under = try json(r.stdout)
    XCTAssertEqual(under["cache_released_for_budget_bytes"] as? Int, 0)
    r = try CLI.run(budgeted, environment: ["TESSERA_TEST_RESIDENT_EXTRA_BYTES": "\(600 << 20)"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let over = try json(r.stdout)
    XCTAssertGreaterThan(over["cache_released_for_budget_bytes"] as? Int ?? 0, 0)
    XCTAssertGreaterThan(over["fresh_block_bytes_per_step"] as? Int ?? 0, under["fresh_block_bytes_per_step"] as? Int ?? .max,
                         "blocks given back are mapped afresh")
    XCTAssertEqual(over["final_loss"] as? Double, under["final_loss"] as? Double)
    XCTAssertEqual(over["peak_bytes"] as? Int, over["planned_peak_bytes"] as? Int)
    // --compute bf16: the JSON says what ran (fp32 where the CPU has no bf16); planner = ledger.
    r = try CLI.run(["bench", "train", "--input", "3x64x64", "--batch", "2", "--steps", "1", "--compute", "bf16", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let b = try json(r.stdout)
    XCTAssertEqual(b["compute"] as? String, BF16.supported ? "bf16" : "fp32")
    XCTAssertEqual(b["peak_bytes"] as? Int, b["planned_peak_bytes"] as? Int)
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x64x64", "--batch", "2", "--compute", "bf16", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try json(r.stdout)["compute"] as? String, BF16.supported ? "bf16" : "fp32")
    r = try CLI.run(["bench", "train", "--compute", "fp64"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("--compute must be fp32 or bf16"), r.stderr)
    r = try CLI.run(["bench", "conv", "--input", "4x16x16", "--out-channels", "8", "--runs", "1", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertNotNil(try json(r.stdout)["forward_gflops"])
    // Streamed: the ledger's peak is the planned one; a budget below the plan is refused up front.
    r = try CLI.run(["bench", "train", "--input", "3x128x128", "--batch", "1", "--steps", "1", "--tile", "32",
                     "--stream-blocks", "2", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let s = try json(r.stdout)
    XCTAssertEqual(s["peak_bytes"] as? Int, s["planned_peak_bytes"] as? Int)
    XCTAssertEqual(s["tiles"] as? Int, 16)
    r = try CLI.run(["bench", "train", "--input", "3x128x128", "--batch", "1", "--steps", "1", "--tile", "32",
                     "--streamed-input", "--budget", "1MiB"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("exceeds --budget"), r.stderr)
    XCTAssertFalse(r.stderr.contains("Usage:"), "a refusal, not a usage error: \(r.stderr)")
    r = try CLI.run(["bench", "train", "--input", "banana"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("3x1024x1024"), r.stderr)
  }
}

extension CLITests {
  /// Files Tessera writes are read by Python (safetensors if installed, else the numpy parser in
  /// scripts/read_safetensors.py) with the same names, shapes and values.
  func testPythonReadsCheckpoints() throws {
    let python = ProcessInfo.processInfo.environment["TESSERA_PYTHON"] ?? "python3"
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("scripts/read_safetensors.py")
    let model = Zoo.fcnLarge(classes: 10)
    model.initializeParameters(seed: 5)
    let url = dir.appendingPathComponent("model.safetensors")
    let half = Tensor(shape: [3], values: [1.5, -2, 0.25])
    try SafeTensors.write(model.stateTensors() + [("extra.f16", half.converted(to: .float16)),
                                                   ("extra.bf16", half.converted(to: .bfloat16))], to: url)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [python, script.path, url.path]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { throw XCTSkip("no \(python)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw XCTSkip("\(python) with numpy is not available") }
    let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    let tensors = try XCTUnwrap(obj["tensors"] as? [String: [String: Any]])
    for (name, param) in model.namedParameters() {
      let t = try XCTUnwrap(tensors[name], "python does not see \(name)")
      XCTAssertEqual(t["shape"] as? [Int], param.shape, name)
      let sum = param.value.toArray().reduce(0.0) { $0 + Double($1) }
      XCTAssertEqual(t["sum"] as? Double ?? .nan, sum, accuracy: 1e-3 * max(1, abs(sum)), name)
    }
    XCTAssertEqual(tensors["extra.f16"]?["sum"] as? Double, -0.25)
    XCTAssertEqual(tensors["extra.bf16"]?["sum"] as? Double, -0.25)
    XCTAssertEqual(tensors["stem.conv.weight"]?["shape"] as? [Int], [16, 3, 7, 7])
  }
}

extension CLITests {
  func testPlanChoosesStreamingWhenNothingElseFits() throws {
    // Plain needs 1,037.5 MiB at 4096², fp16 and checkpointing no less; a training run's loader holds
    // 3 batches (576 MiB) beside the step, so streaming is chosen.
    var r = try CLI.run(["plan", "--model", "fcn-large", "--classes", "10", "--input", "3x4096x4096", "--budget", "900MiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let p = try json(r.stdout)
    let chosen = try XCTUnwrap(p["chosenMode"] as? [String: Any])
    XCTAssertNotNil(chosen["streaming"] as? [String: Any], "\(chosen)")
    // within the budget less the runtime's 96 MiB (the loader's share included)
    XCTAssertLessThanOrEqual((p["modes"] as? [[String: Any]])?.first?["peakTraining"] as? Int ?? .max, (900 - 96) << 20)
    XCTAssertEqual((p["run"] as? [String: Any])?["loaderBatches"] as? Int, 3)
    // ResNet-18 at 4096² in 4.5 GiB: plain needs 6.9 GiB and streaming its stem in fp32 4.6 GiB; only
    // streaming combined with 16-bit storage of the rest fits.
    r = try CLI.run(["plan", "--model", "resnet18", "--classes", "10", "--input", "3x4096x4096", "--budget", "4.5GiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let rc = try XCTUnwrap(try json(r.stdout)["chosenMode"] as? [String: Any])
    XCTAssertEqual(rc["precision"] as? String, "fp16", "\(rc)")
    XCTAssertNotNil(rc["streaming"] as? [String: Any], "\(rc)")
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x1024x1024", "--tile", "256", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let s = try XCTUnwrap(try json(r.stdout)["streaming"] as? [String: Any])
    XCTAssertEqual(s["blocks"] as? Int, 6)
    XCTAssertEqual(s["batchNormPasses"] as? Int, 10)
    // --tile auto with a budget: the planner's tile and blocks, within the budget less the runtime's share.
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x1024x1024", "--tile", "auto", "--budget", "200MiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let a = try json(r.stdout)
    let sa = try XCTUnwrap(a["streaming"] as? [String: Any])
    XCTAssertTrue([512, 256, 128, 64].contains(sa["tile"] as? Int ?? 0), "\(sa)")
    XCTAssertLessThanOrEqual((a["bytes"] as? [String: Int])?["peakTraining"] ?? .max, (200 - 128) << 20)
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x1024x1024", "--tile", "banana"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("--tile must be a number of pixels from 1 to"), r.stderr)
  }

  func testPlanAndRF() throws {
    var r = try CLI.run(["plan", "--model", "resnet50", "--input", "3x2400x2400", "--batch", "4", "--budget", "16GiB", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let p = try json(r.stdout)
    XCTAssertEqual(p["parameters"] as? Int, 25_557_032)
    let bytes = try XCTUnwrap(p["bytes"] as? [String: Int])
    for k in ["input", "parameters", "gradients", "optimizer", "activations", "peakTraining", "peakInference"] {
      XCTAssertNotNil(bytes[k], k)
    }
    XCTAssertEqual(bytes["input"], 4 * 69_120_000)
    XCTAssertEqual(p["fits"] as? Bool, false)
    let maxBatch = try XCTUnwrap(p["maxBatch"] as? [String: Any])
    XCTAssertNotNil(maxBatch["training"])
    XCTAssertFalse((p["suggestions"] as? [Any] ?? []).isEmpty)
    let layers = try XCTUnwrap(p["layers"] as? [[String: Any]])
    XCTAssertEqual(layers.first?["name"] as? String, "conv1")
    for k in ["name", "output", "parameters", "macs", "keptBytes", "receptiveField"] { XCTAssertNotNil(layers[0][k], k) }

    // Human table: FC share for a model with an FC head, and sizes labelled.
    r = try CLI.run(["plan", "--model", "vgg16", "--input", "224x224"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stdout.contains("FC share") && r.stdout.contains("MiB"), r.stdout)

    r = try CLI.run(["rf", "--model", "vgg16", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let rf = try json(r.stdout)
    let pool5 = try XCTUnwrap((rf["layers"] as? [[String: Any]])?.first { $0["name"] as? String == "features.30" })
    XCTAssertEqual((pool5["receptiveField"] as? [String: Any])?["size"] as? [Int], [212, 212])

    // A spec file, and its shape error naming the layer.
    let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("examples")
    r = try CLI.run(["plan", "--model", examples.appendingPathComponent("tiny-resnet.yaml").path, "--input", "1024x768", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try json(r.stdout)["input"] as? [Int], [1, 1024, 768])
    r = try CLI.run(["plan", "--model", examples.appendingPathComponent("mismatch.yaml").path, "--input", "3x64x64"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("too_big"), r.stderr)

    // Bad arguments say what to type.
    r = try CLI.run(["plan", "--budget", "lots"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("8GiB"), r.stderr)
    r = try CLI.run(["plan", "--model", "nonet"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("resnet50"), r.stderr)
    r = try CLI.run(["plan", "--precision", "fp8"])
    XCTAssertNotEqual(r.status, 0)
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x256x256", "--batch", "2", "--precision", "fp16", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let half = try XCTUnwrap(try json(r.stdout)["bytes"] as? [String: Int])
    r = try CLI.run(["plan", "--model", "fcn-large", "--input", "3x256x256", "--batch", "2", "--json"])
    let full = try XCTUnwrap(try json(r.stdout)["bytes"] as? [String: Int])
    XCTAssertLessThan(half["peakTraining"]!, full["peakTraining"]!)
  }
}

extension CLITests {
  func testPreviewSplitAndBenchData() throws {
    // A folder of tiny images made by the library's own encoder.
    let data = dir.appendingPathComponent("photos")
    for (c, n) in [("cat", 5), ("dog", 4)] {
      let d = data.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<n {
        let px = [UInt8](repeating: UInt8(i * 40), count: 48 * 32 * 3)
        try JPEGEncoder.encode(px, width: 48, height: 32).write(to: d.appendingPathComponent("\(i).jpg"))
      }
    }
    let png = dir.appendingPathComponent("p.png")
    var r = try CLI.run(["preview", data.appendingPathComponent("cat/1.jpg").path, "--size", "16", "--out", png.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let p = try json(r.stdout)
    XCTAssertEqual(p["original"] as? [Int], [48, 32])
    XCTAssertEqual(p["output"] as? [Int], [16, 16])
    XCTAssertEqual(p["decodeScale"] as? Int, 2)
    XCTAssertEqual(try ImageReader().info(png).width, 16)

    let csv = dir.appendingPathComponent("split.csv")
    r = try CLI.run(["split", "--data", data.path, "--out", csv.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let counts = try XCTUnwrap(try json(r.stdout)["counts"] as? [String: [String: Int]])
    XCTAssertEqual(counts["cat"]?["test"], 2)
    XCTAssertEqual(counts["dog"]?["test"], 1)
    let first = try String(contentsOf: csv, encoding: .utf8)
    r = try CLI.run(["split", "--data", data.path, "--out", csv.path])
    XCTAssertEqual(try String(contentsOf: csv, encoding: .utf8), first, "the same seed gives the same split")
    XCTAssertEqual(try ImageDataset.manifest(csv).samples.count, 9)

    r = try CLI.run(["bench", "data", "--data", data.path, "--size", "16", "--passes", "1", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertGreaterThan(try json(r.stdout)["images_per_second"] as? Double ?? 0, 0)

    // A bad file: the error names it.
    let bad = dir.appendingPathComponent("bad.jpg")
    _ = FileManager.default.createFile(atPath: bad.path, contents: Data("nope".utf8))
    r = try CLI.run(["preview", bad.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains(bad.path), r.stderr)
  }
}

extension CLITests {
  func testPCAFitAndTransform() throws {
    let data = dir.appendingPathComponent("imgs")
    var g = SeededGenerator(seed: 2)
    for c in ["x", "y"] {
      let d = data.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<12 {
        let px = (0..<(40 * 30 * 3)).map { _ in UInt8(g.next() % 256) }
        try JPEGEncoder.encode(px, width: 40, height: 30).write(to: d.appendingPathComponent("\(i).jpg"))
      }
    }
    let out = dir.appendingPathComponent("pca.safetensors")
    var r = try CLI.run(["pca", "fit", "--data", data.path, "--size", "8", "--components", "5", "--out", out.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let j = try json(r.stdout)
    XCTAssertEqual(j["vectors"] as? Int, 24)
    XCTAssertEqual(j["dimension"] as? Int, 192)
    XCTAssertEqual(j["method"] as? String, "exact")
    XCTAssertEqual((j["explainedVarianceRatio"] as? [Double])?.count, 5)
    XCTAssertNotNil(j["componentsFor"])
    XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("pca.png").path))
    let csv = dir.appendingPathComponent("f.csv")
    r = try CLI.run(["pca", "transform", "--pca", out.path, "--data", data.path, "--out", csv.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let lines = try String(contentsOf: csv, encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(lines.count, 25)
    XCTAssertEqual(lines[0], "path,label,f1,f2,f3,f4,f5")
    // Patches, randomized.
    r = try CLI.run(["pca", "fit", "--data", data.path, "--patch", "6", "--patches-per-image", "3", "--components", "4",
                     "--method", "randomized", "--out", dir.appendingPathComponent("p.safetensors").path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try json(r.stdout)["vectors"] as? Int, 72)
    r = try CLI.run(["pca", "fit", "--data", data.path, "--out", out.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("--size") && r.stderr.contains("--patch"), r.stderr)
  }
}
