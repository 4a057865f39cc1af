import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A size that cannot be computed or held: an overflow, a dimension out of range, or more than the
/// machine can give. Thrown before anything is allocated.
public struct SizeError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// Overflow-safe size arithmetic and the ranges every shape is checked against before planning or
/// allocating. A tensor of more than `maxElements` values (2⁴⁰: 4 TiB of fp32) is refused; a single
/// side above `maxSide` pixels (2²⁴) too.
public enum Limits {
  public static let maxElements = 1 << 40
  public static let maxSide = 1 << 24
  public static let maxChannels = 1 << 16
  public static let maxBatch = 1 << 20

  /// The product, or nil when a factor is negative or it overflows.
  public static func product(_ xs: [Int]) -> Int? {
    var p = 1
    for x in xs {
      guard x >= 0 else { return nil }
      let (r, o) = p.multipliedReportingOverflow(by: x)
      if o { return nil }
      p = r
    }
    return p
  }

  /// Checks a shape's dimensions and element count: every dimension in 1…`maxDimension`, the count at
  /// most `maxElements`; `what` names it in the error.
  @discardableResult
  public static func check(_ shape: [Int], _ what: String, maxDimension: Int = Limits.maxSide) throws -> Int {
    for d in shape where d < 1 || d > maxDimension {
      throw SizeError("\(what) \(shape): every dimension must be between 1 and \(maxDimension), got \(d)")
    }
    guard let n = product(shape), n <= maxElements else {
      throw SizeError("\(what) \(shape) holds more than 2^40 values; nothing this size can be held or planned")
    }
    return n
  }

  /// Checks one number given by a user: within `range`, named in the error.
  public static func check(_ value: Int, in range: ClosedRange<Int>, _ name: String) throws {
    guard range.contains(value) else {
      throw SizeError("\(name) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
    }
  }
}

/// What memory this machine (or its cgroup) can give the process: the default budget when none is
/// given, so a run that cannot fit is refused before it starts rather than ending in "failed to
/// allocate".
public enum MachineMemory {
  /// min(MemAvailable + this process's resident bytes, the cgroup's memory.max), or physical memory
  /// where /proc is not there.
  public static func availableBytes() -> Int {
    var best = Int(ProcessInfo.processInfo.physicalMemory)
    if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
      for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        if kb > 0 { best = min(best, kb * 1024 + residentBytes()) }
      }
    }
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
      if let s = try? String(contentsOfFile: path, encoding: .utf8),
         let v = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0
      {
        best = min(best, v)
      }
    }
    return best
  }

  /// This process's resident set now (bytes), 0 where /proc is not there. One `pread` of
  /// /proc/self/statm on a descriptor kept open (a few microseconds): the block cache asks it on
  /// each large allocation and free when a budget is set (`BlockCache.residentCeilingBytes`).
  public static func residentBytes() -> Int {
    #if os(Linux)
    guard statm >= 0 else { return 0 }
    return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 128) { buf -> Int in
      let n = pread(statm, buf.baseAddress, 127, 0)
      guard n > 0 else { return 0 }
      // "size resident shared …" in pages: the second field.
      var field = 0, value = 0, i = 0
      while i < n {
        let c = buf[i]
        if c == 0x20 { if field == 1 { break }; field += 1; value = 0 } else if c >= 0x30 && c <= 0x39 { value = value &* 10 &+ Int(c - 0x30) }
        i += 1
      }
      return field == 1 ? value * pageSize : 0
    }
    #else
    return 0
    #endif
  }

  #if os(Linux)
  private static let statm: Int32 = open("/proc/self/statm", O_RDONLY)
  private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
  #endif
}
