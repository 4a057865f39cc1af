import Foundation
import Tessera
import TesseraKernels

/// An image file as a streamed segment's input, read region by region and never held: each crop
/// (with its halo) is decoded from the file — a pyramidal TIFF reads only the tiles a crop touches
/// (through its tile cache), JPEG/PNG/PNM read the crop by region. Pixels in [0, 1], optionally
/// normalised per channel as (x − mean) / std.
public final class RegionTileSource: TileSource, @unchecked Sendable {
  public let url: URL
  public let shape: [Int]
  public let level: Int
  public let image: RegionImage
  let mean: [Float], std: [Float]

  public init(_ url: URL, level: Int = 0, channels: Int = 3, mean: [Float] = [0, 0, 0], std: [Float] = [1, 1, 1]) throws {
    self.url = url
    self.level = level
    self.mean = mean
    self.std = std
    image = try RegionImages.open(url, reader: ImageReader(maxPixels: 1 << 28, maxFileBytes: 1 << 40))
    guard image.levelSizes.indices.contains(level) else {
      throw ImageError(path: url.path, .badRegion("level \(level) does not exist; the file has levels 0…\(image.levelSizes.count - 1)"))
    }
    let s = image.levelSizes[level]
    shape = [1, channels, s.height, s.width]
  }

  /// Bytes the file's reader keeps between reads (a TIFF's tile cache), to count beside a step.
  public var cacheBytes: Int { image.cacheLimitBytes }

  public func read(_ region: MapRegion) throws -> Tensor {
    let r = PixelRect(x: region.cols.lowerBound, y: region.rows.lowerBound, width: region.cols.count, height: region.rows.count)
    let t = try image.read(level: level, region: r, channels: shape[1])
    let plane = r.width * r.height
    if mean.contains(where: { $0 != 0 }) || std.contains(where: { $0 != 1 }) {
      for c in 0..<shape[1] {
        let m = mean[c % mean.count], s = 1 / std[c % std.count], p = t.floats + c * plane
        for i in 0..<plane { p[i] = (p[i] - m) * s }
      }
    }
    return t.reshaped([1] + t.shape)
  }
}
