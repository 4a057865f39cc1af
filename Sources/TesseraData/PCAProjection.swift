import Tessera
import TesseraKernels

/// A fixed PCA input layer: (N, C, H, W) images → (N, k) features (x − mean)·componentsᵀ, divided by
/// √variance when the model whitens. Its tensors are constants (saved with the weights as `mean`,
/// `components`, `scale`; never trained), so a model can train on the reduced features:
///
/// ```swift
/// let net = Sequential([("pca", PCAProjection(pcaModel)), ("fc", Linear(inputFeatures: pcaModel.count, outputFeatures: 10))])
/// ```
public final class PCAProjection: Layer {
  public let dimension: Int, components: Int
  public let mean: Parameter, basis: Parameter, scale: Parameter
  private var savedShape: [Int]?

  public init(_ m: PCAModel) {
    dimension = m.dimension
    components = m.count
    mean = Parameter(Tensor(shape: [m.dimension], values: m.mean, category: .parameter), role: .constant)
    basis = Parameter(Tensor(shape: [m.count, m.dimension], values: m.components, category: .parameter), role: .constant)
    let s = m.explainedVariance.map { m.whiten ? Float(1 / ($0 + 1e-12).squareRoot()) : 1 }
    scale = Parameter(Tensor(shape: [m.count], values: s, category: .parameter), role: .constant)
  }

  public var kind: String { "PCAProjection" }
  public var ownParameters: [(String, Parameter)] { [("mean", mean), ("components", basis), ("scale", scale)] }

  public func outputShape(for input: [Int]) throws -> [Int] {
    guard input.count >= 2, input.dropFirst().reduce(1, *) == dimension else {
      throw ShapeError(layer: "PCAProjection", "expects \(dimension) values per sample, got input \(input)")
    }
    return [input[0], components]
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let n = x.shape[0], d = dimension, k = components
    let y = Tensor(uninitialized: [n, k])
    let centered = Tensor(uninitialized: [n, d])
    let mp = mean.value.floats
    for r in 0..<n { for j in 0..<d { centered.floats[r * d + j] = x.floats[r * d + j] - mp[j] } }
    GEMM.sgemm(transB: true, m: n, n: k, k: d, a: centered.floats, lda: d, b: basis.value.floats, ldb: d, c: y.floats, ldc: k)
    let sp = scale.value.floats
    for r in 0..<n { for j in 0..<k { y.floats[r * k + j] *= sp[j] } }
    if training && BackwardRecording.isOn { savedShape = x.shape }
    return y
  }

  /// dx = (dy ⊙ scale)·components, shaped like the input (nothing kept from forward).
  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    let shape = savedShape
    savedShape = nil
    guard needInputGradient, let inShape = shape else { return nil }
    let n = dy.shape[0], d = dimension, k = components
    let g = Tensor(uninitialized: [n, k])
    for r in 0..<n { for j in 0..<k { g.floats[r * k + j] = dy.floats[r * k + j] * scale.value.floats[j] } }
    let dx = Tensor(uninitialized: [n, d])
    GEMM.sgemm(m: n, n: d, k: k, a: g.floats, lda: k, b: basis.value.floats, ldb: d, c: dx.floats, ldc: d)
    return dx.reshaped(inShape)
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let s = try outputShape(for: x.shape)
    let y = sim.allocate(s)
    let centered = sim.allocate([s[0], dimension])
    sim.transient(GEMM.workspaceBytes(m: s[0], n: components, k: dimension, threads: sim.threads))
    withExtendedLifetime(centered) {}
    if training && BackwardRecording.isOn { sim.notes[ObjectIdentifier(self)] = x.shape }
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let inShape = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? [Int], needInputGradient else { return nil }
    let g = sim.allocate(dy.shape)
    let dx = sim.allocate(inShape)
    sim.transient(GEMM.workspaceBytes(m: dy.shape[0], n: dimension, k: components, threads: sim.threads))
    withExtendedLifetime(g) {}
    return dx
  }
}
