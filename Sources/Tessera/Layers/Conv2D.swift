import TesseraKernels

/// How a convolution or pooling window is padded.
public enum Padding: Sendable, Equatable {
  /// No padding.
  case valid
  /// TensorFlow's `same`: out = ceil(in / stride), the odd extra pad at the bottom/right.
  case same
  case explicit(top: Int, left: Int, bottom: Int, right: Int)

  public static func symmetric(_ p: Int) -> Padding { .explicit(top: p, left: p, bottom: p, right: p) }

  /// (top, left, bottom, right) for an input of h×w.
  public func amounts(inHeight h: Int, inWidth w: Int, kernel: (Int, Int), stride: (Int, Int), dilation: (Int, Int))
    -> (Int, Int, Int, Int)
  {
    switch self {
    case .valid: return (0, 0, 0, 0)
    case let .explicit(t, l, b, r): return (t, l, b, r)
    case .same:
      let ph = ConvGeometry.samePadding(input: h, kernel: kernel.0, stride: stride.0, dilation: dilation.0)
      let pw = ConvGeometry.samePadding(input: w, kernel: kernel.1, stride: stride.1, dilation: dilation.1)
      return (ph.before, pw.before, ph.after, pw.after)
    }
  }
}

/// 2-D convolution. x: (N, C, H, W) → y: (N, K, H', W'); weight (K, C / groups, kh, kw).
///
/// ```swift
/// let conv = Conv2D(inputChannels: 3, outputChannels: 16, kernelSize: 7, stride: 2, padding: .same, bias: false)
/// ```
public final class Conv2D: Layer, RecordingHolder {
  public let inputChannels: Int, outputChannels: Int
  public let kernelSize: (height: Int, width: Int)
  public let stride: (height: Int, width: Int)
  public let dilation: (height: Int, width: Int)
  public let padding: Padding
  public let groups: Int
  public let weight: Parameter
  public let bias: Parameter?
  private var saved: (x: Tensor?, g: ConvGeometry)?
  func takeRecording() -> Any? { defer { saved = nil }; return saved }
  func restoreRecording(_ recording: Any?) { saved = recording as? (x: Tensor?, g: ConvGeometry) }
  /// A recording whose kept input was let go, to be read again before backward (`Streamed`'s
  /// stashed tiles: the segment's first layer keeps the tile's crop, which its source can give again).
  struct InputToRead { let g: ConvGeometry }
  /// The recording without its kept input, or nil when it keeps none.
  func droppingInput(_ recording: Any?) -> InputToRead? {
    guard let (x, g) = recording as? (x: Tensor?, g: ConvGeometry), x != nil else { return nil }
    return InputToRead(g: g)
  }
  /// The recording `droppingInput` gave, with its input x (the same tensor the forward had) back.
  func recording(_ r: InputToRead, input x: Tensor) -> Any? { (x: Optional(ActivationStorage.keep(x)), g: r.g) }
  /// false: a training forward keeps no input and backward computes only the input gradient (set
  /// by `Streamed` on the passes where this layer's weight gradient is not gathered).
  public var accumulatesWeightGradient = true

  public convenience init(
    inputChannels: Int, outputChannels: Int, kernelSize: Int, stride: Int = 1, padding: Padding = .valid,
    dilation: Int = 1, groups: Int = 1, bias: Bool = true
  ) {
    self.init(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: (kernelSize, kernelSize),
              stride: (stride, stride), padding: padding, dilation: (dilation, dilation), groups: groups, bias: bias)
  }

  public init(
    inputChannels: Int, outputChannels: Int, kernelSize: (Int, Int), stride: (Int, Int) = (1, 1),
    padding: Padding = .valid, dilation: (Int, Int) = (1, 1), groups: Int = 1, bias: Bool = true
  ) {
    precondition(inputChannels > 0 && outputChannels > 0 && groups > 0, "channels and groups must be positive")
    precondition(inputChannels % groups == 0 && outputChannels % groups == 0,
                 "groups (\(groups)) must divide \(inputChannels) input and \(outputChannels) output channels")
    precondition(kernelSize.0 > 0 && kernelSize.1 > 0 && stride.0 > 0 && stride.1 > 0 && dilation.0 > 0 && dilation.1 > 0,
                 "kernel size, stride and dilation must be positive")
    self.inputChannels = inputChannels
    self.outputChannels = outputChannels
    self.kernelSize = kernelSize
    self.stride = stride
    self.dilation = dilation
    self.padding = padding
    self.groups = groups
    let fanIn = inputChannels / groups * kernelSize.0 * kernelSize.1
    weight = Parameter(shape: [outputChannels, inputChannels / groups, kernelSize.0, kernelSize.1],
                       role: .weight(fanIn: fanIn))
    self.bias = bias ? Parameter(shape: [outputChannels], role: .bias) : nil
  }

  public var ownParameters: [(String, Parameter)] {
    [("weight", weight)] + (bias.map { [("bias", $0)] } ?? [])
  }

  public func geometry(for input: [Int]) throws -> ConvGeometry {
    try expectRank(input, 4, "Conv2D")
    guard input[1] == inputChannels else {
      throw ShapeError(layer: "Conv2D", "expects \(inputChannels) input channels, got \(input[1]) (input \(input))")
    }
    let (t, l, b, r) = padding.amounts(inHeight: input[2], inWidth: input[3], kernel: kernelSize, stride: stride,
                                       dilation: dilation)
    let g = ConvGeometry(batch: input[0], inChannels: inputChannels, inHeight: input[2], inWidth: input[3],
                         outChannels: outputChannels, kernelH: kernelSize.0, kernelW: kernelSize.1,
                         strideH: stride.0, strideW: stride.1, dilationH: dilation.0, dilationW: dilation.1,
                         padTop: t, padLeft: l, padBottom: b, padRight: r, groups: groups)
    if let p = g.problem { throw ShapeError(layer: "Conv2D", "\(p) (input \(input))") }
    return g
  }

