import CTesseraImage
import Foundation
import Tessera
import TesseraData
import TestSupport
import XCTest

final class ImageReaderTests: TemporaryDirectoryTestCase {

  let reader = ImageReader()

  func testJPEGFullRegionAndScale() throws {
    let (w, h) = (203, 131)
    let src = Fixtures.pattern(width: w, height: h)
    let url = Fixtures.write(Fixtures.jpeg(src, width: w, height: h), dir, "a.jpg")
    let info = try reader.info(url)
    XCTAssertEqual([info.width, info.height, info.channels, info.orientation], [w, h, 3, 1])
    let full = try reader.read(url)
    XCTAssertEqual(full.pixels.shape, [3, h, w])
    XCTAssertEqual(full.scale, 1)
    // Close to the pixels that were encoded (quality 95).
    let got = Fixtures.bytes(full.pixels)
    var diff = 0.0
    for y in 0..<h { for x in 0..<w { for c in 0..<3 { diff += abs(Double(got[(c * h + y) * w + x]) - Double(src[(y * w + x) * 3 + c])) } } }
    XCTAssertLessThan(diff / Double(w * h * 3), 4)
    // A region decodes exactly the same pixels as the full decode (libjpeg-turbo crop + skip).
    let r = PixelRect(x: 37, y: 50, width: 101, height: 47)
    let part = try reader.read(url, region: r)
    XCTAssert(part.pixels.toArray() == crop(full.pixels, x: 37, y: 50, width: 101, height: 47).toArray(),
              "region decode differs from the full decode")
    // DCT scaling: 1/4 is chosen when the target is small, and is close to an area shrink.
    let quarter = try reader.read(url, minimumSize: (50, 32))
    XCTAssertEqual(quarter.scale, 4)
    XCTAssertEqual(quarter.pixels.shape, [3, 33, 51])
    let shrunk = Resample.resize(full.pixels, height: 33, width: 51, filter: .area)
    XCTAssertLessThan(meanAbs(quarter.pixels.toArray(), shrunk.toArray()) * 255, 6)
    // Gray output from a colour file.
    XCTAssertEqual(try reader.read(url, channels: 1).pixels.shape, [1, h, w])
  }

  /// `info` of a JPEG reads its first MiB (a gigapixel JPEG's header is not the whole file), and
  /// the whole file when the markers before the first frame run past that.
  func testJPEGInfoReadsTheHeaderNotTheWholeFile() throws {
    let jpeg = try JPEGEncoder.encode([UInt8](repeating: 90, count: 40 * 30 * 3), width: 40, height: 30)
    // 3 MiB of scan data after the frame header (never read by info) …
    var long = jpeg
    long.insert(contentsOf: Data(repeating: 0, count: 3 << 20), at: long.count - 2)
    // … and, apart, 1.3 MiB of APP15 segments before it (info must read past the first MiB).
    var late = Data(jpeg.prefix(2))
    for _ in 0..<20 { late += Data([0xFF, 0xEF, 0xFF, 0xFF]) + Data(repeating: 7, count: 0xFFFD) }
    late += jpeg.dropFirst(2)
    for (name, bytes) in [("long.jpg", long), ("late.jpg", late)] {
      let url = dir.appendingPathComponent(name)
      try bytes.write(to: url)
      // A 2 MiB file limit: the 3 MiB file is only readable by its header (decoding it is refused).
      let reader = ImageReader(maxFileBytes: 2 << 20)
      let i = try reader.info(url)
      XCTAssertEqual([i.width, i.height, i.channels], [40, 30, 3], name)
      if name == "long.jpg" { XCTAssertThrowsError(try reader.read(url)) { XCTAssert("\($0)".contains("file limit"), "\($0)") } }
    }
  }

