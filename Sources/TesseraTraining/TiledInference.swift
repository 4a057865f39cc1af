import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner

/// Exact tiled inference for fully convolutional models (ending in global average pooling): the
/// class-score map of an image of any size, computed tile by tile from regions read on demand, each
/// with a halo from the receptive field, so the stitched map equals the whole-image map (no
/// averaging of overlaps needed). Crops start on the network's output stride and keep the image's
/// size modulo that stride, so every layer's `same` padding and stride grid line up with the
/// whole-image computation.
public struct TiledInference {
  public let body: Sequential
  /// The whole model (body + global average pooling), as the planner takes it.
  public let model: Sequential
  public let classes: Int
  /// Total output stride (input pixels per score-map cell) and halo (input pixels), both multiples
  /// of the stride.
  public let stride: Int, halo: Int

  public struct NotFullyConvolutional: Error, CustomStringConvertible {
    public var description = "tiled inference needs a fully convolutional model that ends in global average pooling"
  }

  public init(model: Sequential, channels: Int) throws {
    guard let last = model.layers.last, last.1 is GlobalAvgPool2D else { throw NotFullyConvolutional() }
    body = Sequential(Array(model.layers.dropLast()))
    self.model = model
    // Receptive field and stride of the score map, from the planner's walk.
    let probe = try Planner.plan(model, name: "", input: [channels, 1024, 1024], batch: 1, optimizer: .sgd)
    guard let rf = probe.layers.dropLast().last?.receptiveField, !rf.global else { throw NotFullyConvolutional() }
    stride = max(rf.stride[0], rf.stride[1])
    let reach = (max(rf.size[0], rf.size[1]) + 1) / 2 + stride
    halo = (reach + stride - 1) / stride * stride
    classes = try body.outputShape(for: [1, channels, 1024, 1024])[1]
  }

  /// Bytes a pass holds at its peak on an H × W image in tiles of `tile`: the parameters, the
  /// score map, and the largest crop's forward (its decoded pixels counted twice: the 8-bit decode
  /// and the float tensor) — the planner's figure for the crop, so it matches the ledger's counting.
  public func plannedPeakBytes(tile: Int, height: Int, width: Int, channels: Int) throws -> Int {
    let out = try body.outputShape(for: [1, channels, height, width])
    guard let map = Limits.product([out[1], out[2], out[3], 4]) else {
      throw SizeError("a \(width)×\(height) image gives a score map too large to count")
    }
    let side = { (n: Int) in min(n, tile + 2 * halo + stride) }
    let crop = [channels, side(height), side(width)]
    let p = try Planner.plan(model, name: "", input: crop, batch: 1, optimizer: .sgd)
    return p.peakInferenceBytes + map + crop.reduce(1, *) * 4
  }

  /// The largest tile (a power of two times the stride, up to 4096 px) whose pass fits `budget`,
  /// or nil when not even the smallest does.
  public func largestTile(fitting budget: Int, height: Int, width: Int, channels: Int) -> (tile: Int, bytes: Int)? {
    var t = max(stride, 4096 / stride * stride)
    while t >= stride {
      if let b = try? plannedPeakBytes(tile: t, height: height, width: width, channels: channels), b <= budget { return (t, b) }
      t = t / 2 / stride * stride
    }
    return nil
  }

  /// Score map (classes, Ho, Wo) of the whole image, `tile` input pixels (a multiple of the stride)
  /// of output at a time.
  public func scoreMap(_ file: ImageReader.File, reader: ImageReader, tile: Int, channels: Int) throws -> Tensor {
    try scoreMap(height: file.info.height, width: file.info.width, tile: tile, channels: channels) {
      try reader.read(file, region: $0, channels: channels).pixels
    }
  }

  /// The score map of an image of H × W pixels whose regions `read` returns as (C, h, w): any
  /// source (a TIFF level read tile by tile, a JPEG by region).
  public func scoreMap(height H: Int, width W: Int, tile: Int, channels: Int, read: (PixelRect) throws -> Tensor) throws -> Tensor {
    guard tile > 0, tile % stride == 0 else {
      throw CLIUsage("--tile must be a multiple of the model's output stride \(stride), e.g. \(max(1, tile / stride) * stride)")
    }
    let out = try body.outputShape(for: [1, channels, H, W])
    let (K, Ho, Wo) = (out[1], out[2], out[3])
    let map = Tensor(zeros: [K, Ho, Wo], category: .activation)
    let t = tile / stride
    func crop(_ c0: Int, _ c1: Int, _ n: Int) -> (Int, Int) {
      let r = StreamGeometry.crop(c0, c1, n, stride: stride, halo: halo)
      return (r.lowerBound, r.upperBound)
    }
    for r0 in Swift.stride(from: 0, to: Ho, by: t) {
      let r1 = min(Ho, r0 + t)
      let (y0, y1) = crop(r0, r1, H)
      for c0 in Swift.stride(from: 0, to: Wo, by: t) {
        let c1 = min(Wo, c0 + t)
        let (x0, x1) = crop(c0, c1, W)
        let img = try read(PixelRect(x: x0, y: y0, width: x1 - x0, height: y1 - y0))
        let local = body.forward(img.reshaped([1] + img.shape), training: false)
        let lh = local.shape[2], lw = local.shape[3], oy = y0 / stride, ox = x0 / stride
        for k in 0..<K {
          for r in r0..<r1 {
            let src = local.floats + (k * lh + (r - oy)) * lw + (c0 - ox)
            (map.floats + (k * Ho + r) * Wo + c0).update(from: src, count: c1 - c0)
          }
        }
      }
    }
    return map
  }
}

/// An argument that does not fit, reported as is.
public struct CLIUsage: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}
