import Foundation
import Tessera
import TesseraKernels
import TesseraONNX
import TesseraPlanner
import TestSupport
import XCTest

/// Imported ONNX graphs against ONNX Runtime (graphs made by scripts/onnx_reference.py with onnx's
/// own helper; scripts/setup_peers.sh installs onnx and onnxruntime — the tests skip without them).
final class ONNXTests: TemporaryDirectoryTestCase {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
  static let script = root.appendingPathComponent("scripts/onnx_reference.py").path

  static let python: String? = {
    var candidates = [root.appendingPathComponent(".venv-peers/bin/python").path, "/usr/bin/python3"]
    if let p = ProcessInfo.processInfo.environment["TESSERA_PYTHON"] { candidates.insert(p, at: 0) }
    return candidates.first { p in
      FileManager.default.isExecutableFile(atPath: p) && (try? run(p, ["-c", "import onnx, onnxruntime"]))?.0 == 0
    }
  }()

  static func run(_ exe: String, _ args: [String]) throws -> (Int32, String) { try runProgram(exe, args) }

  func make(_ what: String) throws -> URL {
    guard let py = Self.python else { throw XCTSkip("onnx and onnxruntime are not installed (scripts/setup_peers.sh installs them)") }
    let d = dir.appendingPathComponent(what)
    let (status, text) = try Self.run(py, [Self.script, what, d.path])
    XCTAssertEqual(status, 0, text)
    return d
  }

  /// The chain (every single-input op), the residual network and ReLU6-as-Clip equal ONNX Runtime's
  /// outputs (relative 1e-4 of the largest output).
  func testImportedGraphsEqualONNXRuntime() throws {
    let d = try make("make")
    for name in ["chain", "residual", "relu6", "smooth", "resnet18", "branches"] {
      let m = try ONNXModel.load(d.appendingPathComponent("\(name).onnx"))
      let input = try SafeTensors.read(d.appendingPathComponent("\(name).input.safetensors"))
      let ort = try SafeTensors.read(d.appendingPathComponent("\(name).ort.safetensors"))
      let x = try XCTUnwrap(input.tensors[m.inputName], name)
      let ours = try m.forward(x).toArray()
      let theirs = try XCTUnwrap(ort.tensors[m.outputName], name).toArray()
      XCTAssertEqual(ours.count, theirs.count, name)
      let scale = max(theirs.map { abs($0) }.max() ?? 1, 1e-6)
      let worst = zip(ours, theirs).map { abs($0 - $1) }.max() ?? 1
      XCTAssertLessThanOrEqual(worst, 1e-4 * scale, "\(name): ours \(ours.prefix(6)) vs ONNX Runtime \(theirs.prefix(6))")
    }
    // The residual graph became two residual blocks (identity and projection shortcuts).
    let r = try ONNXModel.load(d.appendingPathComponent("residual.onnx"))
    let blocks = r.model.layers.compactMap { $0.1 as? ResidualBlock }
    XCTAssertEqual(blocks.map { $0.shortcut == nil }, [true, false])
    XCTAssertEqual(blocks.map(\.finalReLU), [true, true])
    XCTAssertTrue(try ONNXModel.load(d.appendingPathComponent("chain.onnx")).outputSoftmax)
    // Towers and the dense join became ConcatBlocks (three branches; an identity and a conv).
    let b = try ONNXModel.load(d.appendingPathComponent("branches.onnx"))
    XCTAssertEqual(b.model.layers.compactMap { ($0.1 as? ConcatBlock)?.branches.map(\.layers.count) }, [[2, 1, 2], [0, 1]])
  }

  /// Every imported graph exported again runs on ONNX Runtime to the same outputs, and imports
  /// back to them (Concat, Sigmoid, a folded Pad, residual joins, a final Softmax dropped from the
  /// exported logits and reapplied by the comparison).
  func testImportedGraphsExportAndRunOnONNXRuntime() throws {
    let d = try make("make")
    for name in ["chain", "residual", "relu6", "branches"] {
      let m = try ONNXModel.load(d.appendingPathComponent("\(name).onnx"))
      let x = try XCTUnwrap(SafeTensors.read(d.appendingPathComponent("\(name).input.safetensors")).tensors[m.inputName])
      let logits = try m.model.predict(x).toArray()
      let url = dir.appendingPathComponent("\(name).exported.onnx")
      for fold in [false, true] {
        try ONNXExport.export(m.model, name: name, input: Array(x.shape.dropFirst()), options: .init(foldBatchNorm: fold)).write(to: url)
        let input = dir.appendingPathComponent("in.safetensors"), out = dir.appendingPathComponent("out.safetensors")
        try SafeTensors.write([("input", x)], to: input)
        let (status, text) = try Self.run(Self.python!, [Self.script, "run", url.path, input.path, out.path])
        XCTAssertEqual(status, 0, text)
        let ort = try XCTUnwrap(SafeTensors.read(out).tensors["output"]).toArray()
        let back = try ONNXModel.load(url).model.predict(x).toArray()
        let scale = max(logits.map { abs($0) }.max() ?? 1, 1e-3)
        XCTAssertLessThanOrEqual(zip(ort, logits).map { abs($0 - $1) }.max() ?? 1, 1e-4 * scale, "\(name) fold \(fold): ONNX Runtime")
        XCTAssertLessThanOrEqual(zip(back, logits).map { abs($0 - $1) }.max() ?? 1, 1e-5 * scale, "\(name) fold \(fold): re-imported")
      }
    }
  }

