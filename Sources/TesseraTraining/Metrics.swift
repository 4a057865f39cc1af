import Tessera

/// Classification metrics accumulated over batches: confusion matrix (rows = true class, columns =
/// predicted), top-1 and top-k accuracy, per-class precision and recall, mean loss.
public struct ClassificationMetrics: Sendable, Codable, Equatable {
  public let classes: Int
  public let topK: Int
  public private(set) var confusion: [[Int]]
  public private(set) var samples = 0
  public private(set) var topKHits = 0
  private var lossSum = 0.0

  public init(classes: Int, topK: Int = 3) {
    self.classes = classes
    self.topK = max(1, min(topK, classes))
    confusion = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
  }

  /// Adds a batch: logits (N, classes), labels, and the batch's mean loss.
  public mutating func add(logits: Tensor, labels: [Int], loss: Float) {
    let n = labels.count, k = logits.shape[1], z = logits.floats
    for i in 0..<n {
      let row = (0..<k).map { z[i * k + $0] }
      let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }
      confusion[labels[i]][order[0]] += 1
      if order.prefix(topK).contains(labels[i]) { topKHits += 1 }
    }
    samples += n
    lossSum += Double(loss) * Double(n)
  }

  /// Adds another set of the same classes (another rank's, another batch's).
  public mutating func add(_ o: ClassificationMetrics) {
    precondition(o.classes == classes, "metrics of \(o.classes) and \(classes) classes")
    for i in 0..<classes { for j in 0..<classes { confusion[i][j] += o.confusion[i][j] } }
    samples += o.samples
    topKHits += o.topKHits
    lossSum += o.lossSum
  }

  /// The sum of every rank's metrics (data-parallel: each rank saw its share of the images).
  public func summed(over c: Collective) -> ClassificationMetrics {
    var v = confusion.flatMap { $0.map(Double.init) } + [Double(samples), Double(topKHits), lossSum]
    c.allreduceSum(&v)
    var m = self
    let k = classes
    for i in 0..<k { for j in 0..<k { m.confusion[i][j] = Int(v[i * k + j]) } }
    m.samples = Int(v[k * k])
    m.topKHits = Int(v[k * k + 1])
    m.lossSum = v[k * k + 2]
    return m
  }

  public var loss: Double { samples == 0 ? 0 : lossSum / Double(samples) }
  public var accuracy: Double {
    samples == 0 ? 0 : Double((0..<classes).reduce(0) { $0 + confusion[$1][$1] }) / Double(samples)
  }
  public var topKAccuracy: Double { samples == 0 ? 0 : Double(topKHits) / Double(samples) }
  /// Of the images predicted as class c, the share that are c (0 when none predicted).
  public var precision: [Double] {
    (0..<classes).map { c in
      let predicted = (0..<classes).reduce(0) { $0 + confusion[$1][c] }
      return predicted == 0 ? 0 : Double(confusion[c][c]) / Double(predicted)
    }
  }
  /// Of the images of class c, the share predicted as c.
  public var recall: [Double] {
    (0..<classes).map { c in
      let actual = confusion[c].reduce(0, +)
      return actual == 0 ? 0 : Double(confusion[c][c]) / Double(actual)
    }
  }

  public var json: [String: Any] {
    ["loss": loss, "accuracy": accuracy, "top\(topK)Accuracy": topKAccuracy, "precision": precision,
     "recall": recall, "confusion": confusion, "samples": samples]
  }
}
