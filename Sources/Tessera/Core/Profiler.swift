import Dispatch

/// Optional wall-clock accounting per layer path and pass, for `tessera bench train --profile`.
/// Off by default; when off it costs one branch per layer call.
public final class Profiler: @unchecked Sendable {
  public static let shared = Profiler()
  public var enabled = false
  public private(set) var seconds: [String: Double] = [:]
  private var order: [String] = []

  public func reset() {
    seconds = [:]
    order = []
  }

  /// Names of the containers being run, outermost first: keys are their dotted path ("stage1.conv1").
  private var path: [String] = []

  /// body run inside container `name`, whose layers' keys then start with it.
  @inline(__always)
  func within<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
    guard enabled else { return try body() }
    path.append(name)
    defer { path.removeLast() }
    return try body()
  }

  @inline(__always)
  func time<T>(_ key: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
    guard enabled else { return try body() }
    let t0 = DispatchTime.now().uptimeNanoseconds
    let r = try body()
    let k = (path + [key()]).joined(separator: ".")
    if seconds[k] == nil { order.append(k) }
    seconds[k, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    return r
  }

  /// (key, seconds) in first-seen order.
  public var entries: [(String, Double)] { order.map { ($0, seconds[$0]!) } }
}
