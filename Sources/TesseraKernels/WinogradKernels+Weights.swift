import Foundation

/// The weight gradient of the Winograd forward (training, where the forward takes it).
///
/// The forward computes, per 4×4 output tile, y = Aᵀ (U ⊙ V) A with U = G g Gᵀ and V = Bᵀ d B. Its
/// gradient: dM = A dy Aᵀ for each tile's 4×4 output gradient (zero past the map), dU[e] = Σ over
/// tiles dM[e] ⊙ V[e] for each (output, input) channel pair, and dg = Gᵀ dU G — 36 multiplies per
/// pair and tile where the direct kernel takes 144. The tiles go in chunks (V and dM of a chunk,
/// split among the threads by tiles), each chunk's 36 × KB GEMMs (handed out on demand; each owns
/// its rows of dU, so the sums' order is fixed and runs repeat to the bit) add into dU, and the
/// back-transform adds Gᵀ dU G into dw. dU is made one group of elements at a time
/// (`elementGroups`: 1.5 MiB for 256→256 instead of 9 MiB); with one chunk the tiles are
/// transformed once for all groups, with several again for each group. The GEMM tile is the
/// direct backward-weights' own (`Conv2DKernels.weightsTile`: 6 input channels × 16 output
/// channels, summed over the tiles).
extension Winograd {
  /// Whether training's backward-weights takes this path: where its forward does, with 32 or more
  /// channels each way (below that its transforms' memory traffic outweighs the multiplies saved)
  /// and 48 or more tiles in the batch (below that dU's transforms and the GEMMs' short sweeps do:
  /// 256→256 on 8×8 maps, batch 2–4, measured slower than the direct kernel), unless
  /// `weightsEnabled` is off (`TESSERA_WINOGRAD_WEIGHTS=0`: the direct kernel's rounding).
  public static func appliesToWeights(_ g: ConvGeometry) -> Bool {
    guard weightsEnabled && inTraining && applies(g) && g.inChannels >= 32 && g.outChannels >= 32 else { return false }
    let (th, tw, _) = tiles(g)
    return g.batch * th * tw >= 48
  }
  nonisolated(unsafe) public static var weightsEnabled: Bool =
    ProcessInfo.processInfo.environment["TESSERA_WINOGRAD_WEIGHTS"] != "0"

  /// Tiles per chunk: V and dM of a chunk take at most about 8 MiB (2 Mi floats: 256→256 at 1024²,
  /// batch 4, is one chunk), at least 48 rows so each GEMM pass over dU does some work; the batch's
  /// tiles split evenly among the chunks (no short last one), a multiple of the GEMM's 6.
  static func weightsChunk(_ g: ConvGeometry) -> Int {
    let (th, tw, _) = tiles(g), (c8, KB) = paddedChannels(g), total = g.batch * th * tw
    let fit = max(48, (1 << 21) / (36 * (c8 + KB * lanes)) / 6 * 6)
    let chunks = (total + fit - 1) / fit
    return ((total + chunks - 1) / chunks + 5) / 6 * 6
  }

