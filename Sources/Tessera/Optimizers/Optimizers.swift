import TesseraKernels

/// Updates parameters from their gradients. State (momentum, Adam moments) is kept per parameter
/// name, so it can be saved with a checkpoint.
public protocol Optimizer: AnyObject {
  /// One update of every trainable parameter that has a gradient, at learning rate `lr`.
  func step(_ parameters: [(String, Parameter)], lr: Float)
  /// Named state tensors (`<param>.momentum`, `<param>.m`, `<param>.v`) for checkpoints.
  var state: [String: Tensor] { get set }
  /// Updates done so far.
  var steps: Int { get set }
}

/// Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay, in PyTorch's
/// form: g ← ∇ + wd·w; v ← μ·v + g; w ← w − lr·v (Nesterov: w ← w − lr·(g + μ·v)). With a
/// constant learning rate this equals Keras's v ← μ·v − lr·g; w ← w + v.
public final class SGD: Optimizer {
  public var momentum: Float, nesterov: Bool, weightDecay: Float
  public var state: [String: Tensor] = [:]
  public var steps = 0

  public init(momentum: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) {
    precondition(!nesterov || momentum > 0, "Nesterov needs momentum > 0")
    self.momentum = momentum
    self.nesterov = nesterov
    self.weightDecay = weightDecay
  }

  public func step(_ parameters: [(String, Parameter)], lr: Float) {
    for (name, p) in parameters where p.trainable {
      guard let gt = p.grad else { continue }
      let n = p.value.count, w = p.value.floats, g = gt.floats
      if momentum == 0 {
        for i in 0..<n { w[i] -= lr * (g[i] + weightDecay * w[i]) }
        continue
      }
      let key = name + ".momentum"
      let v = (state[key] ?? { let t = Tensor(zeros: p.shape, category: .optimizerState); state[key] = t; return t }()).floats
      for i in 0..<n {
        let gi = g[i] + weightDecay * w[i]
        v[i] = momentum * v[i] + gi
        w[i] -= lr * (nesterov ? gi + momentum * v[i] : v[i])
      }
    }
    steps += 1
  }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter): w ← w − lr·(m̂ / (√v̂ + ε) + wd·w).
public final class AdamW: Optimizer {
  public var beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float
  public var state: [String: Tensor] = [:]
  public var steps = 0

  public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
    self.beta1 = beta1
    self.beta2 = beta2
    self.epsilon = epsilon
    self.weightDecay = weightDecay
  }

  public func step(_ parameters: [(String, Parameter)], lr: Float) {
    steps += 1
    let c1 = 1 - pow(beta1, Float(steps)), c2 = 1 - pow(beta2, Float(steps))
    for (name, p) in parameters where p.trainable {
      guard let gt = p.grad else { continue }
      let n = p.value.count, w = p.value.floats, g = gt.floats
      func slot(_ s: String) -> UnsafeMutablePointer<Float> {
        if let t = state[name + s] { return t.floats }
        let t = Tensor(zeros: p.shape, category: .optimizerState)
        state[name + s] = t
        return t.floats
      }
      let m = slot(".m"), v = slot(".v")
      for i in 0..<n {
        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        w[i] -= lr * ((m[i] / c1) / ((v[i] / c2).squareRoot() + epsilon) + weightDecay * w[i])
      }
    }
  }
}

@inline(__always) func pow(_ a: Float, _ b: Float) -> Float { Float(Foundation.pow(Double(a), Double(b))) }

/// Learning rate as a function of the update step (0-based).
public indirect enum LRSchedule: Sendable, Equatable {
  case constant(Float)
  /// base · gamma^(⌊step / every⌋).
  case step(base: Float, every: Int, gamma: Float)
  /// Cosine from base down to `minimum` over `total` steps, then `minimum`.
  case cosine(base: Float, total: Int, minimum: Float = 0)
  /// Linear ramp from base/steps… up to the inner schedule's value over `steps` steps, then the
  /// inner schedule (counted from the end of the warm-up).
  case warmup(steps: Int, then: LRSchedule)

  public func learningRate(at step: Int) -> Float {
    switch self {
    case .constant(let v): return v
    case let .step(base, every, gamma): return base * pow(gamma, Float(step / max(every, 1)))
    case let .cosine(base, total, minimum):
      guard step < total else { return minimum }
      let t = Double(step) / Double(max(total, 1))
      return minimum + (base - minimum) * Float(0.5 * (1 + Foundation.cos(Double.pi * t)))
    case let .warmup(steps, inner):
      if step < steps { return inner.learningRate(at: 0) * Float(step + 1) / Float(steps) }
      return inner.learningRate(at: step - steps)
    }
  }
}

import Foundation
