import Foundation
import Tessera
import TesseraData
import XCTest

/// Full-scale and DCT-scaled decodes equal libjpeg-turbo's own `djpeg` output byte for byte
/// (reference files made once, see Fixtures/README.md).
final class DjpegReferenceTests: XCTestCase {
  let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

  /// Raw samples of a binary PPM/PGM written by djpeg ("P6\nW H\n255\n" + bytes).
  func samples(_ name: String) throws -> (width: Int, height: Int, channels: Int, bytes: [UInt8]) {
    let d = [UInt8](try Data(contentsOf: fixtures.appendingPathComponent(name)))
    var fields = [String](), i = 0, cur = ""
    while fields.count < 4 {
      let c = Character(UnicodeScalar(d[i]))
      if c.isWhitespace { if !cur.isEmpty { fields.append(cur); cur = "" } } else { cur.append(c) }
      i += 1
    }
    return (Int(fields[1])!, Int(fields[2])!, fields[0] == "P6" ? 3 : 1, Array(d[i...]))
  }

  /// Our decode as interleaved bytes.
  func ours(_ t: Tensor) -> [UInt8] {
    let c = t.shape[0], h = t.shape[1], w = t.shape[2], p = t.floats
    var out = [UInt8](repeating: 0, count: c * h * w)
    for y in 0..<h { for x in 0..<w { for ch in 0..<c { out[(y * w + x) * c + ch] = UInt8((p[(ch * h + y) * w + x] * 255).rounded()) } } }
    return out
  }

  func check(_ jpeg: String, _ reference: String, minimumSize: (Int, Int)? = nil, scale: Int = 1,
             file: StaticString = #filePath, line: UInt = #line) throws {
    let ref = try samples(reference)
    let img = try ImageReader().read(fixtures.appendingPathComponent(jpeg), minimumSize: minimumSize, channels: ref.channels)
    XCTAssertEqual(img.scale, scale, file: file, line: line)
    XCTAssertEqual([img.width, img.height], [ref.width, ref.height], file: file, line: line)
    XCTAssert(ours(img.pixels) == ref.bytes, "\(jpeg) differs from djpeg's \(reference)", file: file, line: line)
  }

  func testEqualsDjpeg() throws {
    try check("baseline420.jpg", "baseline420.djpeg.ppm")
    try check("progressive.jpg", "progressive.djpeg.ppm")
    try check("rgb444.jpg", "rgb444.djpeg.ppm")
    try check("gray.jpg", "gray.djpeg.pgm")
    try check("baseline420.jpg", "baseline420.scale4.djpeg.ppm", minimumSize: (17, 12), scale: 4)
    try check("progressive.jpg", "progressive.scale2.djpeg.ppm", minimumSize: (34, 23), scale: 2)
  }
}
