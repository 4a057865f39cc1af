import TesseraKernels

/// A shape a layer cannot take, naming the layer and what it expected.
public struct ShapeError: Error, CustomStringConvertible, Equatable {
  public var layer: String
  public var message: String
  public init(layer: String, _ message: String) {
    self.layer = layer
    self.message = message
  }
  public var description: String { layer.isEmpty ? message : "\(layer): \(message)" }
}

/// What a parameter is, which decides how it is initialised.
public enum ParameterRole: Sendable, Equatable {
  /// A conv or linear weight with this many inputs per output (He-normal init).
  case weight(fanIn: Int)
  case bias, scale, shift
  /// BatchNorm running statistics: buffers saved with the weights, never trained.
  case runningMean, runningVariance
  /// A fixed tensor (e.g. a PCA projection): saved with the weights, never trained or re-initialised.
  case constant
}

/// A named tensor of a model: its value and, for trainable ones, a gradient that `backward`
/// accumulates into. Storage is allocated on first use, so a model can be built and planned
/// (shapes only) without holding its weights; fresh values are the role's default (ones for scales
/// and running variances, zeros otherwise) until `initializeParameters` or `load` fills them.
public final class Parameter {
  public let shape: [Int]
  public let role: ParameterRole
  private var _value: Tensor?
  public private(set) var grad: Tensor?

  public init(shape: [Int], role: ParameterRole) {
    self.shape = shape
    self.role = role
  }

  public convenience init(_ value: Tensor, role: ParameterRole) {
    self.init(shape: value.shape, role: role)
    _value = value
  }

  public var value: Tensor {
    get {
      if let v = _value { return v }
      let t = Tensor(zeros: shape, category: .parameter)
      if role == .scale || role == .runningVariance { t.floats.update(repeating: 1, count: t.count) }
      _value = t
      return t
    }
    set {
      precondition(newValue.shape == shape, "parameter of shape \(shape) cannot take \(newValue.shape)")
      _value = newValue
    }
  }

  /// Elements in the tensor.
  public var count: Int { shape.reduce(1, *) }
  /// Whether storage has been allocated yet.
  public var isMaterialized: Bool { _value != nil }
  public var trainable: Bool { role != .runningMean && role != .runningVariance && role != .constant }

  /// The gradient buffer, allocated zero on first use.
  public var gradient: UnsafeMutablePointer<Float> {
    if grad == nil { grad = Tensor(zeros: shape, category: .gradient) }
    return grad!.floats
  }

  public func zeroGradient() {
    if let g = grad { g.floats.update(repeating: 0, count: g.count) }
  }

  /// Frees the gradient buffer.
  public func dropGradient() { grad = nil }

  /// Frees the value and the gradient (a pipeline rank's parameters of the other stages); reading
  /// `value` again gives the role's fresh default.
  public func releaseValue() {
    _value = nil
    grad = nil
  }
}

/// Whether a training-mode forward keeps what backward needs. `Checkpointed` turns it off while it
/// runs its segment forward the first time (batch statistics are still used) and back on to
/// recompute the segment in backward.
public enum BackwardRecording {
  nonisolated(unsafe) public private(set) static var isOn = true

  public static func without<T>(_ body: () throws -> T) rethrows -> T {
    let old = isOn
    isOn = false
    defer { isOn = old }
    return try body()
  }
}

/// A layer whose training forward's recording — what its backward reads — can be taken out and put
/// back, so that `Streamed` can hold several tiles' recordings at once (`Streamed.keptTiles`).
/// The layers a streamed segment may hold conform.
protocol RecordingHolder: Layer {
  /// The recording, taken out (the layer holds none after).
  func takeRecording() -> Any?
  /// A recording `takeRecording` gave, put back for the next backward.
  func restoreRecording(_ recording: Any?)
}

/// How tensors kept for backward are stored: fp32, or 16-bit (fp16 / bf16) to halve what a step
/// keeps. Compute stays fp32 (weights, gradients, accumulation); a kept tensor is converted back to
/// fp32 for the backward pass that reads it. Gradients never pass through 16 bits, so no loss
/// scaling is needed.
public enum StoragePrecision: String, Sendable, CaseIterable {
  case fp32, fp16, bf16

