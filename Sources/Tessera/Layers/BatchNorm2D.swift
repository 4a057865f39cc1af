import TesseraKernels

/// Batch normalisation over (N, H, W) per channel. Training uses the batch mean and biased variance
/// and updates the running statistics Keras-style: running = momentum·running + (1 − momentum)·batch
/// (the batch variance is the biased one, as Keras). Inference uses the running statistics.
/// Defaults follow Keras (epsilon 1e-3, momentum 0.99); torchvision models use 1e-5 and 0.9.
///
/// `fusedReLU: true` computes ReLU(BN(x)) in one pass and keeps only x for backward (the ReLU mask
/// is recomputed from x), saving a pass and a kept tensor the size of the output.
public final class BatchNorm2D: Layer, RecordingHolder {
  public let channels: Int
  public let fusedReLU: Bool
  public let epsilon: Float
  public let momentum: Float
  public let weight: Parameter, bias: Parameter, runningMean: Parameter, runningVariance: Parameter
  /// When true, running statistics are not updated (e.g. while a checkpointed segment is recomputed).
  public var freezeRunningStatistics = false
  /// Streamed training (set by `Streamed`): the statistics a training forward uses instead of the
  /// batch's — the whole image's, or the running ones for frozen BatchNorm. Running statistics are
  /// then not updated here.
  public var fixedStatistics: (mean: [Float], variance: [Float])?
  /// Streamed training (set by `Streamed`): backward of one tile with the whole image's gradient sums.
  public var streamedBackward: StreamedBatchNormBackward?
  /// Synchronized BatchNorm (data-parallel training): a training forward normalises with the
  /// statistics of the global batch — every rank's images — and backward uses the global gradient
  /// sums, so N ranks compute what one process computes on the whole batch. The γ and β gradients
  /// stay this rank's part (the gradient allreduce adds them up).
  public var collective: Collective?
  private var saved: (x: Tensor, mean: [Float], invstd: [Float], shift: [Float])?
  func takeRecording() -> Any? { defer { saved = nil }; return saved }
  func restoreRecording(_ recording: Any?) { saved = recording as? (x: Tensor, mean: [Float], invstd: [Float], shift: [Float]) }

  public init(channels: Int, epsilon: Float = 1e-3, momentum: Float = 0.99, fusedReLU: Bool = false) {
    precondition(channels > 0, "channels must be positive")
    self.channels = channels
    self.fusedReLU = fusedReLU
    self.epsilon = epsilon
    self.momentum = momentum
    weight = Parameter(shape: [channels], role: .scale)
    bias = Parameter(shape: [channels], role: .shift)
    runningMean = Parameter(shape: [channels], role: .runningMean)
    runningVariance = Parameter(shape: [channels], role: .runningVariance)
  }

  public var ownParameters: [(String, Parameter)] {
    [("weight", weight), ("bias", bias), ("running_mean", runningMean), ("running_var", runningVariance)]
  }

  public var kind: String { fusedReLU ? "BatchNorm2D+ReLU" : "BatchNorm2D" }

  public func outputShape(for input: [Int]) throws -> [Int] {
    try expectRank(input, 4, "BatchNorm2D")
    guard input[1] == channels else {
      throw ShapeError(layer: "BatchNorm2D", "expects \(channels) channels, got \(input[1]) (input \(input))")
    }
    return input
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let (n, c, hw) = (x.shape[0], channels, x.shape[2] * x.shape[3])
    var mean = [Float](repeating: 0, count: c), variance = mean
    if training, let f = fixedStatistics {
      mean = f.mean
      variance = f.variance
    } else if training, let sync = collective {
      synchronizedStatistics(x, sync, mean: &mean, variance: &variance)
      updateRunningStatistics(mean, variance)
    } else if training {
      BatchNormKernels.statistics(x: x.floats, batch: n, channels: c, spatial: hw, mean: &mean, variance: &variance)
      updateRunningStatistics(mean, variance)
    } else {
      mean = runningMean.value.toArray()
      variance = runningVariance.value.toArray()
    }
    let (invstd, scale, shift) = normalization(mean: mean, variance: variance)
    let y = Tensor(uninitialized: x.shape)
    BatchNormKernels.affine(x: x.floats, y: y.floats, batch: n, channels: c, spatial: hw, scale: scale, shift: shift,
                            relu: fusedReLU)
    if training && BackwardRecording.isOn {
      if ActivationStorage.precision == .fp32 {
        saved = (x, mean, invstd, shift)
      } else {
        // In 16 bits the input is kept centred (x − mean): rounding then scales with the spread, not
        // with |x|, which matters when a channel's mean is far from 0. Backward sees mean 0 and a
        // ReLU shift of β (= shift + mean·scale).
        let centred = Tensor(zeros: x.shape, dtype: ActivationStorage.precision.dtype, category: .activation)
        Conversions.centred(x.floats, planes: n * c, spatial: hw, channels: c, mean: mean,
                            into: centred.storage.raw, bfloat16: ActivationStorage.precision == .bf16)
        saved = (centred, [Float](repeating: 0, count: c), invstd, (0..<c).map { shift[$0] + mean[$0] * scale[$0] })
      }
    }
    return y
  }

