import Foundation
import SwiftProtobuf
import Tessera
import TesseraKernels

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
  /// Set by `layer(for:)` when a node was fused with the next (MatMul + Add): the chain goes on
  /// from the fused node's output.
  var continueFrom: String?
  /// Zero padding of a Pad node, added to the next Conv (or AveragePool counting the padding).
  var pendingPad: (top: Int, left: Int, bottom: Int, right: Int)?

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

  /// Follows single-consumer nodes from `start`; a fork becomes a `ResidualBlock` (two branches
  /// meeting at one Add) or a `ConcatBlock` (branches meeting at one Concat). Stops at `stopAt`'s
  /// join node (returning the tensor that feeds it), at another join, or at a tensor nothing consumes.
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
}
