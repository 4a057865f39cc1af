import Foundation
import Tessera
import TesseraKernels

/// An image read by region, at one of its resolution levels: what patch datasets and masks read.
/// JPEG/PNG/PNM have one level (through `ImageReader`); other formats register an opener
/// (`TesseraTIFF` registers pyramidal TIFF), which keeps the modules' imports one-way.
public protocol RegionImage: AnyObject {
  /// (width, height) of each level, level 0 first (full resolution).
  var levelSizes: [(width: Int, height: Int)] { get }
  /// `region` (in the level's pixels) as (channels, h, w) floats in [0, 1].
  func read(level: Int, region: PixelRect, channels: Int) throws -> Tensor
  /// Bytes kept between reads (a tile cache), at most.
  var cacheLimitBytes: Int { get }
}

extension RegionImage {
  public var cacheLimitBytes: Int { 0 }

  /// Level-0 pixels per pixel of a level.
  public func downsample(_ level: Int) -> Double {
    let l0 = levelSizes[0], l = levelSizes[level]
    return (Double(l0.width) / Double(l.width) + Double(l0.height) / Double(l.height)) / 2
  }
}

/// JPEG/PNG/PNM as a one-level region image.
public final class ReaderRegionImage: RegionImage {
  let reader: ImageReader
  let file: ImageReader.File
  public init(_ url: URL, reader: ImageReader = ImageReader()) throws {
    self.reader = reader
    file = try reader.open(url)
  }
  public var levelSizes: [(width: Int, height: Int)] { [(file.info.width, file.info.height)] }
  public func read(level: Int, region: PixelRect, channels: Int) throws -> Tensor {
    guard level == 0 else { throw ImageError(path: file.url.path, .badRegion("level \(level) does not exist; this file has only level 0")) }
    return try reader.read(file, region: region, channels: channels).pixels
  }
}

/// Openers of region images by file; the first that accepts a file opens it.
public enum RegionImages {
  public typealias Opener = @Sendable (URL) throws -> RegionImage?
  nonisolated(unsafe) private static var openers: [Opener] = []
  private static let lock = NSLock()

  /// Adds an opener tried before the built-in formats (e.g. TIFF by its magic number).
  public static func register(_ opener: @escaping Opener) {
    lock.withLock { openers.append(opener) }
  }

  /// A registered format's image, or nil when no opener takes the file (then `ImageReader`'s).
  public static func registered(_ url: URL) throws -> RegionImage? {
    for o in lock.withLock({ openers }) { if let i = try o(url) { return i } }
    return nil
  }

  public static func open(_ url: URL, reader: ImageReader = ImageReader()) throws -> RegionImage {
    try registered(url) ?? ReaderRegionImage(url, reader: reader)
  }
}
