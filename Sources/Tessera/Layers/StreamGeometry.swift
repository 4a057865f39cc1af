import Foundation
import TesseraKernels

/// Where a streamed segment reads its input: region by region, so the whole input need never be
/// in memory at once.
public protocol TileSource {
  /// (N, C, H, W)
  var shape: [Int] { get }
  /// `region` of every image as an fp32 (N, C, rows, cols) tensor.
  func read(_ region: MapRegion) throws -> Tensor
}

/// A tensor in memory as a tile source (copies each region out).
public struct TensorTileSource: TileSource {
  public let tensor: Tensor
  public init(_ tensor: Tensor) { self.tensor = tensor }
  public var shape: [Int] { tensor.shape }
  public func read(_ r: MapRegion) -> Tensor { Streamed.copy(tensor, r) }
}

/// Deterministic pseudo-random pixels in [−1, 1) computed from their position: an input of any
/// size that costs no memory (benchmarks of images larger than memory). Same seed, same pixels.
public struct SyntheticTileSource: TileSource {
  public let shape: [Int]
  public let seed: UInt64
  public init(shape: [Int], seed: UInt64 = 0) {
    precondition(shape.count == 4 && shape.allSatisfy { $0 > 0 }, "shape is (N, C, H, W)")
    self.shape = shape
    self.seed = seed
  }

  public func read(_ r: MapRegion) -> Tensor {
    let (n, c) = (shape[0], shape[1])
    let t = Tensor(uninitialized: [n, c, r.rows.count, r.cols.count])
    let p = SendablePointer(t.floats), w = r.cols.count, H = shape[2], col0 = r.cols.lowerBound
    let seedKey = UInt32(truncatingIfNeeded: (seed &* 0x9E37_79B9_7F4A_7C15) >> 32)
    Parallel.forRanges(n * c * r.rows.count) { _, range in
      for row in range {
        let plane = row / r.rows.count, y = r.rows.lowerBound + row % r.rows.count
        // A 32-bit key for the input row (all 64 bits of its index and the seed), then a 32-bit hash
        // of key and column, eight columns at a time (64-bit multiplies do not vectorize on AVX2:
        // splitmix64 per pixel took 14 % of a 16384² streamed step).
        let rowIndex = UInt64(truncatingIfNeeded: plane * H + y)
        let key = Self.hash(UInt32(truncatingIfNeeded: rowIndex) ^ Self.hash(UInt32(truncatingIfNeeded: rowIndex >> 32) ^ seedKey))
        let out = p.p + row * w
        var i = 0
        while i < w {
          let cols = SIMD8<UInt32>(repeating: UInt32(truncatingIfNeeded: col0 + i)) &+ SIMD8(0, 1, 2, 3, 4, 5, 6, 7)
          let h = Self.hash(SIMD8(repeating: key) ^ (cols &* 0x9E37_79B9))
          let v = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: h &>> 8)) * (2.0 / 16_777_216.0) - 1
          if i + 8 <= w {
            UnsafeMutableRawPointer(out + i).storeBytes(of: v, as: SIMD8<Float>.self)
          } else {
            for j in 0..<(w - i) { out[i + j] = v[j] }  // the row's last few columns
          }
          i += 8
        }
      }
    }
    return t
  }

  /// lowbias32 (C. Wellons' 32-bit integer hash), lane-wise.
  @inline(__always) static func hash<V: SIMD>(_ v: V) -> V where V.Scalar == UInt32 {
    var x = v
    x ^= x &>> 16
    x &*= V(repeating: 0x7FEB_352D)
    x ^= x &>> 15
    x &*= V(repeating: 0x846C_A68B)
    x ^= x &>> 16
    return x
  }

  @inline(__always) static func hash(_ v: UInt32) -> UInt32 { hash(SIMD2(v, 0))[0] }
}

/// Why a segment cannot be streamed, or a tile does not fit it.
public enum StreamingError: Error, CustomStringConvertible, Equatable {
  case unsupportedLayer(path: String, kind: String)
  case tileNotMultiple(tile: Int, stride: Int)
  case unequalStrides(path: String)