  func testEXIFOrientationRotatesPixels() throws {
    let (w, h) = (40, 24)
    let jpeg = Fixtures.jpeg(Fixtures.pattern(width: w, height: h), width: w, height: h)
    let plain = try reader.read(Fixtures.write(jpeg, dir, "o1.jpg")).pixels
    for o: UInt16 in [3, 6, 8] {
      let url = Fixtures.write(Fixtures.withOrientation(jpeg, o), dir, "o\(o).jpg")
      let info = try reader.info(url)
      XCTAssertEqual(info.orientation, Int(o))
      let img = try reader.read(url).pixels
      let (dh, dw) = o == 3 ? (h, w) : (w, h)
      XCTAssertEqual(img.shape, [3, dh, dw])
      // Displayed (X, Y) holds stored pixel: 3 → (w−1−X, h−1−Y); 6 → (Y, h−1−X); 8 → (w−1−Y, X).
      for (X, Y) in [(0, 0), (dw - 1, 0), (3, dh - 2)] {
        let (x, y): (Int, Int) = o == 3 ? (w - 1 - X, h - 1 - Y) : o == 6 ? (Y, h - 1 - X) : (w - 1 - Y, X)
        XCTAssertEqual(img.floats[Y * dw + X], plain.floats[y * w + x], "orientation \(o) at \(X),\(Y)")
      }
      // A displayed region maps to the stored pixels.
      let part = try reader.read(url, region: PixelRect(x: 2, y: 3, width: 5, height: 4)).pixels
      XCTAssert(part.toArray() == crop(img, x: 2, y: 3, width: 5, height: 4).toArray(), "orientation \(o) region")
    }
  }

  func testPNGExactRowsAndGray() throws {
    let (w, h) = (57, 43)
    let rgb = Fixtures.pattern(width: w, height: h)
    let url = Fixtures.png(rgb, width: w, height: h, channels: 3, dir: dir, name: "a.png")
    let img = try reader.read(url).pixels
    let got = Fixtures.bytes(img)
    for y in 0..<h { for x in 0..<w { for c in 0..<3 { XCTAssertEqual(got[(c * h + y) * w + x], rgb[(y * w + x) * 3 + c]) } } }
    let part = try reader.read(url, region: PixelRect(x: 5, y: 20, width: 30, height: 9)).pixels
    XCTAssertEqual(part.toArray(), crop(img, x: 5, y: 20, width: 30, height: 9).toArray())
    let gray = Fixtures.pattern(width: w, height: h, channels: 1)
    let g = try reader.read(Fixtures.png(gray, width: w, height: h, channels: 1, dir: dir, name: "g.png"), channels: 1)
    XCTAssertEqual(Fixtures.bytes(g.pixels), gray)
    // RGBA: alpha dropped.
    var rgba = [UInt8]()
    for i in 0..<(w * h) { rgba += [rgb[i * 3], rgb[i * 3 + 1], rgb[i * 3 + 2], UInt8(128)] }
    let a = try reader.read(Fixtures.png(rgba, width: w, height: h, channels: 4, dir: dir, name: "a4.png"))
    XCTAssertEqual(a.pixels.toArray(), img.toArray())
  }