  public func outputShape(for input: [Int]) throws -> [Int] {
    let g = try geometry(for: input)
    return [g.batch, g.outChannels, g.outHeight, g.outWidth]
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let g: ConvGeometry
    do { g = try geometry(for: x.shape) } catch { preconditionFailure("\(error)") }
    let y = Tensor(uninitialized: [g.batch, g.outChannels, g.outHeight, g.outWidth])
    Conv2DKernels.forward(g, x: x.floats, w: weight.value.floats, bias: bias?.value.floats, y: y.floats,
                          winograd: !training || Winograd.inTraining)
    if training && BackwardRecording.isOn { saved = (accumulatesWeightGradient ? ActivationStorage.keep(x) : nil, g) }
    return y
  }

  /// Inference: this convolution followed by `bn` (running statistics), a ReLU and a max pooling,
  /// each optional, in one pass — BN's scale multiplies the packed weights, its shift (and this
  /// layer's bias, scaled) is the bias, the clamp happens as results are stored, and a max pooling
  /// reads bands of rows as they are made (`Conv2DKernels.forwardMaxPooled`) unless the
  /// convolution takes Winograd, which pays more (the pooling then runs after it).
  public func forward(_ x: Tensor, folding bn: BatchNorm2D?, relu: Bool, maxPool: Pool2D? = nil) -> Tensor {
    let g: ConvGeometry
    do { g = try geometry(for: x.shape) } catch { preconditionFailure("\(error)") }
    var scale: [Float]? = nil
    var shift = bias?.value.toArray() ?? [Float](repeating: 0, count: outputChannels)
    if let bn {
      let (s, t) = bn.inferenceAffine()
      for k in 0..<outputChannels { shift[k] = t[k] + s[k] * shift[k] }
      scale = s
    }
    let pooled: PoolGeometry?
    do { pooled = try bandedPooling(g, maxPool) } catch { preconditionFailure("\(error)") }
    if let pg = pooled {
      let y = Tensor(uninitialized: [g.batch, g.outChannels, pg.outHeight, pg.outWidth])
      Conv2DKernels.forwardMaxPooled(g, x: x.floats, w: weight.value.floats, bias: shift, scale: scale, relu: relu,
                                     pool: pg, y: y.floats)
      return y
    }
    let y = Tensor(uninitialized: [g.batch, g.outChannels, g.outHeight, g.outWidth])
    Conv2DKernels.forward(g, x: x.floats, w: weight.value.floats, bias: shift, y: y.floats, scale: scale, relu: relu,
                          winograd: true)
    return maxPool?.forward(y, training: false) ?? y
  }

  /// The pooling's geometry when `maxPool` runs banded with this convolution (not after a Winograd one).
  private func bandedPooling(_ g: ConvGeometry, _ maxPool: Pool2D?) throws -> PoolGeometry? {
    guard let maxPool, !Winograd.applies(g) else { return nil }
    return try maxPool.geometry(for: [g.batch, g.outChannels, g.outHeight, g.outWidth])
  }

  /// The planner's twin of `forward(_:folding:relu:maxPool:)`.
  public func planFolded(_ x: SimTensor, maxPool: Pool2D?, _ sim: MemorySimulation) throws -> SimTensor {
    let g = try geometry(for: x.shape)
    if let pg = try bandedPooling(g, maxPool) {
      let y = sim.allocate([g.batch, g.outChannels, pg.outHeight, pg.outWidth])
      sim.transient(Conv2DKernels.forwardMaxPooledWorkspaceBytes(g, pool: pg, threads: sim.threads))
      return y
    }
    let y = try planForward(x, training: false, sim)
    return try maxPool?.planForward(y, training: false, sim) ?? y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    // The kept input is needed for the weight gradient only, and let go before dx is allocated.
    let g = weightGradients(dy)
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: [g.batch, g.inChannels, g.inHeight, g.inWidth])
    Conv2DKernels.backwardData(g, dy: dy.floats, w: weight.value.floats, dx: dx.floats)
    return dx
  }

  private func weightGradients(_ dy: Tensor) -> ConvGeometry {
    guard let (kept, g) = saved else { preconditionFailure("Conv2D.backward without a training forward") }
    saved = nil
    guard let kept else { return g }
    let x = ActivationStorage.restore(kept)
    Conv2DKernels.backwardWeights(g, x: x.floats, dy: dy.floats, dw: weight.gradient, dbias: bias?.gradient)
    return g
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let g = try geometry(for: x.shape)
    let y = sim.allocate([g.batch, g.outChannels, g.outHeight, g.outWidth])
    sim.transient(Conv2DKernels.forwardWorkspaceBytes(g, threads: sim.threads, winograd: !training || Winograd.inTraining))
    if training && BackwardRecording.isOn {
      sim.keep(self, accumulatesWeightGradient ? [ActivationStorage.keep(x, sim)] : [])
      sim.notes[ObjectIdentifier(self)] = g
    }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let g = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? ConvGeometry else { return nil }
    do {
      let kept = sim.take(self)
      let restored = kept.first.flatMap { ActivationStorage.restore($0, sim) }
      if !kept.isEmpty { sim.transient(Conv2DKernels.backwardWeightsWorkspaceBytes(g, threads: sim.threads)) }
      withExtendedLifetime((kept, restored)) {}
    }
    guard needInputGradient else { return nil }
    let dx = sim.allocate([g.batch, g.inChannels, g.inHeight, g.inWidth])
    sim.transient(Conv2DKernels.backwardDataWorkspaceBytes(g, threads: sim.threads))
    return dx
  }
}
