import Foundation
import Tessera
import TesseraKernels

/// The network split across ranks (GPipe with re-materialisation): rank s runs the consecutive
/// top-level blocks `stages[s]`. The batch goes through in micro-batches: in forward each stage runs
/// a micro-batch without keeping anything for backward, stores its input and sends its output on;
/// in backward it runs each stored input again, keeping what backward needs, takes the gradient of
/// its output from the next stage and sends the gradient of its input back. Micro-batches go in the
/// same order both ways, so BatchNorm's running statistics move as in one process that accumulates
/// the micro-batches' gradients (`--accumulate M` on batches of B/M): the step equals that one.
///
/// Every rank builds the whole model from the same seed (or checkpoint) and then lets go of the other
/// stages' parameters (`releaseOtherStages`); each rank's optimizer updates its own stage only (the
/// others have no gradient).
public final class PipelineParallel {
  public let communicator: Communicator
  public let model: Sequential
  public let stages: [Range<Int>]
  public let microBatches: Int
  let stage: Sequential
  let range: Range<Int>
  /// The stage's BatchNorm layers (their running statistics stay put while a micro-batch is run again).
  let batchNorms: [BatchNorm2D]

  public init(model: Sequential, stages: [Range<Int>], microBatches: Int, communicator: Communicator) throws {
    guard stages.count == communicator.size else {
      throw DistributedError("the pipeline has \(stages.count) stages for \(communicator.size) ranks: start one rank per stage (mpirun -np \(stages.count))")
    }
    self.model = model
    self.stages = stages
    self.microBatches = microBatches
    self.communicator = communicator
    range = stages[communicator.rank]
    stage = Sequential(Array(model.layers[range]))
    batchNorms = DataParallel.batchNorms(in: stage)
  }

  var isFirst: Bool { communicator.rank == 0 }
  var isLast: Bool { communicator.rank == communicator.size - 1 }

  /// One training step on the global batch `input` (held by the first stage; the others may pass
  /// an empty tensor) with `labels` (every rank). Gradients are left in the stage's parameters,
  /// scaled by `gradientScale` (accumulation over updates); every rank gets the loss and logits.
  public func trainingStep(input: Tensor?, inputShape: [Int], labels: [Int], gradientScale: Float = 1,
                           labelSmoothing: Float = 0, accumulate: Bool = false) throws -> StepResult {
    let B = labels.count, M = min(microBatches, B), r = communicator.rank
    if !accumulate { stage.zeroGradients() }
    let parts = (0..<M).map { share(of: B, rank: $0, ranks: M) }
    let inShape = try shape(at: range.lowerBound, inputShape, B)
    let outShape = try shape(at: range.upperBound, inputShape, B)
    // Forward: micro-batches in order, nothing kept but each one's input.
    var stored = [Tensor]()
    for (m, part) in parts.enumerated() {
      let x: Tensor
      if isFirst {
        guard let input else { throw DistributedError("the first pipeline stage needs the batch") }
        x = input.slice(images: part)
      } else {
        x = Tensor(uninitialized: [part.count] + inShape)
        communicator.receive(x.floats, count: x.count, from: r - 1, tag: m)
      }
      stored.append(x)
      if !isLast {
        let y = BackwardRecording.without { stage.forward(x, training: true) }
        communicator.send(y.floats, count: y.count, to: r + 1, tag: m).wait()
      }
    }
    // Backward: the same order; each micro-batch run again, keeping what backward needs.
    let K = outShape.first ?? 0
    let logits: Tensor? = isLast ? Tensor(zeros: [B, K]) : nil  // the last stage's, all micro-batches'
    var lossSum = 0.0
    for (m, part) in parts.enumerated() {
      let x = stored[m]
      stored[m] = Tensor(zeros: [0])  // let go once run
      let dy: Tensor
      if isLast {
        let z = stage.forward(x, training: true)
        let res = try SoftmaxCrossEntropy.compute(logits: z, labels: Array(labels[part]), labelSmoothing: labelSmoothing)
        let scale = gradientScale * Float(part.count) / Float(B)
        ElementwiseKernels.scale(res.gradient.floats, by: scale, count: res.gradient.count)
        (logits!.floats + part.lowerBound * K).update(from: z.floats, count: z.count)
        lossSum += Double(res.loss) * Double(part.count)
        dy = res.gradient
      } else {
        batchNorms.forEach { $0.freezeRunningStatistics = true }
        _ = stage.forward(x, training: true)
        batchNorms.forEach { $0.freezeRunningStatistics = false }
        dy = Tensor(uninitialized: [part.count] + outShape)
        communicator.receive(dy.floats, count: dy.count, from: r + 1, tag: 1000 + m)
      }
      let dx = stage.backward(dy, needInputGradient: !isFirst)
      if !isFirst, let dx { communicator.send(dx.floats, count: dx.count, to: r - 1, tag: 1000 + m).wait() }
    }
    // Every rank gets the loss and logits (the last stage's), for its metrics.
    let k = try model.outputShape(for: [1] + inputShape).last ?? 1
    let all = Tensor(zeros: [B, k])
    if let logits { all.floats.update(from: logits.floats, count: B * k) }
    communicator.allreduceSum(all.floats, count: all.count)
    var loss = [isLast ? lossSum / Double(B) : 0]
    communicator.allreduceSum(&loss)
    let z = all.floats
    let predictions = (0..<B).map { i in (0..<k).max { z[i * k + $0] < z[i * k + $1] } ?? 0 }
    return StepResult(loss: Float(loss[0]), logits: all, probabilities: [], predictions: predictions)
  }

