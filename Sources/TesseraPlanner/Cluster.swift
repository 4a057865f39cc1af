import Tessera

/// What a step would take spread over `ranks` machines joined by a `linkGbps` link: the measured
/// single-process compute divided as the parallel mode divides it, plus the collectives' time from
/// a ring allreduce, which sends 2(N − 1)/N of the summed bytes from each rank in 2(N − 1) messages
/// (sums of a few numbers, such as synchronized BatchNorm's: ⌈log2 N⌉ messages).
public struct ClusterEstimate: Sendable, Codable, Equatable {
  public var parallel: String
  public var ranks: Int
  public var linkGbps: Double
  /// Seconds per message on the link (latency), and seconds of one process's step (measured).
  public var latencySeconds: Double
  public var singleStepSeconds: Double
  /// Each rank's compute per step.
  public var computeSeconds: Double
  /// Bytes each rank puts into allreduces per step, and bytes it sends for them.
  public var allreduceBytes: Int
  public var bytesSent: Int
  public var messages: Int
  public var commSeconds: Double
  /// Compute then communication, and with the gradient sums overlapped with backward (data: about
  /// two thirds of a step is backward; tiles' sums are blocking, so the same).
  public var secondsPerStep: Double
  public var secondsPerStepOverlapped: Double
  /// One process's step time over the overlapped time, and that per rank.
  public var speedup: Double
  public var efficiency: Double
}

extension Planner {
  /// Data-parallel: each rank computes ⌈B/N⌉ of the B images; the gradients (`plan.gradientBytes`)
  /// are summed in buckets of `bucketBytes`, which can overlap backward. With synchronized
  /// BatchNorm each BatchNorm layer adds three small blocking sums (two in forward, one in
  /// backward), which cannot.
  public static func dataParallelEstimate(plan: Plan, stepSeconds: Double, ranks: Int, linkGbps: Double,
                                          bucketBytes: Int = 25 << 20, latency: Double = 20e-6,
                                          synchronizedBatchNorm: Bool = true) -> ClusterEstimate {
    let n = max(ranks, 1), b = max(plan.batch, 1)
    let local = Double((b + n - 1) / n) / Double(b)
    let compute = stepSeconds * local
    let payload = plan.gradientBytes
    let buckets = max(1, (payload + bucketBytes - 1) / bucketBytes) + 1  // + the packed small parameters
    let batchNorms = synchronizedBatchNorm ? plan.layers.filter { $0.kind.hasPrefix("BatchNorm") }.count : 0
    return estimate("data", n, linkGbps, latency, stepSeconds, compute, payload, buckets, overlapShare: 2.0 / 3,
                    blockingMessages: 3 * batchNorms)
  }

  /// Tile-parallel: the streamed segments' share `streamedShare` of the step divides over the ranks,
  /// the rest runs on every rank; summed are the segments' outputs, their weight gradients, their
  /// BatchNorm sums and, with a second segment, its input gradient.
  public static func tileParallelEstimate(model: Sequential, plan: Plan, stepSeconds: Double, streamedShare: Double,
                                          ranks: Int, linkGbps: Double, latency: Double = 20e-6) throws -> ClusterEstimate {
    let n = max(ranks, 1)
    let s = min(max(streamedShare, 0), 1)
    let compute = stepSeconds * (s / Double(n) + (1 - s))
    var payload = 0, messages = 0
    var shape = [plan.batch] + plan.input
    for (i, (_, layer)) in model.layers.enumerated() {
      let out = try layer.outputShape(for: shape)
      if let st = layer as? Streamed {
        let weights = st.segment.namedParameters().map(\.1).filter(\.trainable)
        payload += out.reduce(4, *) + weights.reduce(0) { $0 + $1.count * 4 }
        messages += 1 + weights.count
        let bns = st.batchNorms.map { (st.leaves[$0] as! BatchNorm2D).channels }
        // statistics (3C + 1 per rank, gathered) in forward, gradient sums (2C) in backward
        payload += bns.reduce(0) { $0 + (3 * $1 + 1) * 8 * n + 2 * $1 * 8 }
        messages += 2 * bns.count
        if i > 0 { payload += shape.reduce(4, *); messages += 1 }  // the input gradient of a later segment
      }
      shape = out
    }
    return estimate("tiles", n, linkGbps, latency, stepSeconds, compute, payload, messages, overlapShare: 0)
  }

  /// `messages` collectives carry the payload (they may overlap `overlapShare` of the compute);
  /// `blockingMessages` more carry next to nothing and cannot overlap.
  static func estimate(_ mode: String, _ n: Int, _ gbps: Double, _ latency: Double, _ t1: Double, _ compute: Double,
                       _ payload: Int, _ messages: Int, overlapShare: Double, blockingMessages: Int = 0) -> ClusterEstimate {
    let sent = n > 1 ? Int(Double(payload) * 2 * Double(n - 1) / Double(n)) : 0
    let ring = n > 1 ? 2 * Double(n - 1) * latency : 0
    // A sum of a few numbers goes by recursive doubling: ⌈log2 N⌉ messages.
    let doubling = n > 1 ? Double(Int.bitWidth - (n - 1).leadingZeroBitCount) * latency : 0
    let hideable = Double(messages) * ring + Double(sent) * 8 / (gbps * 1e9), blocking = Double(blockingMessages) * doubling
    let comm = n > 1 ? hideable + blocking : 0
    let serial = compute + comm
    let overlapped = compute + blocking + max(0, hideable - overlapShare * compute)
    return ClusterEstimate(parallel: mode, ranks: n, linkGbps: gbps, latencySeconds: latency, singleStepSeconds: t1,
                           computeSeconds: compute, allreduceBytes: n > 1 ? payload : 0, bytesSent: sent,
                           messages: n > 1 ? messages + blockingMessages : 0,
                           commSeconds: comm, secondsPerStep: serial, secondsPerStepOverlapped: overlapped,
                           speedup: t1 / overlapped, efficiency: t1 / overlapped / Double(n))
  }
}
