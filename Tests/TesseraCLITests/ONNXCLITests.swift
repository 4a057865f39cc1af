import Foundation
import Tessera
import TesseraData
import TestSupport
import XCTest

/// `--model model.onnx` as a user runs it: forward beside ONNX Runtime, plan, fine-tuning with
/// another class count, and errors that name the node and the op.
final class ONNXCLITests: TemporaryDirectoryTestCase {
  func graphs() throws -> URL {
    let py = ReportCLITests.root.appendingPathComponent(".venv-peers/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: py), (try? ReportCLITests.run(py, ["-c", "import onnx, onnxruntime"]))?.status == 0 else {
      throw XCTSkip("onnx and onnxruntime are not installed (scripts/setup_peers.sh installs them)")
    }
    let d = dir.appendingPathComponent("onnx")
    let script = ReportCLITests.root.appendingPathComponent("scripts/onnx_reference.py").path
    for what in ["make", "bad"] {
      let r = try ReportCLITests.run(py, [script, what, d.path])
      XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }
    return d
  }

  func maxDifference(_ a: URL, _ an: String, _ b: URL, _ bn: String) throws -> Float {
    let x = try XCTUnwrap(SafeTensors.read(a).tensors[an]).toArray(), y = try XCTUnwrap(SafeTensors.read(b).tensors[bn]).toArray()
    XCTAssertEqual(x.count, y.count)
    return zip(x, y).map { abs($0 - $1) }.max() ?? .infinity
  }

