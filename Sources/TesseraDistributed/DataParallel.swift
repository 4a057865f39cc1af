import Foundation
import Tessera

/// Data-parallel training, as PyTorch's DistributedDataParallel: every rank holds the whole model
/// and takes its share of the global batch; the gradients are summed over the ranks in buckets of
/// about `bucketBytes`, in reverse order, each started as soon as backward has finished the
/// top-level blocks it holds — so the sums run on the MPI thread while backward goes on — and
/// waited for before the update. Each rank scales its loss gradient by its share of the global
/// batch (b_r / B), so the sum is the gradient of the global batch's mean loss.
///
/// With synchronized BatchNorm (the default) every BatchNorm layer normalises with the global
/// batch's statistics and backpropagates with its gradient sums: N ranks compute what one process
/// computes on the whole batch, up to float rounding. Gradients of parameters smaller than 64 KiB
/// are packed into one buffer per bucket (one collective for all the biases and BatchNorm
/// parameters); larger ones are summed in place, so no gradient is copied and memory is the
/// single process's.
public final class DataParallel {
  public let communicator: Communicator
  public let model: Sequential
  public let bucketBytes: Int
  public let synchronizedBatchNorm: Bool

  struct Bucket {
    /// The lowest top-level block index it holds: when that block's backward is done, it can go.
    var trigger: Int
    var parameters: [Parameter]
    var bytes: Int
  }
  let buckets: [Bucket]
  private var pending: [Communicator.Request] = []
  private var armed = false

  /// Seconds the MPI thread spent on gradient sums, and seconds the training thread waited for them
  /// after backward (the rest was hidden behind backward).
  public private(set) var allreduceSeconds = 0.0
  public private(set) var waitSeconds = 0.0

  public init(model: Sequential, communicator: Communicator, bucketBytes: Int = 25 << 20,
              synchronizedBatchNorm: Bool = true) {
    self.model = model
    self.communicator = communicator
    self.bucketBytes = bucketBytes
    self.synchronizedBatchNorm = synchronizedBatchNorm
    var out = [Bucket](), current = Bucket(trigger: 0, parameters: [], bytes: 0)
    for (i, (_, child)) in model.layers.enumerated().reversed() {
      let ps = child.namedParameters().map(\.1).filter(\.trainable)
      guard !ps.isEmpty else { continue }
      current.trigger = i
      current.parameters += ps
      current.bytes += ps.reduce(0) { $0 + $1.count * 4 }
      if current.bytes >= bucketBytes {
        out.append(current)
        current = Bucket(trigger: 0, parameters: [], bytes: 0)
      }
    }
    if !current.parameters.isEmpty { out.append(current) }
    buckets = out
    if synchronizedBatchNorm { Self.batchNorms(in: model).forEach { $0.collective = communicator } }
    model.onChildBackward = { [unowned self] i in self.childDone(i) }
  }

  /// Every BatchNorm layer of a model, however deeply nested.
  static func batchNorms(in layer: Layer) -> [BatchNorm2D] {
    if let b = layer as? BatchNorm2D { return [b] }
    return layer.children.flatMap { batchNorms(in: $0.1) }
  }

  /// The buckets' sizes in bytes, in the order they are summed.
  public var bucketSizes: [Int] { buckets.map(\.bytes) }

  /// The next backward is the last of an update (the one whose gradients are summed); earlier
  /// micro-batches of gradient accumulation only add up locally.
  public func arm() { armed = true }

  private func childDone(_ i: Int) {
    guard armed else { return }
    for b in buckets where b.trigger == i { pending.append(start(b)) }
  }

  private func start(_ b: Bucket) -> Communicator.Request {
    let small = b.parameters.filter { $0.count * 4 < 64 << 10 }, large = b.parameters.filter { $0.count * 4 >= 64 << 10 }
    let smallGrads = small.map { SendableGradient($0.gradient, $0.count) }
    let largeGrads = large.map { SendableGradient($0.gradient, $0.count) }
    return communicator.submitJob("the gradient allreduce of \(b.parameters.count) parameters (\(b.bytes) bytes)", bytes: b.bytes) {
      let total = smallGrads.reduce(0) { $0 + $1.count }
      if total > 0 {
        var pack = [Float](repeating: 0, count: total)
        var o = 0
        for g in smallGrads { for i in 0..<g.count { pack[o + i] = g.p[i] }; o += g.count }
        pack.withUnsafeMutableBufferPointer { Communicator.sumOnThisThread($0.baseAddress!, count: total) }
        o = 0
        for g in smallGrads { for i in 0..<g.count { g.p[i] = pack[o + i] }; o += g.count }
      }
      for g in largeGrads { Communicator.sumOnThisThread(g.p, count: g.count) }
    }
  }

  /// Waits for this update's sums (after backward). Buckets whose blocks backward never reached
  /// (e.g. no input gradient was needed below them) are summed here.
  public func finish() {
    guard armed else { return }
    armed = false
    for b in buckets.dropFirst(pending.count) { pending.append(start(b)) }
    let t0 = DispatchTime.now().uptimeNanoseconds
    for r in pending { r.wait() }
    waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    allreduceSeconds += pending.reduce(0) { $0 + $1.seconds }
    pending = []
  }

  /// Sums every gradient now (an update outside the usual path, e.g. a partial accumulation group).
  public func sumAll() {
    arm()
    finish()
  }

  /// The global batch's size from this rank's `count`, or nil when some rank has no image in it
  /// (all of its share unreadable): then every rank leaves the batch out.
  public func globalCount(_ count: Int) -> Int? {
    var v = [Double(count), count == 0 ? 1 : 0]
    communicator.allreduceSum(&v)
    return v[1] > 0 ? nil : Int(v[0])
  }

  /// The share of the gradient sums' time that ran while backward was still computing.
  public var hiddenShare: Double {
    allreduceSeconds > 0 ? max(0, min(1, 1 - waitSeconds / allreduceSeconds)) : 0
  }

  /// Weighted sum over the ranks of per-rank means: Σ_r value_r · n_r / Σ n_r.
  public func globalMean(_ value: Double, count: Int) -> Double {
    var v = [value * Double(count), Double(count)]
    communicator.allreduceSum(&v)
    return v[1] > 0 ? v[0] / v[1] : 0
  }
}

struct SendableGradient: @unchecked Sendable {
  let p: UnsafeMutablePointer<Float>
  let count: Int
  init(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
    self.p = p
    self.count = count
  }
}
