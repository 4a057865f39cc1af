import TesseraKernels

/// Tiles and patches at native resolution, as rectangles to hand to `ImageReader.read(region:)` so
/// only they are decoded.
public enum Tiling {
  /// A grid of `tile`×`tile` rectangles covering a width × height image, neighbours sharing
  /// `overlap` pixels; the last row and column are shifted inward so every tile is full-size (when
  /// the image is at least one tile), and a smaller image gives one tile of its own size.
  public static func grid(width: Int, height: Int, tile: Int, overlap: Int = 0) -> [PixelRect] {
    precondition(tile > 0 && overlap >= 0 && overlap < tile, "need tile > overlap ≥ 0")
    func starts(_ n: Int) -> [Int] {
      guard n > tile else { return [0] }
      var s = Array(stride(from: 0, to: n - tile, by: tile - overlap))
      s.append(n - tile)
      return s
    }
    let tw = min(tile, width), th = min(tile, height)
    return starts(height).flatMap { y in starts(width).map { x in PixelRect(x: x, y: y, width: tw, height: th) } }
  }

  /// A uniformly placed `size`×`size` patch (the whole image when it is smaller).
  public static func randomPatch(width: Int, height: Int, size: Int, using rng: inout SeededGenerator) -> PixelRect {
    let pw = min(size, width), ph = min(size, height)
    let x = width > pw ? Int(rng.next() % UInt64(width - pw + 1)) : 0
    let y = height > ph ? Int(rng.next() % UInt64(height - ph + 1)) : 0
    return PixelRect(x: x, y: y, width: pw, height: ph)
  }
}