  /// Bytes held at the peak: one group's dU [36 / groups][C][KB·16], and a chunk's V [36][rows][c8]
  /// and dM [36][rows][KB·16].
  public static func backwardWeightsWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    let (c8, KB) = paddedChannels(g), rows = weightsChunk(g), du = 36 * g.inChannels * KB * lanes
    return 4 * (du / elementGroups(du) + 36 * rows * (c8 + KB * lanes))
  }

  /// dw (K, C, 3, 3) += the weight gradient of the forward of x for output gradient dy.
  public static func backwardWeights(
    _ g: ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dw: UnsafeMutablePointer<Float>
  ) {
    let C = g.inChannels, K = g.outChannels, (c8, KB) = paddedChannels(g), Kpad = KB * lanes
    let (th, tw, _) = tiles(g), perImage = th * tw, total = g.batch * perImage
    let rows = weightsChunk(g), groups = elementGroups(36 * C * Kpad), per = 36 / groups
    let chunks = (total + rows - 1) / rows
    // Every buffer is made before any thread starts, so the peak is fixed (and planned).
    let duBuf = Buffer(floats: per * C * Kpad)
    let vBuf = Buffer(floats: 36 * rows * c8, zeroed: false), mBuf = Buffer(floats: 36 * rows * Kpad, zeroed: false)
    let du = SendablePointer(duBuf.floats), v = SendablePointer(vBuf.floats), m = SendablePointer(mBuf.floats)
    let imageFloats = C * g.inHeight * g.inWidth, outFloats = K * g.outHeight * g.outWidth
    withGEMMOffsets(channels: C, rows: rows, c8: c8) { to, pb in
      /// V and dM of tiles start..<start + count (global indices), image by image.
      func transformChunk(_ start: Int, _ count: Int) {
        Parallel.forRanges(count) { _, r in
          eachImage((start + r.lowerBound)..<(start + r.upperBound), perImage: perImage) { n, tiles in
            let row = n * perImage + tiles.lowerBound - start  // the chunk's row of the first tile
            transformInput(g, x: x + n * imageFloats, tiles: tiles, tilesWide: tw, c8: c8, rows: rows,
                           v: v.p + row * c8)
            transformGradient(g, dy: dy + n * outFloats, tiles: tiles, tilesWide: tw, kpad: Kpad, rows: rows,
                              m: m.p + row * Kpad)
          }
        }
      }
      for e0 in stride(from: 0, to: 36, by: per) {
        if e0 > 0 { du.p.update(repeating: 0, count: per * C * Kpad) }
        var start = 0
        while start < total {
          let count = min(rows, total - start)
          if e0 == 0 || chunks > 1 { transformChunk(start, count) }  // one chunk: transformed once
          // dU[e][c][kb·16 ..< +16] += Σ over the chunk's tiles V[e][tile][c] · dM[e][tile][kb·16 ..< +16].
          Parallel.forChunks(per * KB, chunk: 1) { _, items in
            for item in items {
              let e = e0 + item / KB, kb = item % KB
              let ve = UnsafePointer(v.p) + e * rows * c8, me = UnsafePointer(m.p) + e * rows * Kpad + kb * lanes
              let acc = du.p + (e - e0) * C * Kpad + kb * lanes
              var c0 = 0
              while c0 < C {
                Conv2DKernels.weightsTile(t0: c0, T: C, to: to, pb: pb, pixels: 0..<count, xg: ve, dyt: me,
                                          Kpad: Kpad, acc: acc)
                c0 += 6
              }
            }
          }
          start += count
        }
        addBackTransformed(g, du: UnsafePointer(du.p), e: e0..<(e0 + per), dw: dw)
      }
    }
    withExtendedLifetime((duBuf, vBuf, mBuf)) {}
  }

  /// A v for four values (a column or a row of a tile's output gradient): the transpose of `at`.
  @inline(__always)
  static func a(_ v0: SIMD8<Float>, _ v1: SIMD8<Float>, _ v2: SIMD8<Float>, _ v3: SIMD8<Float>)
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)
  {
    let p02 = v0 + v2, p13 = v1 + v3, q02 = v0 + 4 * v2, q13 = 2 * v1 + 8 * v3
    return (v0, p02 + p13, p02 - p13, q02 + q13, q02 - q13, v3)
  }

  /// dM[e][tile][k] = (A dy Aᵀ)[e] for the 4×4 output-gradient patch of each tile (zero past the
  /// map), eight output channels at a time (lanes past K repeat the last channel: they fill dM's
  /// padding, whose sums are never read).
  static func transformGradient(_ g: ConvGeometry, dy: UnsafePointer<Float>, tiles: Range<Int>, tilesWide tw: Int,
                                kpad: Int, rows: Int, m: UnsafeMutablePointer<Float>) {
    let Ho = g.outHeight, Wo = g.outWidth, P = Ho * Wo, K = g.outChannels
    let rowStride = rows * kpad
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 40) { buf in
      let d = buf.baseAddress!, tt = d + 16  // the patch [4][4], then its columns' transform [6][4]
      for (ti, t) in tiles.enumerated() {
        let oy0 = t / tw * 4, ox0 = t % tw * 4
        let rowsValid = min(4, Ho - oy0), cols = min(4, Wo - ox0)
        var k0 = 0
        while k0 < kpad {
          let planes = laneOffsets(from: k0, count: K, stride: P)
          for r in 0..<4 {
            for s in 0..<4 {
              if r < rowsValid && s < cols {
                let o = (oy0 + r) * Wo + ox0 + s
                d[r * 4 + s] = gather8(dy + o, planes)
              } else {
                d[r * 4 + s] = .zero
              }
            }
          }
          // Columns (4 → 6 rows), then rows (4 → 6 columns) straight into dM.
          for s in 0..<4 {
            let o = a(d[s], d[4 + s], d[8 + s], d[12 + s])
            tt[s] = o.0; tt[4 + s] = o.1; tt[8 + s] = o.2; tt[12 + s] = o.3; tt[16 + s] = o.4; tt[20 + s] = o.5
          }
          let out = m + ti * kpad + k0
          for i in 0..<6 {
            let o = a(tt[i * 4], tt[i * 4 + 1], tt[i * 4 + 2], tt[i * 4 + 3])
            let e = out + i * 6 * rowStride
            store8(o.0, e); store8(o.1, e + rowStride); store8(o.2, e + 2 * rowStride)
            store8(o.3, e + 3 * rowStride); store8(o.4, e + 4 * rowStride); store8(o.5, e + 5 * rowStride)
          }
          k0 += 8
        }
      }
    }
  }

  /// dw[k][c][ky][kx] += (Gᵀ dU[·][c][k] G)[ky][kx] over the elements es (du holds those, from
  /// es.lowerBound; the others count as zero): eight output channels at a time, blocks of 16 split
  /// among the threads (each writes its own channels of dw).
  static func addBackTransformed(_ g: ConvGeometry, du: UnsafePointer<Float>, e es: Range<Int>,
                                 dw: UnsafeMutablePointer<Float>) {
    let C = g.inChannels, K = g.outChannels, KB = (K + lanes - 1) / lanes, Kpad = KB * lanes
    let dww = SendablePointer(dw)
    /// Gᵀ u for six values.
    @inline(__always) func gtT(_ u0: SIMD8<Float>, _ u1: SIMD8<Float>, _ u2: SIMD8<Float>, _ u3: SIMD8<Float>,
                               _ u4: SIMD8<Float>, _ u5: SIMD8<Float>) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
      let p12 = u1 + u2, d12 = u2 - u1, p34 = u3 + u4, d34 = u3 - u4
      return (u0 * 0.25 - p12 * (1 / 6) + p34 * (1 / 24), d12 * (1 / 6) + d34 * (1 / 12),
              p34 * (1 / 6) - p12 * (1 / 6) + u5)
    }
    Parallel.forRanges(KB) { _, kbs in
      withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 18) { tb in
        let t = tb.baseAddress!  // [3][6]: rows reduced, columns not yet
        for kb in kbs {
          for half in 0..<2 where kb * lanes + half * 8 < K {
            let k0 = kb * lanes + half * 8, kValid = min(8, K - k0)
            for c in 0..<C {
              let base = du + c * Kpad + k0
              @inline(__always) func u(_ e: Int) -> SIMD8<Float> {
                es.contains(e) ? load8(base + (e - es.lowerBound) * C * Kpad) : .zero
              }
              for j in 0..<6 {
                let o = gtT(u(j), u(6 + j), u(12 + j), u(18 + j), u(24 + j), u(30 + j))
                t[j] = o.0; t[6 + j] = o.1; t[12 + j] = o.2
              }
              for ky in 0..<3 {
                let o = gtT(t[ky * 6], t[ky * 6 + 1], t[ky * 6 + 2], t[ky * 6 + 3], t[ky * 6 + 4], t[ky * 6 + 5])
                for l in 0..<kValid {
                  let dst = dww.p + ((k0 + l) * C + c) * 9 + ky * 3
                  dst[0] += o.0[l]; dst[1] += o.1[l]; dst[2] += o.2[l]
                }
              }
            }
          }
        }
      }
    }
  }
}
