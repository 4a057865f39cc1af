import CTesseraImage
import Foundation
import Tessera
import TesseraKernels

public enum ImageFormat: String, Sendable, Codable { case jpeg, png, pnm }

/// What a header says, read without decoding pixels. Width and height are as displayed (EXIF
/// orientation applied); `storedWidth`/`storedHeight` as in the file.
public struct ImageInfo: Sendable, Equatable {
  public var format: ImageFormat
  public var width: Int, height: Int
  public var storedWidth: Int, storedHeight: Int
  /// Channels in the file: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
  public var channels: Int
  /// 8 or 16.
  public var bitDepth: Int
  /// EXIF orientation 1…8 (JPEG); 1 otherwise.
  public var orientation: Int
}

/// A rectangle of pixels, in displayed (oriented) full-resolution coordinates.
public struct PixelRect: Sendable, Equatable, CustomStringConvertible {
  public var x: Int, y: Int, width: Int, height: Int
  public init(x: Int, y: Int, width: Int, height: Int) {
    self.x = x
    self.y = y
    self.width = width
    self.height = height
  }
  public var description: String { "\(width)×\(height) at (\(x), \(y))" }
}

/// Decoded pixels as a (C, H, W) Float32 tensor with values in [0, 1], and the scale it was decoded at.
public struct DecodedImage {
  public var pixels: Tensor
  /// 1, 2, 4 or 8: the image was decoded at 1/scale of its size (JPEG DCT scaling).
  public var scale: Int
  public var channels: Int { pixels.shape[0] }
  public var height: Int { pixels.shape[1] }
  public var width: Int { pixels.shape[2] }
}

/// Reads JPEG (libjpeg-turbo), PNG (libpng) and binary PPM/PGM: header first, then only the region
/// and the scale needed. Corrupt, truncated, hostile or oversized files throw an `ImageError` naming
/// the file; nothing is allocated for pixels before the size is checked against `maxPixels`.
public struct ImageReader: Sendable {
  /// Largest number of pixels one read may produce (default 2²⁸ = 268,435,456, e.g. 16384²).
  public var maxPixels: Int
  /// Largest file read into memory (default 2 GiB).
  public var maxFileBytes: Int

  public init(maxPixels: Int = 1 << 28, maxFileBytes: Int = 1 << 31) {
    self.maxPixels = maxPixels
    self.maxFileBytes = maxFileBytes
  }

  // MARK: header

  public func info(_ url: URL) throws -> ImageInfo {
    // A JPEG's header (markers up to the first scan) is near its start: read 1 MiB of it, not a
    // 500 MB file; the whole file only when the header runs past that.
    if let h = FileHandle(forReadingAtPath: url.path) {
      let head = (try? h.read(upToCount: 1 << 20)) ?? Data()
      try? h.close()
      if Self.format(of: head) == .jpeg, let i = try? info(of: head, path: url.path) { return i }
    }
    return try info(of: try load(url), path: url.path)
  }

  func load(_ url: URL) throws -> Data {
    let path = url.path
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else {
      throw ImageError(path: path, .unreadable("no such file"))
    }
    let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    guard size <= maxFileBytes else { throw ImageError(path: path, .unsupported("\(size) bytes is over the \(maxFileBytes)-byte file limit")) }
    do {
      let d = try Data(contentsOf: url)
      guard !d.isEmpty else { throw ImageError(path: path, .empty) }
      return d
    } catch let e as ImageError { throw e } catch {
      throw ImageError(path: path, .unreadable((error as NSError).localizedDescription))
    }
  }

  static func format(of d: Data) -> ImageFormat? {
    if d.count >= 3 && d[d.startIndex] == 0xFF && d[d.startIndex + 1] == 0xD8 && d[d.startIndex + 2] == 0xFF { return .jpeg }
    if d.count >= 8 && d.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
    if d.count >= 2 && d[d.startIndex] == UInt8(ascii: "P") && (UInt8(ascii: "2")...UInt8(ascii: "3")).contains(d[d.startIndex + 1]) { return .pnm }
    if d.count >= 2 && d[d.startIndex] == UInt8(ascii: "P") && (UInt8(ascii: "5")...UInt8(ascii: "6")).contains(d[d.startIndex + 1]) { return .pnm }
    return nil
  }

  func info(of d: Data, path: String) throws -> ImageInfo {
    guard let f = Self.format(of: d) else { throw ImageError(path: path, .unknownFormat) }
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    switch f {
    case .jpeg:
      var i = ti_jpeg_info()
      let rc = d.withUnsafeBytes { ti_jpeg_read_info($0.bindMemory(to: UInt8.self).baseAddress, UInt(d.count), &i, &err) }
      guard rc == 0 else { throw ImageError(path: path, .corrupt(String(cString: err))) }
      guard i.components == 1 || i.components == 3 || i.components == 4 else {
        throw ImageError(path: path, .unsupported("\(i.components)-component JPEG"))
      }
      let swap = i.orientation >= 5
      // CMYK/YCCK (4 components) decode to RGB.
      return ImageInfo(format: .jpeg, width: Int(swap ? i.height : i.width), height: Int(swap ? i.width : i.height),
                       storedWidth: Int(i.width), storedHeight: Int(i.height), channels: min(3, Int(i.components)),
                       bitDepth: 8, orientation: Int(i.orientation))
    case .png:
      var i = ti_png_info()
      let rc = d.withUnsafeBytes { ti_png_read_info($0.bindMemory(to: UInt8.self).baseAddress, d.count, &i, &err) }
      guard rc == 0 else { throw ImageError(path: path, .corrupt(String(cString: err))) }
      // An eXIf chunk's orientation applies as a JPEG's does.
      let swap = i.orientation >= 5
      return ImageInfo(format: .png, width: Int(swap ? i.height : i.width), height: Int(swap ? i.width : i.height),
                       storedWidth: Int(i.width), storedHeight: Int(i.height), channels: Int(i.channels),
                       bitDepth: Int(i.bit_depth), orientation: Int(i.orientation))
    case .pnm:
      let h = try PNM.header(d, path: path)
      return ImageInfo(format: .pnm, width: h.width, height: h.height, storedWidth: h.width, storedHeight: h.height,
                       channels: h.channels, bitDepth: h.maxval > 255 ? 16 : 8, orientation: 1)
    }
  }

  // MARK: pixels

  /// Decodes `region` (default: the whole image) into `channels` (1 or 3) channels. With
  /// `minimumSize` (width, height), a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
  /// still gives at least that many pixels for the region, so a later resize only shrinks.
  public func read(
    _ url: URL, region: PixelRect? = nil, minimumSize: (width: Int, height: Int)? = nil, channels: Int = 3
  ) throws -> DecodedImage {
    try read(try open(url), region: region, minimumSize: minimumSize, channels: channels)
  }

  /// A file read into memory with its header parsed, to decode without reading it again.
  public struct File {
    public let url: URL
    public let info: ImageInfo
    let data: Data
  }

  public func open(_ url: URL) throws -> File {
    let d = try load(url)
    return File(url: url, info: try info(of: d, path: url.path), data: d)
  }

  public func read(
    _ file: File, region: PixelRect? = nil, minimumSize: (width: Int, height: Int)? = nil, channels: Int = 3
  ) throws -> DecodedImage {
    precondition(channels == 1 || channels == 3, "channels must be 1 or 3")
    let path = file.url.path, d = file.data, info = file.info
    let r = region ?? PixelRect(x: 0, y: 0, width: info.width, height: info.height)
    guard r.width > 0, r.height > 0, r.x >= 0, r.y >= 0, r.x + r.width <= info.width, r.y + r.height <= info.height else {
      throw ImageError(path: path, .badRegion("region \(r) is not inside the \(info.width)×\(info.height) image"))
    }
    // Stored-image rectangle for the displayed region.
    let s = Orientation(info.orientation).storedRect(r, width: info.storedWidth, height: info.storedHeight)
    var scale = 1
    if info.format == .jpeg, let m = minimumSize {
      for d in [8, 4, 2] where (r.width + d - 1) / d >= m.width && (r.height + d - 1) / d >= m.height {
        scale = d
        break
      }
    }
    // Region in scaled stored coordinates (libjpeg's scaled size is ⌈size / scale⌉).
    let sx = s.x / scale, sy = s.y / scale
    let sw = max(1, min((s.x + s.width + scale - 1) / scale, (info.storedWidth + scale - 1) / scale) - sx)
    let sh = max(1, min((s.y + s.height + scale - 1) / scale, (info.storedHeight + scale - 1) / scale) - sy)
    guard sw * sh <= maxPixels else {
      throw ImageError(path: path, .tooLarge(width: sw, height: sh, limit: maxPixels))
    }
    let stored: Tensor
    switch info.format {
    case .jpeg:
      // Chroma upsampling reads neighbouring pixels, so a region is decoded with a margin (16 scaled
      // pixels, at least one MCU) and cut out: its pixels then equal the full decode's exactly.
      let fullW = (info.storedWidth + scale - 1) / scale, fullH = (info.storedHeight + scale - 1) / scale
      let mx = max(0, sx - 16), my = max(0, sy - 16)
      let mw = min(fullW, sx + sw + 16) - mx, mh = min(fullH, sy + sh + 16) - my
      let wide = try decodeJPEG(d, path: path, scale: scale, x: mx, y: my, w: mw, h: mh, channels: channels)
      stored = (mw == sw && mh == sh) ? wide : crop(wide, x: sx - mx, y: sy - my, width: sw, height: sh)
    case .png: stored = try decodePNG(d, info: info, path: path, x: sx, y: sy, w: sw, h: sh, channels: channels)
    case .pnm: stored = try PNM.decode(d, path: path, x: sx, y: sy, w: sw, h: sh, channels: channels)
    }
    let oriented = Orientation(info.orientation).apply(stored)
    return DecodedImage(pixels: oriented, scale: scale)
  }

  func decodeJPEG(_ d: Data, path: String, scale: Int, x: Int, y: Int, w: Int, h: Int, channels: Int) throws -> Tensor {
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    let bytes = Buffer(byteCount: w * h * channels, category: .data, zeroed: false)
    let rc = d.withUnsafeBytes {
      ti_jpeg_decode($0.bindMemory(to: UInt8.self).baseAddress, UInt(d.count), Int32(scale), Int32(x), Int32(y),
                     Int32(w), Int32(h), Int32(channels), bytes.raw.assumingMemoryBound(to: UInt8.self), &err)
    }
    guard rc == 0 else { throw ImageError(path: path, .corrupt(String(cString: err))) }
    return Pixels.planar(bytes.raw.assumingMemoryBound(to: UInt8.self), width: w, height: h, channels: channels,
                         stride: w * channels, inChannels: channels, outChannels: channels)
  }

  func decodePNG(_ d: Data, info: ImageInfo, path: String, x: Int, y: Int, w: Int, h: Int, channels: Int) throws -> Tensor {
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    var pi = ti_png_info()
    _ = d.withUnsafeBytes { ti_png_read_info($0.bindMemory(to: UInt8.self).baseAddress, d.count, &pi, &err) }
    let interlaced = pi.interlaced != 0
    let rowBytes = info.storedWidth * info.channels * info.bitDepth / 8
    let (y0, y1) = interlaced ? (0, info.storedHeight) : (y, y + h)
    guard (y1 - y0) * info.storedWidth <= maxPixels || !interlaced else {
      throw ImageError(path: path, .tooLarge(width: info.storedWidth, height: info.storedHeight, limit: maxPixels))
    }
    let rows = Buffer(byteCount: (y1 - y0) * rowBytes, category: .data, zeroed: false)
    let rc = d.withUnsafeBytes {
      ti_png_decode_rows($0.bindMemory(to: UInt8.self).baseAddress, d.count, Int32(y0), Int32(y1),
                         rows.raw.assumingMemoryBound(to: UInt8.self), &err)
    }
    guard rc == 0 else { throw ImageError(path: path, .corrupt(String(cString: err))) }
    let first = rows.raw + (y - y0) * rowBytes + x * info.channels * info.bitDepth / 8
    if info.bitDepth == 16 {
      return Pixels.planar16(first.assumingMemoryBound(to: UInt16.self), width: w, height: h,
                             stride: rowBytes / 2, inChannels: info.channels, outChannels: channels)
    }
    return Pixels.planar(first.assumingMemoryBound(to: UInt8.self), width: w, height: h, channels: channels,
                         stride: rowBytes, inChannels: info.channels, outChannels: channels)
  }
}
