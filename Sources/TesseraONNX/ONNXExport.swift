import Foundation
import SwiftProtobuf
import Tessera

/// A Tessera model written as an ONNX graph (inference: running BatchNorm statistics), for ONNX
/// Runtime, TensorRT and the rest: one image input `input` (N, C, H, W; N dynamic), one output
/// `output` (the logits). BatchNorm can be folded into the convolution before it.
public enum ONNXExport {
  public struct Options {
    public var opset = 17
    /// Fold each BatchNorm that directly follows a Conv2D into the convolution's weight and bias
    /// (PyTorch's eval-mode export); otherwise BatchNormalization nodes.
    public var foldBatchNorm = false
    public init(opset: Int = 17, foldBatchNorm: Bool = false) {
      self.opset = opset
      self.foldBatchNorm = foldBatchNorm
    }
  }

  /// Opsets written: 11 (Clip's min/max as inputs) to 21.
  public static let opsets = 11...21

  public static func export(_ model: Sequential, name: String, input: [Int], options: Options = Options()) throws -> Data {
    guard opsets.contains(options.opset) else { throw ONNXError(name, "opset \(options.opset) is not written; choose \(opsets.lowerBound)–\(opsets.upperBound)") }
    let out = try model.outputShape(for: [1] + input)
    var e = Emitter(foldBatchNorm: options.foldBatchNorm)
    let last = try e.sequence(model.layers, prefix: "", input: "input")
    var m = Onnx_ModelProto()
    m.irVersion = 8
    m.producerName = "tessera"
    m.producerVersion = "1"
    var op = Onnx_OperatorSetIdProto()
    op.domain = ""
    op.version = Int64(options.opset)
    m.opsetImport = [op]
    var g = Onnx_GraphProto()
    g.name = name
    // The last node writes `output`.
    if let i = e.nodes.lastIndex(where: { $0.output.contains(last) }) {
      e.nodes[i].output = e.nodes[i].output.map { $0 == last ? "output" : $0 }
    } else {
      e.nodes.append(node("Identity", [last], ["output"], name: "output"))
    }
    g.node = e.nodes
    g.initializer = e.initializers
    g.input = [valueInfo("input", [nil] + input)]
    g.output = [valueInfo("output", [nil] + Array(out.dropFirst()))]
    m.graph = g
    return try m.serializedData()
  }

  static func valueInfo(_ name: String, _ dims: [Int?]) -> Onnx_ValueInfoProto {
    var v = Onnx_ValueInfoProto()
    v.name = name
    var t = Onnx_TypeProto.Tensor()
    t.elemType = 1
    var s = Onnx_TensorShapeProto()
    s.dim = dims.map { d in
      var x = Onnx_TensorShapeProto.Dimension()
      if let d { x.dimValue = Int64(d) } else { x.dimParam = "N" }
      return x
    }
    t.shape = s
    var ty = Onnx_TypeProto()
    ty.tensorType = t
    v.type = ty
    return v
  }

  static func node(_ op: String, _ inputs: [String], _ outputs: [String], name: String, _ attributes: [Onnx_AttributeProto] = []) -> Onnx_NodeProto {
    var n = Onnx_NodeProto()
    n.opType = op
    n.input = inputs
    n.output = outputs
    n.name = name
    n.attribute = attributes
    return n
  }