  public var description: String {
    switch self {
    case let .unsupportedLayer(path, kind):
      return "\(path) (\(kind)) cannot be streamed: a streamed segment is a chain of Conv2D, BatchNorm2D, "
        + "pooling and activation layers; stream fewer blocks"
    case let .tileNotMultiple(tile, stride):
      let lo = max(stride, tile / stride * stride)
      return "tile \(tile) is not a multiple of the streamed part's output stride \(stride); use \(lo) or \(lo + stride)"
    case let .unequalStrides(path):
      return "\(path) strides rows and columns differently; streaming needs square strides"
    }
  }
}

/// The tiles of one input size: crops with halos, and for every layer of the segment the part of
/// its map each tile owns.
public struct StreamGeometry {
  /// (N, C, H, W) in, (N, K, H', W') out.
  public internal(set) var input: [Int], output: [Int]
  /// Input pixels per output cell, and the halo (input pixels, a multiple of the stride) around a tile.
  public let stride: Int, halo: Int
  /// Row by row, left to right; made on access from the per-axis spans (a 16384² image in 64-px
  /// tiles has 65,536 tiles but only 256 row spans and 256 column spans).
  public let tiles: TileGrid
  /// Elements per channel of each layer's whole output map (N·H·W), for BatchNorm's means.
  var counts: [Int]

  /// The same tiles for a batch of `n`.
  func withBatch(_ n: Int) -> StreamGeometry {
    guard n != input[0] else { return self }
    var g = self
    g.counts = counts.map { $0 / input[0] * n }
    g.input[0] = n
    g.output[0] = n
    return g
  }

  /// The tiles of a layout: every row span with every column span.
  public struct TileGrid: RandomAccessCollection {
    /// One axis of a run of tiles.
    public struct Span {
      let crop: Range<Int>, out: Range<Int>
      let owned: [Range<Int>], local: [Int]
    }
    let rows: [Span], cols: [Span]
    public var startIndex: Int { 0 }
    public var endIndex: Int { rows.count * cols.count }
    public subscript(i: Int) -> Tile {
      let r = rows[i / cols.count], c = cols[i % cols.count]
      return Tile(crop: MapRegion(rows: r.crop, cols: c.crop), out: MapRegion(rows: r.out, cols: c.out),
                  owned: zip(r.owned, c.owned).map { MapRegion(rows: $0, cols: $1) },
                  local: zip(r.local, c.local).map { ($0, $1) })
    }

    /// How many tiles have each crop size [rows, cols].
    public func cropSizeCounts() -> [[Int]: Int] {
      var rc = [Int: Int](), cc = [Int: Int]()
      for r in rows { rc[r.crop.count, default: 0] += 1 }
      for c in cols { cc[c.crop.count, default: 0] += 1 }
      var out = [[Int]: Int]()
      for (r, nr) in rc { for (c, nc) in cc { out[[r, c]] = nr * nc } }
      return out
    }

    /// The row-major index of the last tile of each shape (as `distinct` tells shapes apart), in
    /// increasing order.
    func lastOfEachShape() -> [Int] {
      func lasts(_ spans: [Span]) -> [Int] {
        var seen = Set<[Int]>()
        return spans.indices.reversed().filter { seen.insert([spans[$0].crop.count] + spans[$0].local).inserted }
      }
      let cs = lasts(cols)
      return lasts(rows).flatMap { r in cs.map { r * cols.count + $0 } }.sorted()
    }

    /// Cells of layer l's output on tile i's crop.
    func localCells(_ i: Int, layer l: Int) -> Int {
      rows[i / cols.count].local[l] * cols[i % cols.count].local[l]
    }

    /// One tile of each shape (crop size and every layer's local size): a tile's shape is its row
    /// span's with its column span's, so only distinct spans are combined. In a dry run every tile
    /// starts from and returns to the same count, and tiles of one shape allocate alike, so the
    /// planner's peak over these is the peak over all.
    public func distinct() -> [Tile] {
      func firsts(_ spans: [Span]) -> [Span] {
        var seen = Set<[Int]>()
        return spans.filter { seen.insert([$0.crop.count] + $0.local).inserted }
      }
      let rs = firsts(rows), cs = firsts(cols)
      return rs.flatMap { r in
        cs.map { c in
          Tile(crop: MapRegion(rows: r.crop, cols: c.crop), out: MapRegion(rows: r.out, cols: c.out),
               owned: zip(r.owned, c.owned).map { MapRegion(rows: $0, cols: $1) }, local: zip(r.local, c.local).map { ($0, $1) })
        }
      }
    }
  }

