import Foundation
import Tessera
import TesseraKernels

/// How an image is brought to the network's input size. None of them distorts: `stretch` must be
/// asked for by name.
public enum ResizePolicy: String, Sendable, Codable, CaseIterable {
  /// Shrink (or enlarge) to fit inside the target keeping the aspect ratio, then pad (letterbox)
  /// with the fill value, centred.
  case fit
  /// Scale to cover the target keeping the aspect ratio, then crop (centre, or random for training).
  case fill
  /// Native size, any H×W.
  case none
  /// Scale each axis independently to the target (distorts; only when named).
  case stretch
}

/// One image made ready for a network: decoded at the smallest sufficient scale, then resized by a
/// policy.
public struct PreparedImage {
  /// (C, H, W) in [0, 1].
  public var pixels: Tensor
  /// The displayed size of the file (EXIF orientation applied).
  public var originalWidth: Int, originalHeight: Int
  /// JPEG DCT scale used (1, 2, 4 or 8).
  public var decodeScale: Int
  /// Size after resizing, before padding or cropping.
  public var resizedWidth: Int, resizedHeight: Int
}

public struct ImagePipeline: Sendable {
  public var reader: ImageReader
  public var policy: ResizePolicy
  public var filter: ResampleFilter
  /// Target (height, width); ignored by `.none`.
  public var height: Int, width: Int
  public var channels: Int
  /// Value of letterbox padding, in [0, 1].
  public var fillValue: Float
  /// Decode JPEGs at a reduced DCT scale when the target is small enough (default on).
  public var useDCTScaling = true

  public init(size: Int, policy: ResizePolicy = .fit, filter: ResampleFilter = .area, channels: Int = 3,
              fillValue: Float = 0, reader: ImageReader = ImageReader()) {
    self.init(height: size, width: size, policy: policy, filter: filter, channels: channels, fillValue: fillValue,
              reader: reader)
  }

  public init(height: Int, width: Int, policy: ResizePolicy = .fit, filter: ResampleFilter = .area, channels: Int = 3,
              fillValue: Float = 0, reader: ImageReader = ImageReader()) {
    precondition(height > 0 && width > 0, "target size must be positive")
    self.height = height
    self.width = width
    self.policy = policy
    self.filter = filter
    self.channels = channels
    self.fillValue = fillValue
    self.reader = reader
  }

  /// The resized size (before pad/crop) for an image of w × h.
  public func resizedSize(width w: Int, height h: Int) -> (width: Int, height: Int) {
    switch policy {
    case .none: return (w, h)
    case .stretch: return (width, height)
    case .fit, .fill:
      let sx = Double(width) / Double(w), sy = Double(height) / Double(h)
      let s = policy == .fit ? min(sx, sy) : max(sx, sy)
      return (max(1, Int((Double(w) * s).rounded())), max(1, Int((Double(h) * s).rounded())))
    }
  }

  /// Brings decoded pixels (C, H, W) to the target by the policy (the centre crop for `.fill`).
  public func resize(_ pixels: Tensor) -> Tensor {
    let (rw, rh) = resizedSize(width: pixels.shape[2], height: pixels.shape[1])
    return fitToTarget(pixels, rw, rh, nil)
  }

  /// Resampled to rw × rh, then letterboxed (`fit`) or cropped (`fill`, at `cropOrigin` or centred).
  func fitToTarget(_ pixels: Tensor, _ rw: Int, _ rh: Int, _ cropOrigin: ((Int, Int) -> (Int, Int))?) -> Tensor {
    var img = pixels
    if rw != img.shape[2] || rh != img.shape[1] { img = Resample.resize(img, height: rh, width: rw, filter: filter) }
    switch policy {
    case .fit: img = letterbox(img)
    case .fill:
      let maxX = rw - width, maxY = rh - height
      let (ox, oy) = cropOrigin?(maxX, maxY) ?? (maxX / 2, maxY / 2)
      img = crop(img, x: min(max(ox, 0), maxX), y: min(max(oy, 0), maxY), width: width, height: height)
    case .none, .stretch: break
    }
    return img
  }

