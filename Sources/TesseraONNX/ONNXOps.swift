import Foundation
import Tessera
import TesseraKernels

/// Node by node: attributes, constants, padding, and the layer each supported op becomes.
extension Importer {
  func ints(_ node: Onnx_NodeProto, _ name: String) -> [Int]? {
    node.attribute.first { $0.name == name }.map { $0.ints.map(Int.init) }
  }
  func int(_ node: Onnx_NodeProto, _ name: String) -> Int? {
    node.attribute.first { $0.name == name }.map { Int($0.i) }
  }
  func float(_ node: Onnx_NodeProto, _ name: String) -> Float? {
    node.attribute.first { $0.name == name }.map { $0.f }
  }
  func string(_ node: Onnx_NodeProto, _ name: String) -> String? {
    node.attribute.first { $0.name == name }.map { String(decoding: $0.s, as: UTF8.self) }
  }

  func constant(_ node: Onnx_NodeProto, _ index: Int, _ what: String) throws -> Tensor {
    guard index < node.input.count, !node.input[index].isEmpty else { throw fail(node, "has no \(what)") }
    guard let t = constants[node.input[index]] else {
      throw fail(node, "its \(what) '\(node.input[index])' is computed in the graph; it must be a constant (an initializer)")
    }
    return t
  }

  /// Attributes this importer does not read make the node refused (not silently wrong).
  func refuseUnknown(_ node: Onnx_NodeProto, known: Set<String>) throws {
    for a in node.attribute where !known.contains(a.name) {
      throw fail(node, "attribute '\(a.name)' is not supported")
    }
  }

  /// (top, left, bottom, right) padding of a Conv or pool node.
  func padding(_ node: Onnx_NodeProto, kernel: [Int], stride: [Int], dilation: [Int], input: [Int]? = nil) throws -> Padding {
    switch string(node, "auto_pad") ?? "NOTSET" {
    case "SAME_LOWER":
      // The odd pad at the top/left: explicit for the traced size (a fixed input size is needed).
      guard let s = input, s.count == 3, fixedSize else { throw fail(node, "auto_pad SAME_LOWER needs a fixed input height and width in the graph") }
      func total(_ n: Int, _ k: Int, _ st: Int, _ d: Int) -> Int { max(0, ((n + st - 1) / st - 1) * st + (k - 1) * d + 1 - n) }
      let ph = total(s[1], kernel[0], stride[0], dilation[0]), pw = total(s[2], kernel[1], stride[1], dilation[1])
      return .explicit(top: ph - ph / 2, left: pw - pw / 2, bottom: ph / 2, right: pw / 2)
    case "NOTSET":
      let p = ints(node, "pads") ?? [0, 0, 0, 0]
      guard p.count == 4, p.allSatisfy({ $0 >= 0 && $0 <= 1 << 16 }) else { throw fail(node, "pads \(p) are not 4 non-negative values") }
      return .explicit(top: p[0], left: p[1], bottom: p[2], right: p[3])
    case "VALID": return .valid
    case "SAME_UPPER": return .same
    default: throw fail(node, "auto_pad \(string(node, "auto_pad")!) is not supported (NOTSET, VALID and SAME_UPPER are)")
    }
  }

  /// `padding` with a pending Pad added (explicit pads only).
  mutating func withPendingPad(_ p: Padding, _ node: Onnx_NodeProto) throws -> Padding {
    guard let q = pendingPad else { return p }
    pendingPad = nil
    switch p {
    case .valid: return .explicit(top: q.top, left: q.left, bottom: q.bottom, right: q.right)
    case .explicit(let t, let l, let b, let r): return .explicit(top: t + q.top, left: l + q.left, bottom: b + q.bottom, right: r + q.right)
    case .same: throw fail(node, "a Pad before a node with auto_pad SAME_UPPER is not supported")
    }
  }

  mutating func layer(for node: Onnx_NodeProto, input: String) throws -> Layer? {
    guard let shape = shapes[input] else { throw fail(node, "the shape of its input '\(input)' is unknown") }
    let out = node.output.first ?? ""
    func set(_ s: [Int]) { shapes[out] = s }
    if pendingPad != nil && node.opType != "Conv" && !(node.opType == "AveragePool" && (int(node, "count_include_pad") ?? 0) == 1) {
      throw fail(node, "a Pad is imported only right before a Conv (or an AveragePool counting the padding)")
    }
    switch node.opType {
    case "Pad":
      try refuseUnknown(node, known: ["mode", "pads", "value"])
      guard (string(node, "mode") ?? "constant") == "constant" else { throw fail(node, "mode \(string(node, "mode")!) is not supported (constant is)") }
      var value = float(node, "value") ?? 0
      if node.input.count > 2, !node.input[2].isEmpty { value = try constant(node, 2, "constant_value").toArray().first ?? 0 }
      guard value == 0 else { throw fail(node, "padding with \(value) is not supported (zero padding is)") }
      let p = node.input.count > 1 && !node.input[1].isEmpty ? (intConstants[node.input[1]] ?? []) : (ints(node, "pads") ?? [])
      guard p.count == 8, p[0] == 0, p[1] == 0, p[4] == 0, p[5] == 0, p.allSatisfy({ $0 >= 0 && $0 <= 1 << 16 }),
            node.input.count < 4 || node.input[3].isEmpty else {
        throw fail(node, "pads \(p) are not non-negative height/width padding of an (N, C, H, W) tensor")
      }
      guard let c = consumers[out], c.count == 1 else { throw fail(node, "a Pad must feed exactly one node") }
      pendingPad = (p[2], p[3], p[6], p[7])
      set([shape[0], shape[1] + p[2] + p[6], shape[2] + p[3] + p[7]])
      return nil
    case "Conv":
      try refuseUnknown(node, known: ["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])
      let w = try constant(node, 1, "weight W")
      guard w.rank == 4, w.shape.allSatisfy({ $0 >= 1 }) else { throw fail(node, "W has shape \(w.shape); 2-D convolutions with a non-empty weight are imported") }
      let group = int(node, "group") ?? 1
      let kernel = ints(node, "kernel_shape") ?? [w.shape[2], w.shape[3]]
      let stride = ints(node, "strides") ?? [1, 1], dilation = ints(node, "dilations") ?? [1, 1]
      guard kernel == [w.shape[2], w.shape[3]], stride.count == 2, dilation.count == 2, stride.allSatisfy({ $0 >= 1 }), dilation.allSatisfy({ $0 >= 1 }) else {
        throw fail(node, "kernel_shape/strides/dilations \(kernel)/\(stride)/\(dilation) do not fit W \(w.shape)")
      }
      guard group >= 1, shape[0] % group == 0, w.shape[1] * group == shape[0], w.shape[0] % group == 0 else {
        throw fail(node, "W \(w.shape) with group \(group) does not take \(shape[0]) input channels")
      }
      // Shapes: a Pad before this node was traced into `shape`; the Conv sees the unpadded input.
      let padded = pendingPad
      let pad = try withPendingPad(try padding(node, kernel: kernel, stride: stride, dilation: dilation,
                                               input: padded == nil ? shape : nil), node)
      let hasBias = node.input.count > 2 && !node.input[2].isEmpty
      let conv = Conv2D(inputChannels: shape[0], outputChannels: w.shape[0], kernelSize: (kernel[0], kernel[1]), stride: (stride[0], stride[1]),
                        padding: pad, dilation: (dilation[0], dilation[1]), groups: group, bias: hasBias)
      assign(conv.weight, w)
      if hasBias {
        let b = try constant(node, 2, "bias B")
        guard b.count == w.shape[0] else { throw fail(node, "B has \(b.count) values for \(w.shape[0]) channels") }
        assign(conv.bias!, b)
      }
      let unpadded = padded.map { [shape[0], shape[1] - $0.top - $0.bottom, shape[2] - $0.left - $0.right] } ?? shape
      set(Array(try conv.outputShape(for: [1] + unpadded).dropFirst()))
      return conv
    case "BatchNormalization":
      try refuseUnknown(node, known: ["epsilon", "momentum", "spatial", "training_mode"])
      guard (int(node, "training_mode") ?? 0) == 0, node.output.count == 1 || node.output.dropFirst().allSatisfy({ $0.isEmpty }) else {
        throw fail(node, "training-mode BatchNormalization (several outputs) is not imported; export the model in eval mode")
      }
      let c = shape[0]
      guard c >= 1, shape.count == 3 else { throw fail(node, "input shape \(shape) is not (C, H, W)") }
      let bn = BatchNorm2D(channels: c, epsilon: float(node, "epsilon") ?? 1e-5, momentum: float(node, "momentum") ?? 0.9)
      for (i, p, what) in [(1, bn.weight, "scale"), (2, bn.bias, "B"), (3, bn.runningMean, "mean"), (4, bn.runningVariance, "var")] {
        let t = try constant(node, i, what)
        guard t.count == c else { throw fail(node, "\(what) has \(t.count) values for \(c) channels") }
        assign(p, t)
      }
      set(shape)
      return bn
    case "Relu":
      set(shape)
      return ReLU()
    case "Sigmoid":
      set(shape)
      return Sigmoid()
    case "Mul":
      // By a constant: a scalar, or one factor per channel ((C, 1, 1), (1, C, 1, 1) or (C)).
      guard let k = node.input.firstIndex(where: { isConstant($0) }), node.input.count == 2 else {
        throw fail(node, "Mul of two computed tensors is not supported (Mul by a constant is)")
      }
      let f = constants[node.input[k]]!
      let dims = f.shape.filter { $0 != 1 }
      guard f.count == 1 || (dims.count == 1 && dims[0] == shape[0] && f.shape.count <= 4 && f.shape.firstIndex(of: dims[0]) == f.shape.count - min(f.shape.count, shape.count)) else {
        throw fail(node, "Mul by a constant of shape \(f.shape) on \(shape) is not supported (a scalar or one factor per channel is)")
      }
      set(shape)
      return ConstantScale(factors: f.toArray())
    case "LeakyRelu":
      let alpha = float(node, "alpha") ?? 0.01
      guard alpha >= 0, alpha.isFinite else { throw fail(node, "alpha \(alpha) is not supported (a slope ≥ 0 is)") }
      set(shape)
      return LeakyReLU(slope: alpha)
    case "Clip":
      var lo = float(node, "min") ?? -.infinity, hi = float(node, "max") ?? .infinity
      if node.input.count > 1, !node.input[1].isEmpty { lo = try constant(node, 1, "min").toArray()[0] }
      if node.input.count > 2, !node.input[2].isEmpty { hi = try constant(node, 2, "max").toArray()[0] }
      set(shape)
      if lo == 0 && hi == 6 { return ReLU6() }
      if lo == 0 && hi == .infinity { return ReLU() }
      throw fail(node, "Clip(\(lo), \(hi)) is not supported; Clip(0, 6) (ReLU6) and Clip(0, ∞) (ReLU) are")
    case "MaxPool", "AveragePool":
      try refuseUnknown(node, known: ["kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad", "dilations", "storage_order"])
      guard let k = ints(node, "kernel_shape"), k.count == 2, k[0] == k[1], k[0] >= 1 else {
        throw fail(node, "kernel_shape \(ints(node, "kernel_shape") ?? []) is not square; square pooling windows are imported")
      }
      let s = ints(node, "strides") ?? [1, 1]
      guard s.count == 2, s[0] == s[1], s[0] >= 1 else { throw fail(node, "strides \(s) are not equal; equal strides are imported") }
      guard (ints(node, "dilations") ?? [1, 1]) == [1, 1] else { throw fail(node, "dilated pooling is not supported") }
      let padded = pendingPad
      var pad = try withPendingPad(try padding(node, kernel: k, stride: s, dilation: [1, 1], input: shape), node)
      if (int(node, "ceil_mode") ?? 0) == 1 {
        // Ceil mode: the last window may start inside the input and run past it — extra padding at the
        // bottom/right that neither max pooling nor an average that leaves padding out ever reads.
        guard node.opType == "MaxPool" || (int(node, "count_include_pad") ?? 0) == 0 else {
          throw fail(node, "ceil_mode with count_include_pad 1 is not supported")
        }
        guard case .explicit(let t, let l, let b, let r) = pad else { throw fail(node, "ceil_mode with auto_pad is not supported") }
        func extra(_ n: Int, _ lo: Int, _ hi: Int) -> Int {
          let floor = (n + lo + hi - k[0]) / s[0] + 1, ceil = (n + lo + hi - k[0] + s[0] - 1) / s[0] + 1
          // ONNX (as PyTorch) drops a last window that would start in the end padding.
          let windows = (ceil - 1) * s[0] >= n + lo ? ceil - 1 : ceil
          // Just enough to fit the last window: the padding stays smaller than the window.
          return windows > floor ? max(0, (windows - 1) * s[0] + k[0] - (n + lo + hi)) : 0
        }
        let (h, w) = (shape[1] - (padded.map { $0.top + $0.bottom } ?? 0), shape[2] - (padded.map { $0.left + $0.right } ?? 0))
        pad = .explicit(top: t, left: l, bottom: b + extra(h, t, b), right: r + extra(w, l, r))
      }
      let mode: Pool2D.Mode = node.opType == "MaxPool" ? .max : .average(countIncludePad: (int(node, "count_include_pad") ?? 0) == 1)
      let pool = Pool2D(mode, kernelSize: k[0], stride: s[0], padding: pad)
      let unpadded = padded.map { [shape[0], shape[1] - $0.top - $0.bottom, shape[2] - $0.left - $0.right] } ?? shape
      set(Array(try pool.outputShape(for: [1] + unpadded).dropFirst()))
      return pool
    case "GlobalAveragePool":
      // Tessera's global pooling gives (N, C); only a flatten may follow (as in classifiers).
      if let c = consumers[out], c.count == 1, ["Flatten", "Reshape"].contains(graph.node[c[0]].opType) {
        set([shape[0]])
        return GlobalAvgPool2D()
      }
      throw fail(node, "GlobalAveragePool is imported when a Flatten or Reshape follows it (a classifier head)")
    case "Flatten":
      guard (int(node, "axis") ?? 1) == 1 else { throw fail(node, "Flatten with axis \(int(node, "axis")!) is not supported (axis 1 is)") }
      set([shape.reduce(1, *)])
      return shape.count == 1 ? nil : Flatten()
    case "Reshape":
      let target = intConstants[node.input.count > 1 ? node.input[1] : ""] ?? []
      guard target.count == 2, target[0] == 0 || target[0] == 1 || target[0] == -1, target[1] == -1 || target[1] == shape.reduce(1, *) else {
        throw fail(node, "Reshape to \(target) is not supported; a reshape to (N, features) (e.g. [0, -1]) is")
      }
      set([shape.reduce(1, *)])
      return shape.count == 1 ? nil : Flatten()
    case "Gemm":
      try refuseUnknown(node, known: ["alpha", "beta", "transA", "transB"])
      guard (float(node, "alpha") ?? 1) == 1, (float(node, "beta") ?? 1) == 1, (int(node, "transA") ?? 0) == 0 else {
        throw fail(node, "Gemm with alpha/beta other than 1 or transA is not supported")
      }
      guard shape.count == 1 else { throw fail(node, "Gemm on a (N, C, H, W) input; a Flatten must come first") }
      var w = try constant(node, 1, "weight B")
      guard w.rank == 2, w.shape.allSatisfy({ $0 >= 1 }) else { throw fail(node, "weight has shape \(w.shape)") }
      if (int(node, "transB") ?? 0) == 0 { w = w.transposed2D() }
      guard w.shape[1] == shape[0] else { throw fail(node, "weight \(w.shape) does not take \(shape[0]) features") }
      let hasBias = node.input.count > 2 && !node.input[2].isEmpty
      let fc = Linear(inputFeatures: w.shape[1], outputFeatures: w.shape[0], bias: hasBias)
      assign(fc.weight, w)
      if hasBias {
        let b = try constant(node, 2, "bias C")
        guard b.count == w.shape[0] else { throw fail(node, "bias has \(b.count) values for \(w.shape[0]) outputs (broadcasting is not imported)") }
        assign(fc.bias!, b)
      }
      set([w.shape[0]])
      return fc
    case "MatMul":
      guard shape.count == 1 else { throw fail(node, "MatMul on a (N, C, H, W) input; a Flatten must come first") }
      let w = try constant(node, 1, "weight")
      guard w.rank == 2, w.shape[0] == shape[0], w.shape[1] >= 1 else { throw fail(node, "weight \(w.shape) does not take \(shape[0]) features") }
      // A following Add of a constant vector is the bias.
      var bias: Tensor?
      if let c = consumers[out], c.count == 1, graph.node[c[0]].opType == "Add" {
        let add = graph.node[c[0]]
        if let k = add.input.first(where: { isConstant($0) }), let b = constants[k], b.count == w.shape[1] {
          bias = b
          used.insert(c[0])
          shapes[add.output[0]] = [w.shape[1]]
          continueFrom = add.output[0]
        }
      }
      let fc = Linear(inputFeatures: w.shape[0], outputFeatures: w.shape[1], bias: bias != nil)
      assign(fc.weight, w.transposed2D())
      if let b = bias { assign(fc.bias!, b) }
      set([w.shape[1]])
      return fc
    case "Dropout":
      set(shape)
      return nil  // inference identity; training a fine-tune adds its own regularisation if asked
    case "Identity":
      set(shape)
      return nil
    case "Softmax":
      guard let c = consumers[out], !c.isEmpty else {
        softmaxAtEnd = true
        set(shape)
        return nil
      }
      throw fail(node, "Softmax is imported only as the graph's last node")
    default:
      throw fail(node, "op \(node.opType) is not supported; the supported ops are \(ONNXModel.supportedOps.joined(separator: ", "))")
    }
  }
}

/// A parameter takes an imported tensor's values (same element count).
func assign(_ p: Parameter, _ t: Tensor) {
  p.value = Tensor(shape: p.shape, values: t.toArray(), category: .parameter)
}

extension Tensor {
  /// (a, b) → (b, a).
  func transposed2D() -> Tensor {
    let a = shape[0], b = shape[1]
    let out = Tensor(uninitialized: [b, a])
    let s = floats, d = out.floats
    for i in 0..<a { for j in 0..<b { d[j * a + i] = s[i * b + j] } }
    return out
  }
}
