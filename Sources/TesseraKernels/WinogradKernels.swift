import Foundation

/// Winograd F(4×4, 3×3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
/// Networks", 2016) for 3×3, stride 1, dilation 1, ungrouped layers of 16 or more channels: each
/// 4×4 output tile comes from a 6×6 input patch with 36 multiplies per (input, output) channel pair
/// instead of 144 — transform, 36 small GEMMs, transform back:
///
///     U = G g Gᵀ (weights, once per call)   V = Bᵀ d B (input patches)
///     M[e] = V[e] · U[e] for e in 0..<36    y = Aᵀ M A (+ bias, ReLU)
///
/// Work items are blocks of 24 tiles of one image; each worker holds the block's transformed input
/// V [36][24][C] and, one 16-channel block of outputs at a time, M [36][24][16]. The GEMM register
/// tile is the direct kernel's (6 rows × 16 channels). Small maps with many channels take the whole
/// batch's tiles at once instead (`batched`: V and M for all of them, U read once). fp32
/// throughout; the transforms' constants (1/4, 1/6, 1/24 …) make the rounding a few times the
/// direct kernel's, still ~1e-6 relative.
/// Inference, training forward and stride-1 backward-data (a forward of the flipped weights) use it.
public enum Winograd {
  static let tileBlock = 24, lanes = 16
  /// false: every convolution takes the direct kernel (`TESSERA_WINOGRAD=0`; `bench conv --algorithm`).
  nonisolated(unsafe) public static var enabled: Bool =
    ProcessInfo.processInfo.environment["TESSERA_WINOGRAD"] != "0"
  /// Whether training's forward and stride-1 backward-data take it too (`TESSERA_WINOGRAD_TRAINING=0`: no).
  nonisolated(unsafe) public static var inTraining: Bool =
    ProcessInfo.processInfo.environment["TESSERA_WINOGRAD_TRAINING"] != "0"

  /// Whether `Conv2DKernels.forward` takes this path for g.
  public static func applies(_ g: ConvGeometry) -> Bool {
    enabled && g.kernelH == 3 && g.kernelW == 3 && g.strideH == 1 && g.strideW == 1 && g.dilationH == 1
      && g.dilationW == 1 && g.groups == 1 && g.inChannels >= 16 && g.outChannels >= 16
      && g.outHeight >= 4 && g.outWidth >= 4
      // Per image, each block of tiles streams all of U (36·C·K floats): with many channels and a
      // small map that traffic outweighs the saved multiplies (256→256 on 16×16: ≈ 1.0×), unless
      // the whole batch's tiles go through U together (`batched`).
      && (g.inChannels * g.outChannels <= 128 * 128 || tiles(g).h * tiles(g).w >= 4 * tileBlock || batched(g))
  }

  /// Whether the forward takes the whole batch's tiles at once: V and M for every tile, then each
  /// (e, 16-channel block) GEMM over all of them, so U is read once per call instead of once per
  /// block of tiles of each image. Taken where per-image blocks do not pay (U over 2.25 MiB: C·K
  /// above 128·128, and fewer than four blocks of tiles per image), with 16 or more tiles in the
  /// batch (below that the transforms outweigh the multiplies saved: 256→256 on 4×4 maps, batch 2,
  /// took twice the direct kernel's time), while V and M stay within 32 MiB. (At 64→64 and 128→128
  /// it measured no faster than the per-image blocks: their V stays in L2.) `batchedEnabled` false
  /// (tests, `TESSERA_WINOGRAD_BATCHED=0`) keeps the per-image blocks, and such layers take the
  /// direct kernel.
  static func batched(_ g: ConvGeometry) -> Bool {
    guard batchedEnabled, g.inChannels * g.outChannels > 128 * 128 else { return false }
    let (th, tw, _) = tiles(g)
    guard th * tw < 4 * tileBlock, g.batch * th * tw >= 16 else { return false }
    let b = batchedFloats(g)
    return b.v + b.m <= 8 << 20
  }
  nonisolated(unsafe) public static var batchedEnabled: Bool =
    ProcessInfo.processInfo.environment["TESSERA_WINOGRAD_BATCHED"] != "0"

