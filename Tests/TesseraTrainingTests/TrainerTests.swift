import Foundation
import Tessera
import TesseraKernels
import TesseraTraining
import TestSupport
import XCTest

final class TrainerTests: XCTestCase {
  /// Without BatchNorm, K micro-batches of b accumulate the same gradient as one batch of K·b.
  func testAccumulationEqualsOneLargeBatch() throws {
    func net() -> Sequential {
      let n = Sequential([
        ("conv", Conv2D(inputChannels: 3, outputChannels: 6, kernelSize: 3, stride: 2, padding: .same)),
        ("relu", ReLU()), ("pool", GlobalAvgPool2D()), ("fc", Linear(inputFeatures: 6, outputFeatures: 3)),
      ])
      n.initializeParameters(seed: 4)
      return n
    }
    let x = randomTensor([4, 3, 10, 10], seed: 1), labels = [0, 2, 1, 2]
    let big = net()
    try big.trainingStep(input: x, labels: labels)
    let small = net()
    let per = 3 * 10 * 10
    for (i, half) in [[0, 1], [2, 3]].enumerated() {
      let xi = Tensor(shape: [2, 3, 10, 10], values: Array(x.toArray()[(half[0] * per)..<((half[1] + 1) * per)]))
      try small.trainingStep(input: xi, labels: half.map { labels[$0] }, accumulate: i > 0, gradientScale: 0.5)
    }
    for ((name, a), (_, b)) in zip(big.namedParameters(), small.namedParameters()) where a.trainable {
      assertClose(b.grad!.toArray(), a.grad!.toArray(), rtol: 1e-5, atol: 1e-7, name)
    }
  }

  /// The guard that skips an update: an overflow anywhere in the gradients is caught.
  func testNonFiniteGradientsAreDetected() throws {
    let n = Sequential([("conv", Conv2D(inputChannels: 1, outputChannels: 2, kernelSize: 3, padding: .same)),
                        ("pool", GlobalAvgPool2D())])
    n.initializeParameters(seed: 1)
    try n.trainingStep(input: randomTensor([2, 1, 6, 6], seed: 2), labels: [0, 1])
    XCTAssertTrue(Trainer.gradientsAreFinite(n))
    for bad in [Float.infinity, -.infinity, .nan] {
      let g = n.namedParameters()[0].1.grad!
      let old = g.floats[7]
      g.floats[7] = bad
      XCTAssertFalse(Trainer.gradientsAreFinite(n), "\(bad)")
      g.floats[7] = old
    }
    // An input that overflows gives non-finite gradients: that step would be skipped.
    let x = randomTensor([2, 1, 6, 6], seed: 3)
    x.floats[0] = .greatestFiniteMagnitude
    x.floats[1] = .greatestFiniteMagnitude
    try n.trainingStep(input: x, labels: [0, 1])
    XCTAssertFalse(Trainer.gradientsAreFinite(n))
  }

  func testMetrics() {
    var m = ClassificationMetrics(classes: 3, topK: 2)
    let logits = Tensor(shape: [4, 3], values: [3, 2, 1, 0, 1, 2, 1, 3, 2, 5, 4, 0])
    m.add(logits: logits, labels: [0, 1, 2, 1], loss: 0.5)
    // Predictions 0, 2, 1, 0; top-2 sets {0,1}, {2,1}, {1,2}, {0,1}.
    XCTAssertEqual(m.accuracy, 0.25)
    XCTAssertEqual(m.topKAccuracy, 1)
    XCTAssertEqual(m.confusion, [[1, 0, 0], [1, 0, 1], [0, 1, 0]])
    XCTAssertEqual(m.precision, [0.5, 0, 0])
    XCTAssertEqual(m.recall, [1, 0, 0])
    XCTAssertEqual(m.loss, 0.5)
  }
}
