import CTesseraImage
import Foundation

/// libjpeg-turbo's encoder, for writing test and benchmark images.
public enum JPEGEncoder {
  /// Interleaved 8-bit RGB (3), gray (1) or CMYK (4; 5: CMYK stored as YCCK) pixels → JPEG bytes.
  public static func encode(_ pixels: [UInt8], width: Int, height: Int, channels: Int = 3, quality: Int = 90) throws -> Data {
    precondition(pixels.count == width * height * min(channels, 4), "pixel count does not match the size")
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size: UInt = 0
    var err = [CChar](repeating: 0, count: Int(TI_ERROR_SIZE))
    guard ti_jpeg_encode(pixels, Int32(width), Int32(height), Int32(channels), Int32(quality), &out, &size, &err) == 0,
          let p = out
    else { throw ImageError(path: "<memory>", .unsupported("JPEG encoding failed: \(String(cString: err))")) }
    defer { ti_free(p) }
    return Data(bytes: p, count: Int(size))
  }
}
