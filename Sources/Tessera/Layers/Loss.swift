import Foundation

/// Softmax cross-entropy on logits (N, classes) with integer labels, mean over the batch.
/// With label smoothing ε the target is (1 − ε)·one-hot + ε / classes.
public enum SoftmaxCrossEntropy {
  public struct Result {
    public var loss: Float
    /// d loss / d logits, (N, classes).
    public var gradient: Tensor
    /// Softmax probabilities, (N, classes).
    public var probabilities: [Float]
  }

  public enum LabelError: Error, CustomStringConvertible {
    case countMismatch(labels: Int, batch: Int)
    case outOfRange(label: Int, classes: Int, index: Int)
    public var description: String {
      switch self {
      case let .countMismatch(l, b): "\(l) labels for a batch of \(b)"
      case let .outOfRange(l, c, i): "label \(l) at index \(i) is outside 0..<\(c)"
      }
    }
  }

  public static func compute(logits: Tensor, labels: [Int], labelSmoothing: Float = 0) throws -> Result {
    precondition(logits.rank == 2, "logits must be (N, classes)")
    let n = logits.shape[0], k = logits.shape[1]
    guard labels.count == n else { throw LabelError.countMismatch(labels: labels.count, batch: n) }
    for (i, l) in labels.enumerated() where l < 0 || l >= k {
      throw LabelError.outOfRange(label: l, classes: k, index: i)
    }
    let z = logits.floats
    let grad = Tensor(uninitialized: [n, k], category: .activation)
    var probs = [Float](repeating: 0, count: n * k)
    var total = 0.0
    let off = Double(labelSmoothing) / Double(k), on = 1 - Double(labelSmoothing) + off
    for i in 0..<n {
      var m = -Double.infinity
      for j in 0..<k { m = max(m, Double(z[i * k + j])) }
      var s = 0.0
      for j in 0..<k { s += Foundation.exp(Double(z[i * k + j]) - m) }
      let logS = Foundation.log(s)
      for j in 0..<k {
        let logp = Double(z[i * k + j]) - m - logS
        let t = j == labels[i] ? on : off
        total -= t * logp
        let p = Foundation.exp(logp)
        probs[i * k + j] = Float(p)
        grad.floats[i * k + j] = Float((p - t) / Double(n))
      }
    }
    return Result(loss: Float(total / Double(n)), gradient: grad, probabilities: probs)
  }
}