  static func ints(_ name: String, _ v: [Int]) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .ints
    a.ints = v.map(Int64.init)
    return a
  }
  static func int(_ name: String, _ v: Int) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .int
    a.i = Int64(v)
    return a
  }
  static func float(_ name: String, _ v: Float) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .float
    a.f = v
    return a
  }
  static func string(_ name: String, _ v: String) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .string
    a.s = Data(v.utf8)
    return a
  }

  static func tensor(_ name: String, _ shape: [Int], _ values: [Float]) -> Onnx_TensorProto {
    var t = Onnx_TensorProto()
    t.name = name
    t.dataType = 1
    t.dims = shape.map(Int64.init)
    var d = Data(capacity: values.count * 4)
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { d.append(contentsOf: $0) } }
    t.rawData = d
    return t
  }

  /// Padding as ONNX attributes.
  static func padding(_ p: Padding) -> [Onnx_AttributeProto] {
    switch p {
    case .valid: return [ints("pads", [0, 0, 0, 0])]
    case .same: return [string("auto_pad", "SAME_UPPER")]
    case .explicit(let t, let l, let b, let r): return [ints("pads", [t, l, b, r])]
    }
  }

  struct Emitter {
    let foldBatchNorm: Bool
    var nodes = [Onnx_NodeProto]()
    var initializers = [Onnx_TensorProto]()
    var used = Set<String>()

    init(foldBatchNorm: Bool) { self.foldBatchNorm = foldBatchNorm }

    mutating func fresh(_ base: String) -> String {
      var n = base.isEmpty ? "t" : base, k = 1
      while used.contains(n) {
        k += 1
        n = "\(base)_\(k)"
      }
      used.insert(n)
      return n
    }

    mutating func constant(_ name: String, _ shape: [Int], _ values: [Float]) -> String {
      let n = fresh(name)
      initializers.append(tensor(n, shape, values))
      return n
    }

    /// Layers one after another; a Conv2D followed by BatchNorm2D is folded when asked.
    mutating func sequence(_ layers: [(String, Layer)], prefix: String, input: String) throws -> String {
      var x = input, i = 0
      while i < layers.count {
        let (name, layer) = layers[i]
        let path = prefix.isEmpty ? name : "\(prefix).\(name)"
        if foldBatchNorm, let conv = layer as? Conv2D, i + 1 < layers.count, let bn = layers[i + 1].1 as? BatchNorm2D {
          x = try convolution(conv, path: path, input: x, folding: bn)
          if bn.fusedReLU { x = emit("Relu", [x], path + ".relu") }
          i += 2
          continue
        }
        x = try emit(layer, path: path, input: x)
        i += 1
      }
      return x
    }

    mutating func emit(_ op: String, _ inputs: [String], _ name: String, _ attributes: [Onnx_AttributeProto] = []) -> String {
      let out = fresh(name)
      nodes.append(node(op, inputs, [out], name: out, attributes))
      return out
    }

    mutating func convolution(_ c: Conv2D, path: String, input: String, folding bn: BatchNorm2D? = nil) throws -> String {
      var w = c.weight.value.toArray(), b = c.bias?.value.toArray()
      if let bn {
        let g = bn.weight.value.toArray(), beta = bn.bias.value.toArray(), mean = bn.runningMean.value.toArray(),
          v = bn.runningVariance.value.toArray()
        let per = w.count / c.outputChannels
        var nb = [Float](repeating: 0, count: c.outputChannels)
        for o in 0..<c.outputChannels {
          let s = g[o] / (v[o] + bn.epsilon).squareRoot()
          for k in 0..<per { w[o * per + k] *= s }
          nb[o] = ((b?[o] ?? 0) - mean[o]) * s + beta[o]
        }
        b = nb
      }
      var inputs = [input, constant(path + ".weight", c.weight.shape, w)]
      if let b { inputs.append(constant(path + ".bias", [c.outputChannels], b)) }
      return emit("Conv", inputs, path, [ints("kernel_shape", [c.kernelSize.height, c.kernelSize.width]),
                                          ints("strides", [c.stride.height, c.stride.width]),
                                          ints("dilations", [c.dilation.height, c.dilation.width]), int("group", c.groups)]
                    + padding(c.padding))
    }

    mutating func emit(_ layer: Layer, path: String, input x: String) throws -> String {
      switch layer {
      case let c as Conv2D:
        return try convolution(c, path: path, input: x)
      case let bn as BatchNorm2D:
        let out = emit("BatchNormalization", [x, constant(path + ".weight", [bn.channels], bn.weight.value.toArray()),
                                              constant(path + ".bias", [bn.channels], bn.bias.value.toArray()),
                                              constant(path + ".running_mean", [bn.channels], bn.runningMean.value.toArray()),
                                              constant(path + ".running_var", [bn.channels], bn.runningVariance.value.toArray())],
                       path, [float("epsilon", bn.epsilon), float("momentum", bn.momentum)])
        return bn.fusedReLU ? emit("Relu", [out], path + ".relu") : out
      case is ReLU:
        return emit("Relu", [x], path)
      case let c as ConstantScale:
        let f = c.factors.value.toArray()
        return emit("Mul", [x, constant(path + ".factors", f.count == 1 ? [] : [f.count, 1, 1], f)], path)
      case is Sigmoid:
        return emit("Sigmoid", [x], path)
      case is ReLU6:
        return emit("Clip", [x, constant(path + ".min", [], [0]), constant(path + ".max", [], [6])], path)
      case let l as LeakyReLU:
        return emit("LeakyRelu", [x], path, [float("alpha", l.slope)])
      case let p as Pool2D:
        var a = [ints("kernel_shape", [p.kernelSize.0, p.kernelSize.1]), ints("strides", [p.stride.0, p.stride.1])] + padding(p.padding)
        if case .average(let include) = p.mode { a.append(int("count_include_pad", include ? 1 : 0)) }
        return emit(p.mode == .max ? "MaxPool" : "AveragePool", [x], path, a)
      case is GlobalAvgPool2D:
        // Tessera's global pooling gives (N, C): ONNX's (N, C, 1, 1), then flattened.
        let g = emit("GlobalAveragePool", [x], path)
        return emit("Flatten", [g], path + ".flatten", [int("axis", 1)])
      case is Flatten:
        return emit("Flatten", [x], path, [int("axis", 1)])
      case let fc as Linear:
        var inputs = [x, constant(path + ".weight", fc.weight.shape, fc.weight.value.toArray())]
        if let b = fc.bias { inputs.append(constant(path + ".bias", b.shape, b.value.toArray())) }
        return emit("Gemm", inputs, path, [int("transB", 1)])
      case is Dropout:
        return x  // inference: identity
      case let r as ResidualBlock:
        let main = try sequence(r.main.layers, prefix: path, input: x)
        let short = try r.shortcut.map { try sequence($0.layers, prefix: path + ".downsample", input: x) } ?? x
        let sum = emit("Add", [main, short], path + ".add")
        return r.finalReLU ? emit("Relu", [sum], path + ".relu") : sum
      case let c as ConcatBlock:
        var outs = [String]()
        for (i, b) in c.branches.enumerated() {
          outs.append(b.layers.isEmpty ? x : try sequence(b.layers, prefix: "\(path).branch\(i)", input: x))
        }
        return emit("Concat", outs, path, [int("axis", 1)])
      case let s as Sequential:
        return try sequence(s.layers, prefix: path, input: x)
      case let s as Checkpointed:
        return try sequence(s.segment.layers, prefix: path, input: x)
      case let s as Streamed:
        return try sequence(s.segment.layers, prefix: path, input: x)
      default:
        throw ONNXError(path, "layer kind \(layer.kind) has no ONNX export yet")
      }
    }
  }
}
