import CTesseraImage
import Foundation
import Tessera
import TesseraData
import TestSupport
import XCTest

/// Files that are valid and were once refused (issue #11): CMYK/YCCK JPEG, a JFIF revision libjpeg
/// only warns about, ASCII PNM, and a PNG's eXIf orientation.
final class ValidImagesTests: TemporaryDirectoryTestCase {
  let reader = ImageReader()

  func rgb(_ w: Int, _ h: Int) -> [UInt8] {
    (0..<(w * h)).flatMap { i -> [UInt8] in
      let x = i % w, y = i / w
      return [UInt8(x * 255 / max(1, w - 1)), UInt8(y * 255 / max(1, h - 1)), UInt8((x + y) * 4 % 256)]
    }
  }

  func meanAbs(_ t: Tensor, _ src: [UInt8], _ w: Int, _ h: Int) -> Double {
    let p = t.toArray()
    var s = 0.0
    for y in 0..<h { for x in 0..<w { for c in 0..<3 { s += abs(Double(p[(c * h + y) * w + x]) * 255 - Double(src[(y * w + x) * 3 + c])) } } }
    return s / Double(w * h * 3)
  }

  func testCMYKAndYCCKJPEGDecodeToRGB() throws {
    let (w, h) = (48, 40)
    let src = rgb(w, h)
    // Adobe's convention (libjpeg writes the Adobe marker for CMYK): inks stored inverted, so with no
    // black ink the stored C, M, Y are the R, G, B values and K is 255.
    var cmyk = [UInt8]()
    for i in 0..<(w * h) { cmyk += [src[3 * i], src[3 * i + 1], src[3 * i + 2], 255] }
    for (channels, name) in [(4, "cmyk.jpg"), (5, "ycck.jpg")] {
      let url = dir.appendingPathComponent(name)
      try JPEGEncoder.encode(cmyk, width: w, height: h, channels: channels, quality: 95).write(to: url)
      let info = try reader.info(url)
      XCTAssertEqual(info.channels, 3, name)
      let img = try reader.read(url).pixels
      XCTAssertEqual(img.shape, [3, h, w])
      XCTAssertLessThan(meanAbs(img, src, w, h), 4, name)
      // A region equals the same cells of the whole decode.
      let part = try reader.read(url, region: PixelRect(x: 7, y: 9, width: 20, height: 17)).pixels
      XCTAssertEqual(part.toArray(), crop(img, x: 7, y: 9, width: 20, height: 17).toArray(), name)
      XCTAssertEqual(try reader.read(url, channels: 1).pixels.shape, [1, h, w])
    }
  }

  func testJFIFRevisionWarningIsNotAnError() throws {
    let (w, h) = (32, 24)
    var jpeg = try JPEGEncoder.encode(rgb(w, h), width: w, height: h)
    // FF D8, FF E0, length (2), "JFIF\0", major, minor: make it revision 2.01.
    let i = try XCTUnwrap(jpeg.range(of: Data("JFIF\0".utf8))).upperBound
    jpeg[i] = 2
    jpeg[i + 1] = 1
    let url = dir.appendingPathComponent("jfif201.jpg")
    try jpeg.write(to: url)
    XCTAssertEqual(try reader.read(url).pixels.shape, [3, h, w])
    // Damaged entropy-coded data is still an error.
    var broken = jpeg
    broken.removeSubrange((broken.count - 200)..<(broken.count - 2))
    let bu = dir.appendingPathComponent("broken.jpg")
    try broken.write(to: bu)
    XCTAssertThrowsError(try reader.read(bu)) { XCTAssert("\($0)".contains("broken.jpg"), "\($0)") }
  }

  func testASCIIPNMEqualsBinary() throws {
    let (w, h) = (5, 3)
    let src = rgb(w, h)
    let p6 = dir.appendingPathComponent("a.ppm"), p3 = dir.appendingPathComponent("a3.ppm")
    try (Data("P6\n\(w) \(h)\n255\n".utf8) + Data(src)).write(to: p6)
    try Data(("P3\n# a comment\n\(w) \(h)\n255\n" + src.map(String.init).joined(separator: " ") + "\n").utf8).write(to: p3)
    XCTAssertEqual(try reader.read(p3).pixels.toArray(), try reader.read(p6).pixels.toArray())
    let gray = src.enumerated().filter { $0.offset % 3 == 0 }.map(\.element)
    let p5 = dir.appendingPathComponent("g.pgm"), p2 = dir.appendingPathComponent("g2.pgm")
    try (Data("P5 \(w) \(h) 255\n".utf8) + Data(gray)).write(to: p5)
    try Data(("P2 \(w) \(h) 255\n" + gray.map(String.init).joined(separator: "\n")).utf8).write(to: p2)
    XCTAssertEqual(try reader.read(p2, channels: 1).pixels.toArray(), try reader.read(p5, channels: 1).pixels.toArray())
    let region = PixelRect(x: 1, y: 1, width: 3, height: 2)
    XCTAssertEqual(try reader.read(p3, region: region).pixels.toArray(), try reader.read(p6, region: region).pixels.toArray())
    // Damaged: a sample above maxval, too few samples.
    try Data("P2 2 2 15\n1 2 3 99\n".utf8).write(to: p2)
    XCTAssertThrowsError(try reader.read(p2)) { XCTAssert("\($0)".contains("above maxval"), "\($0)") }
    try Data("P2 2 2 15\n1 2 3\n".utf8).write(to: p2)
    XCTAssertThrowsError(try reader.read(p2)) { XCTAssert("\($0)".contains("truncated"), "\($0)") }
  }

  func testPNGEXIfOrientationIsApplied() throws {
    let (w, h) = (6, 4)
    let src = rgb(w, h)
    let plain = dir.appendingPathComponent("plain.png")
    try writePNG(bytes: src, width: w, height: h, to: plain)
    // An eXIf chunk (little-endian TIFF, one IFD entry: Orientation = 6, "rotate 90° clockwise")
    // inserted before IDAT.
    var tiff: [UInt8] = [0x49, 0x49, 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00]
    tiff += [0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
    var png = try Data(contentsOf: plain)
    let idat = try XCTUnwrap(png.range(of: Data("IDAT".utf8))).lowerBound - 4
    var chunk = Data()
    var len = UInt32(tiff.count).bigEndian
    chunk.append(Data(bytes: &len, count: 4))
    let body = Data("eXIf".utf8) + Data(tiff)
    chunk.append(body)
    var crc = crc32(body).bigEndian
    chunk.append(Data(bytes: &crc, count: 4))
    png.insert(contentsOf: chunk, at: idat)
    let rotated = dir.appendingPathComponent("rotated.png")
    try png.write(to: rotated)
    let info = try reader.info(rotated)
    XCTAssertEqual([info.width, info.height, info.orientation], [h, w, 6])
    let a = try reader.read(plain).pixels, b = try reader.read(rotated).pixels
    XCTAssertEqual(b.shape, [3, w, h])
    // Orientation 6: displayed (x, y) is stored (y, h − 1 − x).
    let pa = a.toArray(), pb = b.toArray()
    for y in 0..<w { for x in 0..<h { XCTAssertEqual(pb[y * h + x], pa[(h - 1 - x) * w + y]) } }
  }

  func crc32(_ d: Data) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in d {
      c ^= UInt32(b)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
    }
    return ~c
  }
}
