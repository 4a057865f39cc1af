import Foundation
import XCTest

/// Runs the built `tessera` binary like a user would, capturing stdout, stderr and the exit code.
public struct CLIResult {
  public var status: Int32
  public var stdout: String
  public var stderr: String
  public init(status: Int32, stdout: String, stderr: String) {
    self.status = status
    self.stdout = stdout
    self.stderr = stderr
  }
}

public enum CLI {
  /// The directory holding the built products (`.build/debug`), found from the test bundle.
  public static var productsDirectory: URL {
    for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") {
      return b.bundleURL.deletingLastPathComponent()
    }
    return Bundle.main.bundleURL
  }

  public static var binary: URL { productsDirectory.appendingPathComponent("tessera") }

  public static func run(_ args: [String], environment: [String: String] = [:], binary other: URL? = nil) throws -> CLIResult {
    let binary = other ?? binary
    guard FileManager.default.isExecutableFile(atPath: binary.path) else {
      throw XCTSkip("tessera binary not built at \(binary.path); run `swift build` first")
    }
    let p = Process()
    p.executableURL = binary
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
    final class Box: @unchecked Sendable { var data = Data() }
    let errBox = Box()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
      errBox.data = err.fileHandleForReading.readDataToEndOfFile()
      group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    let errData = errBox.data
    p.waitUntilExit()
    return CLIResult(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                     stderr: String(decoding: errData, as: UTF8.self))
  }
}