  /// Inference on the global batch (the first stage holds it): logits for every rank.
  public func predict(_ input: Tensor?, inputShape: [Int], batch B: Int) throws -> Tensor {
    let r = communicator.rank
    let inShape = try shape(at: range.lowerBound, inputShape, B)
    var x: Tensor
    if isFirst {
      guard let input else { throw DistributedError("the first pipeline stage needs the batch") }
      x = input
    } else {
      x = Tensor(uninitialized: [B] + inShape)
      communicator.receive(x.floats, count: x.count, from: r - 1, tag: 3000)
    }
    x = stage.forward(x, training: false)
    if !isLast { communicator.send(x.floats, count: x.count, to: r + 1, tag: 3000).wait() }
    let k = try model.outputShape(for: [1] + inputShape).last ?? 1
    let all = Tensor(zeros: [B, k])
    if isLast { all.floats.update(from: x.floats, count: B * k) }
    communicator.allreduceSum(all.floats, count: all.count)
    return all
  }

  /// The stage that runs each top-level block, by name.
  var ownerOfBlock: [String: Int] {
    var d = [String: Int]()
    for (s, r) in stages.enumerated() { for i in r { d[model.layers[i].0] = s } }
    return d
  }

  /// Every parameter of the model (running statistics included) with the stage that owns it.
  var ownedParameters: [(name: String, parameter: Parameter, owner: Int)] {
    let owners = ownerOfBlock
    return model.namedParameters().map { ($0.0, $0.1, owners[String($0.0.split(separator: ".")[0])] ?? 0) }
  }

  /// Rank 0 receives the other stages' parameters and optimizer state, so it can save the whole
  /// model (its memory then holds them all until `releaseGathered`).
  public func gatherToFirst(optimizer: Optimizer) {
    let mine = ownedParameters.filter { $0.owner == communicator.rank }
    // The optimizer's state suffixes (".momentum", ".m", ".v"), the same on every rank.
    let suffixes = Set(optimizer.state.keys.compactMap { key in
      mine.first { key.hasPrefix($0.name + ".") }.map { String(key.dropFirst($0.name.count)) }
    }).sorted()
    for (i, e) in ownedParameters.enumerated() where e.owner != 0 && (communicator.rank == e.owner || communicator.rank == 0) {
      let tensors = [e.parameter.value] + (e.parameter.trainable ? suffixes.map { s in
        optimizer.state[e.name + s] ?? { let t = Tensor(zeros: e.parameter.shape, category: .optimizerState); optimizer.state[e.name + s] = t; return t }()
      } : [])
      for (j, t) in tensors.enumerated() {
        let tag = 4000 + (i * 4 + j) % 3000
        if communicator.rank == e.owner {
          communicator.send(t.floats, count: t.count, to: 0, tag: tag).wait()
        } else {
          communicator.receive(t.floats, count: t.count, from: e.owner, tag: tag)
        }
      }
    }
  }

  /// Lets go of the other stages' parameters and optimizer state (after the model was built or
  /// loaded whole, and after `gatherToFirst`).
  public func releaseOtherStages(optimizer: Optimizer?) {
    for e in ownedParameters where e.owner != communicator.rank {
      e.parameter.releaseValue()
      if let o = optimizer { for key in o.state.keys where key.hasPrefix(e.name + ".") { o.state[key] = nil } }
    }
  }

  /// (C, H, W) at the input of top-level block `i` (i = count: the model's output, without N).
  func shape(at i: Int, _ input: [Int], _ batch: Int) throws -> [Int] {
    var s = [1] + input
    for (_, l) in model.layers.prefix(i) { s = try l.outputShape(for: s) }
    return Array(s.dropFirst())
  }

  /// Sends every parameter gradient of this stage to rank 0 (for `step`'s output), in the model's order.
  public func gatherGradients() {
    for (i, (_, layer)) in model.layers.enumerated() {
      let owner = stages.firstIndex { $0.contains(i) }!
      guard owner != 0 else { continue }
      for (_, p) in layer.namedParameters() where p.trainable {
        if communicator.rank == owner {
          communicator.send(p.gradient, count: p.count, to: 0, tag: 2000 + i).wait()
        } else if communicator.rank == 0 {
          communicator.receive(p.gradient, count: p.count, from: owner, tag: 2000 + i)
        }
      }
    }
  }
}
