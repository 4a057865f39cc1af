import TesseraKernels

/// max(x, 0). Keeps its output for backward.
public final class ReLU: Layer {
  private var savedOutput: Tensor?
  public init() {}
  public func outputShape(for input: [Int]) throws -> [Int] { input }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    ElementwiseKernels.leakyRelu(x.floats, y.floats, count: x.count)
    if training { savedOutput = y }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let y = savedOutput else { preconditionFailure("ReLU.backward without a training forward") }
    savedOutput = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: y.shape)
    ElementwiseKernels.leakyReluBackward(y: y.floats, dy: dy.floats, dx: dx.floats, count: y.count)
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let y = sim.allocate(x.shape)
    if training { sim.keep(self, [y]) }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let y = sim.take(self)
    guard needInputGradient else { return nil }
    let dx = sim.allocate(dy.shape)
    withExtendedLifetime(y) {}  // held until here, as the real pass holds it
    return dx
  }
}

/// min(max(x, 0), 6), as MobileNetV2. Keeps its output for backward.
public final class ReLU6: Layer {
  private var savedOutput: Tensor?
  public init() {}
  public func outputShape(for input: [Int]) throws -> [Int] { input }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    ElementwiseKernels.clamp(x.floats, y.floats, count: x.count, lo: 0, hi: 6)
    if training { savedOutput = y }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let y = savedOutput else { preconditionFailure("ReLU6.backward without a training forward") }
    savedOutput = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: y.shape)
    ElementwiseKernels.clampBackward(y: y.floats, dy: dy.floats, dx: dx.floats, count: y.count, lo: 0, hi: 6)
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let y = sim.allocate(x.shape)
    if training { sim.keep(self, [y]) }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let y = sim.take(self)
    guard needInputGradient else { return nil }
    let dx = sim.allocate(dy.shape)
    withExtendedLifetime(y) {}  // held until here, as the real pass holds it
    return dx
  }
}

/// x < 0 ? slope·x : x, slope ≥ 0 (default 0.01, as PyTorch). Keeps its output for backward.
public final class LeakyReLU: Layer {
  public let slope: Float
  private var savedOutput: Tensor?
  public init(slope: Float = 0.01) {
    precondition(slope >= 0, "LeakyReLU slope must be ≥ 0")
    self.slope = slope
  }
  public func outputShape(for input: [Int]) throws -> [Int] { input }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    ElementwiseKernels.leakyRelu(x.floats, y.floats, count: x.count, slope: slope)
    if training { savedOutput = y }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let y = savedOutput else { preconditionFailure("LeakyReLU.backward without a training forward") }
    savedOutput = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: y.shape)
    ElementwiseKernels.leakyReluBackward(y: y.floats, dy: dy.floats, dx: dx.floats, count: y.count, slope: slope)
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let y = sim.allocate(x.shape)
    if training { sim.keep(self, [y]) }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let y = sim.take(self)
    guard needInputGradient else { return nil }
    let dx = sim.allocate(dy.shape)
    withExtendedLifetime(y) {}  // held until here, as the real pass holds it
    return dx
  }
}

/// Zeroes each value with probability `rate` in training and scales the rest by 1 / (1 − rate);
/// the identity in inference. The mask is not stored: backward regenerates it from the seed it
/// was drawn with.
public final class Dropout: Layer {
  public let rate: Float
  private var rng: SeededGenerator
  private var savedSeed: UInt64?

  public init(rate: Float, seed: UInt64 = 0) {
    precondition(rate >= 0 && rate < 1, "dropout rate must be in [0, 1)")
    self.rate = rate
    rng = SeededGenerator(seed: seed)
  }
  public func outputShape(for input: [Int]) throws -> [Int] { input }

  func applyMask(seed: UInt64, _ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    var g = SeededGenerator(seed: seed)
    let keep = 1 / (1 - rate)
    for i in 0..<count { dst[i] = g.nextUniform() < rate ? 0 : src[i] * keep }
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    guard training, rate > 0 else {
      y.floats.update(from: x.floats, count: x.count)
      return y
    }
    let seed = rng.next()
    applyMask(seed: seed, x.floats, y.floats, count: x.count)
    savedSeed = seed
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    let seed = savedSeed
    savedSeed = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: dy.shape)
    if let s = seed { applyMask(seed: s, dy.floats, dx.floats, count: dy.count) } else {
      dx.floats.update(from: dy.floats, count: dy.count)
    }
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    sim.allocate(x.shape)
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    needInputGradient ? sim.allocate(dy.shape) : nil
  }
}

/// (N, d1, d2, …) → (N, d1·d2·…).
public final class Flatten: Layer {
  private var savedShape: [Int]?
  public init() {}
  public func outputShape(for input: [Int]) throws -> [Int] {
    guard input.count >= 1 else { throw ShapeError(layer: "Flatten", "needs a batch dimension") }
    return [input[0], input.dropFirst().reduce(1, *)]
  }
  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    if training { savedShape = x.shape }
    return x.reshaped([x.shape[0], x.count / max(x.shape[0], 1)])
  }
  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let s = savedShape else { preconditionFailure("Flatten.backward without a training forward") }
    savedShape = nil
    return needInputGradient ? dy.reshaped(s) : nil
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let s = try outputShape(for: x.shape)
    if training { sim.notes[ObjectIdentifier(self)] = x.shape }
    return x.reshaped(s)
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let s = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? [Int], needInputGradient else { return nil }
    return dy.reshaped(s)
  }
}