  /// Streamed training: x ← BatchNorm(+ReLU)(x) in place with `fixedStatistics`, nothing recorded
  /// (the arithmetic of `forward`).
  func applyFixedStatistics(inPlace x: Tensor) {
    guard let (mean, variance) = fixedStatistics else { preconditionFailure("BatchNorm2D.applyFixedStatistics without statistics") }
    let (_, scale, shift) = normalization(mean: mean, variance: variance)
    BatchNormKernels.affine(x: x.floats, y: x.floats, batch: x.shape[0], channels: channels, spatial: x.shape[2] * x.shape[3],
                            scale: scale, shift: shift, relu: fusedReLU)
  }

  /// Inference-mode BatchNorm as y = scale·x + shift per channel (from the running statistics), the
  /// form a preceding convolution folds into its weights and bias (`Conv2D.forward(_:folding:)`).
  public func inferenceAffine() -> (scale: [Float], shift: [Float]) {
    let n = normalization(mean: runningMean.value.toArray(), variance: runningVariance.value.toArray())
    return (n.scale, n.shift)
  }

  /// y = x·scale + shift per channel for these statistics (scale = γ·invstd, shift = β − mean·scale),
  /// rounded one way for forward, the inference fold and the streamed sums' ReLU mask alike.
  func normalization(mean: [Float], variance: [Float]) -> (invstd: [Float], scale: [Float], shift: [Float]) {
    let gamma = weight.value.floats, beta = bias.value.floats
    let invstd = variance.map { 1 / ($0 + epsilon).squareRoot() }
    var scale = [Float](repeating: 0, count: channels), shift = scale
    for i in 0..<channels {
      scale[i] = gamma[i] * invstd[i]
      shift[i] = beta[i] - mean[i] * scale[i]
    }
    return (invstd, scale, shift)
  }

  private func updateRunningStatistics(_ mean: [Float], _ variance: [Float]) {
    guard !freezeRunningStatistics else { return }
    let rm = runningMean.value.floats, rv = runningVariance.value.floats
    for i in 0..<channels {
      rm[i] = momentum * rm[i] + (1 - momentum) * mean[i]
      rv[i] = momentum * rv[i] + (1 - momentum) * variance[i]
    }
  }

  /// The global batch's mean and biased variance, in two rounds as `BatchNormKernels.statistics`:
  /// Σx and the element count summed over the ranks give the mean, then Σ(x − mean)² the variance.
  private func synchronizedStatistics(_ x: Tensor, _ sync: Collective, mean: inout [Float], variance: inout [Float]) {
    let s = x.shape, c = channels, whole = MapRegion(rows: 0..<s[2], cols: 0..<s[3])
    var sums = [Double](repeating: 0, count: c + 1), squares = [Double](repeating: 0, count: c)
    BatchNormKernels.accumulateStatistics(x: x.floats, batch: s[0], channels: c, height: s[2], width: s[3],
                                          region: whole, shift: [Float](repeating: 0, count: c), sum: &sums, sumSquares: &squares)
    sums[c] = Double(s[0] * s[2] * s[3])
    sync.allreduceSum(&sums)
    let count = max(sums[c], 1)
    for i in 0..<c { mean[i] = Float(sums[i] / count) }
    var deviations = [Double](repeating: 0, count: 2 * c)
    deviations.withUnsafeMutableBufferPointer { d in
      BatchNormKernels.accumulateStatistics(x: x.floats, batch: s[0], channels: c, height: s[2], width: s[3],
                                            region: whole, shift: mean, sum: d.baseAddress!, sumSquares: d.baseAddress! + c)
    }
    sync.allreduceSum(&deviations)
    for i in 0..<c {
      let m = deviations[i] / count
      variance[i] = Float(max(0, deviations[c + i] / count - m * m))
    }
  }

