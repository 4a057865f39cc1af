import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What an allocation holds, so a run's peak can be explained category by category.
public enum MemoryCategory: String, CaseIterable, Sendable, Codable {
  case parameter, gradient, optimizerState, activation, workspace, data
}

/// Counts every byte of tensor storage and kernel workspace that Tessera allocates: current and
/// peak, process-wide, per category, and per scope. The planner's predictions are proven against it.
///
/// ```swift
/// let (result, peak) = MemoryLedger.shared.measure { try model.step(batch) }
/// ```
public final class MemoryLedger: @unchecked Sendable {
  public static let shared = MemoryLedger()

  private let lock = NSLock()
  private var _current = 0
  private var _peak = 0
  private var currentByCategory = [MemoryCategory: Int]()
  private var peakByCategory = [MemoryCategory: Int]()
  /// Open scopes: the highest `current` seen since each began.
  private var scopes: [Int: Int] = [:]
  private var nextScope = 0

  public init() {}

  public var currentBytes: Int { lock.withLock { _current } }
  public var peakBytes: Int { lock.withLock { _peak } }
  public func currentBytes(_ c: MemoryCategory) -> Int { lock.withLock { currentByCategory[c, default: 0] } }
  public func peakBytes(_ c: MemoryCategory) -> Int { lock.withLock { peakByCategory[c, default: 0] } }

  /// Forgets the process peak: the next peak starts from what is allocated now.
  public func resetPeak() {
    lock.withLock {
      _peak = _current
      for c in MemoryCategory.allCases { peakByCategory[c] = currentByCategory[c, default: 0] }
    }
  }

  func allocated(_ bytes: Int, _ category: MemoryCategory) {
    lock.withLock {
      _current += bytes
      if _current > _peak { _peak = _current }
      let cc = currentByCategory[category, default: 0] + bytes
      currentByCategory[category] = cc
      if cc > peakByCategory[category, default: 0] { peakByCategory[category] = cc }
      for (k, v) in scopes where _current > v { scopes[k] = _current }
    }
  }

  func freed(_ bytes: Int, _ category: MemoryCategory) {
    lock.withLock {
      _current -= bytes
      currentByCategory[category, default: 0] -= bytes
    }
  }

  /// Runs `body` and returns its result with the highest number of bytes allocated at any moment
  /// while it ran (absolute, including what was allocated before it started).
  public func measure<T>(_ body: () throws -> T) rethrows -> (result: T, peakBytes: Int) {
    let id: Int = lock.withLock {
      let id = nextScope
      nextScope += 1
      scopes[id] = _current
      return id
    }
    defer { _ = lock.withLock { scopes.removeValue(forKey: id) } }
    let r = try body()
    let peak = lock.withLock { scopes[id] ?? _current }
    return (r, peak)
  }
}

/// A ledger-counted, 64-byte aligned allocation of raw bytes, zero-initialised unless asked not to
/// be. Freed (and uncounted) when the last reference goes away.
///
/// Large blocks (≥ 1 MiB) are not returned to the system at once but kept in a small cache of
/// exact sizes, so that a training loop allocating the same shapes every step does not page-fault
/// its way through fresh memory each time (PyTorch's caching allocator does the same). The ledger
/// counts bytes in use; `BlockCache.cachedBytes` reports what the cache holds besides.
public final class Buffer: @unchecked Sendable {
  public let byteCount: Int
  public let category: MemoryCategory
  public let raw: UnsafeMutableRawPointer
  private let ledger: MemoryLedger