  func testForwardPlanAndFineTuneAnONNXModel() throws {
    let d = try graphs()
    // forward: every output under its graph name and as `output`, equal to ONNX Runtime.
    for (name, output) in [("chain", "probabilities"), ("residual", "output"), ("conv_w_input", "y")] {
      let out = dir.appendingPathComponent("\(name).ours.safetensors")
      let r = try CLI.run(["forward", "--model", d.appendingPathComponent("\(name).onnx").path, "--input",
                           d.appendingPathComponent("\(name).input.safetensors").path, "--out", out.path, "--json"])
      XCTAssertEqual(r.status, 0, r.stderr)
      XCTAssertLessThan(try maxDifference(out, output, d.appendingPathComponent("\(name).ort.safetensors"), output), 1e-4, name)
      XCTAssertEqual(try maxDifference(out, output, out, "output"), 0)
    }
    // A weight fed as a graph input must be given.
    let only = dir.appendingPathComponent("x.safetensors")
    try SafeTensors.write([("x", try XCTUnwrap(SafeTensors.read(d.appendingPathComponent("conv_w_input.input.safetensors")).tensors["x"]))], to: only)
    var r = try CLI.run(["forward", "--model", d.appendingPathComponent("conv_w_input.onnx").path, "--input", only.path, "--out", dir.appendingPathComponent("o.safetensors").path])
    XCTAssert(r.status != 0 && r.stderr.contains("graph input 'W'"), r.stderr)
    // plan: the imported ResNet-18 is the zoo's.
    r = try CLI.run(["plan", "--model", d.appendingPathComponent("resnet18.onnx").path, "--input", "3x224x224", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let plan = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    r = try CLI.run(["plan", "--model", "resnet18", "--input", "3x224x224", "--json"])
    let zoo = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(plan["parameters"] as? Int, 11_689_512)
    XCTAssertEqual(plan["macs"] as? Int, zoo["macs"] as? Int)
    XCTAssertEqual((plan["bytes"] as? [String: Any])?["peakTraining"] as? Int, (zoo["bytes"] as? [String: Any])?["peakTraining"] as? Int)
    // Fine-tuning on 2 classes: the 4-way classifier is replaced, the rest trains from the imported
    // weights; eval and predict read the run.
    let data = try TrainCLITests.makeData(in: dir)
    let run = dir.appendingPathComponent("run")
    r = try CLI.run(["train", "--model", d.appendingPathComponent("residual.onnx").path, "--data", data.path, "--image-size", "16",
                     "--epochs", "2", "--batch", "4", "--lr", "0.02", "--out", run.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssert(r.stderr.contains("replaced for 2 classes"), r.stderr)
    r = try CLI.run(["eval", "--run", run.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    r = try CLI.run(["predict", "--run", run.path, data.appendingPathComponent("red/0.jpg").path])
    XCTAssertEqual(r.status, 0, r.stderr)
  }

  /// export → ONNX Runtime equals `tessera forward` for fcn-large, resnet18 and mobilenet_v2 (runs
  /// trained an epoch, so BatchNorm statistics are not the initial ones), BatchNorm folded and not;
  /// the exported file imports back to the same outputs.
  func testExportRunsOnONNXRuntimeAndImportsBack() throws {
    let d = try graphs()
    let py = ReportCLITests.root.appendingPathComponent(".venv-peers/bin/python").path
    let script = ReportCLITests.root.appendingPathComponent("scripts/onnx_reference.py").path
    let data = try TrainCLITests.makeData(in: dir)
    let x = dir.appendingPathComponent("x.safetensors")
    try SafeTensors.write([("input", randomTensor([2, 3, 32, 32], seed: 11))], to: x)
    for model in ["fcn-large", "resnet18", "mobilenet_v2"] {
      let run = dir.appendingPathComponent("run-\(model)")
      var r = try CLI.run(["train", "--model", model, "--data", data.path, "--image-size", "32", "--epochs", "1", "--batch", "8", "--lr", "0.01",
                           "--out", run.path])
      XCTAssertEqual(r.status, 0, r.stderr)
      let ours = dir.appendingPathComponent("\(model).ours.safetensors")
      r = try CLI.run(["forward", "--model", model, "--classes", "2", "--weights", run.appendingPathComponent("best.safetensors").path,
                       "--input", x.path, "--out", ours.path])
      XCTAssertEqual(r.status, 0, r.stderr)
      for fold in [false, true] {
        let onnx = dir.appendingPathComponent("\(model)\(fold ? "-folded" : "").onnx")
        r = try CLI.run(["export", "--run", run.path, "--onnx", onnx.path, "--json"] + (fold ? ["--fold-bn"] : []))
        XCTAssertEqual(r.status, 0, r.stderr)
        let ort = dir.appendingPathComponent("\(model)\(fold).ort.safetensors")
        let t = try ReportCLITests.run(py, [script, "run", onnx.path, x.path, ort.path])
        XCTAssertEqual(t.status, 0, t.stdout + t.stderr)
        let scale = try XCTUnwrap(SafeTensors.read(ours).tensors["output"]).toArray().map { abs($0) }.max() ?? 1
        XCTAssertLessThan(try maxDifference(ort, "output", ours, "output"), 1e-4 * max(scale, 1), "\(model) fold \(fold): ONNX Runtime vs tessera forward")
        // Round trip: the exported file imported back.
        let back = dir.appendingPathComponent("\(model)\(fold).back.safetensors")
        r = try CLI.run(["forward", "--model", onnx.path, "--input", x.path, "--out", back.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertLessThan(try maxDifference(back, "output", ours, "output"), 1e-4 * max(scale, 1), "\(model) fold \(fold): re-imported")
      }
    }
    _ = d
  }

  /// An imported graph streams and checkpoints as a zoo model: `tessera step` with the first two
  /// blocks streamed in tiles, or with √n checkpoints, gives the plain step's loss and gradients.
  func testImportedGraphStreamsAndCheckpointsExactly() throws {
    let d = try graphs()
    let batch = dir.appendingPathComponent("b.safetensors")
    try SafeTensors.write([("input", randomTensor([2, 3, 32, 32], seed: 5)), ("labels", .labels([1, 3], dtype: .int64))], to: batch)
    func step(_ extra: [String]) throws -> [String: Tensor] {
      let out = dir.appendingPathComponent(UUID().uuidString + ".safetensors")
      let r = try CLI.run(["step", "--model", d.appendingPathComponent("residual.onnx").path, "--batch", batch.path, "--out", out.path] + extra)
      XCTAssertEqual(r.status, 0, r.stderr)
      return try SafeTensors.read(out).tensors
    }
    let plain = try step([])
    for extra in [["--tile", "16", "--stream-blocks", "2"], ["--checkpointing", "sqrt"]] {
      let other = try step(extra)
      XCTAssertEqual(Set(other.keys), Set(plain.keys))
      for (k, v) in plain {
        let a = v.toArray(), b = other[k]!.toArray()
        let scale = max(a.map { abs($0) }.max() ?? 0, 1e-3)
        XCTAssertLessThanOrEqual(zip(a, b).map { abs($0 - $1) }.max() ?? 1, 1e-5 * max(1, scale), "\(extra) \(k)")
      }
    }
  }

  func testBadONNXFilesFailCleanly() throws {
    let d = try graphs()
    for (name, expected) in [("unknown_op", "op Sin is not supported"), ("concat_axis", "Concat along axis 2"), ("mul", "op Mul"), ("attribute", "unknown_attr"),
                             ("external", "external data file"), ("truncated", "does not parse"), ("garbage", "does not parse"),
                             ("absurd", "impossible dimensions"), ("computed_weight", "computed in the graph")] {
      let r = try CLI.run(["plan", "--model", d.appendingPathComponent("\(name).onnx").path, "--input", "2x8x8"])
      XCTAssertEqual(r.status, 1, "\(name): \(r.stderr)")
      XCTAssert(r.stderr.contains("\(name).onnx") && r.stderr.contains(expected), "\(name): \(r.stderr)")
      XCTAssertFalse(r.stderr.contains("Fatal error"), name)
    }
  }
}
