import CTesseraImage
import Foundation
import Tessera
import TesseraData
import XCTest

/// Test images made in code: a smooth colour pattern with an edge, written as JPEG, PNG or PNM.
enum Fixtures {
  /// Interleaved 8-bit RGB (or gray) pattern of w × h.
  static func pattern(width w: Int, height h: Int, channels: Int = 3) -> [UInt8] {
    var p = [UInt8](repeating: 0, count: w * h * channels)
    for y in 0..<h {
      for x in 0..<w {
        for c in 0..<channels {
          let v = (x * 255 / max(w - 1, 1)) * (c == 0 ? 1 : 0) + (y * 255 / max(h - 1, 1)) * (c == 1 ? 1 : 0)
            + ((x / 8 + y / 8) % 2 == 0 ? 60 : 0) * (c == 2 || channels == 1 ? 1 : 0)
          p[(y * w + x) * channels + c] = UInt8(min(255, v))
        }
      }
    }
    return p
  }

  static func jpeg(_ pixels: [UInt8], width: Int, height: Int, channels: Int = 3, quality: Int32 = 95) -> Data {
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size: UInt = 0
    var err = [CChar](repeating: 0, count: 256)
    let rc = ti_jpeg_encode(pixels, Int32(width), Int32(height), Int32(channels), quality, &out, &size, &err)
    precondition(rc == 0, String(cString: err))
    defer { ti_free(out) }
    return Data(bytes: out!, count: Int(size))
  }

  /// Inserts an EXIF APP1 segment with the given orientation right after SOI.
  static func withOrientation(_ jpeg: Data, _ orientation: UInt16) -> Data {
    var tiff: [UInt8] = [0x4D, 0x4D, 0x00, 0x2A, 0, 0, 0, 8]  // big-endian, IFD at 8
    tiff += [0, 1]  // one entry
    tiff += [0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, UInt8(orientation >> 8), UInt8(orientation & 0xFF), 0, 0]
    tiff += [0, 0, 0, 0]
    let payload = Array("Exif".utf8) + [0, 0] + tiff
    let len = payload.count + 2
    var d = Data(jpeg.prefix(2))
    d.append(contentsOf: [0xFF, 0xE1, UInt8(len >> 8), UInt8(len & 0xFF)] + payload)
    d.append(jpeg.dropFirst(2))
    return d
  }

  static func write(_ d: Data, _ dir: URL, _ name: String) -> URL {
    let u = dir.appendingPathComponent(name)
    FileManager.default.createFile(atPath: u.path, contents: d)
    return u
  }

  static func png(_ pixels: [UInt8], width: Int, height: Int, channels: Int, dir: URL, name: String) -> URL {
    let u = dir.appendingPathComponent(name)
    var err = [CChar](repeating: 0, count: 256)
    precondition(ti_png_write(u.path, pixels, Int32(width), Int32(height), Int32(channels), &err) == 0)
    return u
  }

  static func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }
    return ~c
  }

  static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 255), UInt8((v >> 8) & 255), UInt8(v & 255)] }

  /// A PNG whose IHDR claims width × height (valid CRC), with no image data: a pixel bomb header.
  static func pngHeader(width: UInt32, height: UInt32) -> Data {
    let ihdr: [UInt8] = Array("IHDR".utf8) + be32(width) + be32(height) + [8, 2, 0, 0, 0]
    var d: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    d += be32(13) + ihdr + be32(crc32(ihdr))
    let idat: [UInt8] = Array("IDAT".utf8) + [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]
    d += be32(8) + idat + be32(crc32(idat))
    let iend: [UInt8] = Array("IEND".utf8)
    d += be32(0) + iend + be32(crc32(iend))
    return Data(d)
  }

  /// Bytes of a (C, H, W) [0, 1] tensor as 8-bit values, channel-major.
  static func bytes(_ t: Tensor) -> [UInt8] { t.toArray().map { UInt8(($0 * 255).rounded()) } }
}

extension Fixtures {
  /// A PNG written by hand (stored deflate blocks, filter 0): `samples` interleaved, 8- or 16-bit
  /// (big-endian in the file), colour type 0 (gray), 2 (RGB), 4 (gray+alpha) or 6 (RGBA); Adam7
  /// interlacing on request.
  static func handPNG(_ samples: [UInt16], width w: Int, height h: Int, colorType: UInt8, depth: Int,
                      interlaced: Bool = false) -> Data {
    let channels = [0: 1, 2: 3, 4: 2, 6: 4][Int(colorType)]!
    func row(_ xs: [Int], _ y: Int) -> [UInt8] {
      var r: [UInt8] = [0]
      for x in xs {
        for c in 0..<channels {
          let v = samples[(y * w + x) * channels + c]
          if depth == 16 { r += [UInt8(v >> 8), UInt8(v & 255)] } else { r.append(UInt8(v)) }
        }
      }
      return r
    }
    var raw = [UInt8]()
    if interlaced {
      for (xs, ys, dx, dy) in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)] {
        let cols = Array(stride(from: xs, to: w, by: dx))
        guard !cols.isEmpty else { continue }
        for y in stride(from: ys, to: h, by: dy) { raw += row(cols, y) }
      }
    } else {
      for y in 0..<h { raw += row(Array(0..<w), y) }
    }
    // zlib with stored blocks.
    var z: [UInt8] = [0x78, 0x01]
    var i = 0
    repeat {
      let n = min(65535, raw.count - i)
      z.append(i + n >= raw.count ? 1 : 0)
      z += [UInt8(n & 255), UInt8(n >> 8), UInt8(~n & 255), UInt8((~n >> 8) & 255)]
      z += raw[i..<(i + n)]
      i += n
    } while i < raw.count
    var a: UInt32 = 1, b: UInt32 = 0
    for x in raw { a = (a + UInt32(x)) % 65521; b = (b + a) % 65521 }
    z += be32(b << 16 | a)
    func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
      let body = Array(type.utf8) + data
      return be32(UInt32(data.count)) + body + be32(crc32(body))
    }
    var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    png += chunk("IHDR", be32(UInt32(w)) + be32(UInt32(h)) + [UInt8(depth), colorType, 0, 0, interlaced ? 1 : 0])
    png += chunk("IDAT", z)
    png += chunk("IEND", [])
    return Data(png)
  }
}
