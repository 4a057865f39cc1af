import Foundation
import Tessera
import TesseraData
import TesseraKernels

/// What happened in one epoch.
public struct EpochLog: Sendable {
  public var epoch: Int
  public var train: ClassificationMetrics
  public var validation: ClassificationMetrics?
  public var seconds: Double
  public var imagesPerSecond: Double
  public var learningRate: Float
  public var skippedFiles: Int
  public var peakBytes: Int
  /// Updates skipped in this epoch because a gradient was not finite.
  public var skippedSteps = 0
}

/// Keras-style hooks; every method has an empty default.
public protocol TrainingCallback: AnyObject {
  func onTrainBegin(_ trainer: Trainer)
  func onEpochBegin(_ epoch: Int, batches: Int)
  func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double)
  func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws
  func onTrainEnd(_ logs: [EpochLog])
}

extension TrainingCallback {
  public func onTrainBegin(_ trainer: Trainer) {}
  public func onEpochBegin(_ epoch: Int, batches: Int) {}
  public func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {}
  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {}
  public func onTrainEnd(_ logs: [EpochLog]) {}
}

/// Stops training when validation accuracy has not improved for `patience` epochs.
public final class EarlyStopping: TrainingCallback {
  public let patience: Int
  private var best = -1.0, bad = 0
  public init(patience: Int) { self.patience = patience }
  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {
    let acc = log.validation?.accuracy ?? log.train.accuracy
    if acc > best { best = acc; bad = 0 } else { bad += 1 }
    if bad >= patience { trainer.stopRequested = true }
  }
}

/// `fit`: batch → forward → loss → backward → update → log, epoch after epoch, with gradient
/// accumulation (K micro-batches of b images make one update with the gradient of the mean over K·b)
/// and an evaluation on the validation loader after every epoch.
public final class Trainer {
  public let model: Sequential
  public let optimizer: Optimizer
  public let schedule: LRSchedule
  public let accumulate: Int
  public let labelSmoothing: Float
  public let classes: Int
  /// Optimizer updates done (carried across a resume).
  public var step = 0
  public var stopRequested = false
  /// Updates skipped because a gradient held inf or NaN (an overflow, e.g. of a 16-bit kept tensor,
  /// or a diverging run): the weights and optimizer state are left as they were, and it is logged.
  /// (Gradients are fp32 in every precision, so no loss scale is needed to keep them from underflowing.)
  public private(set) var skippedSteps = 0

  public init(model: Sequential, optimizer: Optimizer, schedule: LRSchedule, classes: Int, accumulate: Int = 1,
              labelSmoothing: Float = 0) {
    precondition(accumulate >= 1, "accumulate must be ≥ 1")
    self.model = model
    self.optimizer = optimizer
    self.schedule = schedule
    self.classes = classes
    self.accumulate = accumulate
    self.labelSmoothing = labelSmoothing
  }

  /// Trains epochs `startEpoch ..< epochs` (0-based) and returns their logs.
  @discardableResult
  public func fit(train: BatchLoader, validation: BatchLoader? = nil, epochs: Int, startEpoch: Int = 0,
                  callbacks: [TrainingCallback] = []) throws -> [EpochLog] {
    var logs = [EpochLog]()
    callbacks.forEach { $0.onTrainBegin(self) }
    for epoch in startEpoch..<epochs where !stopRequested {
      MemoryLedger.shared.resetPeak()
      let t0 = DispatchTime.now().uptimeNanoseconds
      let it = train.epoch(epoch)
      callbacks.forEach { $0.onEpochBegin(epoch, batches: it.batchCount) }
      var metrics = ClassificationMetrics(classes: classes)
      var micro = 0, b = 0
      var lr = schedule.learningRate(at: step)
      while let batch = try it.next() {
        lr = schedule.learningRate(at: step)
        let last = micro == accumulate - 1
        let r = try model.trainingStep(input: batch.images, labels: batch.labels, optimizer: nil,
                                       lr: lr, labelSmoothing: labelSmoothing, accumulate: micro > 0,
                                       gradientScale: 1 / Float(accumulate))
        if last { update(lr: lr) }
        metrics.add(logits: r.logits, labels: batch.labels, loss: r.loss)
        micro = last ? 0 : micro + 1
        if last { step += 1 }
        b += 1
        let ips = it.imagesPerSecond
        callbacks.forEach { $0.onBatchEnd(epoch, batch: b, of: it.batchCount, running: metrics, imagesPerSecond: ips) }
      }
      if micro > 0 {  // a partial group at the end of the epoch still updates, scaled to its size
        for (_, p) in model.namedParameters() where p.trainable {
          if let g = p.grad { ElementwiseKernels.scale(g.floats, by: Float(accumulate) / Float(micro), count: g.count) }
        }
        update(lr: lr)
        step += 1
      }
      let skippedBefore = skippedThisEpoch
      skippedThisEpoch = 0
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      let val = try validation.map { try evaluate($0) }
      let log = EpochLog(epoch: epoch + 1, train: metrics, validation: val, seconds: seconds,
                         imagesPerSecond: Double(metrics.samples) / max(seconds, 1e-9), learningRate: lr,
                         skippedFiles: it.skipped.count, peakBytes: MemoryLedger.shared.peakBytes,
                         skippedSteps: skippedBefore)
      logs.append(log)
      for c in callbacks { try c.onEpochEnd(log, trainer: self) }
    }
    callbacks.forEach { $0.onTrainEnd(logs) }
    return logs
  }

  private var skippedThisEpoch = 0

  /// The optimizer's step, unless a gradient is not finite.
  private func update(lr: Float) {
    if Self.gradientsAreFinite(model) {
      optimizer.step(model.namedParameters(), lr: lr)
    } else {
      skippedSteps += 1
      skippedThisEpoch += 1
      model.zeroGradients()
    }
  }

  /// Whether every trainable parameter's gradient is finite.
  public static func gradientsAreFinite(_ model: Layer) -> Bool {
    model.namedParameters().allSatisfy { !$0.1.trainable || $0.1.grad.map(isFinite) ?? true }
  }

  static func isFinite(_ t: Tensor) -> Bool {
    let p = t.floats
    var acc: Float = 0
    for i in 0..<t.count { acc += p[i] * 0 }  // inf·0 and NaN·0 are NaN
    return !acc.isNaN
  }

  /// Loss, accuracy and confusion matrix on a loader, in inference mode (running BN statistics).
  public func evaluate(_ loader: BatchLoader) throws -> ClassificationMetrics {
    var m = ClassificationMetrics(classes: classes)
    let it = loader.epoch(0)
    while let b = try it.next() {
      let logits = try model.predict(b.images)
      let loss = try SoftmaxCrossEntropy.compute(logits: logits, labels: b.labels).loss
      m.add(logits: logits, labels: b.labels, loss: loss)
    }
    return m
  }
}
