import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraONNX

struct ForwardCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "forward",
    abstract: "An inference-mode forward (running statistics) on tensors from safetensors, outputs to safetensors.",
    discussion: prose("""
      The hook for comparing with any other runtime. --input holds one tensor per graph input, named
      as the graph names them (a one-input model also takes `input`); for an ONNX model, the first
      graph input that is not an initializer is the image and any other graph input (a Conv's W in
      ONNX's own test cases) is taken from --input as a constant. --out gets each output under its
      name and the first also as `output`. Zoo and spec models read `input` and write `output`;
      without --weights they get the seeded initialisation of `tessera step`.
      """))

  @Option(help: "A zoo model, a model-spec file or an ONNX file.") var model: String
  @Option(help: "Weights to load (safetensors, names as the model's parameters); an ONNX model has its own.") var weights: String?
  @Option(help: "safetensors file with the input tensor(s).") var input: String
  @Option(help: "Where to write the outputs (safetensors).") var out: String
  @Option(help: "Classes of a zoo model (default 10; an ONNX model keeps its own unless given).") var classes: Int?
  @Option(help: "Seed of the initialisation when a zoo or spec model has no --weights.") var seed: UInt64 = 0
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws { if let c = classes { try checkRange(c, 1...(1 << 20), "--classes") } }

  func run() throws {
    try global.apply()
    compute.apply()
    let file = try SafeTensors.read(URL(fileURLWithPath: input))
    var tensors = [String: Tensor]()
    for n in file.names {
      let t = file.tensors[n]!
      try Limits.check(t.shape, "\(input): tensor '\(n)'")
      tensors[n] = t.dtype == .float32 ? t : t.converted(to: .float32, category: .data)
    }
    let t0 = DispatchTime.now().uptimeNanoseconds
    var outputs = [(String, Tensor)]()
    if ModelLoader.isPretrained(model) {
      let m = try ONNXModel.load(URL(fileURLWithPath: model), constants: tensors)
      var net = m.model
      if let k = classes { net = try ModelLoader.replaceClassifier(net, classes: k, channels: m.inputShape[1] ?? 3, path: model) }
      if let w = weights { try net.load(from: URL(fileURLWithPath: w)) }
      let x = try image(tensors, named: m.inputName)
      let y = try predict(net, x)
      if m.outputSoftmax { ONNXModel.softmaxRows(y) }
      outputs = [(m.outputName, y)] + (m.outputName == "output" ? [] : [("output", y)])
    } else {
      let x = try image(tensors, named: "input")
      let net = try ModelLoader.load(model, classes: classes ?? 10, inputChannels: x.shape[1]).model
      if let w = weights { try net.load(from: URL(fileURLWithPath: w)) } else { net.initializeParameters(seed: seed) }
      outputs = [("output", try predict(net, x))]
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    try SafeTensors.write(outputs, metadata: ["model": model, "format": "tessera-forward"], to: URL(fileURLWithPath: out))
    if json {
      printJSON(["out": out, "seconds": seconds, "outputs": outputs.map { ["name": $0.0, "shape": $0.1.shape] as [String: Any] }])
    } else {
      print("wrote " + outputs.map { "\($0.0) \($0.1.shape.map(String.init).joined(separator: "×"))" }.joined(separator: ", ") + " to \(out)")
    }
  }

  /// The image tensor: by its graph name, or `input` for a one-input model.
  func image(_ tensors: [String: Tensor], named name: String) throws -> Tensor {
    guard let x = tensors[name] ?? tensors["input"] else {
      throw CLIError("\(input): no tensor '\(name)'\(name == "input" ? "" : " (or 'input')") for the model's image; it holds \(tensors.keys.sorted().joined(separator: ", "))")
    }
    guard x.rank == 4, x.shape.allSatisfy({ $0 >= 1 }) else { throw CLIError("\(input): the image '\(name)' has shape \(x.shape); (N, C, H, W) is needed") }
    if let bad = (0..<x.count).first(where: { !x.floats[$0].isFinite }) {
      throw CLIError("\(input): the image holds \(x.floats[bad].isNaN ? "NaN" : "infinity") at element \(bad)")
    }
    return x
  }

  /// Any output shape (a graph may end in a feature map), running statistics, nothing kept.
  func predict(_ net: Sequential, _ x: Tensor) throws -> Tensor {
    do { _ = try net.outputShape(for: x.shape) } catch { throw CLIError("\(input): input \(x.shape) does not fit \(model): \(error)") }
    return net.forward(x, training: false)
  }
}
