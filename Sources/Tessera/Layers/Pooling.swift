import TesseraKernels

/// Max or average pooling over (N, C, H, W).
public final class Pool2D: Layer, RecordingHolder {
  public enum Mode: Sendable, Equatable {
    case max
    /// Average; `countIncludePad` divides by the whole window (PyTorch's default) instead of the
    /// cells inside the input (TensorFlow's `same`).
    case average(countIncludePad: Bool)
  }
  public let mode: Mode
  public let kernelSize: (Int, Int), stride: (Int, Int)
  public let padding: Padding
  /// Average pooling keeps the input shape; max pooling the arg-max of each window (Int32).
  private var saved: (kept: Tensor, g: PoolGeometry)?
  func takeRecording() -> Any? { defer { saved = nil }; return saved }
  func restoreRecording(_ recording: Any?) { saved = recording as? (kept: Tensor, g: PoolGeometry) }

  public init(_ mode: Mode, kernelSize: Int, stride: Int? = nil, padding: Padding = .valid) {
    precondition(kernelSize > 0 && (stride ?? 1) > 0, "kernel size and stride must be positive")
    self.mode = mode
    self.kernelSize = (kernelSize, kernelSize)
    self.stride = (stride ?? kernelSize, stride ?? kernelSize)
    self.padding = padding
  }

  public var kind: String { mode == .max ? "MaxPool2D" : "AvgPool2D" }

  public func geometry(for input: [Int]) throws -> PoolGeometry {
    try expectRank(input, 4, kind)
    let (t, l, b, r) = padding.amounts(inHeight: input[2], inWidth: input[3], kernel: kernelSize, stride: stride,
                                       dilation: (1, 1))
    guard max(t, b) < kernelSize.0, max(l, r) < kernelSize.1 else {
      throw ShapeError(layer: kind, "padding (\(t),\(l),\(b),\(r)) must be smaller than the window")
    }
    let g = PoolGeometry(planes: input[0] * input[1], inHeight: input[2], inWidth: input[3],
                         kernelH: kernelSize.0, kernelW: kernelSize.1, strideH: stride.0, strideW: stride.1,
                         padTop: t, padLeft: l, padBottom: b, padRight: r)
    guard input[2] + t + b >= kernelSize.0, input[3] + l + r >= kernelSize.1 else {
      throw ShapeError(layer: kind, "the \(kernelSize.0)×\(kernelSize.1) window does not fit the input \(input)")
    }
    return g
  }

  public func outputShape(for input: [Int]) throws -> [Int] {
    let g = try geometry(for: input)
    return [input[0], input[1], g.outHeight, g.outWidth]
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let g: PoolGeometry
    do { g = try geometry(for: x.shape) } catch { preconditionFailure("\(error)") }
    let y = Tensor(uninitialized: [x.shape[0], x.shape[1], g.outHeight, g.outWidth])
    switch mode {
    case .max:
      // Every output's arg-max is written (`maxForward`), so no zero fill.
      let argmax = training && BackwardRecording.isOn ? Tensor(uninitialized: y.shape, dtype: .int32) : nil
      Pool2DKernels.maxForward(g, x: x.floats, y: y.floats,
                               argmax: argmax?.storage.raw.assumingMemoryBound(to: Int32.self))
      if let a = argmax { saved = (a, g) }
    case .average(let inc):
      Pool2DKernels.avgForward(g, x: x.floats, y: y.floats, countIncludePad: inc)
      if training && BackwardRecording.isOn { saved = (Tensor(zeros: [0]), g) }
    }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let (kept, g) = saved else { preconditionFailure("\(kind).backward without a training forward") }
    saved = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: [dy.shape[0], dy.shape[1], g.inHeight, g.inWidth])
    switch mode {
    case .max:
      Pool2DKernels.maxBackward(g, argmax: kept.storage.raw.assumingMemoryBound(to: Int32.self), dy: dy.floats,
                                dx: dx.floats)
    case .average(let inc): Pool2DKernels.avgBackward(g, dy: dy.floats, dx: dx.floats, countIncludePad: inc)
    }
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let g = try geometry(for: x.shape)
    let y = sim.allocate([x.shape[0], x.shape[1], g.outHeight, g.outWidth])
    if training && BackwardRecording.isOn {
      sim.keep(self, mode == .max ? [sim.allocate(y.shape)] : [])  // Int32 arg-max, 4 bytes each
      sim.notes[ObjectIdentifier(self)] = x.shape
    }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let kept = sim.take(self)
    guard let s = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? [Int], needInputGradient else { return nil }
    let dx = sim.allocate(s)
    withExtendedLifetime(kept) {}  // held until here, as the real pass holds it
    return dx
  }
}