  /// Groups of the 36 elements (whole rows of six: 1, 2, 3 or 6 groups) such that one group's share
  /// of a [36][…] buffer of `floats` stays within 2.5 MiB (or the least, six): the batched forward's
  /// U and the weight gradient's dU are made one group at a time, so a 256→256 layer holds 1.5 MiB
  /// of them instead of 9 MiB (128→128, 2.25 MiB, stays whole).
  static func elementGroups(_ floats: Int) -> Int {
    [1, 2, 3, 6].first { floats / $0 <= 640 << 10 } ?? 6
  }

  /// The batched path's rows (every tile of the batch, rounded up to the GEMM tile's 6) and the
  /// floats of its V [36][rows][c8] and M [36][KB][rows][16].
  static func batchedFloats(_ g: ConvGeometry) -> (rows: Int, v: Int, m: Int) {
    let (th, tw, _) = tiles(g), (c8, KB) = paddedChannels(g)
    let rows = (g.batch * th * tw + 5) / 6 * 6
    return (rows, 36 * rows * c8, 36 * KB * rows * lanes)
  }

  static func tiles(_ g: ConvGeometry) -> (h: Int, w: Int, blocks: Int) {
    let th = (g.outHeight + 3) / 4, tw = (g.outWidth + 3) / 4
    return (th, tw, (th * tw + tileBlock - 1) / tileBlock)
  }

  static func workers(_ g: ConvGeometry, threads: Int) -> Int {
    max(1, min(g.batch * tiles(g).blocks, threads))
  }

  /// Channels rounded up to 8 (a row of V), and output-channel blocks of 16.
  static func paddedChannels(_ g: ConvGeometry) -> (c8: Int, kb: Int) {
    ((g.inChannels + 7) / 8 * 8, (g.outChannels + lanes - 1) / lanes)
  }

