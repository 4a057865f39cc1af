/// What a layer needs of a run spread over several processes (MPI ranks): sums across them. The
/// implementation (TesseraDistributed, over Open MPI) is blocking and in place; a failure there —
/// a rank that died, a timeout — ends the process with a message, so layers need not handle one.
/// Every rank must call the same collectives in the same order.
public protocol Collective: AnyObject {
  /// This process's index, 0 ..< size.
  var rank: Int { get }
  /// The number of processes.
  var size: Int { get }
  /// Element-wise sum over every rank, in place; every rank gets the same result.
  func allreduceSum(_ values: UnsafeMutablePointer<Double>, count: Int)
  func allreduceSum(_ values: UnsafeMutablePointer<Float>, count: Int)
}

extension Collective {
  public func allreduceSum(_ values: inout [Double]) {
    let n = values.count
    values.withUnsafeMutableBufferPointer { allreduceSum($0.baseAddress!, count: n) }
  }

  /// Every rank's `values` (the same count on each), in rank order.
  public func allGather(_ values: [Double]) -> [[Double]] {
    let n = values.count
    var all = [Double](repeating: 0, count: n * size)
    for i in 0..<n { all[rank * n + i] = values[i] }
    if n > 0 { allreduceSum(&all) }
    return (0..<size).map { Array(all[($0 * n)..<(($0 + 1) * n)]) }
  }

  /// The part of `0 ..< count` this rank takes (`share(of:rank:ranks:)`).
  public func share(of count: Int) -> Range<Int> { Tessera.share(of: count, rank: rank, ranks: size) }
}

/// The part of `0 ..< count` that rank `r` of `ranks` takes: contiguous, in rank order, sizes
/// differing by at most one (a data-parallel rank's images of a global batch).
public func share(of count: Int, rank r: Int, ranks: Int) -> Range<Int> {
  let q = count / ranks, extra = count % ranks
  let lo = r * q + min(r, extra)
  return lo..<(lo + q + (r < extra ? 1 : 0))
}
