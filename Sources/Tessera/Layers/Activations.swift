import TesseraKernels

/// An element-wise activation whose backward needs only its output: ReLU, LeakyReLU (slope ≥ 0)
/// and ReLU6 differ only in their two kernels. Keeps its output for backward.
public class OutputActivation: Layer, RecordingHolder {
  private var savedOutput: Tensor?
  func takeRecording() -> Any? { defer { savedOutput = nil }; return savedOutput }
  func restoreRecording(_ recording: Any?) { savedOutput = recording as? Tensor }
  public init() {}

  /// y = f(x)
  func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int) { fatalError("abstract") }
  /// dx = f'(x) · dy, f' read off the output y.
  func gradient(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ count: Int) {
    fatalError("abstract")
  }

  public var kind: String { String(describing: type(of: self)) }
  public func outputShape(for input: [Int]) throws -> [Int] { input }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    apply(x.floats, y.floats, x.count)
    if training && BackwardRecording.isOn { savedOutput = ActivationStorage.keep(y) }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let kept = savedOutput else { preconditionFailure("\(kind).backward without a training forward") }
    savedOutput = nil
    guard needInputGradient else { return nil }
    let y = ActivationStorage.restore(kept)
    let dx = Tensor(uninitialized: y.shape)
    gradient(y.floats, dy.floats, dx.floats, y.count)
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let y = sim.allocate(x.shape)
    if training && BackwardRecording.isOn { sim.keep(self, [ActivationStorage.keep(y, sim)]) }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let y = sim.take(self)
    guard needInputGradient else { return nil }
    let restored = y.first.flatMap { ActivationStorage.restore($0, sim) }
    let dx = sim.allocate(dy.shape)
    withExtendedLifetime((y, restored)) {}  // held until here, as the real pass holds them
    return dx
  }
}

/// max(x, 0).
public final class ReLU: OutputActivation {
  override func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.leakyRelu(x, y, count: n)
  }
  override func gradient(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.leakyReluBackward(y: y, dy: dy, dx: dx, count: n)
  }
}

/// min(max(x, 0), 6), as MobileNetV2.
public final class ReLU6: OutputActivation {
  override func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.clamp(x, y, count: n, lo: 0, hi: 6)
  }
  override func gradient(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.clampBackward(y: y, dy: dy, dx: dx, count: n, lo: 0, hi: 6)
  }
}

/// 1 / (1 + e^(−x)) (ONNX Sigmoid; gates, binary heads).
public final class Sigmoid: OutputActivation {
  override func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.sigmoid(x, y, count: n)
  }
  override func gradient(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.sigmoidBackward(y: y, dy: dy, dx: dx, count: n)
  }
}

/// x < 0 ? slope·x : x, slope ≥ 0 (default 0.01, as PyTorch).
public final class LeakyReLU: OutputActivation {
  public let slope: Float
  public init(slope: Float = 0.01) {
    precondition(slope >= 0, "LeakyReLU slope must be ≥ 0")
    self.slope = slope
  }
  override func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.leakyRelu(x, y, count: n, slope: slope)
  }
  override func gradient(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ n: Int) {
    ElementwiseKernels.leakyReluBackward(y: y, dy: dy, dx: dx, count: n, slope: slope)
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

  /// The mask generator's state: `Checkpointed` restores it so a recomputed forward draws the same masks.
  public var generatorState: SeededGenerator {
    get { rng }
    set { rng = newValue }
  }

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
    if training && BackwardRecording.isOn { savedShape = x.shape }
    return x.reshaped([x.shape[0], x.count / max(x.shape[0], 1)])
  }
  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let s = savedShape else { preconditionFailure("Flatten.backward without a training forward") }
    savedShape = nil
    return needInputGradient ? dy.reshaped(s) : nil
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let s = try outputShape(for: x.shape)
    if training && BackwardRecording.isOn { sim.notes[ObjectIdentifier(self)] = x.shape }
    return x.reshaped(s)
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let s = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? [Int], needInputGradient else { return nil }
    return dy.reshaped(s)
  }
}