  /// Bytes held at the peak: U, and V and M for each worker (batched: for every tile of the batch).
  public static func workspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    let (c8, kb) = paddedChannels(g)
    if batched(g) {
      let b = batchedFloats(g), u = 36 * kb * g.inChannels * lanes
      return 4 * (u / elementGroups(u) + b.v + b.m)
    }
    return 4 * (36 * kb * g.inChannels * lanes + workers(g, threads: threads) * 36 * tileBlock * (c8 + lanes))
  }

  /// y = conv(x, w)·scale + bias, clamped at 0 with `relu` (see `Conv2DKernels.forward`).
  static func forward(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, scale: UnsafePointer<Float>?, relu: Bool
  ) {
    if batched(g) { return forwardBatched(g, x: x, w: w, bias: bias, y: y, scale: scale, relu: relu) }
    let C = g.inChannels, K = g.outChannels, (c8, KB) = paddedChannels(g)
    let (_, tw, blocks) = tiles(g)
    let nWorkers = workers(g, threads: Parallel.threadCount)
    // Every buffer is made before any thread starts, so the peak is fixed (and planned).
    let uBuf = Buffer(floats: 36 * KB * C * lanes)
    let scratch = (0..<nWorkers).map { _ in
      (v: Buffer(floats: 36 * tileBlock * c8, zeroed: false), m: Buffer(floats: 36 * tileBlock * lanes, zeroed: false))
    }
    transformWeights(g, w: w, scale: scale, u: uBuf.floats)
    let u = UnsafePointer(uBuf.floats), yy = SendablePointer(y)
    let floor: Float = relu ? 0 : -.infinity
    // The GEMMs run the direct kernel's register tile (`Conv2DKernels.forwardTile`) with V's rows as
    // its "pixels" and the channels as its "taps".
    withGEMMOffsets(channels: C, rows: tileBlock, c8: c8) { to, pb in
      Parallel.forChunks(g.batch * blocks, chunk: 1, maxWorkers: nWorkers) { worker, items in
        let v = scratch[worker].v.floats, m = scratch[worker].m.floats
        for item in items {
          let n = item / blocks, t0 = item % blocks * tileBlock
          let tb = min(tileBlock, (g.outHeight + 3) / 4 * tw - t0)
          transformInput(g, x: x + n * C * g.inHeight * g.inWidth, tiles: t0..<(t0 + tb), tilesWide: tw, c8: c8,
                         rows: tileBlock, v: v)
          for kb in 0..<KB {
            // M[e][tile][16] = V[e][tile][:C] · U[e][kb][:C][16].
            blockGEMMs(rows: tb, T: C, to: to, pb: pb, v: UnsafePointer(v), vStride: tileBlock * c8,
                       u: u + kb * C * lanes, uStride: KB * C * lanes, m: m)
            transformOutput(g, m: UnsafePointer(m), eStride: tileBlock * lanes, tiles: t0..<(t0 + tb),
                            tilesWide: tw, kBase: kb * lanes, kValid: min(lanes, K - kb * lanes), bias: bias,
                            floor: floor, y: yy.p + n * K * g.outHeight * g.outWidth)
          }
        }
      }
    }
    withExtendedLifetime((uBuf, scratch)) {}
  }

  /// M[e][row][16] = V[e] · U[e] for the 36 elements e of a block of `rows` ≤ 24 tiles, six rows at
  /// a time in the direct kernel's register tile: V[e] at v + e·vStride (row r's channel t at
  /// pb[r] + to[t]), U[e] [T][16] at u + e·uStride, M[e] at m + e·24·16.
  @inline(__always)
  static func blockGEMMs(rows: Int, T: Int, to: UnsafePointer<Int>, pb: UnsafePointer<Int>, v: UnsafePointer<Float>,
                         vStride: Int, u: UnsafePointer<Float>, uStride: Int, m: UnsafeMutablePointer<Float>) {
    for e in 0..<36 {
      let ve = v + e * vStride, ue = u + e * uStride
      var r = 0
      while r < rows {
        Conv2DKernels.forwardTile(T: T, to: to, pb: pb, p0: r, P: rows, xg: ve, wk: ue, out: m + (e * tileBlock + r) * lanes)
        r += 6
      }
    }
  }

  /// Tiles `r` of the batch (global indices, `perImage` to an image) image by image: body(n, image
  /// n's tiles).
  @inline(__always)
  static func eachImage(_ r: Range<Int>, perImage: Int, _ body: (Int, Range<Int>) -> Void) {
    var t = r.lowerBound
    while t < r.upperBound {
      let n = t / perImage, end = min(r.upperBound, (n + 1) * perImage)
      body(n, (t - n * perImage)..<(end - n * perImage))
      t = end
    }
  }

  /// The forward with every tile of the batch at once (`batched`): the input transform of all
  /// tiles (split among the threads by tiles), the 36 × KB GEMMs over all of them (handed out on
  /// demand, e-major so consecutive ones share V[e]), then the output transform. The same sums in
  /// the same order as the per-image blocks, so the same numbers to the bit.
  static func forwardBatched(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, scale: UnsafePointer<Float>?, relu: Bool
  ) {
    let C = g.inChannels, K = g.outChannels, (c8, KB) = paddedChannels(g)
    let (th, tw, _) = tiles(g), perImage = th * tw, total = g.batch * perImage
    let (rows, vFloats, mFloats) = batchedFloats(g)
    let groups = elementGroups(36 * KB * C * lanes), per = 36 / groups
    let uBuf = Buffer(floats: per * KB * C * lanes)
    let vBuf = Buffer(floats: vFloats, zeroed: false), mBuf = Buffer(floats: mFloats, zeroed: false)
    let u = UnsafePointer(uBuf.floats), v = SendablePointer(vBuf.floats), m = SendablePointer(mBuf.floats)
    let yy = SendablePointer(y)
    let floor: Float = relu ? 0 : -.infinity
    let imageFloats = C * g.inHeight * g.inWidth, outFloats = K * g.outHeight * g.outWidth
    Parallel.forRanges(total) { _, r in
      eachImage(r, perImage: perImage) { n, tiles in
        transformInput(g, x: x + n * imageFloats, tiles: tiles, tilesWide: tw, c8: c8, rows: rows,
                       v: v.p + (n * perImage + tiles.lowerBound) * c8)
      }
    }
    withGEMMOffsets(channels: C, rows: rows, c8: c8) { to, pb in
      // U one group of elements at a time (`elementGroups`), each group's GEMMs after it.
      for e0 in stride(from: 0, to: 36, by: per) {
        transformWeights(g, w: w, scale: scale, u: uBuf.floats, e: e0..<(e0 + per))
        Parallel.forChunks(per * KB, chunk: 1) { _, items in
          for item in items {
            let e = e0 + item / KB, kb = item % KB
            let ve = UnsafePointer(v.p) + e * rows * c8, ue = u + ((e - e0) * KB + kb) * C * lanes
            let me = m.p + (e * KB + kb) * rows * lanes
            var r = 0
            while r < total {
              Conv2DKernels.forwardTile(T: C, to: to, pb: pb, p0: r, P: total, xg: ve, wk: ue, out: me + r * lanes)
              r += 6
            }
          }
        }
      }
    }
    Parallel.forRanges(total) { _, r in
      eachImage(r, perImage: perImage) { n, tiles in
        for kb in 0..<KB {
          transformOutput(g, m: UnsafePointer(m.p) + (kb * rows + n * perImage + tiles.lowerBound) * lanes,
                          eStride: KB * rows * lanes, tiles: tiles, tilesWide: tw, kBase: kb * lanes,
                          kValid: min(lanes, K - kb * lanes), bias: bias, floor: floor, y: yy.p + n * outFloats)
        }
      }
    }
    withExtendedLifetime((uBuf, vBuf, mBuf)) {}
  }

  /// U[e − es.lowerBound][kb][c][16] = (G g Gᵀ)[e] for e in es (whole rows of six: es bounded by
  /// multiples of 6), of output channel kb·16 + lane, input channel c (zero beyond K), the weights
  /// scaled by scale[k] first; 16-channel blocks split among the threads. Eight output channels go
  /// through the transform together, one per lane, and each e is stored as a whole row of eight.
  /// (Channel by channel, storing 4 bytes at a time, it swept U — up to 9 MiB — once per lane, and
  /// on small maps the transform cost as much as the GEMMs: 256→256 at 16×16 ran at 120 against 132
  /// GFLOP/s direct-equivalent.)
  static func transformWeights(_ g: ConvGeometry, w: UnsafePointer<Float>, scale: UnsafePointer<Float>?,
                               u: UnsafeMutablePointer<Float>, e es: Range<Int> = 0..<36) {
    let C = g.inChannels, K = g.outChannels, KB = (K + lanes - 1) / lanes
    let uu = SendablePointer(u)
    /// G (a, b, c): one column or row of g, 3 → 6 values.
    @inline(__always) func gt(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>)
      -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
    {
      let ac = a + c, q = a * (1 / 24) + c * (1 / 6), h = b * (1 / 12)
      return (a * 0.25, -(ac + b) * (1 / 6), -(ac - b) * (1 / 6), q + h, q - h, c)
    }
    let eStride = KB * C * lanes, rowsOfU = (es.lowerBound / 6)..<((es.upperBound + 5) / 6)
    Parallel.forRanges(KB) { _, kbs in
      withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 18) { colBuf in
        let col = colBuf.baseAddress!  // G times each column of g: col[kx·6 + i]
        for kb in kbs {
          for half in 0..<2 {
            let k0 = kb * lanes + half * 8, kValid = max(0, min(8, K - k0))
            var sk = SIMD8<Float>()
            for l in 0..<8 { sk[l] = l < kValid ? scale?[k0 + l] ?? 1 : 0 }
            let offsets = laneOffsets(from: k0, count: K, stride: C * 9)
            for c in 0..<C {
              let f = w + c * 9
              @inline(__always) func tap(_ t: Int) -> SIMD8<Float> { gather8(f + t, offsets) * sk }
              for kx in 0..<3 {
                let o = gt(tap(kx), tap(3 + kx), tap(6 + kx))
                col[kx * 6] = o.0; col[kx * 6 + 1] = o.1; col[kx * 6 + 2] = o.2
                col[kx * 6 + 3] = o.3; col[kx * 6 + 4] = o.4; col[kx * 6 + 5] = o.5
              }
              let dst = uu.p + kb * C * lanes + c * lanes + half * 8
              for i in rowsOfU {
                let r = gt(col[i], col[6 + i], col[12 + i])
                let e = dst + (i * 6 - es.lowerBound) * eStride
                store8(r.0, e); store8(r.1, e + eStride); store8(r.2, e + 2 * eStride)
                store8(r.3, e + 3 * eStride); store8(r.4, e + 4 * eStride); store8(r.5, e + 5 * eStride)
              }
            }
          }
        }
      }
    }
  }

  /// The GEMMs' offsets, for the direct kernel's register tiles run over transformed tiles: `to`,
  /// each channel's offset in a row of V (0..<C, the "taps"), and `pb`, each of `rows` rows' start
  /// (row·c8, the "pixels").
  static func withGEMMOffsets<R>(channels: Int, rows: Int, c8: Int,
                                 _ body: (_ to: UnsafePointer<Int>, _ pb: UnsafePointer<Int>) -> R) -> R {
    let channelOffsets = Array(0..<channels), rowBases = (0..<rows).map { $0 * c8 }
    return channelOffsets.withUnsafeBufferPointer { cob in
      rowBases.withUnsafeBufferPointer { rbb in body(cob.baseAddress!, rbb.baseAddress!) }
    }
  }

  /// Offsets of eight consecutive channels' planes from channel c0, lanes past `count` repeating the
  /// last channel (they fill padding lanes, never read).
  @inline(__always)
  static func laneOffsets(from c0: Int, count: Int, stride: Int) -> SIMD8<Int> {
    var o = SIMD8<Int>()
    for l in 0..<8 { o[l] = min(c0 + l, count - 1) * stride }
    return o
  }

  /// p[offsets[l]] in lane l.
  @inline(__always)
  static func gather8(_ p: UnsafePointer<Float>, _ offsets: SIMD8<Int>) -> SIMD8<Float> {
    SIMD8(p[offsets[0]], p[offsets[1]], p[offsets[2]], p[offsets[3]],
          p[offsets[4]], p[offsets[5]], p[offsets[6]], p[offsets[7]])
  }

  /// Bᵀ d for six values (a column or a row of a patch).
  @inline(__always)
  static func bt(_ d: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>))
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
  {
    let (d0, d1, d2, d3, d4, d5) = d
    let d42 = d4 - d2, d13 = d1 - d3
    return (4 * d0 - 5 * d2 + d4, (d3 + d4) - 4 * (d1 + d2), (d4 - d3) + 4 * (d1 - d2),
            d42 - 2 * d13, d42 + 2 * d13, 4 * d1 - 5 * d3 + d5)
  }

  /// V[e][tile][c] = (Bᵀ d B)[e] for the 6×6 patch d of each tile, eight channels at a time (lanes
  /// beyond C repeat the last channel; they fill V's padding and are never read). Cells outside
  /// the image are the zero padding.
  static func transformInput(_ g: ConvGeometry, x: UnsafePointer<Float>, tiles: Range<Int>, tilesWide tw: Int,
                             c8: Int, rows: Int, v: UnsafeMutablePointer<Float>) {
    let H = g.inHeight, W = g.inWidth, C = g.inChannels, plane = H * W
    let rowStride = rows * c8
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 36) { pb in
      let d = pb.baseAddress!
      for (ti, t) in tiles.enumerated() {
        let iy0 = t / tw * 4 - g.padTop, ix0 = t % tw * 4 - g.padLeft
        let inside = iy0 >= 0 && iy0 + 6 <= H && ix0 >= 0 && ix0 + 6 <= W
        var c0 = 0
        while c0 < C {
          let planes = laneOffsets(from: c0, count: C, stride: plane)
          for r in 0..<6 {
            for s in 0..<6 {
              let yy = iy0 + r, xx = ix0 + s
              if inside || (yy >= 0 && yy < H && xx >= 0 && xx < W) {
                let o = yy * W + xx
                d[r * 6 + s] = gather8(x + o, planes)
              } else {
                d[r * 6 + s] = .zero
              }
            }
          }
          transformPatch(d, to: v + ti * c8 + c0, eStride: rowStride)
          c0 += 8
        }
      }
    }
  }

  /// Bᵀ d B of a 6×6 patch d[r·6 + s] (eight channels a lane; d is overwritten), element e stored
  /// at out[e·eStride].
  @inline(__always)
  static func transformPatch(_ d: UnsafeMutablePointer<SIMD8<Float>>, to out: UnsafeMutablePointer<Float>, eStride: Int) {
    // Columns, then rows.
    for s in 0..<6 {
      let o = bt((d[s], d[6 + s], d[12 + s], d[18 + s], d[24 + s], d[30 + s]))
      d[s] = o.0; d[6 + s] = o.1; d[12 + s] = o.2; d[18 + s] = o.3; d[24 + s] = o.4; d[30 + s] = o.5
    }
    for r in 0..<6 {
      let o = bt((d[r * 6], d[r * 6 + 1], d[r * 6 + 2], d[r * 6 + 3], d[r * 6 + 4], d[r * 6 + 5]))
      let e = out + r * 6 * eStride
      store8(o.0, e); store8(o.1, e + eStride); store8(o.2, e + 2 * eStride)
      store8(o.3, e + 3 * eStride); store8(o.4, e + 4 * eStride); store8(o.5, e + 5 * eStride)
    }
  }

  /// Aᵀ m for six values.
  @inline(__always)
  static func at(_ m: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>))
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
  {
    let (m0, m1, m2, m3, m4, m5) = m
    let p12 = m1 + m2, d12 = m1 - m2, p34 = m3 + m4, d34 = m3 - m4
    return (m0 + p12 + p34, d12 + 2 * d34, p12 + 4 * p34, d12 + 8 * d34 + m5)
  }

  /// y[k][4·ty + r][4·tx + s] = (Aᵀ M A)[r][s] + bias[k], clamped below at `floor`, for the 16
  /// output channels from kBase (eight at a time) and each tile; cells past the map's edge are dropped.
  static func transformOutput(_ g: ConvGeometry, m: UnsafePointer<Float>, eStride: Int, tiles: Range<Int>,
                              tilesWide tw: Int, kBase: Int, kValid: Int, bias: UnsafePointer<Float>?, floor: Float,
                              y: UnsafeMutablePointer<Float>) {
    let Ho = g.outHeight, Wo = g.outWidth, P = Ho * Wo
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 28) { buf in
      let t = buf.baseAddress!
      for (ti, tile) in tiles.enumerated() {
        let oy0 = tile / tw * 4, ox0 = tile % tw * 4
        let rows = min(4, Ho - oy0), cols = min(4, Wo - ox0)
        for half in 0..<2 where half * 8 < kValid {
          let base = m + ti * lanes + half * 8
          @inline(__always) func mv(_ e: Int) -> SIMD8<Float> { load8(base + e * eStride) }
          // Columns (6 → 4 rows), then rows (6 → 4 columns).
          for s in 0..<6 {
            let o = at((mv(s), mv(6 + s), mv(12 + s), mv(18 + s), mv(24 + s), mv(30 + s)))
            t[s] = o.0; t[6 + s] = o.1; t[12 + s] = o.2; t[18 + s] = o.3
          }
          for r in 0..<rows {
            let o = at((t[r * 6], t[r * 6 + 1], t[r * 6 + 2], t[r * 6 + 3], t[r * 6 + 4], t[r * 6 + 5]))
            t[24] = o.0; t[25] = o.1; t[26] = o.2; t[27] = o.3
            for l in 0..<min(8, kValid - half * 8) {
              let k = kBase + half * 8 + l, b = bias?[k] ?? 0
              let yr = y + k * P + (oy0 + r) * Wo + ox0
              for s in 0..<cols { yr[s] = max(t[24 + s][l] + b, floor) }
            }
          }
        }
      }
    }
  }
}
