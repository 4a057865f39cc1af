import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraONNX
import TesseraPlanner

struct ExportCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "export",
    abstract: "Write a model as ONNX (inference graph) for ONNX Runtime, TensorRT and the rest.",
    discussion: prose("""
      The graph takes `input` (N, C, H, W; N dynamic) and gives `output` (the logits), with running
      BatchNorm statistics; --fold-bn folds each BatchNorm that follows a convolution into it (as
      PyTorch's eval export). A run (--run) exports its best checkpoint at its image size; otherwise
      --model with --weights (without them, the seeded initialisation of `tessera step`). The result
      imports back (`--model out.onnx`).
      """))

  @Option(name: .customLong("run"), help: "A run folder from `tessera train`.") var runFolder: String?
  @Option(help: "A zoo model or a model-spec file (without --run).") var model: String?
  @Option(help: "Weights for --model (safetensors).") var weights: String?
  @Option(help: "Classes for a zoo --model (default 10).") var classes: Int?
  @Option(help: "The input's C×H×W recorded in the graph (default: the run's, else 3x224x224); N stays dynamic.") var input: String?
  @Option(help: "Where to write the ONNX file.") var onnx: String
  @Option(help: "ONNX opset (11–21).") var opset = 17
  @Flag(help: "Fold BatchNorm into the convolution before it.") var foldBn = false
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws {
    guard (runFolder == nil) != (model == nil) else { throw ValidationError("give --run DIR or --model M (with --weights W), not both") }
    try checkRange(opset, ONNXExport.opsets, "--opset")
    if let c = classes { try checkRange(c, 1...(1 << 20), "--classes") }
  }

  func run() throws {
    try global.apply()
    let net: Sequential, shape: [Int], name: String
    if let r = runFolder {
      let (n, _, pipeline) = try TrainedModelOptions.parse(["--run", r]).load()
      net = n
      shape = try input.map { try parseInput($0, defaultChannels: pipeline.channels) } ?? [pipeline.channels, pipeline.height, pipeline.width]
      name = URL(fileURLWithPath: r).lastPathComponent
    } else {
      let m = model!
      guard !ModelLoader.isPretrained(m) else { throw ValidationError("--model is already ONNX; give a zoo model or a spec file") }
      let loaded = try ModelLoader.load(m, classes: classes ?? 10)
      net = loaded.model
      if let w = weights { try net.load(from: URL(fileURLWithPath: w)) } else { net.initializeParameters(seed: 0) }
      shape = try parseInput(input ?? "\(loaded.channels)x224x224", defaultChannels: loaded.channels)
      name = loaded.name
    }
    let data: Data
    do {
      data = try ONNXExport.export(net, name: name, input: shape, options: .init(opset: opset, foldBatchNorm: foldBn))
    } catch let e as ONNXError {
      throw CLIError("cannot export: \(e.path): \(e.message)")
    }
    do { try AtomicFile.write(data, to: URL(fileURLWithPath: onnx)) } catch {
      throw CLIError("\(onnx): cannot write (\(error.localizedDescription))")
    }
    if json {
      printJSON(["out": onnx, "bytes": data.count, "opset": opset, "foldBatchNorm": foldBn, "input": shape])
    } else {
      print("wrote \(onnx): \(name) on (N)×\(shape.map(String.init).joined(separator: "×")), opset \(opset)\(foldBn ? ", BatchNorm folded" : ""), \(ByteSize.format(data.count))")
    }
  }
}
