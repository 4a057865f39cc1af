import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraDistributed

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

/// A run that cannot go on: a diverged loss, a head that does not match the classes, too many
/// unreadable files.
public struct TrainingError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// Training stopped on request (SIGINT/SIGTERM) after a complete update; callbacks have saved it.
public struct TrainingInterrupted: Error, CustomStringConvertible {
  public let epoch: Int, batchesDone: Int, batches: Int
  public var description: String {
    "interrupted in epoch \(epoch + 1) after batch \(batchesDone) of \(batches); --resume continues from the next batch"
  }
}

/// Keras-style hooks; every method has an empty default.
public protocol TrainingCallback: AnyObject {
  func onTrainBegin(_ trainer: Trainer)
  func onEpochBegin(_ epoch: Int, batches: Int)
  func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double)
  func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws
  func onTrainEnd(_ logs: [EpochLog])
  /// Training stops inside `epoch` (0-based) after `batchesDone` batches, at an update boundary.
  func onInterrupt(epoch: Int, batchesDone: Int, metrics: ClassificationMetrics, skippedFiles: Int, trainer: Trainer) throws
}

extension TrainingCallback {
  public func onTrainBegin(_ trainer: Trainer) {}
  public func onEpochBegin(_ epoch: Int, batches: Int) {}
  public func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {}
  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {}
  public func onTrainEnd(_ logs: [EpochLog]) {}
  public func onInterrupt(epoch: Int, batchesDone: Int, metrics: ClassificationMetrics, skippedFiles: Int, trainer: Trainer) throws {}
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
  /// The loss of the last batch and the learning rate it was trained at (per-step logging).
  public private(set) var lastBatchLoss: Float = .nan
  public private(set) var lastLearningRate: Float = 0
  /// Updates skipped because a gradient held inf or NaN (an overflow, e.g. of a 16-bit kept tensor,
  /// or a diverging run): the weights and optimizer state are left as they were, and it is logged.
  /// (Gradients are fp32 in every precision, so no loss scale is needed to keep them from underflowing.)
  public private(set) var skippedSteps = 0
  /// An epoch in which more than this share of the files could not be read fails (one in which
  /// every file failed always does).
  public var maxSkippedShare = 1.0
  /// Polled after every update; true stops training there (`TrainingInterrupted`).
  public var interruptRequested: () -> Bool = { false }
  /// Data-parallel training (under mpirun): the loaders give this rank's share of each batch
  /// (`BatchLoader.shard`); gradients are summed over the ranks before each update, metrics are
  /// every rank's together, and a stop asked of any rank stops all of them at the same update.
  public var dataParallel: DataParallel?
  /// Pipeline training (under mpirun): every rank reads the same batches; the network's stages run on
  /// the ranks in micro-batches; rank 0 gathers every stage's weights and optimizer state for the
  /// callbacks (checkpoints) and lets go of them after.
  public var pipeline: PipelineParallel?
  /// The processes of a run spread over ranks, if any.
  var communicator: Communicator? { dataParallel?.communicator ?? pipeline?.communicator }
  /// Batches left out on every rank because one rank's share could not be read at all.
  public private(set) var batchesLeftOut = 0

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
                  resumeFrom partial: TrainingState? = nil, callbacks: [TrainingCallback] = []) throws -> [EpochLog] {
    var logs = [EpochLog]()
    try checkHead(train)
    callbacks.forEach { $0.onTrainBegin(self) }
    for epoch in startEpoch..<epochs where !stopRequested {
      MemoryLedger.shared.resetPeak()
      let t0 = DispatchTime.now().uptimeNanoseconds
      // A run interrupted inside this epoch continues after its last complete update.
      let resumed = epoch == startEpoch ? partial.flatMap { p in p.batchesDone.map { ($0, p) } } : nil
      let it = train.epoch(epoch, from: resumed?.0 ?? 0)
      callbacks.forEach { $0.onEpochBegin(epoch, batches: it.batchCount) }
      var metrics = resumed?.1.partialMetrics ?? ClassificationMetrics(classes: classes)
      let skippedBefore = resumed?.1.partialSkippedFiles ?? 0
      var micro = 0, b = resumed?.0 ?? 0
      var lr = schedule.learningRate(at: step)
      while let batch = try it.next() {
        lr = schedule.learningRate(at: step)
        let last = micro == accumulate - 1
        // Data-parallel: this rank's share of the global batch, scaled so the sum over the ranks is
        // the global mean's gradient. A batch one rank could not read at all is left out by all.
        var scale = 1 / Float(accumulate)
        if let dp = dataParallel {
          guard let total = dp.globalCount(batch.labels.count) else {
            batchesLeftOut += 1
            b += 1
            continue
          }
          scale *= Float(batch.labels.count) / Float(total)
          if last { dp.arm() }
        }
        let r = try pipeline.map {
          try $0.trainingStep(input: batch.images, inputShape: Array(batch.images.shape.dropFirst()), labels: batch.labels,
                              gradientScale: scale, labelSmoothing: labelSmoothing, accumulate: micro > 0)
        } ?? batch.source.map {
          try model.trainingStep(source: $0, labels: batch.labels, optimizer: nil, lr: lr, labelSmoothing: labelSmoothing,
                                 accumulate: micro > 0, gradientScale: scale)
        } ?? model.trainingStep(input: batch.images, labels: batch.labels, optimizer: nil,
                                lr: lr, labelSmoothing: labelSmoothing, accumulate: micro > 0,
                                gradientScale: scale)
        if last { dataParallel?.finish() }
        var batchMetrics = ClassificationMetrics(classes: classes)
        batchMetrics.add(logits: r.logits, labels: batch.labels, loss: r.loss)
        if let dp = dataParallel { batchMetrics = batchMetrics.summed(over: dp.communicator) }
        let loss = Float(batchMetrics.loss)
        guard loss.isFinite else {
          let names = batch.urls.prefix(3).map(\.lastPathComponent).joined(separator: ", ")
          throw TrainingError("the loss is \(loss) in epoch \(epoch + 1), batch \(b + 1) (\(names)\(batch.urls.count > 3 ? ", …" : "")) at learning rate \(lr): training diverged. Nothing of this epoch was saved; the run folder holds the last complete epoch. Lower --lr (or add --warmup) and start again, or --resume")
        }
        if last { update(lr: lr) }
        metrics.add(batchMetrics)
        lastBatchLoss = loss
        lastLearningRate = lr
        micro = last ? 0 : micro + 1
        if last { step += 1 }
        b += 1
        let ips = it.imagesPerSecond * Double(dataParallel?.communicator.size ?? 1)  // every rank's
        callbacks.forEach { $0.onBatchEnd(epoch, batch: b, of: it.batchCount, running: metrics, imagesPerSecond: ips) }
        if micro == 0 && b < it.batchCount + (resumed?.0 ?? 0) && stopAsked() {
          pipeline?.gatherToFirst(optimizer: optimizer)
          for c in callbacks {
            try c.onInterrupt(epoch: epoch, batchesDone: b, metrics: metrics, skippedFiles: skippedBefore + it.skipped.count, trainer: self)
          }
          throw TrainingInterrupted(epoch: epoch, batchesDone: b, batches: it.batchCount + (resumed?.0 ?? 0))
        }
      }
      var files = it.imageCount, skippedCount = it.skipped.count
      if let dp = dataParallel {  // every rank's files
        var v = [Double(files), Double(skippedCount)]
        dp.communicator.allreduceSum(&v)
        (files, skippedCount) = (Int(v[0]), Int(v[1]))
      }
      if files > 0 && (skippedCount == files || Double(skippedCount) > maxSkippedShare * Double(files)) {
        let first = it.skipped.first.map { " (first: \($0.reason))" } ?? ""
        throw TrainingError("\(skippedCount) of \(files) training images could not be read in epoch \(epoch + 1)\(first); more than the \(Int(maxSkippedShare * 100)) % allowed. Fix or remove them, or raise --max-skipped")
      }
      if micro > 0 {  // a partial group at the end of the epoch still updates, scaled to its size
        for (_, p) in model.namedParameters() where p.trainable {
          if let g = p.grad { ElementwiseKernels.scale(g.floats, by: Float(accumulate) / Float(micro), count: g.count) }
        }
        dataParallel?.sumAll()
        update(lr: lr)
        step += 1
      }
      let skippedUpdates = skippedThisEpoch
      skippedThisEpoch = 0
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      let val = try validation.map { try evaluate($0) }
      let log = EpochLog(epoch: epoch + 1, train: metrics, validation: val, seconds: seconds,
                         imagesPerSecond: Double(metrics.samples - (resumed?.1.partialMetrics?.samples ?? 0)) / max(seconds, 1e-9),
                         learningRate: lr,
                         skippedFiles: skippedBefore + skippedCount, peakBytes: MemoryLedger.shared.peakBytes,
                         skippedSteps: skippedUpdates)
      logs.append(log)
      pipeline?.gatherToFirst(optimizer: optimizer)
      for c in callbacks { try c.onEpochEnd(log, trainer: self) }
      pipeline?.releaseOtherStages(optimizer: optimizer)
    }
    callbacks.forEach { $0.onTrainEnd(logs) }
    return logs
  }

  private var skippedThisEpoch = 0

  /// Whether training should stop at this update: asked of this process, or of any rank.
  private func stopAsked() -> Bool {
    let mine = interruptRequested()
    return communicator.map { $0.any(mine) } ?? mine
  }

  /// The optimizer's step, unless a gradient is not finite.
  private func update(lr: Float) {
    // Pipeline ranks hold different gradients: they skip an update together or not at all.
    let finite = Self.gradientsAreFinite(model)
    if pipeline.map({ !$0.communicator.any(!finite) }) ?? finite {
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

  /// Checks, before anything runs, that the model maps the loader's images to one score per class.
  public func checkHead(_ loader: BatchLoader) throws {
    let p = loader.pipeline
    guard p.policy != .none else { return }
    try Self.checkHead(model, input: [p.channels, p.height, p.width], classes: classes)
  }

  /// Refuses a model that does not map (C, H, W) images to one score per class, naming both.
  public static func checkHead(_ model: Layer, input: [Int], classes: Int) throws {
    let out: [Int]
    do { out = try model.outputShape(for: [1] + input) } catch {
      throw TrainingError("the model cannot take \(input.map(String.init).joined(separator: "×")) images: \(error)")
    }
    guard out.count == 2, out[1] == classes else {
      throw TrainingError("the head gives \(out.count == 2 ? "\(out[1]) scores" : "output \(out.dropFirst().map(String.init).joined(separator: "×"))") per image but the data has \(classes) classes; give the last layer \(classes) outputs")
    }
  }

  /// Loss, accuracy and confusion matrix on a loader, in inference mode (running BN statistics).
  public func evaluate(_ loader: BatchLoader) throws -> ClassificationMetrics {
    try checkHead(loader)
    var m = ClassificationMetrics(classes: classes)
    let it = loader.epoch(0)
    while let b = try it.next() {
      if b.labels.isEmpty { continue }  // a rank's share that could not be read
      let logits = try pipeline.map { try $0.predict(b.images, inputShape: Array(b.images.shape.dropFirst()), batch: b.labels.count) }
        ?? b.source.map { try model.predict(source: $0) } ?? model.predict(b.images)
      let loss = try SoftmaxCrossEntropy.compute(logits: logits, labels: b.labels).loss
      m.add(logits: logits, labels: b.labels, loss: loss)
    }
    return dataParallel.map { m.summed(over: $0.communicator) } ?? m
  }
}
