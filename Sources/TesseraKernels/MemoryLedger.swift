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
  private var _highWater = 0
  private var currentByCategory = [MemoryCategory: Int]()
  private var peakByCategory = [MemoryCategory: Int]()
  /// Open scopes: the highest `current` seen since each began.
  private var scopes: [Int: Int] = [:]
  private var nextScope = 0

  public init() {}

  public var currentBytes: Int { lock.withLock { _current } }
  public var peakBytes: Int { lock.withLock { _peak } }
  /// The most bytes ever allocated at once in this process (`resetPeak` leaves it): what the block
  /// cache may fill up to, so that in-use plus cached bytes never pass what a run has already held.
  public var highWaterBytes: Int { lock.withLock { _highWater } }
  var currentAndHighWater: (current: Int, highWater: Int) { lock.withLock { (_current, _highWater) } }
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
      if _current > _highWater { _highWater = _current }
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
/// Large blocks (≥ 1 MiB) are not returned to the system at once but kept for reuse in size
/// classes (`BlockCache`), so that a loop making the same shapes step after step — or tile after
/// tile, edge tiles a little smaller — does not page-fault its way through fresh memory each time
/// (PyTorch's caching allocator does the same). The ledger counts the bytes asked for;
/// `BlockCache` bounds what it keeps and what the size classes round up by.
public final class Buffer: @unchecked Sendable {
  public let byteCount: Int
  public let category: MemoryCategory
  public let raw: UnsafeMutableRawPointer
  /// What was taken from the system: `byteCount` rounded up to its size class for large blocks.
  private let blockBytes: Int
  /// Taken from the cache: its pages past `byteCount` may be resident (a larger tensor used them).
  private let reused: Bool
  private let ledger: MemoryLedger

  public init(byteCount: Int, category: MemoryCategory, zeroed: Bool = true, ledger: MemoryLedger = .shared) {
    precondition(byteCount >= 0, "negative allocation")
    self.byteCount = byteCount
    self.category = category
    self.ledger = ledger
    blockBytes = BlockCache.sizeClass(byteCount)
    if let cached = BlockCache.shared.take(blockBytes, for: byteCount, ledger: ledger) {
      raw = cached
      reused = true
      if zeroed { raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount) }
    } else {
      raw = Buffer.systemAllocate(blockBytes)
      reused = false
      BlockCache.shared.countFresh(blockBytes)
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
    if !BlockCache.shared.give(raw, blockBytes, for: byteCount, reused: reused, ledger: ledger) { raw.deallocate() }
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
    // The whole 2 MiB pages inside the block only: a huge page over its tail would make up to
    // 2 MiB past the block's last byte resident (the mapping runs on past it), which nothing counts.
    _ = madvise(p, bytes / hugePage * hugePage, MADV_HUGEPAGE)
    #endif
    return p
  }
}

/// Freed large blocks kept for reuse by size class.
///
/// What it may keep follows the ledger: bytes in use, plus what reused blocks hold beyond their
/// tensors, plus cached bytes stay at or under the most the ledger has ever counted at once (its
/// high-water mark, or `floorBytes`, the planned peak, if higher) plus `limitBytes`. A streamed
/// step frees and re-makes tile tensors tile after tile while its bytes in use sit below the step's
/// peak; the cache keeps them (no page faults, no kernel zeroing of fresh pages) and the process
/// never holds more than its planned peak plus the slack `limitBytes` grants (`limitBlockCache`
/// sets both from a budget). What reused blocks hold beyond their tensors is kept within
/// `limitBytes` itself, so that the bound still holds at a new peak, when nothing is left to evict.
public final class BlockCache: @unchecked Sendable {
  public static let shared = BlockCache()
  static let minimumBytes = 1 << 20
  private let lock = NSLock()
  /// Cached blocks by size class, each list in the order they were freed (`clock` at the time).
  private var blocks: [Int: [(p: UnsafeMutableRawPointer, freed: Int)]] = [:]
  private var clock = 0
  private var _cached = 0
  /// Σ (block − bytes asked for) over the reused blocks in use now.
  private var _rounding = 0
  /// Bytes the cache may hold beyond the ledger's high-water mark (default 2 GiB,
  /// `TESSERA_CACHE_BYTES` overrides; 0 keeps only what fits under the high-water mark;
  /// a negative value disables the cache).
  public var limitBytes: Int = {
    if let s = ProcessInfo.processInfo.environment["TESSERA_CACHE_BYTES"], let v = Int(s) { return v }
    return 2 << 30
  }()

  /// A high-water mark the run is known to reach (its planned peak, with a budget): the cache may
  /// fill up to it from the start instead of waiting for the ledger to climb there (default 0).
  public var floorBytes = 0

  /// The budget, when there is one: the resident memory the process may hold. The bound above
  /// counts the ledger's bytes and the cache's; what the ledger does not see (code, thread stacks,
  /// the heap's small blocks, huge-page tails, image libraries' buffers) is left to the commands'
  /// runtime reserve, and grows with a run (60 MB at 16384², 149 MB on a gigapixel file). With a
  /// ceiling, each fresh large block and each free reads the process's resident bytes
  /// (`MachineMemory.residentBytes`) and, above the ceiling, returns cached blocks to the system
  /// (least recently freed first) and the freed block with them — so the cache, the only part of
  /// the process that can give memory back, gives it back before the budget is passed.
  public var residentCeilingBytes: Int?
  /// Reads resident bytes (a unit test stands in its own figure; `TESSERA_TEST_RESIDENT_EXTRA_BYTES`,
  /// a test hook, adds to the real one so a command's ceiling can be seen at work).
  var residentNow: () -> Int = { MachineMemory.residentBytes() + BlockCache.testResidentExtra }
  static let testResidentExtra = Int(ProcessInfo.processInfo.environment["TESSERA_TEST_RESIDENT_EXTRA_BYTES"] ?? "") ?? 0
  /// Bytes of cached blocks returned to the system because resident memory reached the ceiling.
  public var releasedForCeilingBytes: Int { lock.withLock { _releasedForCeiling } }
  private var _releasedForCeiling = 0