/// Mean over H and W: (N, C, H, W) → (N, C).
public final class GlobalAvgPool2D: Layer {
  private var savedShape: [Int]?
  public init() {}

  public func outputShape(for input: [Int]) throws -> [Int] {
    try expectRank(input, 4, "GlobalAvgPool2D")
    return [input[0], input[1]]
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let planes = x.shape[0] * x.shape[1], hw = x.shape[2] * x.shape[3]
    let y = Tensor(uninitialized: [x.shape[0], x.shape[1]])
    let xp = x.floats, yp = y.floats
    for p in 0..<planes {
      var s = 0.0
      for i in 0..<hw { s += Double(xp[p * hw + i]) }
      yp[p] = Float(s / Double(hw))
    }
    if training && BackwardRecording.isOn { savedShape = x.shape }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let s = savedShape else { preconditionFailure("GlobalAvgPool2D.backward without a training forward") }
    savedShape = nil
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: s)
    let hw = s[2] * s[3], dp = dy.floats, xp = dx.floats
    for p in 0..<(s[0] * s[1]) {
      let v = dp[p] / Float(hw)
      (xp + p * hw).update(repeating: v, count: hw)
    }
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    try sim.planShapeOnlyForward(self, x, training: training)
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    sim.planShapeOnlyBackward(self, needInputGradient: needInputGradient)
  }
}

/// Average pooling to a fixed output size, as PyTorch's AdaptiveAvgPool2d: output cell i covers input
/// rows ⌊i·H/h⌋ ..< ⌈(i+1)·H/h⌉ (and likewise for columns). (N, C, H, W) → (N, C, h, w).
public final class AdaptiveAvgPool2D: Layer {
  public let outputSize: (height: Int, width: Int)
  private var savedShape: [Int]?

  public init(outputSize: (Int, Int)) {
    precondition(outputSize.0 > 0 && outputSize.1 > 0, "output size must be positive")
    self.outputSize = outputSize
  }

  public func outputShape(for input: [Int]) throws -> [Int] {
    try expectRank(input, 4, "AdaptiveAvgPool2D")
    return [input[0], input[1], outputSize.height, outputSize.width]
  }

  @inline(__always) static func range(_ i: Int, _ inSize: Int, _ outSize: Int) -> Range<Int> {
    (i * inSize / outSize)..<(((i + 1) * inSize + outSize - 1) / outSize)
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let (H, W, h, w) = (x.shape[2], x.shape[3], outputSize.height, outputSize.width)
    let y = Tensor(uninitialized: [x.shape[0], x.shape[1], h, w])
    let xp = x.floats, yp = y.floats
    for p in 0..<(x.shape[0] * x.shape[1]) {
      for oy in 0..<h {
        let ry = Self.range(oy, H, h)
        for ox in 0..<w {
          let rx = Self.range(ox, W, w)
          var s: Float = 0
          for iy in ry { for ix in rx { s += xp[(p * H + iy) * W + ix] } }
          yp[(p * h + oy) * w + ox] = s / Float(ry.count * rx.count)
        }
      }
    }
    if training && BackwardRecording.isOn { savedShape = x.shape }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let s = savedShape else { preconditionFailure("AdaptiveAvgPool2D.backward without a training forward") }
    savedShape = nil
    guard needInputGradient else { return nil }
    let (H, W, h, w) = (s[2], s[3], outputSize.height, outputSize.width)
    let dx = Tensor(zeros: s)
    let dp = dy.floats, xp = dx.floats
    for p in 0..<(s[0] * s[1]) {
      for oy in 0..<h {
        let ry = Self.range(oy, H, h)
        for ox in 0..<w {
          let rx = Self.range(ox, W, w)
          let v = dp[(p * h + oy) * w + ox] / Float(ry.count * rx.count)
          for iy in ry { for ix in rx { xp[(p * H + iy) * W + ix] += v } }
        }
      }
    }
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    try sim.planShapeOnlyForward(self, x, training: training)
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    sim.planShapeOnlyBackward(self, needInputGradient: needInputGradient)
  }
}