  public var dtype: DType {
    switch self {
    case .fp32: .float32
    case .fp16: .float16
    case .bf16: .bfloat16
    }
  }
  public var bytes: Int { self == .fp32 ? 4 : 2 }
}

/// The precision layers keep their tensors in (process-wide; set before a step).
public enum ActivationStorage {
  nonisolated(unsafe) public static var precision = StoragePrecision.fp32

  /// The tensor to keep for backward.
  static func keep(_ t: Tensor) -> Tensor {
    precision == .fp32 ? t : t.converted(to: precision.dtype, category: .activation)
  }

  /// A kept tensor as fp32 for backward.
  static func restore(_ t: Tensor) -> Tensor {
    t.dtype == .float32 ? t : t.converted(to: .float32, category: .activation)
  }

  /// Dry-run twins: the kept tensor, and the fp32 copy backward makes of it (nil for fp32).
  static func keep(_ t: SimTensor, _ sim: MemorySimulation) -> SimTensor {
    precision == .fp32 ? t : sim.allocate(t.shape, bytesPerElement: precision.bytes)
  }

  static func restore(_ t: SimTensor, _ sim: MemorySimulation) -> SimTensor? {
    t.bytes == t.shape.reduce(1, *) * 4 ? nil : sim.allocate(t.shape)
  }
}

/// A network layer with its forward and backward pass side by side.
///
/// `forward(_:training:)` in training mode keeps what backward needs (and nothing in inference
/// mode); `backward` consumes it, accumulates parameter gradients and returns the input gradient
/// when asked for it. Layers are used one forward, one backward at a time.
public protocol Layer: AnyObject {
  /// The output shape for an input shape, or a `ShapeError` saying what does not fit.
  func outputShape(for input: [Int]) throws -> [Int]
  func forward(_ x: Tensor, training: Bool) -> Tensor
  func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor?
  /// This layer's own parameters, named relative to it (`weight`, `bias`, `running_mean`…).
  var ownParameters: [(String, Parameter)] { get }
  /// Named sub-layers, in execution order.
  var children: [(String, Layer)] { get }
  /// A short type name for tables (`Conv2D`, `BatchNorm2D`…).
  var kind: String { get }
  /// A wrapper whose name adds nothing to its children's parameter names (`Checkpointed`).
  var transparent: Bool { get }

  /// The dry-run twin of `forward`: the same allocations, workspaces and kept tensors, simulated
  /// (see `MemorySimulation`). Throws the `ShapeError` `outputShape` would.
  func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor
  /// The dry-run twin of `backward`.
  func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor?
}

extension Layer {
  public var ownParameters: [(String, Parameter)] { [] }
  public var children: [(String, Layer)] { [] }
  public var kind: String { String(describing: type(of: self)) }
  public var transparent: Bool { false }

  /// Every parameter and buffer with its stable dotted name (`stage2.conv1.weight`), in a fixed order.
  public func namedParameters(prefix: String = "") -> [(String, Parameter)] {
    var out = ownParameters.map { (prefix + $0.0, $0.1) }
    for (name, child) in children {
      out += child.namedParameters(prefix: child.transparent ? prefix : prefix + name + ".")
    }
    return out
  }

  public var parameterCount: Int { namedParameters().filter { $0.1.trainable }.reduce(0) { $0 + $1.1.count } }

  /// Fills weights (He-normal, std = √(2 / fanIn)), zeros biases and shifts, ones scales and
  /// running variances, zeros running means — all from `seed`, in name order.
  public func initializeParameters(seed: UInt64) {
    var rng = SeededGenerator(seed: seed)
    for (_, p) in namedParameters() {
      let v = p.value.floats, n = p.value.count
      switch p.role {
      case .weight(let fanIn):
        let std = (2.0 / Float(max(fanIn, 1))).squareRoot()
        for i in 0..<n { v[i] = rng.nextNormal() * std }
      case .bias, .shift, .runningMean: v.update(repeating: 0, count: n)
      case .scale, .runningVariance: v.update(repeating: 1, count: n)
      case .constant: continue
      }
    }
  }

  public func zeroGradients() { for (_, p) in namedParameters() { p.zeroGradient() } }
}

@inline(__always) func expectRank(_ shape: [Int], _ rank: Int, _ layer: String) throws {
  guard shape.count == rank else {
    throw ShapeError(layer: layer, "expects a rank-\(rank) input, got \(shape)")
  }
}