  /// Backward with the global batch's gradient sums: this rank's Σdy and Σdy·x̂ summed over the
  /// ranks, then dx = γ·invstd·(dy − meanDy − x̂·meanDyXhat) with the global means.
  private func synchronizedBackward(x: Tensor, dy: Tensor, dx: Tensor?, mean: [Float], invstd: [Float],
                                    shift: [Float], _ sync: Collective) {
    let s = x.shape, c = channels
    let step = StreamedBatchNormBackward(channels: c)
    step.region = MapRegion(rows: 0..<s[2], cols: 0..<s[3])
    step.run(x: x, dy: dy, dx: nil, mean: mean, invstd: invstd, gamma: weight.value.floats, reluShift: fusedReLU ? shift : nil)
    let dg = weight.gradient, db = bias.gradient
    for i in 0..<c {
      dg[i] += Float(step.sumDyXhat[i])
      db[i] += Float(step.sumDy[i])
    }
    var sums = step.sumDy + step.sumDyXhat + [Double(s[0] * s[2] * s[3])]
    sync.allreduceSum(&sums)
    guard let dx else { return }
    let count = max(sums[2 * c], 1)
    step.meanDy = (0..<c).map { Float(sums[$0] / count) }
    step.meanDyXhat = (0..<c).map { Float(sums[c + $0] / count) }
    step.run(x: x, dy: dy, dx: dx, mean: mean, invstd: invstd, gamma: weight.value.floats, reluShift: fusedReLU ? shift : nil)
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let (kept, mean, invstd, shift) = saved else { preconditionFailure("BatchNorm2D.backward without a training forward") }
    saved = nil
    let x = ActivationStorage.restore(kept)
    if let sync = collective, streamedBackward == nil {
      let dx = needInputGradient ? Tensor(uninitialized: x.shape) : nil
      synchronizedBackward(x: x, dy: dy, dx: dx, mean: mean, invstd: invstd, shift: shift, sync)
      return dx
    }
    if let s = streamedBackward {
      let dx = s.inputGradient && needInputGradient ? Tensor(uninitialized: x.shape) : nil
      s.run(x: x, dy: dy, dx: dx, mean: mean, invstd: invstd, gamma: weight.value.floats,
            reluShift: fusedReLU ? shift : nil)
      return dx
    }
    let dx = Tensor(uninitialized: x.shape)
    BatchNormKernels.backward(x: x.floats, dy: dy.floats, dx: dx.floats, batch: x.shape[0], channels: channels,
                              spatial: x.shape[2] * x.shape[3], mean: mean, invstd: invstd,
                              gamma: weight.value.floats, dgamma: weight.gradient, dbeta: bias.gradient,
                              reluShift: fusedReLU ? shift : nil)
    return needInputGradient ? dx : nil
  }

  /// Streamed training: adds to `streamedBackward`'s sums the Σdy and Σdy·x̂ of cells whose input
  /// is x and whose output gradient is dy (ReLU applied, as backward would), with the fixed statistics.
  func addStreamedSums(x: Tensor, dy: Tensor) {
    guard let (mean, variance) = fixedStatistics, let step = streamedBackward else {
      preconditionFailure("BatchNorm2D.addStreamedSums outside a streamed backward")
    }
    // As `forward` rounds them: the ReLU mask must be the one the forward applied.
    let (invstd, _, shift) = normalization(mean: mean, variance: variance)
    step.run(x: x, dy: dy, dx: nil, mean: mean, invstd: invstd, gamma: weight.value.floats, reluShift: fusedReLU ? shift : nil)
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    _ = try outputShape(for: x.shape)
    let y = sim.allocate(x.shape)
    if training && BackwardRecording.isOn {
      if ActivationStorage.precision == .fp32 {
        sim.keep(self, [x])
      } else {
        sim.keep(self, [sim.allocate(x.shape, bytesPerElement: ActivationStorage.precision.bytes)])
      }
    }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let x = sim.take(self)
    let restored = x.first.flatMap { ActivationStorage.restore($0, sim) }
    if let s = streamedBackward {
      let dx = s.inputGradient && needInputGradient ? sim.allocate(dy.shape) : nil
      withExtendedLifetime((x, restored)) {}
      return dx
    }
    let dx = sim.allocate(dy.shape)
    withExtendedLifetime((x, restored)) {}  // held until here, as the real pass holds them
    return needInputGradient ? dx : nil
  }
}

/// How a BatchNorm layer inside a `Streamed` segment runs backward on a tile: with the whole
/// image's gradient sums given (`meanDy`, `meanDyXhat`, applied inside `region` only), without
/// them (frozen statistics: both nil), and adding this tile's Σdy and Σdy·x̂ to the running sums.
public final class StreamedBatchNormBackward {
  public var meanDy: [Float]?, meanDyXhat: [Float]?
  /// Where this tile's batch-statistic terms go (tile-local coordinates of the map).
  public var region = MapRegion(rows: 0..<0, cols: 0..<0)
  /// false: only the sums (the pass that gathers them stops here).
  public var inputGradient = true
  public var sumDy: [Double], sumDyXhat: [Double]

  public init(channels: Int) {
    sumDy = [Double](repeating: 0, count: channels)
    sumDyXhat = sumDy
  }

  func run(x: Tensor, dy: Tensor, dx: Tensor?, mean: [Float], invstd: [Float], gamma: UnsafePointer<Float>,
           reluShift: [Float]?) {
    let s = x.shape
    sumDy.withUnsafeMutableBufferPointer { s1 in
      sumDyXhat.withUnsafeMutableBufferPointer { s2 in
        BatchNormKernels.streamedBackward(
          x: x.floats, dy: dy.floats, dx: dx?.floats, batch: s[0], channels: s[1], height: s[2], width: s[3],
          mean: mean, invstd: invstd, gamma: gamma, reluShift: reluShift, meanDy: meanDy, meanDyXhat: meanDyXhat,
          region: region, sumDy: s1.baseAddress!, sumDyXhat: s2.baseAddress!)
      }
    }
  }
}
