import Foundation

/// Winograd F(3×3, 4×4) for stride-2 convolutions with 7×7 or 8×8 kernels — the ResNet-style stem
/// (fcn-large's 7×7/2, 3→16), which the direct kernel runs at under half this CPU's peak and which
/// is over half of an inference step.
///
/// A stride-2 convolution is four stride-1 ones: tap (ky, kx) = (2a + p, 2b + q) reads padded
/// pixel (2(oy + a) + p, 2(ox + b) + q), so with the phase images X[c, p, q][i, j] =
/// xpad[c, 2i + p, 2j + q] it is a stride-1 4×4 convolution over 4·C channels (taps past the
/// kernel zero). Each 3×3 output tile then comes from a 6×6 patch of every phase image:
///
///     U = G g Gᵀ (6×4 G)    V = Bᵀ d B    M[e] = V[e] · U[e] for e in 0..<36    y = Aᵀ M A (3×6 Aᵀ)
///
/// Bᵀ is F(4×4, 3×3)'s (the same six points 0, ±1, ±2, ∞); G and Aᵀ are that algorithm's A and G
/// with their roles exchanged. A 3×3 tile takes 36 · 4 multiplies per channel pair where the direct
/// kernel takes 9 · 49 (7×7): 3.1× fewer. The phase images are never made: the input transform
/// reads every other pixel of the image itself, so there is no padded copy either. Tiles lie on
/// one grid per image (rows 3ty, columns 3tx) and each tile's sums do not depend on which others
/// share its GEMM, so a band of rows (`Conv2DKernels.forwardMaxPooled`) has the bits of the whole map.
/// The GEMMs are the direct kernel's register tile, as in `Winograd`. Inference and training's
/// forward (as `Winograd`; its weight gradient stays the direct kernel's).
public enum StridedWinograd {
  static let tileBlock = Winograd.tileBlock, lanes = 16
  /// false (`TESSERA_WINOGRAD_STRIDED=0`): such layers take the direct kernel.
  nonisolated(unsafe) public static var enabled: Bool =
    ProcessInfo.processInfo.environment["TESSERA_WINOGRAD_STRIDED"] != "0"

  /// Whether `Conv2DKernels.forward` (with `winograd`) and `forwardMaxPooled` take this path for g.
  public static func applies(_ g: ConvGeometry) -> Bool {
    enabled && Winograd.enabled && g.strideH == 2 && g.strideW == 2 && (7...8).contains(g.kernelH)
      && (7...8).contains(g.kernelW) && g.dilationH == 1 && g.dilationW == 1 && g.groups == 1
      && g.outChannels >= 16 && g.inChannels <= 16 && g.outHeight >= 3 && g.outWidth >= 3
  }

  /// Phase channels (4·C) and output-channel blocks of 16.
  static func channels(_ g: ConvGeometry) -> (cp: Int, kb: Int) {
    (4 * g.inChannels, (g.outChannels + lanes - 1) / lanes)
  }

  static func tiles(_ g: ConvGeometry) -> (h: Int, w: Int) { ((g.outHeight + 2) / 3, (g.outWidth + 2) / 3) }

  /// Floats of U [36][KB][4C][16], and of one worker's V [36][C][24][4] and M [36][24][16].
  static func uFloats(_ g: ConvGeometry) -> Int { let c = channels(g); return 36 * c.kb * c.cp * lanes }
  static func scratchFloats(_ g: ConvGeometry) -> Int { 36 * tileBlock * (channels(g).cp + lanes) }

  static func blocks(_ g: ConvGeometry) -> Int { let t = tiles(g); return (t.h * t.w + tileBlock - 1) / tileBlock }
  static func workers(_ g: ConvGeometry, threads: Int) -> Int { max(1, min(g.batch * blocks(g), threads)) }

