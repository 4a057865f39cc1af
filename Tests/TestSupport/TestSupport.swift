import Foundation
import TesseraKernels
import XCTest

/// Random floats in [-1, 1) from a seed.
public func randomFloats(_ count: Int, seed: UInt64) -> [Float] {
  var g = SeededGenerator(seed: seed)
  return (0..<count).map { _ in g.nextUniform() * 2 - 1 }
}

/// Asserts |a - b| ≤ atol + rtol·|b| element by element, reporting the worst element.
public func assertClose(
  _ a: [Float], _ b: [Float], rtol: Float = 1e-4, atol: Float = 1e-5, _ what: String = "",
  file: StaticString = #filePath, line: UInt = #line
) {
  XCTAssertEqual(a.count, b.count, "\(what): sizes differ", file: file, line: line)
  var worst = 0, worstExcess: Float = 0
  for i in 0..<min(a.count, b.count) {
    let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
    if excess > worstExcess || !a[i].isFinite {
      worst = i
      worstExcess = a[i].isFinite ? excess : .infinity
    }
  }
  if worstExcess > 0 {
    XCTFail("\(what): element \(worst) is \(a[worst]), expected \(b[worst])", file: file, line: line)
  }
}

/// Largest relative error max|a-b| / max(max|b|, tiny).
public func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
  var diff: Float = 0, scale: Float = 1e-12
  for i in 0..<a.count {
    diff = max(diff, abs(a[i] - b[i]))
    scale = max(scale, abs(b[i]))
  }
  return diff / scale
}

/// A test case with a fresh temporary folder `dir`, removed afterwards.
open class TemporaryDirectoryTestCase: XCTestCase {
  public var dir: URL!

  open override func setUpWithError() throws {
    try super.setUpWithError()
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-test-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  }

  open override func tearDownWithError() throws {
    try? FileManager.default.removeItem(at: dir)
    try super.tearDownWithError()
  }
}

/// Runs a program (a Python reference script, a browser) and waits: its exit status and its
/// stdout and stderr together, as text.
public func runProgram(_ exe: String, _ args: [String]) throws -> (Int32, String) {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: exe)
  p.arguments = args
  let out = Pipe()
  p.standardOutput = out
  p.standardError = out
  try p.run()
  let d = out.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return (p.terminationStatus, String(decoding: d, as: UTF8.self))
}