  public struct Tile {
    /// Input pixels read (tile plus halo).
    public let crop: MapRegion
    /// Output cells this tile owns (whole-map coordinates).
    public let out: MapRegion
    /// For each layer, the cells of its output this tile owns, in the crop's own coordinates.
    public let owned: [MapRegion]
    /// For each layer, the crop's output map size (h, w).
    public let local: [(Int, Int)]
  }

  /// Input span [start, end) for output cells [c0, c1) along an axis of n pixels: the halo
  /// around, the start on the stride grid (halo is a multiple of it), the length ≡ n (mod stride)
  /// so every layer's padding and grid match the whole image's. Shared by tiled inference.
  public static func crop(_ c0: Int, _ c1: Int, _ n: Int, stride: Int, halo: Int) -> Range<Int> {
    let start = max(0, c0 * stride - halo)
    var end = min(n, c1 * stride + halo)
    if end < n { end = min(n, end + ((n - end) % stride + stride) % stride) }
    return start..<end
  }
}

/// Layout cache key: the segment's layers, its tile and the image's (C, H, W).
struct GeometryKey: Hashable {
  let leaves: [ObjectIdentifier], tile: Int, image: [Int]
  static let cache = Locked([GeometryKey: ([Layer], StreamGeometry)]())
}

/// A value behind a lock.
public final class Locked<T>: @unchecked Sendable {
  private var value: T
  private let lock = NSLock()
  public init(_ v: T) { value = v }
  public func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R {
    lock.lock()
    defer { lock.unlock() }
    return try body(&value)
  }
}

extension Streamed {
  /// Tiles, halos and owned regions for an (N, C, H, W) input.
  public func geometry(for input: [Int]) throws -> StreamGeometry {
    // Thousands of tiles take a while to lay out; the planner asks for the same input many times.
    // (Tiles do not depend on the batch: one layout per image size.)
    // Segments built again from the same layers (the planner tries many) share one layout.
    let key = GeometryKey(leaves: leaves.map(ObjectIdentifier.init), tile: tile, image: Array(input.dropFirst()))
    if input.count == 4, let g = GeometryKey.cache.withLock({ $0[key]?.1 }) { return g.withBatch(input[0]) }
    let g = try makeGeometry(for: input)
    GeometryKey.cache.withLock {
      if $0.count >= 64 { $0.removeAll() }
      $0[key] = (leaves, g)  // the layers are held, so their identifiers are not reused
    }
    return g
  }

  func makeGeometry(for input: [Int]) throws -> StreamGeometry {
    // Per layer: output size, cumulative stride S, and the input span of an output cell j:
    // [j·S − P, j·S − P + R − 1] (P: padding reach before, R: receptive field size).
    var shape = input, S = 1, P = (0, 0), R = (1, 1), halo = 0  // P and R per axis (rows, columns)
    var sizes = [(Int, Int)](), strides = [Int]()
    for (l, path) in zip(leaves, paths) {
      var k = (1, 1), s = (1, 1), d = (1, 1), pad = (0, 0)
      if let c = l as? Conv2D {
        let g = try c.geometry(for: shape)
        (k, s, d, pad) = ((g.kernelH, g.kernelW), (g.strideH, g.strideW), (g.dilationH, g.dilationW), (g.padTop, g.padLeft))
      } else if let p = l as? Pool2D {
        let (t, lp, _, _) = p.padding.amounts(inHeight: shape[2], inWidth: shape[3], kernel: p.kernelSize,
                                              stride: p.stride, dilation: (1, 1))
        (k, s, pad) = (p.kernelSize, p.stride, (t, lp))
      }
      guard s.0 == s.1 else { throw StreamingError.unequalStrides(path: path) }
      P = (P.0 + pad.0 * S, P.1 + pad.1 * S)
      R = (R.0 + (k.0 - 1) * d.0 * S, R.1 + (k.1 - 1) * d.1 * S)
      S *= s.0
      halo = max(halo, P.0, P.1, R.0 - P.0 - S, R.1 - P.1 - S)
      shape = try l.outputShape(for: shape)
      sizes.append((shape[2], shape[3]))
      strides.append(S)
    }
    guard tile % S == 0 else { throw StreamingError.tileNotMultiple(tile: tile, stride: S) }
    halo = (halo + S - 1) / S * S
    let t = tile / S

    // Along one axis (rows: axis 2, columns: axis 3; the other axis at its whole size, which every
    // layer takes): each span's crop, owned cells and local size per layer. Tiles are row span ×
    // column span, as the layers act on each axis independently.
    func spans(_ axis: Int) throws -> [StreamGeometry.TileGrid.Span] {
      let n = input[axis], no = shape[axis]
      var out = [StreamGeometry.TileGrid.Span]()
      for a0 in stride(from: 0, to: no, by: t) {
        let a1 = min(no, a0 + t), span = StreamGeometry.crop(a0, a1, n, stride: S, halo: halo)
        var owned = [Range<Int>](), local = [Int]()
        var ls = input
        ls[axis] = span.count
        for (i, l) in leaves.enumerated() {
          ls = try l.outputShape(for: ls)
          let f = S / strides[i], o = span.lowerBound / strides[i], size = axis == 2 ? sizes[i].0 : sizes[i].1
          let g = (a0 * f)..<(a1 == no ? size : a1 * f)
          let r = (g.lowerBound - o)..<(g.upperBound - o)
          precondition(r.lowerBound >= 0 && r.upperBound <= ls[axis], "streamed tile geometry: owned cells outside the crop")
          owned.append(r)
          local.append(ls[axis])
        }
        out.append(StreamGeometry.TileGrid.Span(crop: span, out: a0..<a1, owned: owned, local: local))
      }
      return out
    }
    let grid = StreamGeometry.TileGrid(rows: try spans(2), cols: try spans(3))
    return StreamGeometry(input: input, output: shape, stride: S, halo: halo, tiles: grid,
                          counts: sizes.map { input[0] * $0.0 * $0.1 })
  }