  /// Bytes `forward` holds at its peak: U, and V and M for each worker.
  public static func workspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    4 * (uFloats(g) + workers(g, threads: threads) * scratchFloats(g))
  }

  /// One worker's V and M, and the GEMMs' offsets into V[e] ([C][24 tiles][4 phases]): `to`, phase
  /// channel ci's, (ci / 4)·96 + ci % 4; `pb`, tile row r's, r·4.
  final class Scratch {
    let v: Buffer, m: Buffer
    let to: [Int], pb: [Int]
    init(_ g: ConvGeometry) {
      let cp = channels(g).cp
      v = Buffer(floats: 36 * tileBlock * cp, zeroed: false)
      m = Buffer(floats: 36 * tileBlock * lanes, zeroed: false)
      to = (0..<cp).map { $0 / 4 * tileBlock * 4 + $0 % 4 }
      pb = (0..<tileBlock).map { $0 * 4 }
    }
  }

  /// y = conv(x, w)·scale + bias, clamped at 0 with `relu` (see `Conv2DKernels.forward`).
  static func forward(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, scale: UnsafePointer<Float>?, relu: Bool
  ) {
    let nWorkers = workers(g, threads: Parallel.threadCount), perImage = blocks(g)
    let (th, tw) = tiles(g)
    // Every buffer is made before any thread starts, so the peak is fixed (and planned).
    let u = weights(g, w: w, scale: scale)
    let scratch = (0..<nWorkers).map { _ in Scratch(g) }
    let yy = SendablePointer(y), imageFloats = g.inChannels * g.inHeight * g.inWidth
    let outPlane = g.outHeight * g.outWidth
    Parallel.forChunks(g.batch * perImage, chunk: 1, maxWorkers: nWorkers) { worker, items in
      for item in items {
        let n = item / perImage, t0 = item % perImage * tileBlock
        run(g, x: x + n * imageFloats, tiles: t0..<min(th * tw, t0 + tileBlock), rows: 0..<g.outHeight,
            u: UnsafePointer(u.floats), scratch: scratch[worker], bias: bias, relu: relu,
            out: yy.p + n * g.outChannels * outPlane, outPlane: outPlane, outOrigin: 0)
      }
    }
    withExtendedLifetime((u, scratch)) {}
  }

  /// Output rows `rows` of one image (x: its C×H×W floats): the tile rows that cover them, rows
  /// outside `rows` dropped; channel k's pixel p goes to out[k·outPlane + p − outOrigin].
  static func forwardRows(
    _ g: ConvGeometry, x: UnsafePointer<Float>, rows: Range<Int>, u: UnsafePointer<Float>, scratch: Scratch,
    bias: UnsafePointer<Float>?, relu: Bool, out: UnsafeMutablePointer<Float>, outPlane: Int, outOrigin: Int
  ) {
    let tw = tiles(g).w, end = (rows.upperBound + 2) / 3 * tw
    var t = rows.lowerBound / 3 * tw
    while t < end {
      let tb = min(tileBlock, end - t)
      run(g, x: x, tiles: t..<(t + tb), rows: rows, u: u, scratch: scratch, bias: bias, relu: relu, out: out,
          outPlane: outPlane, outOrigin: outOrigin)
      t += tb
    }
  }

  /// One block of at most 24 tiles: V, then for each 16-channel block the 36 GEMMs and Aᵀ M A.
  static func run(
    _ g: ConvGeometry, x: UnsafePointer<Float>, tiles: Range<Int>, rows: Range<Int>, u: UnsafePointer<Float>,
    scratch: Scratch, bias: UnsafePointer<Float>?, relu: Bool, out: UnsafeMutablePointer<Float>,
    outPlane: Int, outOrigin: Int
  ) {
    let (cp, KB) = channels(g), tb = tiles.count, v = scratch.v.floats, m = scratch.m.floats
    transformInput(g, x: x, tiles: tiles, v: v)
    scratch.to.withUnsafeBufferPointer { tob in scratch.pb.withUnsafeBufferPointer { pbb in
      let to = tob.baseAddress!, pb = pbb.baseAddress!
      for kb in 0..<KB {
        Winograd.blockGEMMs(rows: tb, T: cp, to: to, pb: pb, v: UnsafePointer(v), vStride: tileBlock * cp,
                            u: u + kb * cp * lanes, uStride: KB * cp * lanes, m: m)
        transformOutput(g, m: UnsafePointer(m), tiles: tiles, rows: rows, kBase: kb * lanes, bias: bias,
                        floor: relu ? 0 : -.infinity, out: out, outPlane: outPlane, outOrigin: outOrigin)
      }
    } }
  }

  /// U[e][kb][c·4 + p·2 + q][16] = (G g Gᵀ)[e] of output channel kb·16 + lane's phase (p, q) kernel
  /// of input channel c, g[a][b] = w[2a + p][2b + q] (0 past the kernel) · scale[k]; zero beyond K.
  static func weights(_ g: ConvGeometry, w: UnsafePointer<Float>, scale: UnsafePointer<Float>?) -> Buffer {
    let (cp, KB) = channels(g), C = g.inChannels, kh = g.kernelH, kw = g.kernelW
    let buf = Buffer(floats: uFloats(g))
    /// G (a, b, c, d): one column or row of a 4×4 phase kernel, 4 → 6 values, into out[i·stride].
    @inline(__always) func gt(_ a: Float, _ b: Float, _ c: Float, _ d: Float, _ out: UnsafeMutablePointer<Float>,
                              _ stride: Int) {
      let ac = a + c, bd = b + d, a4c = a + 4 * c, b8d = 2 * b + 8 * d
      out[0] = a * 0.25; out[stride] = -(ac + bd) * (1 / 6); out[2 * stride] = -(ac - bd) * (1 / 6)
      out[3 * stride] = (a4c + b8d) * (1 / 24); out[4 * stride] = (a4c - b8d) * (1 / 24); out[5 * stride] = d
    }
    let eStride = KB * cp * lanes
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 24) { colBuf in
      let cols = colBuf.baseAddress!  // G times each column of the phase kernel: cols[b·6 + i]
      for k in 0..<g.outChannels {
        let sk = scale?[k] ?? 1
        for c in 0..<C {
          let f = w + (k * C + c) * kh * kw
          for p in 0..<2 {
            for q in 0..<2 {
              @inline(__always) func tap(_ a: Int, _ b: Int) -> Float {
                2 * a + p < kh && 2 * b + q < kw ? f[(2 * a + p) * kw + 2 * b + q] * sk : 0
              }
              // G times each column (6 × 4), then each of its rows times Gᵀ (6 × 6): element i·6 + j.
              for b in 0..<4 { gt(tap(0, b), tap(1, b), tap(2, b), tap(3, b), cols + b * 6, 1) }
              let dst = buf.floats + (k / lanes) * cp * lanes + (c * 4 + p * 2 + q) * lanes + k % lanes
              for i in 0..<6 { gt(cols[i], cols[6 + i], cols[12 + i], cols[18 + i], dst + i * 6 * eStride, eStride) }
            }
          }
        }
      }
    }
    return buf
  }

  /// V[e][c][tile][p·2 + q] = (Bᵀ d B)[e], d the 6×6 patch of phase image (c, p, q) at the tile's
  /// origin (3ty, 3tx): padded pixels (2(3ty + r) + p, 2(3tx + s) + q). Two tiles' four phases of
  /// one channel go through the transform together, a lane each, read as four pairs of adjacent
  /// pixels (q = 0, 1); an odd last tile is paired with itself (the row after it is never read).
  /// Pixels outside the image are the zero padding.
  static func transformInput(_ g: ConvGeometry, x: UnsafePointer<Float>, tiles: Range<Int>,
                             v: UnsafeMutablePointer<Float>) {
    let H = g.inHeight, W = g.inWidth, C = g.inChannels, tw = self.tiles(g).w
    let eStride = C * tileBlock * 4
    @inline(__always) func pair(_ p: UnsafePointer<Float>) -> SIMD2<Float> {
      UnsafeRawPointer(p).loadUnaligned(as: SIMD2<Float>.self)
    }
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 36) { pb in
      let d = pb.baseAddress!
      var ti = 0
      while ti < tiles.count {
        let ta = tiles.lowerBound + ti, tb = min(ta + 1, tiles.upperBound - 1)
        let ya = ta / tw * 6 - g.padTop, xa = ta % tw * 6 - g.padLeft
        let yb = tb / tw * 6 - g.padTop, xb = tb % tw * 6 - g.padLeft
        let inside = min(ya, yb) >= 0 && max(ya, yb) + 12 <= H && min(xa, xb) >= 0 && max(xa, xb) + 12 <= W
        for c in 0..<C {
          let xc = x + c * H * W
          if inside {
            let a = xc + ya * W + xa, b = xc + yb * W + xb
            for r in 0..<6 {
              for s in 0..<6 {
                let o = 2 * r * W + 2 * s
                d[r * 6 + s] = SIMD8(lowHalf: SIMD4(lowHalf: pair(a + o), highHalf: pair(a + o + W)),
                                     highHalf: SIMD4(lowHalf: pair(b + o), highHalf: pair(b + o + W)))
              }
            }
          } else {
            for r in 0..<6 {
              for s in 0..<6 {
                var lane = SIMD8<Float>()
                for l in 0..<8 {
                  let yy = (l < 4 ? ya : yb) + 2 * r + l / 2 % 2, xx = (l < 4 ? xa : xb) + 2 * s + l % 2
                  if yy >= 0 && yy < H && xx >= 0 && xx < W { lane[l] = xc[yy * W + xx] }
                }
                d[r * 6 + s] = lane
              }
            }
          }
          Winograd.transformPatch(d, to: v + (c * tileBlock + ti) * 4, eStride: eStride)
        }
        ti += 2
      }
    }
  }

  /// Aᵀ m (3×6) for six values.
  @inline(__always)
  static func at(_ m: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>))
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
  {
    let (m0, m1, m2, m3, m4, m5) = m
    let p12 = m1 + m2, p34 = m3 + m4
    return (m0 + p12 + p34, (m1 - m2) + 2 * (m3 - m4), p12 + 4 * p34 + m5)
  }

  /// y[k][3ty + r][3tx + s] = (Aᵀ M A)[r][s] + bias[k], clamped below at `floor`, for the 16 output
  /// channels from kBase and each tile, rows outside `rows` and cells past the map's edge dropped.
  /// Two tiles of a row make six pixels of each of their three rows: they go through a pixel-major
  /// tile [6][16] into the channels' planes as the direct kernel's do (`storeTileWide`, eight lanes
  /// a channel, when the next pair of this call rewrites the two past them).
  static func transformOutput(_ g: ConvGeometry, m: UnsafePointer<Float>, tiles: Range<Int>, rows: Range<Int>,
                              kBase: Int, bias: UnsafePointer<Float>?, floor: Float, out: UnsafeMutablePointer<Float>,
                              outPlane: Int, outOrigin: Int) {
    let Wo = g.outWidth, tw = self.tiles(g).w, kValid = min(lanes, g.outChannels - kBase)
    let eStride = tileBlock * lanes, f = SIMD8<Float>(repeating: floor), y = out + kBase * outPlane - outOrigin
    var b = (SIMD8<Float>(), SIMD8<Float>())
    for l in 0..<kValid {
      if l < 8 { b.0[l] = bias?[kBase + l] ?? 0 } else { b.1[l - 8] = bias?[kBase + l] ?? 0 }
    }
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 18) { tbuf in
      withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * 6 * lanes) { sbuf in
        let t = tbuf.baseAddress!, stage = sbuf.baseAddress!
        var slot = 0
        for (ti, tile) in tiles.enumerated() {
          let ty = tile / tw, tx = tile % tw
          for half in 0..<2 where half * 8 < kValid {
            let base = m + ti * lanes + half * 8, bh = half == 0 ? b.0 : b.1
            @inline(__always) func mv(_ e: Int) -> SIMD8<Float> { load8(base + e * eStride) }
            // Columns (6 → 3 rows), then rows (6 → 3 columns); bias and clamp as the direct kernel's.
            for s in 0..<6 {
              let o = at((mv(s), mv(6 + s), mv(12 + s), mv(18 + s), mv(24 + s), mv(30 + s)))
              t[s] = o.0; t[6 + s] = o.1; t[12 + s] = o.2
            }
            for r in 0..<3 {
              let o = at((t[r * 6], t[r * 6 + 1], t[r * 6 + 2], t[r * 6 + 3], t[r * 6 + 4], t[r * 6 + 5]))
              @inline(__always) func clamp(_ v: SIMD8<Float>) -> SIMD8<Float> { v.replacing(with: f, where: v .<= f) }
              let row = stage + (r * 6 + slot * 3) * lanes + half * 8
              store8(clamp(o.0 + bh), row); store8(clamp(o.1 + bh), row + lanes); store8(clamp(o.2 + bh), row + 2 * lanes)
            }
          }
          let last = ti == tiles.count - 1 || tx == tw - 1
          guard slot == 1 || last else { slot = 1; continue }
          let ox = (tx - slot) * 3, pixels = min((slot + 1) * 3, Wo - ox), oy0 = ty * 3
          for r in max(0, rows.lowerBound - oy0)..<max(0, min(3, rows.upperBound - oy0)) {
            let s = UnsafePointer(stage + r * 6 * lanes), yr = y + (oy0 + r) * Wo + ox
            if pixels == 6 && !last && ox + 8 <= Wo {
              Conv2DKernels.storeTileWide(s, channels: kValid, to: yr, plane: outPlane)
            } else {
              Conv2DKernels.storeTile(s, pixels: pixels, channels: kValid, to: yr, plane: outPlane)
            }
          }
          slot = 0
        }
      }
    }
  }
}