  /// torchvision's ResNet-18 as an ONNX graph plans exactly as the zoo's: parameters, MACs and the
  /// training and inference peaks to the byte.
  func testImportedResNet18PlansAsTheZoos() throws {
    let d = try make("make")
    let m = try ONNXModel.load(d.appendingPathComponent("resnet18.onnx"))
    let zoo = try XCTUnwrap(Zoo.model("resnet18", classes: 1000))
    let a = try Planner.plan(m.model, name: "onnx", input: [3, 224, 224], batch: 2)
    let b = try Planner.plan(zoo, name: "zoo", input: [3, 224, 224], batch: 2)
    XCTAssertEqual(a.parameters, b.parameters)
    XCTAssertEqual(a.parameters, 11_689_512)
    XCTAssertEqual(a.macs, b.macs)
    XCTAssertEqual(a.peakTrainingBytes, b.peakTrainingBytes)
    XCTAssertEqual(a.layers.count, b.layers.count)
    // The zoo nests each stage in a Sequential, whose frame holds the stage's input and its last block's
    // output while the next block runs; the imported graph is flat. With BatchNorm folded into the
    // convolutions at inference, the inference peak sits inside a stage, so it equals the flattened zoo's.
    var flat = [(String, Layer)]()
    for (n, l) in zoo.layers {
      if let stage = l as? Sequential { flat += stage.layers.map { ("\(n).\($0.0)", $0.1) } } else { flat.append((n, l)) }
    }
    let c = try Planner.plan(Sequential(flat), name: "flat zoo", input: [3, 224, 224], batch: 2)
    XCTAssertEqual(a.peakInferenceBytes, c.peakInferenceBytes)
    XCTAssertLessThanOrEqual(a.peakInferenceBytes, b.peakInferenceBytes)
  }

  /// Training an imported graph: its backward against finite differences (input and every weight),
  /// on the residual network without its ReLUs (with them, activations a hair from zero make the
  /// differences themselves wrong by a few per cent: measured, channel by channel, while writing this).
  func testGradientsOfAnImportedGraph() throws {
    let d = try make("make")
    let m = try ONNXModel.load(d.appendingPathComponent("smooth.onnx"))
    XCTAssertEqual(m.model.layers.compactMap { $0.1 as? ResidualBlock }.count, 2)
    checkGradients(m.model, input: randomTensor([2, 3, 16, 16], seed: 3), h: 1e-2, samples: 16, tolerance: 1e-2)
  }

  func testBadGraphsAreRefusedWithClearErrors() throws {
    let d = try make("bad")
    func refused(_ name: String, _ expected: [String]) {
      XCTAssertThrowsError(try ONNXModel.load(d.appendingPathComponent("\(name).onnx")), name) { e in
        let text = "\(e)"
        XCTAssert(text.contains("\(name).onnx"), "\(name): the error names the file: \(text)")
        for x in expected { XCTAssert(text.contains(x), "\(name): '\(x)' missing from: \(text)") }
      }
    }
    refused("unknown_op", ["weird", "op Sin is not supported", "Conv", "BatchNormalization"])
    refused("concat_axis", ["Concat along axis 2"])
    refused("mul", ["op Mul is not supported"])
    refused("attribute", ["attribute 'unknown_attr' is not supported"])
    refused("computed_weight", ["computed in the graph"])
    refused("external", ["external data file"])
    refused("cycle", ["not at the graph output"])
    refused("truncated", ["does not parse"])
    refused("garbage", ["does not parse"])
    refused("absurd", ["impossible dimensions"])
    XCTAssertThrowsError(try ONNXModel.load(dir.appendingPathComponent("missing.onnx"))) { XCTAssert("\($0)".contains("no such file"), "\($0)") }
  }
}
