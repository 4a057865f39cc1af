import CTesseraImage
import Foundation
import Tessera

/// Rows of an image in order, 8-bit interleaved samples (1 gray or 3 RGB per pixel), each decoded
/// once: how an image larger than memory is converted. JPEG streams through libjpeg (the file read through a
/// small buffer, so its bytes are not held either); other formats read bands by region.
public protocol RowStream: AnyObject {
  var width: Int { get }
  var height: Int { get }
  var channels: Int { get }
  /// The next `rows` rows into `out` (rows × width × channels bytes).
  func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws
}

/// A JPEG decoded row by row, the file read through a small buffer.
public final class JPEGRowStream: RowStream {
  public let width: Int, height: Int, channels: Int
  let stream: OpaquePointer
  let path: String

  public init(_ url: URL, channels: Int = 3) throws {
    path = url.path
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    var w: Int32 = 0, h: Int32 = 0
    guard let s = ti_jpeg_stream_open_file(url.path, Int32(channels), &w, &h, &err) else {
      throw ImageError(path: url.path, .corrupt(String(cString: err)))
    }
    stream = s
    width = Int(w)
    height = Int(h)
    self.channels = channels
  }

  deinit { ti_jpeg_stream_close(stream) }

  public func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    guard ti_jpeg_stream_read(stream, Int32(rows), out, &err) == 0 else { throw ImageError(path: path, .corrupt(String(cString: err))) }
  }
}

/// Any image the reader opens, read band by band by region (PNG re-decodes rows above each band).
public final class RegionRowStream: RowStream {
  public let width: Int, height: Int, channels: Int
  let reader: ImageReader
  let file: ImageReader.File
  var y = 0

  public init(_ url: URL, channels: Int = 3, reader: ImageReader = ImageReader(maxPixels: 1 << 40, maxFileBytes: 1 << 40)) throws {
    self.reader = reader
    file = try reader.open(url)
    width = file.info.width
    height = file.info.height
    self.channels = channels
  }

  public func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    let t = try reader.read(file, region: PixelRect(x: 0, y: y, width: width, height: rows), channels: channels).pixels
    interleaveBytes(t, into: out)
    y += rows
  }
}

/// (C, H, W) floats in [0, 1] → interleaved bytes, rounded.
public func interleaveBytes(_ t: Tensor, into out: UnsafeMutablePointer<UInt8>) {
  let c = t.shape[0], plane = t.shape[1] * t.shape[2], p = t.floats
  for i in 0..<plane {
    for k in 0..<c { out[i * c + k] = UInt8(max(0, min(255, (p[k * plane + i] * 255).rounded()))) }
  }
}
