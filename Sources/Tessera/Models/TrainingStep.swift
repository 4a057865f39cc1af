import TesseraKernels

/// What one training step computed.
public struct StepResult {
  public var loss: Float
  /// (N, classes)
  public var logits: Tensor
  public var probabilities: [Float]
  /// Labels predicted (arg-max of the logits).
  public var predictions: [Int]

  public init(loss: Float, logits: Tensor, probabilities: [Float], predictions: [Int]) {
    self.loss = loss
    self.logits = logits
    self.probabilities = probabilities
    self.predictions = predictions
  }
}

/// Problems with a batch handed to a model, named with shapes.
public struct BatchError: Error, CustomStringConvertible {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

extension Layer {
  /// Checks that `input` can go through the model and gives (N, classes) logits.
  public func checkInput(_ shape: [Int]) throws -> [Int] {
    let out = try outputShape(for: shape)
    guard out.count == 2, out[0] == shape.first else {
      throw BatchError("the model maps input \(shape) to \(out), not to (batch, classes) logits")
    }
    return out
  }

  /// One step: batch → forward → loss → backward → (optional) update. Gradients are zeroed first
  /// unless `accumulate` is true; with no optimizer the gradients are left for the caller.
  @discardableResult
  public func trainingStep(
    input: Tensor, labels: [Int], optimizer: Optimizer? = nil, lr: Float = 0, labelSmoothing: Float = 0,
    accumulate: Bool = false, gradientScale: Float = 1
  ) throws -> StepResult {
    _ = try checkInput(input.shape)
    if !accumulate { zeroGradients() }
    return try finishStep(logits: forward(input, training: true), labels: labels, optimizer: optimizer, lr: lr,
                          labelSmoothing: labelSmoothing, gradientScale: gradientScale)
  }

  /// Loss, backward and the optimizer's update, from the logits of a training forward.
  func finishStep(logits: Tensor, labels: [Int], optimizer: Optimizer?, lr: Float, labelSmoothing: Float,
                  gradientScale: Float) throws -> StepResult {
    let res = try SoftmaxCrossEntropy.compute(logits: logits, labels: labels, labelSmoothing: labelSmoothing)
    // Gradient accumulation over K micro-batches scales each by 1/K: the mean over K·b images.
    if gradientScale != 1 { ElementwiseKernels.scale(res.gradient.floats, by: gradientScale, count: res.gradient.count) }
    _ = backward(res.gradient, needInputGradient: false)
    if let opt = optimizer { opt.step(namedParameters(), lr: lr) }
    return StepResult(loss: res.loss, logits: logits, probabilities: res.probabilities,
                      predictions: Self.argmax(logits))
  }

  /// Inference: logits (N, classes) with running BatchNorm statistics, keeping nothing for backward.
  public func predict(_ input: Tensor) throws -> Tensor {
    _ = try checkInput(input.shape)
    return forward(input, training: false)
  }

  static func argmax(_ logits: Tensor) -> [Int] {
    let n = logits.shape[0], k = logits.shape[1], z = logits.floats
    return (0..<n).map { i in (0..<k).max { z[i * k + $0] < z[i * k + $1] } ?? 0 }
  }
}

extension Sequential {
  /// One step on an input read region by region (`TileSource`), for images too large to hold: the
  /// model's first layer must be `Streamed`. Otherwise as `trainingStep(input:…)`.
  @discardableResult
  public func trainingStep(
    source: TileSource, labels: [Int], optimizer: Optimizer? = nil, lr: Float = 0, labelSmoothing: Float = 0,
    accumulate: Bool = false, gradientScale: Float = 1
  ) throws -> StepResult {
    guard let streamed = layers.first?.1 as? Streamed else {
      throw BatchError("an input read region by region needs a model whose first layer is Streamed (use --tile)")
    }
    _ = try checkInput(source.shape)
    if !accumulate { zeroGradients() }
    var h = try streamed.forward(source: source, training: true)
    for (_, l) in layers.dropFirst() { h = l.forward(h, training: true) }
    return try finishStep(logits: h, labels: labels, optimizer: optimizer, lr: lr, labelSmoothing: labelSmoothing,
                          gradientScale: gradientScale)
  }

  /// Inference on an input read region by region (the first layer must be `Streamed`).
  public func predict(source: TileSource) throws -> Tensor {
    guard let streamed = layers.first?.1 as? Streamed else {
      throw BatchError("an input read region by region needs a model whose first layer is Streamed (use --tile)")
    }
    _ = try checkInput(source.shape)
    var h = try streamed.forward(source: source, training: false)
    for (_, l) in layers.dropFirst() { h = l.forward(h, training: false) }
    return h
  }
}
