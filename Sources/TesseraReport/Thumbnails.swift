import Foundation
import Tessera
import TesseraData

/// Small pictures for reports: thumbnails of images of any size (a pyramid's smallest level that is
/// large enough, then an area filter) and heatmaps laid over them in a perceptually ordered scale.
public enum Thumbnails {
  /// Levels larger than this are not read whole for a thumbnail.
  public static let maxLevelPixels = 64 << 20

  /// (C, H, W) floats of `url` at most `side` pixels on its longer side, `channels` 3 or 1.
  public static func tensor(_ url: URL, side: Int, channels: Int = 3) throws -> Tensor {
    let img = try RegionImages.open(url, reader: ImageReader(maxPixels: 1 << 40, maxFileBytes: 1 << 40))
    let sizes = img.levelSizes
    // The smallest level at least `side` on its longer side (or the largest level that is smaller).
    let level = sizes.indices.last { max(sizes[$0].width, sizes[$0].height) >= side } ?? 0
    let (w, h) = sizes[level]
    guard w * h <= maxLevelPixels else {
      throw ImageError(path: url.path, .unsupported("no pyramid level small enough for a thumbnail (\(w)×\(h)); tessera convert makes one"))
    }
    let t = try img.read(level: level, region: PixelRect(x: 0, y: 0, width: w, height: h), channels: channels)
    let s = min(1, Double(side) / Double(max(w, h)))
    let tw = max(1, Int((Double(w) * s).rounded())), th = max(1, Int((Double(h) * s).rounded()))
    return Resample.resize(t, height: th, width: tw, filter: .area)
  }

  /// Interleaved 8-bit samples of a (C, H, W) tensor in [0, 1].
  public static func bytes(_ t: Tensor) -> [UInt8] {
    let c = t.shape[0], n = t.shape[1] * t.shape[2], f = t.floats
    var out = [UInt8](repeating: 0, count: c * n)
    for i in 0..<n { for k in 0..<c { out[i * c + k] = UInt8(max(0, min(255, (f[k * n + i] * 255).rounded()))) } }
    return out
  }

  public static func jpeg(_ t: Tensor, quality: Int = 82) throws -> Data {
    try JPEGEncoder.encode(bytes(t), width: t.shape[2], height: t.shape[1], channels: t.shape[0], quality: quality)
  }

  /// Viridis (matplotlib's default: perceptually uniform, ordered in lightness, readable by the
  /// common colour-vision deficiencies), 9 control points.
  static let viridis: [(Double, Double, Double)] = [
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129), (92, 200, 99), (170, 220, 50),
    (253, 231, 37),
  ]

  public static func viridisColour(_ v: Double) -> (UInt8, UInt8, UInt8) {
    let x = max(0, min(1, v)) * Double(viridis.count - 1)
    let i = min(Int(x), viridis.count - 2), f = x - Double(i)
    let a = viridis[i], b = viridis[i + 1]
    func mix(_ p: Double, _ q: Double) -> UInt8 { UInt8((p + (q - p) * f).rounded()) }
    return (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
  }

  /// `heat` (1, h, w) in [0, 1] resized to the image's size and laid over its grey version: the
  /// colour of the scale, 65 % opaque, over the picture's lightness.
  public static func overlay(image: Tensor, heat: Tensor) -> Tensor {
    let h = image.shape[1], w = image.shape[2], n = h * w
    let hm = Resample.resize(heat, height: h, width: w, filter: .bilinear).floats
    let src = image.floats, c = image.shape[0]
    let out = Tensor(uninitialized: [3, h, w], category: .data)
    let o = out.floats
    for i in 0..<n {
      let grey = c >= 3 ? 0.299 * src[i] + 0.587 * src[n + i] + 0.114 * src[2 * n + i] : src[i]
      let (r, g, b) = viridisColour(Double(hm[i]))
      let a: Float = 0.65
      o[i] = (1 - a) * grey + a * Float(r) / 255
      o[n + i] = (1 - a) * grey + a * Float(g) / 255
      o[2 * n + i] = (1 - a) * grey + a * Float(b) / 255
    }
    return out
  }
}