  func testPNM() throws {
    var p6 = Data("P6\n# comment\n3 2\n255\n".utf8)
    p6.append(contentsOf: [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    let img = try reader.read(Fixtures.write(p6, dir, "a.ppm")).pixels
    XCTAssertEqual(img.shape, [3, 2, 3])
    XCTAssertEqual(Fixtures.bytes(img), [255, 0, 0, 10, 40, 70, 0, 255, 0, 20, 50, 80, 0, 0, 255, 30, 60, 90])
    var p5 = Data("P5 2 1 65535\n".utf8)
    p5.append(contentsOf: [0xFF, 0xFF, 0x80, 0x00])
    let g = try reader.read(Fixtures.write(p5, dir, "a.pgm"), channels: 1).pixels.toArray()
    XCTAssertEqual(g[0], 1)
    XCTAssertEqual(g[1], Float(0x8000) / 65535, accuracy: 1e-6)
  }

  /// Every hostile case gives a typed error naming its file, never a crash.
  func testHostileFiles() throws {
    let good = Fixtures.jpeg(Fixtures.pattern(width: 64, height: 48), width: 64, height: 48)
    var corrupt = good
    for i in stride(from: corrupt.count / 2, to: corrupt.count / 2 + 40, by: 1) { corrupt[i] = 0xFF }
    let pngURL = Fixtures.png(Fixtures.pattern(width: 32, height: 32), width: 32, height: 32, channels: 3, dir: dir, name: "ok.png")
    let pngBytes = try Data(contentsOf: pngURL)
    var badCRC = pngBytes
    badCRC[40] ^= 0x55
    let cases: [(String, Data)] = [
      ("empty.jpg", Data()),
      ("text.jpg", Data("this is not an image\n".utf8)),
      ("gif.png", Data("GIF89a....".utf8)),
      ("truncated.jpg", good.prefix(good.count / 2)),
      ("corrupt.jpg", corrupt),
      ("header-only.jpg", good.prefix(300)),
      ("truncated.png", pngBytes.prefix(pngBytes.count - 30)),
      ("badcrc.png", badCRC),
      ("bomb.png", Fixtures.pngHeader(width: 100_000, height: 100_000)),
      ("truncated.ppm", Data("P6 100 100 255\n".utf8) + Data(count: 10)),
      ("badheader.ppm", Data("P6 -3 4 255\n".utf8)),
    ]
    for (name, bytes) in cases {
      let url = Fixtures.write(bytes, dir, name)
      XCTAssertThrowsError(try reader.read(url), name) { e in
        guard let ie = e as? ImageError else { return XCTFail("\(name): untyped error \(e)") }
        XCTAssertEqual(ie.path, url.path, name)
        XCTAssert(ie.description.contains(url.path), name)
      }
    }
    // The bomb is refused before allocating, as too large.
    XCTAssertThrowsError(try reader.read(dir.appendingPathComponent("bomb.png"))) { e in
      guard case .tooLarge? = (e as? ImageError)?.reason else { return XCTFail("\(e)") }
    }
    XCTAssertThrowsError(try reader.read(dir)) { e in XCTAssertNotNil(e as? ImageError) }
    XCTAssertThrowsError(try reader.read(dir.appendingPathComponent("missing.jpg"))) { e in XCTAssertNotNil(e as? ImageError) }
    // A region outside the image is an error, not a crash.
    XCTAssertThrowsError(try reader.read(pngURL, region: PixelRect(x: 30, y: 0, width: 5, height: 5)))
  }
}

func meanAbs(_ a: [Float], _ b: [Float]) -> Double {
  zip(a, b).reduce(0.0) { $0 + abs(Double($1.0) - Double($1.1)) } / Double(max(a.count, 1))
}

extension ImageReaderTests {
  /// 16-bit and interlaced PNGs, written by hand, read back sample for sample.
  func testSixteenBitAndInterlacedPNG() throws {
    let (w, h) = (13, 9)
    var s16 = [UInt16]()
    for i in 0..<(w * h * 3) { s16.append(UInt16((i * 2_654_435_761) & 0xFFFF)) }
    for interlaced in [false, true] {
      let url = Fixtures.write(Fixtures.handPNG(s16, width: w, height: h, colorType: 2, depth: 16, interlaced: interlaced),
                               dir, "rgb16-\(interlaced).png")
      let info = try reader.info(url)
      XCTAssertEqual([info.bitDepth, info.channels], [16, 3])
      let img = try reader.read(url).pixels
      for y in 0..<h {
        for x in 0..<w {
          for c in 0..<3 {
            XCTAssertEqual(img.floats[(c * h + y) * w + x], Float(s16[(y * w + x) * 3 + c]) / 65535, accuracy: 1e-7)
          }
        }
      }
      if !interlaced {
        let part = try reader.read(url, region: PixelRect(x: 3, y: 4, width: 6, height: 5)).pixels
        XCTAssertEqual(part.toArray(), crop(img, x: 3, y: 4, width: 6, height: 5).toArray())
      }
    }
    // 8-bit gray + alpha, interlaced.
    var ga = [UInt16]()
    for i in 0..<(w * h) { ga += [UInt16(i % 251), 200] }
    let g = try reader.read(Fixtures.write(Fixtures.handPNG(ga, width: w, height: h, colorType: 4, depth: 8, interlaced: true),
                                           dir, "ga.png"), channels: 1).pixels
    XCTAssertEqual(Fixtures.bytes(g), (0..<(w * h)).map { UInt8($0 % 251) })
  }
}