  /// Reads and prepares one file. `cropOrigin` picks the crop of `.fill` (default: centred).
  public func prepare(_ url: URL, cropOrigin: ((Int, Int) -> (Int, Int))? = nil) throws -> PreparedImage {
    if let img = try RegionImages.registered(url) { return try prepare(img, url: url, cropOrigin: cropOrigin) }
    let file = try reader.open(url)
    let info = file.info
    let (rw, rh) = resizedSize(width: info.width, height: info.height)
    let decoded = try reader.read(file, minimumSize: policy == .none || !useDCTScaling ? nil : (rw, rh),
                                  channels: channels)
    let img = fitToTarget(decoded.pixels, rw, rh, cropOrigin)
    return PreparedImage(pixels: img, originalWidth: info.width, originalHeight: info.height,
                         decodeScale: decoded.scale, resizedWidth: rw, resizedHeight: rh)
  }

  /// A registered format (pyramidal TIFF): the smallest level at least as large as the resized
  /// size, read whole, then resampled with the pipeline's filter.
  func prepare(_ img: RegionImage, url: URL, cropOrigin: ((Int, Int) -> (Int, Int))?) throws -> PreparedImage {
    let l0 = img.levelSizes[0]
    let (rw, rh) = resizedSize(width: l0.width, height: l0.height)
    var level = 0
    if policy != .none {
      for (i, s) in img.levelSizes.enumerated() where s.width >= rw && s.height >= rh { level = i }
    }
    let s = img.levelSizes[level]
    guard s.width * s.height <= reader.maxPixels else {
      throw ImageError(path: url.path, .tooLarge(width: s.width, height: s.height, limit: reader.maxPixels))
    }
    let whole = try img.read(level: level, region: PixelRect(x: 0, y: 0, width: s.width, height: s.height), channels: channels)
    let pixels = fitToTarget(whole, rw, rh, cropOrigin)
    return PreparedImage(pixels: pixels, originalWidth: l0.width, originalHeight: l0.height,
                         decodeScale: Int(img.downsample(level).rounded()), resizedWidth: rw, resizedHeight: rh)
  }

  func letterbox(_ t: Tensor) -> Tensor {
    let c = t.shape[0], h = t.shape[1], w = t.shape[2]
    if h == height && w == width { return t }
    let out = Tensor(uninitialized: [c, height, width], category: .data)
    out.floats.update(repeating: fillValue, count: out.count)
    let oy = (height - h) / 2, ox = (width - w) / 2
    for ch in 0..<c {
      for y in 0..<h {
        (out.floats + (ch * height + oy + y) * width + ox).update(from: t.floats + (ch * h + y) * w, count: w)
      }
    }
    return out
  }
}

/// A (C, h, w) window of a (C, H, W) tensor.
public func crop(_ t: Tensor, x: Int, y: Int, width: Int, height: Int) -> Tensor {
  let c = t.shape[0], h = t.shape[1], w = t.shape[2]
  precondition(x >= 0 && y >= 0 && x + width <= w && y + height <= h, "crop outside the image")
  let out = Tensor(uninitialized: [c, height, width], category: .data)
  for ch in 0..<c {
    for r in 0..<height {
      (out.floats + (ch * height + r) * width).update(from: t.floats + (ch * h + y + r) * w + x, count: width)
    }
  }
  return out
}

/// Writes a (C, H, W) tensor in [0, 1] (1 or 3 channels) as an 8-bit PNG.
public func writePNG(_ t: Tensor, to url: URL) throws {
  let c = t.shape[0], h = t.shape[1], w = t.shape[2]
  precondition(c == 1 || c == 3, "PNG output takes 1 or 3 channels")
  var bytes = [UInt8](repeating: 0, count: c * h * w)
  let p = t.floats
  for y in 0..<h {
    for x in 0..<w {
      for ch in 0..<c {
        let v = p[(ch * h + y) * w + x]
        bytes[(y * w + x) * c + ch] = UInt8(max(0, min(255, (v * 255).rounded())))
      }
    }
  }
  var err = [CChar](repeating: 0, count: 256)
  let rc = ti_png_write(url.path, bytes, Int32(w), Int32(h), Int32(c), &err)
  guard rc == 0 else { throw ImageError(path: url.path, .unreadable("cannot write PNG: \(String(cString: err))")) }
}

import CTesseraImage

/// Writes interleaved 8-bit pixels (1, 2, 3 or 4 channels) as a PNG file.
public func writePNG(bytes pixels: [UInt8], width w: Int, height h: Int, to url: URL) throws {
  var err = [CChar](repeating: 0, count: 256)
  guard ti_png_write(url.path, pixels, Int32(w), Int32(h), Int32(pixels.count / max(w * h, 1)), &err) == 0 else {
    throw ImageError(path: url.path, .unreadable("cannot write PNG: \(String(cString: err))"))
  }
}
