import Foundation

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

/// A ledger-counted, 64-byte aligned, zero-initialised allocation of raw bytes. Freed (and uncounted)
/// when the last reference goes away.
public final class Buffer: @unchecked Sendable {
  public let byteCount: Int
  public let category: MemoryCategory
  public let raw: UnsafeMutableRawPointer
  private let ledger: MemoryLedger

  public init(byteCount: Int, category: MemoryCategory, ledger: MemoryLedger = .shared) {
    precondition(byteCount >= 0, "negative allocation")
    self.byteCount = byteCount
    self.category = category
    self.ledger = ledger
    raw = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    ledger.allocated(byteCount, category)
  }

  /// A buffer of `count` Float32 values.
  public convenience init(floats count: Int, category: MemoryCategory = .workspace) {
    self.init(byteCount: count * 4, category: category)
  }

  deinit {
    raw.deallocate()
    ledger.freed(byteCount, category)
  }

  public var floats: UnsafeMutablePointer<Float> { raw.assumingMemoryBound(to: Float.self) }
  public var floatCount: Int { byteCount / 4 }
}
