import Foundation
import SwiftProtobuf
import Tessera
import TesseraKernels

/// An ONNX file that cannot be imported, naming the file (and the node, op or tensor).
public struct ONNXError: Error, CustomStringConvertible {
  public let path: String
  public let message: String
  public init(_ path: String, _ message: String) {
    self.path = path
    self.message = message
  }
  public var description: String { "\(path): \(message)" }
}

/// An ONNX graph brought in as Tessera layers: a chain of layers, with residual joins (two branches
/// from one tensor meeting at an `Add`) as `ResidualBlock`s — what a PyTorch-exported CNN is made
/// of. The weights come from the graph's initializers (or, for `tessera forward`, from constant
/// graph inputs).
public struct ONNXModel {
  public var name: String
  public var model: Sequential
  /// The graph input that takes the image, and its declared shape (nil entries: dynamic).
  public var inputName: String
  public var inputShape: [Int?]
  public var outputName: String
  /// The graph ends with Softmax: `forward` applies it; training works on the logits before it.
  public var outputSoftmax: Bool
  public var opset: Int

  /// Ops this importer turns into layers.
  public static let supportedOps = ["Add (residual joins)", "Concat (of branches, along channels)", "AveragePool", "BatchNormalization", "Clip (ReLU, ReLU6)", "Conv", "Dropout",
                                    "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul (+ Add bias)",
                                    "MaxPool", "Mul (by a constant)", "Pad (constant 0, before Conv)", "Relu", "Reshape (to N×features)", "Sigmoid", "Softmax (last)"]

  /// Files larger than this are refused before they are read.
  public static let maxFileBytes = 2 << 30

  /// Reads and imports `url`. The image is the graph's first input that is not an initializer;
  /// `constants`: tensors for its other inputs (ONNX's own test cases feed a Conv's W as a graph
  /// input); a tensor named as the image is ignored.
  /// `channels`, `side`: the image's channels and side when the graph leaves them dynamic.
  public static func load(_ url: URL, constants: [String: Tensor] = [:], channels: Int? = nil, side: Int? = nil) throws -> ONNXModel {
    let path = url.path
    let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? -1
    guard size >= 0 else { throw ONNXError(path, "no such file") }
    guard size <= maxFileBytes else { throw ONNXError(path, "\(size) bytes is over the \(maxFileBytes)-byte limit for an ONNX file") }
    let data = try Data(contentsOf: url)
    let proto: Onnx_ModelProto
    do {
      var options = BinaryDecodingOptions()
      options.messageDepthLimit = 64
      proto = try Onnx_ModelProto(serializedBytes: data, options: options)
    } catch {
      throw ONNXError(path, "not an ONNX model (the protobuf does not parse: \(error)); a truncated or damaged file?")
    }
    guard proto.hasGraph, !proto.graph.node.isEmpty else { throw ONNXError(path, "the model has no graph (no nodes)") }
    let opset = Int(proto.opsetImport.first { $0.domain.isEmpty || $0.domain == "ai.onnx" }?.version ?? 0)
    guard opset == 0 || (7...23).contains(opset) else {
      throw ONNXError(path, "opset \(opset) of the default domain is outside what this importer reads (7–23)")
    }
    var importer = Importer(path: path, graph: proto.graph, constants: constants)
    importer.imageChannels = channels
    importer.imageSide = side
    return try importer.run(name: proto.graph.name.isEmpty ? url.deletingPathExtension().lastPathComponent : proto.graph.name, opset: opset)
  }
}

extension ONNXModel {
  /// An inference-mode forward (running statistics), with the graph's final Softmax if it has one.
  public func forward(_ x: Tensor) throws -> Tensor {
    _ = try model.outputShape(for: x.shape)
    let y = model.forward(x, training: false)
    if outputSoftmax { Self.softmaxRows(y) }
    return y
  }

  /// Softmax along the last axis of a (N, K) tensor, in place (the graph's final Softmax).
  public static func softmaxRows(_ y: Tensor) {
    guard y.rank == 2 else { return }
    let n = y.shape[0], k = y.shape[1], p = y.floats
    for i in 0..<n {
      let row = p + i * k
      var m = -Float.infinity
      for j in 0..<k { m = max(m, row[j]) }
      var sum = 0.0
      for j in 0..<k {
        row[j] = Foundation.exp(row[j] - m)
        sum += Double(row[j])
      }
      for j in 0..<k { row[j] = Float(Double(row[j]) / sum) }
    }
  }

  /// Features of the model's output (classes), for an input of `shape` (C, H, W).
  public func outputFeatures(for shape: [Int]) throws -> Int { try model.outputShape(for: [1] + shape).dropFirst().reduce(1, *) }
}

/// Tensors of an ONNX TensorProto as Tessera tensors (float32; float64/float16/int64 converted).
enum TensorData {
  static func tensor(_ t: Onnx_TensorProto, path: String) throws -> Tensor {
    if t.dataLocation == .external || !t.externalData.isEmpty {
      throw ONNXError(path, "tensor '\(t.name)' is stored in an external data file; save the model with its weights inside (onnx.save(model, path, save_as_external_data=False))")
    }
    let dims = t.dims.map(Int.init)
    guard dims.allSatisfy({ $0 >= 0 }), let count = Limits.product(dims.isEmpty ? [1] : dims), count <= Limits.maxElements else {
      throw ONNXError(path, "tensor '\(t.name)' has impossible dimensions \(dims)")
    }
    let shape = dims.isEmpty ? [1] : dims
    var values = [Float]()
    switch t.dataType {
    case 1:  // FLOAT
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 4 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) floats") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
      } else {
        guard t.floatData.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.floatData.count) values for \(count)") }
        values = t.floatData
      }
    case 11:  // DOUBLE
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 8 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) doubles") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))) } }
      } else {
        guard t.doubleData.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.doubleData.count) values for \(count)") }
        values = t.doubleData.map(Float.init)
      }
    case 7:  // INT64
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 8 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) int64") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } }
      } else {
        guard t.int64Data.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.int64Data.count) values for \(count)") }
        values = t.int64Data.map(Float.init)
      }
    default:
      throw ONNXError(path, "tensor '\(t.name)' has data type \(t.dataType); float, double and int64 tensors are read")
    }
    return Tensor(shape: shape, values: values)
  }

  /// Int64 values of a TensorProto (shapes, pads).
  static func ints(_ t: Onnx_TensorProto, path: String) throws -> [Int] {
    if t.dataType == 7 {
      if !t.rawData.isEmpty {
        let n = t.rawData.count / 8
        return t.rawData.withUnsafeBytes { raw in (0..<n).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } }
      }
      return t.int64Data.map(Int.init)
    }
    return try tensor(t, path: path).toArray().map { Int($0) }
  }
}

/// Walks the graph from its image input, turning nodes into layers.
struct Importer {
  let path: String
  let graph: Onnx_GraphProto
  var constants: [String: Tensor]
  var intConstants: [String: [Int]] = [:]
  var producers: [String: Int] = [:]
  var consumers: [String: [Int]] = [:]
  var used = Set<Int>()
  var names = [String: Int]()
  var shapes: [String: [Int]] = [:]  // (C, H, W) or (features) of tensors along the chain, batch left out
  var softmaxAtEnd = false
  /// Channels and side of the image when the graph leaves them dynamic.
  var imageChannels: Int?
  var imageSide: Int?
  /// Whether the graph fixes the image's height and width (shapes traced are then exact).
  var fixedSize = false

  init(path: String, graph: Onnx_GraphProto, constants: [String: Tensor]) {
    self.path = path
    self.graph = graph
    self.constants = constants
  }

  func fail(_ node: Onnx_NodeProto, _ message: String) -> ONNXError {
    ONNXError(path, "node '\(node.name.isEmpty ? node.output.first ?? "?" : node.name)' (\(node.opType)): \(message)")
  }

  mutating func run(name: String, opset: Int) throws -> ONNXModel {
    for t in graph.initializer {
      if t.dataType == 7 { intConstants[t.name] = try TensorData.ints(t, path: path) }
      constants[t.name] = try TensorData.tensor(t, path: path)
    }
    for (i, n) in graph.node.enumerated() {
      guard n.domain.isEmpty || n.domain == "ai.onnx" else {
        throw fail(n, "op of domain '\(n.domain)' is not supported; the supported ops are \(ONNXModel.supportedOps.joined(separator: ", "))")
      }
      for o in n.output where !o.isEmpty {
        guard producers[o] == nil else { throw ONNXError(path, "tensor '\(o)' is produced by two nodes") }
        producers[o] = i
      }
      if n.opType == "Constant" {
        guard let a = n.attribute.first(where: { $0.name == "value" }), a.hasT else { throw fail(n, "only Constant nodes with a tensor 'value' are read") }
        constants[n.output[0]] = try TensorData.tensor(a.t, path: path)
        if a.t.dataType == 7 { intConstants[n.output[0]] = try TensorData.ints(a.t, path: path) }
        used.insert(i)
        continue
      }
      for x in n.input where !x.isEmpty { consumers[x, default: []].append(i) }
    }
    // The image: the first graph input that is not an initializer; any other such input feeds
    // weights (as in ONNX's own test cases) and must be given as a constant.
    let initialized = Set(graph.initializer.map(\.name))
    let free = graph.input.filter { !initialized.contains($0.name) }
    guard let input = free.first else { throw ONNXError(path, "the graph has no input left for the image (every input is an initializer)") }
    constants[input.name] = nil
    for other in free.dropFirst() where constants[other.name] == nil {
      throw ONNXError(path, "graph input '\(other.name)' is not the image ('\(input.name)') and has no value: give it as a constant (tessera forward: a tensor of that name in --input)")
    }
    let dims = input.type.tensorType.shape.dim.map { d -> Int? in
      if case .dimValue(let v)? = d.value, v > 0 { return Int(v) }
      return nil
    }
    guard dims.count == 4 else {
      throw ONNXError(path, "input '\(input.name)' has \(dims.count) dimensions; an image input (N, C, H, W) is imported")
    }
    guard let channels = dims[1] ?? imageChannels else {
      throw ONNXError(path, "input '\(input.name)' has no fixed channel count; give the input's shape (--input C×H×W)")
    }
    fixedSize = dims[2] != nil && dims[3] != nil
    // A dynamic height or width is traced at 224 (only a Flatten of a spatial map depends on it).
    shapes[input.name] = [channels, dims[2] ?? imageSide ?? 224, dims[3] ?? imageSide ?? 224]
    guard graph.output.count == 1 else {
      throw ONNXError(path, "the graph has \(graph.output.count) outputs; one output (the class scores) is imported")
    }
    let output = graph.output[0].name
    let (layers, end) = try chain(from: input.name, stopAt: nil)
    guard end == output else {
      throw ONNXError(path, "the chain from '\(input.name)' ends at '\(end)', not at the graph output '\(output)' (a branch that does not rejoin?)")
    }
    let unused = graph.node.indices.filter { !used.contains($0) }
    guard unused.isEmpty else {
      let n = graph.node[unused[0]]
      throw fail(n, "is not on the path from the input to the output; graphs with side branches are not imported")
    }
    return ONNXModel(name: name, model: Sequential(layers), inputName: input.name, inputShape: dims, outputName: output,
                     outputSoftmax: softmaxAtEnd, opset: opset)
  }

  func isConstant(_ name: String) -> Bool { constants[name] != nil }

