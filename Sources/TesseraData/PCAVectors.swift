import Foundation
import Tessera
import TesseraKernels

/// Vectors for PCA from a data set, as a re-playable `VectorSource`.
public enum PCAVectors {
  /// Whole images brought to one size by `pipeline` (fit, fill or stretch), `chunk` images at a time,
  /// decoded by the streaming loader; unreadable files are skipped (and reported through `onSkip`)
  /// the same way on every pass. Returns the vector dimension and (C, H, W).
  public static func images(
    _ ds: ImageDataset, pipeline: ImagePipeline, chunk: Int = 64, workers: Int = Parallel.threadCount,
    onSkip: @escaping @Sendable (String) -> Void = { _ in }
  ) -> (dimension: Int, shape: [Int], source: VectorSource) {
    precondition(pipeline.policy != .none, "PCA over whole images needs one size: use fit, fill or stretch")
    let shape = [pipeline.channels, pipeline.height, pipeline.width]
    let source: VectorSource = { body in
      let loader = BatchLoader(dataset: ds, pipeline: pipeline,
                               batchSize: max(1, min(chunk, (64 << 20) / (4 * pipeline.channels * pipeline.height * pipeline.width))))
      loader.shuffle = false
      loader.workers = workers
      loader.onWarning = onSkip
      let it = loader.epoch(0)
      while let b = try it.next() { try body(b.images.floats, b.labels.count) }
    }
    return (shape.reduce(1, *), shape, source)
  }

  /// Square patches of `size` at native resolution, decoding only the region that holds them: `perImage`
  /// random patches per image (seeded by `seed` and the image's index), or with `grid` every
  /// non-overlapping patch. Images smaller than a patch, and unreadable ones, are skipped.
  public static func patches(
    _ ds: ImageDataset, size: Int, channels: Int = 3, perImage: Int = 16, grid: Bool = false, seed: UInt64 = 0,
    chunk: Int = 256, reader: ImageReader = ImageReader(), onSkip: @escaping @Sendable (String) -> Void = { _ in }
  ) -> (dimension: Int, shape: [Int], source: VectorSource) {
    let shape = [channels, size, size], d = shape.reduce(1, *)
    let chunk = max(1, min(chunk, (64 << 20) / (4 * d)))  // at most 64 MiB of patches at a time
    let source: VectorSource = { body in
      let buf = Buffer(floats: chunk * d, category: .data, zeroed: false)
      var rows = 0
      for (i, s) in ds.samples.enumerated() {
        let file: ImageReader.File
        do { file = try reader.open(s.url) } catch {
          onSkip("skipping \(error)")
          continue
        }
        let (w, h) = (file.info.width, file.info.height)
        guard w >= size, h >= size else { continue }
        var rects = [PixelRect]()
        if grid {
          for y in stride(from: 0, through: h - size, by: size) {
            for x in stride(from: 0, through: w - size, by: size) { rects.append(PixelRect(x: x, y: y, width: size, height: size)) }
          }
        } else {
          var g = SeededGenerator(seed: seed ^ (UInt64(i) &* 0x9E37_79B9_7F4A_7C15))
          rects = (0..<perImage).map { _ in Tiling.randomPatch(width: w, height: h, size: size, using: &g) }
        }
        // One decode per image: the rectangle bounding all its patches, then each patch cropped
        // from it (decoding patch by patch re-reads the file's entropy-coded rows every time).
        guard let x0 = rects.map(\.x).min(), let y0 = rects.map(\.y).min(),
              let x1 = rects.map({ $0.x + $0.width }).max(), let y1 = rects.map({ $0.y + $0.height }).max()
        else { continue }
        let bounds: Tensor
        do {
          bounds = try reader.read(file, region: PixelRect(x: x0, y: y0, width: x1 - x0, height: y1 - y0),
                                   channels: channels).pixels
        } catch {
          onSkip("skipping \(error)")
          continue
        }
        for r in rects {
          let p = crop(bounds, x: r.x - x0, y: r.y - y0, width: size, height: size)
          (buf.floats + rows * d).update(from: p.floats, count: d)
          rows += 1
          if rows == chunk {
            try body(buf.floats, rows)
            rows = 0
          }
        }
      }
      if rows > 0 { try body(buf.floats, rows) }
    }
    return (d, shape, source)
  }

  /// The components as one PNG: each reshaped to (C, H, W), stretched to [0, 1] by its own range,
  /// laid out in a grid with a 1-pixel grey border.
  public static func writeGrid(_ m: PCAModel, to url: URL, maxComponents: Int = 64) throws {
    let c = m.vectorShape[0], h0 = m.vectorShape[1], w0 = m.vectorShape[2], d = m.dimension
    // Small components are enlarged (nearest neighbour) to at least 64 pixels so they can be seen.
    let zoom = max(1, 64 / max(h0, w0, 1)), h = h0 * zoom, w = w0 * zoom
    let k = min(m.count, maxComponents), cols = Int(Double(k).squareRoot().rounded(.up)), rowsN = (k + cols - 1) / cols
    let H = rowsN * (h + 1) + 1, W = cols * (w + 1) + 1
    let out = Tensor(zeros: [c, H, W], category: .data)
    out.floats.update(repeating: 0.5, count: out.count)
    for i in 0..<k {
      let v = m.components[(i * d)..<((i + 1) * d)]
      let lo = v.min() ?? 0, hi = v.max() ?? 1, span = max(hi - lo, 1e-12)
      let oy = (i / cols) * (h + 1) + 1, ox = (i % cols) * (w + 1) + 1
      for ch in 0..<c {
        for y in 0..<h {
          for x in 0..<w {
            out.floats[(ch * H + oy + y) * W + ox + x] = (v[i * d + (ch * h0 + y / zoom) * w0 + x / zoom] - lo) / span
          }
        }
      }
    }
    try writePNG(out, to: url)
  }
}
