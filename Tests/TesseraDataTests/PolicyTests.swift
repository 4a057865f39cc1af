import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TestSupport
import XCTest

final class PolicyTests: TemporaryDirectoryTestCase {

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

extension PolicyTests {
  func testTilesCoverTheImageAndPatchesDecodeOnlyTheirRegion() throws {
    let tiles = Tiling.grid(width: 1000, height: 600, tile: 256, overlap: 32)
    XCTAssert(tiles.allSatisfy { $0.width == 256 && $0.height == 256 && $0.x + 256 <= 1000 && $0.y + 256 <= 600 })
    var covered = Set<Int>()
    for t in tiles { for y in stride(from: t.y, to: t.y + t.height, by: 8) { for x in stride(from: t.x, to: t.x + t.width, by: 8) { covered.insert(y * 1000 + x) } } }
    for y in stride(from: 0, to: 600, by: 8) { for x in stride(from: 0, to: 1000, by: 8) { XCTAssert(covered.contains(y * 1000 + x)) } }
    let xs = Set(tiles.map(\.x)).sorted()
    XCTAssertEqual(xs, [0, 224, 448, 672, 744])  // stride 224, last shifted to 1000 − 256
    XCTAssertEqual(Tiling.grid(width: 100, height: 50, tile: 256), [PixelRect(x: 0, y: 0, width: 100, height: 50)])
    // A patch read by region equals the same window of the whole image.
    let (w, h) = (300, 200)
    let url = Fixtures.write(Fixtures.jpeg(Fixtures.pattern(width: w, height: h), width: w, height: h), dir, "p.jpg")
    let reader = ImageReader()
    let full = try reader.read(url).pixels
    var g = SeededGenerator(seed: 4)
    for _ in 0..<3 {
      let r = Tiling.randomPatch(width: w, height: h, size: 64, using: &g)
      let patch = try reader.read(url, region: r).pixels
      XCTAssert(patch.toArray() == crop(full, x: r.x, y: r.y, width: 64, height: 64).toArray(), "\(r)")
    }
  }
}