  /// Follows single-consumer nodes from `start`; a fork becomes a residual block (both branches must
  /// meet at one Add). Stops at `stopAt`'s Add node (returning the tensor that feeds it), at a join,
  /// or at a tensor nothing consumes.
  mutating func chain(from start: String, stopAt join: Int?) throws -> ([(String, Layer)], String) {
    var layers = [(String, Layer)]()
    var current = start
    while true {
      let next = (consumers[current] ?? []).filter { !used.contains($0) || $0 == join }
      if next.isEmpty { return (layers, current) }
      if next.count == 1 {
        let i = next[0], node = graph.node[i]
        if i == join { return (layers, current) }
        if isJoin(node) { return (layers, current) }  // a join: the caller's fork handles it
        used.insert(i)
        if let l = try layer(for: node, input: current) { layers.append((layerName(node), l)) }
        current = continueFrom ?? node.output[0]
        continueFrom = nil
        continue
      }
      // A tensor used as a weight of a node (not its data input) is computed, not a constant.
      for n in next where !isJoin(graph.node[n]) {
        if let w = graph.node[n].input.dropFirst().first(where: { !$0.isEmpty && !isConstant($0) }) {
          throw fail(graph.node[n], "its weight input '\(w)' is computed in the graph; it must be a constant (an initializer)")
        }
      }
      // A fork: branches that meet at one Add (a residual block) or Concat (a ConcatBlock).
      let joins = Set(next.compactMap { findJoin(from: $0, depth: 0) })
      guard joins.count == 1, let join = joins.first else {
        // A merge by another op (Mul, Sub, …) is named as the unsupported op it is.
        if let m = graph.node.first(where: { n in !isJoin(n) && n.input.filter { !$0.isEmpty && !isConstant($0) }.count >= 2 }) {
          throw fail(m, "op \(m.opType) is not supported (branches are joined by Add or Concat); the supported ops are \(ONNXModel.supportedOps.joined(separator: ", "))")
        }
        throw fail(graph.node[next[0]], "the branches from '\(current)' do not meet at one Add or Concat; only such joins are imported")
      }
      let joinNode = graph.node[join]
      let isAdd = joinNode.opType == "Add"
      guard !isAdd || next.count == 2 else {
        throw fail(joinNode, "an Add joins two branches; '\(current)' feeds \(next.count)")
      }
      var branches = [(layers: [(String, Layer)], end: String)]()
      for n in next {
        if n == join {
          branches.append(([], current))
          continue
        }
        let node = graph.node[n]
        used.insert(n)
        var b = [(String, Layer)]()
        if let l = try layer(for: node, input: current) { b.append((layerName(node), l)) }
        let (rest, end) = try chain(from: continueFrom ?? node.output[0], stopAt: join)
        continueFrom = nil
        guard joinNode.input.contains(end) else { throw fail(joinNode, "a branch ends at '\(end)' instead of this \(joinNode.opType)") }
        branches.append((b + rest, end))
      }
      used.insert(join)
      var out = joinNode.output[0]
      if isAdd {
        // Both inputs of the Add have the output's shape.
        guard let s0 = shapes[joinNode.input[0]], s0 == shapes[joinNode.input[1]] else {
          throw fail(joinNode, "its two inputs have different shapes (\(shapes[joinNode.input[0]] ?? []) and \(shapes[joinNode.input[1]] ?? [])); broadcasting is not imported")
        }
        shapes[out] = s0
        let (main, shortcut) = branches[0].layers.count >= branches[1].layers.count ? (branches[0].layers, branches[1].layers) : (branches[1].layers, branches[0].layers)
        var finalReLU = false
        if let c = consumers[out], c.count == 1, graph.node[c[0]].opType == "Relu" {
          finalReLU = true
          used.insert(c[0])
          let relu = graph.node[c[0]]
          shapes[relu.output[0]] = shapes[out]
          out = relu.output[0]
        }
        let block = ResidualBlock(main: Sequential(main), shortcut: shortcut.isEmpty ? nil : Sequential(shortcut), finalReLU: finalReLU)
        layers.append(((joinNode.name.isEmpty ? "block\(layers.count)" : sanitize(joinNode.name)), block))
      } else {
        // Concat: the branches in the order of its inputs, along channels.
        let axis = int(joinNode, "axis") ?? 1
        guard let s0 = shapes[current], axis == 1 || axis == -s0.count - 1 + 1 || (s0.count == 3 && axis == -3) else {
          throw fail(joinNode, "Concat along axis \(axis) is not supported (channels, axis 1, are)")
        }
        var ordered = [[(String, Layer)]]()
        for name in joinNode.input {
          guard let i = branches.firstIndex(where: { $0.end == name }) else {
            throw fail(joinNode, "input '\(name)' does not come from a branch of '\(current)'")
          }
          ordered.append(branches.remove(at: i).layers)
        }
        guard branches.isEmpty else { throw fail(joinNode, "a branch of '\(current)' does not reach this Concat") }
        let shapesIn = joinNode.input.compactMap { shapes[$0] }
        guard shapesIn.count == joinNode.input.count, shapesIn.allSatisfy({ $0.count == shapesIn[0].count && $0.dropFirst() == shapesIn[0].dropFirst() }) else {
          throw fail(joinNode, "its inputs \(shapesIn) differ in more than their channels")
        }
        var o = shapesIn[0]
        o[0] = shapesIn.reduce(0) { $0 + $1[0] }
        shapes[out] = o
        let block = ConcatBlock(branches: ordered.map { Sequential($0) })
        layers.append(((joinNode.name.isEmpty ? "concat\(layers.count)" : sanitize(joinNode.name)), block))
      }
      current = out
    }
  }

  /// An Add of two computed tensors, or a Concat of computed tensors: where branches meet.
  func isJoin(_ node: Onnx_NodeProto) -> Bool {
    let computed = node.input.filter { !$0.isEmpty && !isConstant($0) }.count
    return (node.opType == "Add" && computed == 2) || (node.opType == "Concat" && computed == node.input.count && computed >= 2)
  }

  /// Set by `layer(for:)` when a node was fused with the next (MatMul + Add): the chain goes on
  /// from the fused node's output.
  var continueFrom: String?

  /// The Add node where the branch starting at node `i` joins another, if any (following single
  /// consumers, through nested residual blocks).
  func findJoin(from i: Int, depth: Int) -> Int? {
    guard depth < 2_000 else { return nil }
    let node = graph.node[i]
    if isJoin(node) { return i }
    guard let out = node.output.first, let next = consumers[out] else { return nil }
    if next.count == 1 { return findJoin(from: next[0], depth: depth + 1) }
    // A nested fork: continue after its own join.
    let inner = Set(next.compactMap { findJoin(from: $0, depth: depth + 1) })
    guard inner.count == 1, let j = inner.first, let after = consumers[graph.node[j].output[0]], after.count == 1 else { return nil }
    return findJoin(from: after[0], depth: depth + 1)
  }

  func sanitize(_ s: String) -> String {
    String(s.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
  }

  mutating func layerName(_ node: Onnx_NodeProto) -> String {
    let base = node.name.isEmpty ? node.opType.lowercased() : sanitize(node.name)
    names[base, default: 0] += 1
    return names[base]! > 1 ? "\(base)_\(names[base]!)" : base
  }

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

  /// Zero padding of a Pad node, added to the next Conv (or AveragePool counting the padding).
  var pendingPad: (top: Int, left: Int, bottom: Int, right: Int)?

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
