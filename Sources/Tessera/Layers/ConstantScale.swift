import TesseraKernels

/// Multiplication by fixed factors: one for all, or one per channel (ONNX `Mul` by a constant, e.g.
/// an input normalisation or a layer scale baked into an exported graph). The factors are saved
/// with the weights and never trained. Keeps nothing for backward: dx = s · dy.
public final class ConstantScale: Layer {
  public let factors: Parameter
  public init(factors: [Float]) {
    precondition(!factors.isEmpty, "ConstantScale needs at least one factor")
    self.factors = Parameter(Tensor(shape: [factors.count], values: factors, category: .parameter), role: .constant)
  }

  public var kind: String { "ConstantScale" }
  public var ownParameters: [(String, Parameter)] { [("factors", factors)] }

  public func outputShape(for input: [Int]) throws -> [Int] {
    let k = factors.count
    guard k == 1 || (input.count >= 2 && input[1] == k) else {
      throw ShapeError(layer: "ConstantScale", "\(k) factors for an input of \(input.count >= 2 ? input[1] : 0) channels (\(input))")
    }
    return input
  }

  func scale(_ x: Tensor, into y: Tensor) {
    let k = factors.count, f = factors.value.floats
    if k == 1 {
      ElementwiseKernels.scaled(x.floats, by: f[0], into: y.floats, count: x.count)
      return
    }
    let plane = x.shape.dropFirst(2).reduce(1, *), n = x.shape[0]
    for i in 0..<n {
      for c in 0..<k {
        let o = (i * k + c) * plane
        ElementwiseKernels.scaled(x.floats + o, by: f[c], into: y.floats + o, count: plane)
      }
    }
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let y = Tensor(uninitialized: x.shape)
    scale(x, into: y)
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard needInputGradient else { return nil }
    let dx = Tensor(uninitialized: dy.shape)
    scale(dy, into: dx)
    return dx
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    sim.allocate(try outputShape(for: x.shape))
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    needInputGradient ? sim.allocate(dy.shape) : nil
  }
}