  public var cachedBytes: Int { lock.withLock { _cached } }

  /// Bytes of large blocks taken from the system so far (each one's pages are faulted in and zeroed
  /// by the kernel on first touch): what the cache did not save.
  public var freshBytes: Int { lock.withLock { _fresh } }
  private var _fresh = 0
  func countFresh(_ block: Int) {
    guard block >= Self.minimumBytes else { return }
    lock.withLock { _fresh += block }
  }

  /// The block a request of `bytes` takes: itself below 1 MiB, else rounded up to a sixteenth of
  /// its power of two (at most 6.25 % more), so that edge tiles a few rows short reuse the blocks
  /// of the full tiles.
  static func sizeClass(_ bytes: Int) -> Int {
    guard bytes >= minimumBytes else { return bytes }
    let step = 1 << (Int.bitWidth - 1 - bytes.leadingZeroBitCount - 4)
    return (bytes + step - 1) / step * step
  }

  /// A cached block of `block` bytes for a request of `bytes`, or nil — then room is made for the
  /// request under the bound, the least recently freed cached blocks returned to the system first.
  func take(_ block: Int, for bytes: Int, ledger: MemoryLedger = .shared) -> UnsafeMutableRawPointer? {
    guard block >= Self.minimumBytes else { return nil }
    let (current, highWater) = ledger.currentAndHighWater
    var released: [UnsafeMutableRawPointer] = []
    defer { for p in released { p.deallocate() } }
    return lock.withLock {
      if _rounding + block - bytes <= limitBytes, var list = blocks[block], let e = list.popLast() {
        blocks[block] = list.isEmpty ? nil : list
        _cached -= block
        _rounding += block - bytes
        return e.p
      }
      let inUse = current + bytes, cachedBefore = _cached
      evictOldest(toFit: max(highWater, floorBytes, inUse) + limitBytes - inUse - _rounding, into: &released)
      // The fresh block's pages will be resident too; the blocks just evicted (freed after the
      // lock) will not.
      if let ceiling = residentCeilingBytes, _cached > 0 {
        let over = residentNow() - (cachedBefore - _cached) + bytes - ceiling
        if over > 0 { releaseForCeiling(over, into: &released) }
      }
      return nil
    }
  }

  /// Keeps a freed block if in-use, rounding and cached bytes can stay under the bound — making room
  /// by returning the least recently freed blocks to the system (a loop's hot sizes stay, sizes of
  /// an earlier phase of the step go first); false: free it.
  func give(_ p: UnsafeMutableRawPointer, _ block: Int, for bytes: Int, reused: Bool, ledger: MemoryLedger = .shared) -> Bool {
    guard block >= Self.minimumBytes else { return false }
    let (current, highWater) = ledger.currentAndHighWater
    var released: [UnsafeMutableRawPointer] = []
    defer { for p in released { p.deallocate() } }
    return lock.withLock {
      if reused { _rounding -= block - bytes }
      let room = max(highWater, floorBytes) + limitBytes - current - _rounding - block
      guard limitBytes >= 0, room >= 0 else { return false }
      if let ceiling = residentCeilingBytes {
        let over = residentNow() - ceiling
        // Over the budget: this block goes back to the system, and cached ones for the rest.
        if over > 0 {
          _releasedForCeiling += block
          if over > block { releaseForCeiling(over - block, into: &released) }
          return false
        }
      }
      evictOldest(toFit: room, into: &released)
      clock += 1
      blocks[block, default: []].append((p, clock))
      _cached += block
      return true
    }
  }

  /// Returns at least `bytes` of cached blocks (or all of them), least recently freed first.
  private func releaseForCeiling(_ bytes: Int, into released: inout [UnsafeMutableRawPointer]) {
    let before = _cached
    evictOldest(toFit: _cached - bytes, into: &released)
    _releasedForCeiling += before - _cached
  }

  /// Takes the least recently freed cached blocks out until at most `room` bytes stay cached (they
  /// go to `released`, freed outside the lock). Each size class's list is in freeing order.
  private func evictOldest(toFit room: Int, into released: inout [UnsafeMutableRawPointer]) {
    while _cached > max(0, room), let (size, list) = blocks.min(by: { $0.value[0].freed < $1.value[0].freed }) {
      released.append(list[0].p)
      blocks[size] = list.count == 1 ? nil : Array(list.dropFirst())
      _cached -= size
    }
  }

  /// Bytes in use, what reused blocks hold beyond them, and cached: at most the ledger's
  /// high-water mark plus `limitBytes`.
  func residentBound(ledger: MemoryLedger) -> (resident: Int, bound: Int) {
    let (current, highWater) = ledger.currentAndHighWater
    return lock.withLock { (current + _rounding + _cached, max(highWater, floorBytes) + max(0, limitBytes)) }
  }

  /// Returns every cached block to the system.
  public func empty() {
    lock.withLock {
      for (_, list) in blocks { for e in list { e.p.deallocate() } }
      blocks = [:]
      _cached = 0
    }
  }
}

#if os(Linux)
/// glibc's `mallopt` (malloc.h is not part of the Glibc module).
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif
