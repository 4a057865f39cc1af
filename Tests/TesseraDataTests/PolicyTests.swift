import Foundation
import Tessera
import TesseraData
import XCTest

final class PolicyTests: XCTestCase {
  var dir: URL!
  override func setUpWithError() throws {
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-pol-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

  func testPoliciesKeepTheAspectRatio() throws {
    let (w, h) = (400, 200)
    let url = Fixtures.write(Fixtures.jpeg(Fixtures.pattern(width: w, height: h), width: w, height: h), dir, "wide.jpg")
    // fit: 100×50 content letterboxed into 100×100 with the fill value.
    let fit = try ImagePipeline(size: 100, policy: .fit, fillValue: 0.5).prepare(url)
    XCTAssertEqual(fit.pixels.shape, [3, 100, 100])
    XCTAssertEqual([fit.resizedWidth, fit.resizedHeight], [100, 50])
    XCTAssertEqual(fit.decodeScale, 4)  // 400×200 at DCT 1/4 is 100×50: exactly the size needed
    XCTAssertEqual(fit.pixels.floats[0], 0.5)  // top padding
    XCTAssertEqual(fit.pixels.floats[99 * 100 + 50], 0.5)  // bottom padding
    XCTAssertNotEqual(fit.pixels.floats[50 * 100 + 50], 0.5)
    // fill: 200×100 scaled to cover 100×100, centre crop.
    let fill = try ImagePipeline(size: 100, policy: .fill).prepare(url)
    XCTAssertEqual(fill.pixels.shape, [3, 100, 100])
    XCTAssertEqual([fill.resizedWidth, fill.resizedHeight], [200, 100])
    // none: native size; stretch: distorts, only by name.
    XCTAssertEqual(try ImagePipeline(size: 100, policy: .none).prepare(url).pixels.shape, [3, 200, 400])
    let s = try ImagePipeline(size: 100, policy: .stretch).prepare(url)
    XCTAssertEqual(s.pixels.shape, [3, 100, 100])
    // A random crop origin is honoured and clamped.
    let left = try ImagePipeline(size: 100, policy: .fill).prepare(url) { _, _ in (0, 0) }
    let right = try ImagePipeline(size: 100, policy: .fill).prepare(url) { mx, _ in (mx + 50, 0) }
    XCTAssertNotEqual(left.pixels.toArray(), right.pixels.toArray())
  }
}
