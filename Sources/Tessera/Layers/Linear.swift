import TesseraKernels

/// Fully connected layer. x: (N, in) → y: (N, out) = x·Wᵀ + b; weight (out, in) as PyTorch.
public final class Linear: Layer {
  public let inputFeatures: Int, outputFeatures: Int
  public let weight: Parameter
  public let bias: Parameter?
  private var savedInput: Tensor?

  public init(inputFeatures: Int, outputFeatures: Int, bias: Bool = true) {
    precondition(inputFeatures > 0 && outputFeatures > 0, "feature counts must be positive")
    self.inputFeatures = inputFeatures
    self.outputFeatures = outputFeatures
    weight = Parameter(shape: [outputFeatures, inputFeatures], role: .weight(fanIn: inputFeatures))
    self.bias = bias ? Parameter(shape: [outputFeatures], role: .bias) : nil
  }

  public var ownParameters: [(String, Parameter)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }

  public func outputShape(for input: [Int]) throws -> [Int] {
    try expectRank(input, 2, "Linear")
    guard input[1] == inputFeatures else {
      throw ShapeError(layer: "Linear", "expects \(inputFeatures) input features, got \(input[1]) (input \(input))")
    }
    return [input[0], outputFeatures]
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let n = x.shape[0]
    let y = Tensor(uninitialized: [n, outputFeatures])
    if let b = bias {
      for i in 0..<n { (y.floats + i * outputFeatures).update(from: b.value.floats, count: outputFeatures) }
    }
    GEMM.sgemm(transB: true, m: n, n: outputFeatures, k: inputFeatures, a: x.floats, lda: inputFeatures,
               b: weight.value.floats, ldb: inputFeatures, beta: bias == nil ? 0 : 1, c: y.floats, ldc: outputFeatures)
    if training && BackwardRecording.isOn { savedInput = ActivationStorage.keep(x) }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    // The kept input is needed for the weight gradient only, and let go before dx is allocated.
    let n = weightGradients(dy)
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: [n, inputFeatures])
    GEMM.sgemm(m: n, n: inputFeatures, k: outputFeatures, a: dy.floats, lda: outputFeatures,
               b: weight.value.floats, ldb: inputFeatures, beta: 0, c: dx.floats, ldc: inputFeatures)
    return dx
  }

  private func weightGradients(_ dy: Tensor) -> Int {
    guard let kept = savedInput else { preconditionFailure("Linear.backward without a training forward") }
    savedInput = nil
    let x = ActivationStorage.restore(kept)
    let n = x.shape[0]
    // dW (out, in) += dyᵀ · x ; db += Σ_n dy
    GEMM.sgemm(transA: true, m: outputFeatures, n: inputFeatures, k: n, a: dy.floats, lda: outputFeatures,
               b: x.floats, ldb: inputFeatures, beta: 1, c: weight.gradient, ldc: inputFeatures)
    if let b = bias {
      let g = b.gradient
      for i in 0..<n { for j in 0..<outputFeatures { g[j] += dy.floats[i * outputFeatures + j] } }
    }
    return n
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let s = try outputShape(for: x.shape)
    let y = sim.allocate(s)
    sim.transient(GEMM.workspaceBytes(m: s[0], n: outputFeatures, k: inputFeatures, threads: sim.threads))
    if training && BackwardRecording.isOn { sim.keep(self, [ActivationStorage.keep(x, sim)]) }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    let n = dy.shape[0]
    do {
      let kept = sim.take(self)
      let restored = kept.first.flatMap { ActivationStorage.restore($0, sim) }
      sim.transient(GEMM.workspaceBytes(m: outputFeatures, n: inputFeatures, k: n, threads: sim.threads))
      withExtendedLifetime((kept, restored)) {}
    }
    guard needInputGradient else { return nil }
    let dx = sim.allocate([n, inputFeatures])
    sim.transient(GEMM.workspaceBytes(m: n, n: inputFeatures, k: outputFeatures, threads: sim.threads))
    return dx
  }
}
