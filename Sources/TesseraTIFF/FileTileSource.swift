import Foundation
import Tessera
import TesseraData
import TesseraKernels

/// An image file as a streamed segment's input, read region by region and never held: each crop
/// (with its halo) is decoded from the file. TIFF reads only the tiles a crop touches (through the
/// file's tile cache, counted in the ledger); JPEG/PNG/PNM read the crop by region. Pixels are in
/// [0, 1], optionally normalised per channel as (x − mean) / std.
public final class FileTileSource: TileSource, @unchecked Sendable {
  public let url: URL
  public let shape: [Int]
  public let level: Int
  let tiff: TIFFFile?
  let reader: ImageReader?
  let file: ImageReader.File?
  let mean: [Float], std: [Float]

  public init(_ url: URL, level: Int = 0, channels: Int = 3, mean: [Float] = [0, 0, 0], std: [Float] = [1, 1, 1],
              cacheBytes: Int = 64 << 20) throws {
    self.url = url
    self.level = level
    self.mean = mean
    self.std = std
    if TIFFFile.isTIFF(url) {
      let t = try TIFFFile(url, cacheBytes: cacheBytes)
      guard t.levels.indices.contains(level) else {
        throw TIFFError(url.path, "level \(level) does not exist; the file has levels 0…\(t.levels.count - 1)")
      }
      tiff = t
      reader = nil
      file = nil
      shape = [1, channels, t.levels[level].height, t.levels[level].width]
    } else {
      guard level == 0 else { throw TIFFError(url.path, "only TIFF has levels") }
      let r = ImageReader(maxPixels: 1 << 28, maxFileBytes: 1 << 40)
      let f = try r.open(url)
      tiff = nil
      reader = r
      file = f
      shape = [1, channels, f.info.height, f.info.width]
    }
  }

  /// The file's tile cache (TIFF), whose bytes a plan must count beside the step.
  public var cacheLimitBytes: Int { tiff?.cache.limitBytes ?? 0 }

  public func read(_ region: MapRegion) throws -> Tensor {
    let r = PixelRect(x: region.cols.lowerBound, y: region.rows.lowerBound, width: region.cols.count, height: region.rows.count)
    let t: Tensor
    if let tiff {
      t = try tiff.read(level: level, region: r, channels: shape[1])
    } else {
      t = try reader!.read(file!, region: r, channels: shape[1]).pixels
    }
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