  public init(byteCount: Int, category: MemoryCategory, zeroed: Bool = true, ledger: MemoryLedger = .shared) {
    precondition(byteCount >= 0, "negative allocation")
    self.byteCount = byteCount
    self.category = category
    self.ledger = ledger
    if let cached = BlockCache.shared.take(byteCount) {
      raw = cached
      if zeroed { raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount) }
    } else {
      raw = Buffer.systemAllocate(byteCount)
      // Fresh pages from the system are not guaranteed zero by `allocate`.
      if zeroed || byteCount < BlockCache.minimumBytes {
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
      }
    }
    ledger.allocated(byteCount, category)
  }

  /// A buffer of `count` Float32 values.
  public convenience init(floats count: Int, category: MemoryCategory = .workspace, zeroed: Bool = true) {
    self.init(byteCount: count * 4, category: category, zeroed: zeroed)
  }

  deinit {
    ledger.freed(byteCount, category)
    if !BlockCache.shared.give(raw, byteCount) { raw.deallocate() }
  }

  public var floats: UnsafeMutablePointer<Float> { raw.assumingMemoryBound(to: Float.self) }
  public var floatCount: Int { byteCount / 4 }

  static let hugePage = 2 << 20

  /// glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, after which
  /// blocks that size come from the heap and their pages are not given back: resident memory then
  /// grows far past the ledger when tile sizes vary. A fixed 1 MiB threshold keeps every large
  /// block mapped and returned to the system on free (the block cache keeps the hot ones); the
  /// trim threshold is raised with it (below).
  static let fixedMapThreshold: Void = {
    #if os(Linux)
    _ = glibcMallopt(-3 /* M_MMAP_THRESHOLD */, 1 << 20)
    // Fixing the threshold also fixes the trim threshold at 128 KiB: every free at the top of the
    // heap then returns pages that the next small allocation faults back in (libjpeg's per-tile
    // buffers: 15 % of a patch read). 32 MiB of small freed blocks may stay resident instead.
    _ = glibcMallopt(-1 /* M_TRIM_THRESHOLD */, 32 << 20)
    #endif
  }()

  /// 64-byte aligned; blocks of 4 MiB and more are 2 MiB-aligned and advised to use transparent huge
  /// pages (as numpy does): physically contiguous 2 MiB runs give the caches a fixed layout and
  /// spare the TLB on the strided reads of packing and convolution.
  static func systemAllocate(_ bytes: Int) -> UnsafeMutableRawPointer {
    _ = fixedMapThreshold
    guard bytes >= 2 * hugePage else { return UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64) }
    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: hugePage)
    #if canImport(Glibc)
    _ = madvise(p, (bytes + hugePage - 1) / hugePage * hugePage, MADV_HUGEPAGE)
    #endif
    return p
  }
}

/// Freed large blocks kept for reuse by exact size, up to `limitBytes` in all.
public final class BlockCache: @unchecked Sendable {
  public static let shared = BlockCache()
  static let minimumBytes = 1 << 20
  private let lock = NSLock()
  private var blocks: [Int: [UnsafeMutableRawPointer]] = [:]
  private var _cached = 0
  /// Upper bound on the bytes held for reuse (default 2 GiB, `TESSERA_CACHE_BYTES` overrides; 0 disables).
  public var limitBytes: Int = {
    if let s = ProcessInfo.processInfo.environment["TESSERA_CACHE_BYTES"], let v = Int(s), v >= 0 { return v }
    return 2 << 30
  }()

  public var cachedBytes: Int { lock.withLock { _cached } }

  func take(_ bytes: Int) -> UnsafeMutableRawPointer? {
    guard bytes >= Self.minimumBytes else { return nil }
    return lock.withLock {
      guard var list = blocks[bytes], let p = list.popLast() else { return nil }
      blocks[bytes] = list
      _cached -= bytes
      return p
    }
  }

  func give(_ p: UnsafeMutableRawPointer, _ bytes: Int) -> Bool {
    guard bytes >= Self.minimumBytes else { return false }
    return lock.withLock {
      guard _cached + bytes <= limitBytes else { return false }
      blocks[bytes, default: []].append(p)
      _cached += bytes
      return true
    }
  }

  /// Returns every cached block to the system.
  public func empty() {
    lock.withLock {
      for (_, list) in blocks { for p in list { p.deallocate() } }
      blocks = [:]
      _cached = 0
    }
  }
}

#if os(Linux)
/// glibc's `mallopt` (malloc.h is not part of the Glibc module).
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif
