import Foundation
import Tessera

/// PGM and PPM, binary (P5, P6; 8- or 16-bit big-endian samples) and ASCII (P2, P3; decimal samples).
enum PNM {
  struct Header { var width: Int, height: Int, channels: Int, maxval: Int, offset: Int, ascii: Bool }

  static func header(_ d: Data, path: String) throws -> Header {
    let bytes = [UInt8](d.prefix(4096))
    var i = 2
    func token() throws -> Int {
      guard let v = try number(bytes, &i, maxDigits: 9, path: path) else {
        throw ImageError(path: path, .corrupt("PNM header is incomplete"))
      }
      return v
    }
    let channels = bytes[1] == UInt8(ascii: "6") || bytes[1] == UInt8(ascii: "3") ? 3 : 1
    let ascii = bytes[1] == UInt8(ascii: "2") || bytes[1] == UInt8(ascii: "3")
    let w = try token(), h = try token(), maxval = try token()
    guard w > 0, h > 0, (1...65535).contains(maxval), i < bytes.count else {
      throw ImageError(path: path, .corrupt("PNM header has width \(w), height \(h), maxval \(maxval)"))
    }
    return Header(width: w, height: h, channels: channels, maxval: maxval, offset: ascii ? i : i + 1, ascii: ascii)
  }

  /// The next decimal number after whitespace and #-comments, or nil at the end or before a
  /// non-digit; more than `maxDigits` digits is damage.
  static func number<B: RandomAccessCollection>(_ b: B, _ i: inout Int, maxDigits: Int, path: String) throws -> Int?
  where B.Element == UInt8, B.Index == Int {
    while i < b.endIndex {
      if b[i] == UInt8(ascii: "#") {
        while i < b.endIndex && b[i] != 10 { i += 1 }
      } else if b[i] == 32 || (9...13).contains(b[i]) {
        i += 1
      } else { break }
    }
    var v = 0, digits = 0
    while i < b.endIndex, (48...57).contains(b[i]) {
      v = v * 10 + Int(b[i] - 48)
      digits += 1
      i += 1
      guard digits <= maxDigits else { throw ImageError(path: path, .corrupt("PNM number too long")) }
    }
    return digits > 0 ? v : nil
  }

  /// ASCII samples (P2/P3) of rows 0..<y+h, whitespace- and comment-separated, checked against maxval.
  static func asciiSamples(_ d: Data, _ hd: Header, rows: Int, path: String) throws -> [UInt16] {
    let need = hd.width * hd.channels * rows
    var out = [UInt16]()
    out.reserveCapacity(need)
    try d.withUnsafeBytes { raw in
      let b = raw.bindMemory(to: UInt8.self)
      var i = hd.offset
      while out.count < need {
        guard let v = try number(b, &i, maxDigits: 5, path: path) else {
          throw ImageError(path: path, .corrupt(i >= b.count ? "PNM data is truncated: \(out.count) of \(need) samples" : "PNM sample is not a number"))
        }
        guard v <= hd.maxval else { throw ImageError(path: path, .corrupt("PNM sample \(v) is above maxval \(hd.maxval)")) }
        out.append(UInt16(v))
      }
    }
    return out
  }

  static func decode(_ d: Data, path: String, x: Int, y: Int, w: Int, h: Int, channels: Int) throws -> Tensor {
    let hd = try header(d, path: path)
    let scale = 1 / Float(hd.maxval)
    if hd.ascii {
      let s = try asciiSamples(d, hd, rows: y + h, path: path)
      let rowSamples = hd.width * hd.channels
      return Pixels.convert(width: w, height: h, inChannels: hd.channels, outChannels: channels, scale: scale) { yy, xx, c in
        Float(s[(y + yy) * rowSamples + (x + xx) * hd.channels + c])
      }
    }
    let bps = hd.maxval > 255 ? 2 : 1
    let rowBytes = hd.width * hd.channels * bps
    let (need, overflow) = rowBytes.multipliedReportingOverflow(by: hd.height)
    guard !overflow, d.count >= hd.offset + need else {
      throw ImageError(path: path, .corrupt("PNM data is truncated: \(d.count - hd.offset) of \(overflow ? Int.max : need) bytes"))
    }
    return d.withUnsafeBytes { raw -> Tensor in
      let base = raw.bindMemory(to: UInt8.self).baseAddress! + hd.offset
      return Pixels.convert(width: w, height: h, inChannels: hd.channels, outChannels: channels, scale: scale) { yy, xx, c in
        let p = base + (y + yy) * rowBytes + ((x + xx) * hd.channels + c) * bps
        return bps == 1 ? Float(p[0]) : Float(Int(p[0]) << 8 | Int(p[1]))
      }
    }
  }
}
