import Dispatch
import Foundation
import Synchronization

/// The engine's thread pool settings. The number of worker threads comes from `TESSERA_THREADS`
/// when set, else the number of active processors; the CLI's `--threads` overrides it.
public enum Parallel {
  nonisolated(unsafe) private static var _threads: Int = {
    if let s = ProcessInfo.processInfo.environment["TESSERA_THREADS"], let v = Int(s), v > 0 { return v }
    return max(1, ProcessInfo.processInfo.activeProcessorCount)
  }()

  /// Worker threads used by every kernel (≥ 1).
  public static var threadCount: Int {
    get { _threads }
    set { _threads = max(1, newValue) }
  }

  /// Splits `0..<count` into at most `threadCount` contiguous ranges and runs `body(worker, range)`
  /// for each, concurrently. `worker` is in `0..<workers` where `workers` is returned first by
  /// `workers(for:)`; ranges are never empty.
  public static func forRanges(_ count: Int, maxWorkers: Int? = nil, _ body: (Int, Range<Int>) -> Void) {
    guard count > 0 else { return }
    let w = workers(for: count, maxWorkers: maxWorkers)
    if w == 1 {
      body(0, 0..<count)
      return
    }
    DispatchQueue.concurrentPerform(iterations: w) { i in
      let lo = count * i / w
      let hi = count * (i + 1) / w
      if lo < hi { body(i, lo..<hi) }
    }
  }

  /// Runs `body(worker, range)` over `0..<count` in chunks of `chunk` items handed out on demand, so
  /// a worker whose core is slowed (a shared machine) takes fewer chunks instead of holding up the
  /// others. Chunks are contiguous and in increasing order within each worker.
  public static func forChunks(
    _ count: Int, chunk: Int, maxWorkers: Int? = nil, _ body: (Int, Range<Int>) -> Void
  ) {
    guard count > 0 else { return }
    let chunk = max(1, chunk)
    let chunks = (count + chunk - 1) / chunk
    let w = workers(for: chunks, maxWorkers: maxWorkers)
    if w == 1 {
      body(0, 0..<count)
      return
    }
    let next = Counter()
    DispatchQueue.concurrentPerform(iterations: w) { i in
      while true {
        let c = next.take()
        guard c < chunks else { break }
        body(i, (c * chunk)..<min(count, (c + 1) * chunk))
      }
    }
  }

  final class Counter: @unchecked Sendable {
    private let value = Atomic<Int>(0)
    func take() -> Int { value.add(1, ordering: .relaxed).oldValue }
  }

  /// How many workers `forRanges(count)` uses.
  public static func workers(for count: Int, maxWorkers: Int? = nil) -> Int {
    max(1, min(count, threadCount, maxWorkers ?? Int.max))
  }
}

/// Lets a raw pointer cross into a concurrent closure. The kernels guarantee disjoint writes.
public struct SendablePointer<T>: @unchecked Sendable {
  public let p: UnsafeMutablePointer<T>
  public init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
