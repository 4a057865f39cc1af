import TesseraKernels

/// Branches applied to the same input, their outputs concatenated along channels — Inception's
/// parallel towers, DenseNet's "input and new features", a U-Net's skip joined to the upsampled
/// path. An empty branch passes the input itself. Outputs must agree in every dimension but the
/// channels (rank 4: (N, C, H, W); rank 2: (N, F)).
public final class ConcatBlock: Layer {
  public let branches: [Sequential]
  /// Channels of each branch's output, from the training forward, for backward.
  private var savedChannels: [Int]?

  public init(branches: [Sequential]) {
    precondition(branches.count >= 2, "a ConcatBlock joins at least two branches")
    self.branches = branches
  }

  public var kind: String { "ConcatBlock" }

  public var children: [(String, Layer)] { branches.enumerated().map { ("branch\($0.offset)", $0.element as Layer) } }

  func shapes(for input: [Int]) throws -> [[Int]] {
    let s = try branches.map { try $0.layers.isEmpty ? input : $0.outputShape(for: input) }
    guard let first = s.first, first.count == 4 || first.count == 2 else {
      throw ShapeError(layer: "ConcatBlock", "branches give \(s.first ?? []); (N, C, H, W) or (N, F) outputs are joined")
    }
    for b in s where b.count != first.count || b[0] != first[0] || Array(b.dropFirst(2)) != Array(first.dropFirst(2)) {
      throw ShapeError(layer: "ConcatBlock", "branch outputs \(s) differ in more than their channels")
    }
    return s
  }

  public func outputShape(for input: [Int]) throws -> [Int] {
    let s = try shapes(for: input)
    var out = s[0]
    out[1] = s.reduce(0) { $0 + $1[1] }
    return out
  }

  /// Plane size (H·W, or 1) of a branch output.
  static func plane(_ shape: [Int]) -> Int { shape.dropFirst(2).reduce(1, *) }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let outs = branches.map { $0.layers.isEmpty ? x : $0.forward(x, training: training) }
    let n = outs[0].shape[0], plane = Self.plane(outs[0].shape)
    var shape = outs[0].shape
    let channels = outs.map { $0.shape[1] }
    shape[1] = channels.reduce(0, +)
    let y = Tensor(uninitialized: shape)
    let total = shape[1] * plane
    var offset = 0
    for (o, c) in zip(outs, channels) {
      let size = c * plane
      for i in 0..<n { (y.floats + i * total + offset).update(from: o.floats + i * size, count: size) }
      offset += size
    }
    if training && BackwardRecording.isOn { savedChannels = channels }
    withExtendedLifetime(outs) {}  // held until here (the twin counts them so)
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let channels = savedChannels else { preconditionFailure("ConcatBlock.backward without a training forward") }
    savedChannels = nil
    let n = dy.shape[0], plane = Self.plane(dy.shape), total = dy.shape[1] * plane
    var dx: Tensor?
    var offset = 0
    for (b, c) in zip(branches, channels) {
      var shape = dy.shape
      shape[1] = c
      let d = Tensor(uninitialized: shape)
      let size = c * plane
      for i in 0..<n { (d.floats + i * size).update(from: dy.floats + i * total + offset, count: size) }
      offset += size
      let g = b.layers.isEmpty ? (needInputGradient ? d : nil) : b.backward(d, needInputGradient: needInputGradient)
      if let g {
        if let acc = dx { ElementwiseKernels.axpy(1, g.floats, acc.floats, count: acc.count) } else { dx = g }
      }
      withExtendedLifetime((d, g)) {}
    }
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let shapes = try self.shapes(for: x.shape)
    let outs = try branches.map { try $0.layers.isEmpty ? x : $0.planForward(x, training: training, sim) }
    let y = sim.allocate(try outputShape(for: x.shape))
    if training && BackwardRecording.isOn { sim.notes[ObjectIdentifier(self)] = shapes.map { $0[1] } }
    withExtendedLifetime(outs) {}
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let channels = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? [Int] else { return nil }
    var dx: SimTensor?
    for (b, c) in zip(branches, channels) {
      var shape = dy.shape
      shape[1] = c
      let d = sim.allocate(shape)
      let g = b.layers.isEmpty ? (needInputGradient ? d : nil) : b.planBackward(d, needInputGradient: needInputGradient, sim)
      if let g, dx == nil { dx = g }
      withExtendedLifetime((d, g)) {}
    }
    return dx
  }
}