  // MARK: copies

  /// `region` of every plane of x as a new (N, C, rows, cols) tensor.
  static func copy(_ x: Tensor, _ r: MapRegion) -> Tensor {
    let s = x.shape
    let t = Tensor(uninitialized: [s[0], s[1], r.rows.count, r.cols.count])
    copy(x, region: r, into: t, at: MapRegion(rows: 0..<r.rows.count, cols: 0..<r.cols.count))
    return t
  }

  /// Copies `region` of every plane of `x` to `at` (same size) of every plane of `y`.
  static func copy(_ x: Tensor, region: MapRegion, into y: Tensor, at: MapRegion) {
    let planes = x.shape[0] * x.shape[1], (xh, xw, yh, yw) = (x.shape[2], x.shape[3], y.shape[2], y.shape[3])
    let w = region.cols.count, rows = region.rows.count, r0 = region.rows.lowerBound
    let src = SendablePointer(x.floats), dst = SendablePointer(y.floats)
    let (a0, c0) = (at.rows.lowerBound, at.cols.lowerBound), x0 = region.cols.lowerBound
    // Large copies (a tile's crop of the input, its output into the segment's) on every thread.
    Parallel.forRanges(planes * rows, maxWorkers: planes * rows * w >= 1 << 16 ? nil : 1) { _, range in
      for pr in range {
        let p = pr / rows, i = pr % rows
        (dst.p + (p * yh + a0 + i) * yw + c0).update(from: src.p + (p * xh + r0 + i) * xw + x0, count: w)
      }
    }
  }

  /// Adds every plane of `x` (the size of `at`) into `at` of every plane of `y`.
  static func add(_ x: Tensor, into y: Tensor, at: MapRegion) {
    let planes = x.shape[0] * x.shape[1], (yh, yw) = (y.shape[2], y.shape[3]), w = at.cols.count
    precondition(x.shape[2] == at.rows.count && x.shape[3] == w, "crop gradient and crop differ")
    let rows = at.rows.count, r0 = at.rows.lowerBound, c0 = at.cols.lowerBound
    let xs = SendablePointer(x.floats), ys = SendablePointer(y.floats)
    Parallel.forRanges(planes * rows, maxWorkers: planes * rows * w >= 1 << 16 ? nil : 1) { _, range in
      for pr in range {
        let p = pr / rows, i = pr % rows
        let dst = ys.p + (p * yh + r0 + i) * yw + c0, src = xs.p + (p * rows + i) * w
        for j in 0..<w { dst[j] += src[j] }
      }
    }
  }
}
