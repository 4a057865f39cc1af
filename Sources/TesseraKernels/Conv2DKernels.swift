/// Fast 2-D convolution on NCHW tensors: forward, backward-data and backward-weights for any kernel
/// size, stride, dilation, padding and groups, with no im2col buffer.
///
/// All three are implicit GEMMs over a zero-padded copy of one image (C×Hp×Wp), where the value a
/// tap t (channel, ky, kx) sees at output pixel p is `xpad[pixelBase[p] + tapOffset[t]]`:
/// - forward: y[k, p] = Σ_t xpad[pb[p] + to[t]] · w[k, t] — register tile 6 pixels × 16 channels;
/// - backward-weights: dw[k, t] += Σ_p xpad[pb[p] + to[t]] · dy[k, p] — tile 6 taps × 16 channels;
/// - backward-data: dxpad[pb[p] + to[t]] += Σ_k dy[k, p] · w[k, t] — tile 6 pixels × 16 taps,
///   scattered; threads own disjoint input channels, so no two write the same value.
/// Each inner step is two 8-lane loads, six broadcasts and twelve FMAs. `ConvReference` holds the
/// plain loops these are tested against.
public enum Conv2DKernels {
  static let tile = 6, lanes = 16

  /// One image, zero-padded on all sides, in a buffer reused across the batch (its border is
  /// written once, as zeros, and never touched again); or the image itself when no padding is needed.
  final class PaddedImage {
    let g: ConvGeometry
    let hp: Int, wp: Int
    let buffer: Buffer?

    init(_ g: ConvGeometry) {
      self.g = g
      hp = g.paddedHeight
      wp = g.paddedWidth
      let floats = Conv2DKernels.paddedFloats(g)
      buffer = floats == 0 ? nil : Buffer(floats: floats)
    }

    /// The padded image `n` of x.
    func load(_ x: UnsafePointer<Float>, image n: Int, parallel: Bool = true) -> UnsafePointer<Float> {
      let count = g.inChannels * g.inHeight * g.inWidth
      let image = x + n * count
      guard let buf = buffer else { return image }
      let dst = SendablePointer(buf.floats)
      let h = g.inHeight, w = g.inWidth, top = g.padTop, left = g.padLeft, hp = hp, wp = wp
      Parallel.forRanges(g.inChannels * h, maxWorkers: parallel ? nil : 1) { _, r in
        for row in r {
          let c = row / h, y = row % h
          (dst.p + (c * hp + y + top) * wp + left).update(from: image + row * w, count: w)
        }
      }
      return UnsafePointer(buf.floats)
    }
  }

  /// Floats of the padded copy of one image (0 when no padding is needed).
  static func paddedFloats(_ g: ConvGeometry) -> Int {
    let hp = g.paddedHeight, wp = g.paddedWidth
    return hp == g.inHeight && wp == g.inWidth ? 0 : g.inChannels * hp * wp
  }

  /// Floats of the forward pass's packed weights: [group][16-channel block][tap][16].
  static func packedWeightFloats(_ g: ConvGeometry) -> Int {
    g.groups * (g.groupOutChannels + lanes - 1) / lanes * g.taps * lanes
  }

  /// Workspace bytes each kernel holds at its peak (all its buffers live together), for the planner;
  /// tests check them against the ledger.
  public static func forwardWorkspaceBytes(_ g: ConvGeometry, threads: Int, winograd: Bool = false) -> Int {
    if BF16.applies(g) { return BF16.forwardWorkspaceBytes(g, threads: threads) }
    if winograd && Winograd.applies(g) { return Winograd.workspaceBytes(g, threads: threads) }
    if winograd && StridedWinograd.applies(g) { return StridedWinograd.workspaceBytes(g, threads: threads) }
    return 4 * (packedWeightFloats(g) + imageWorkers(g, threads: threads) * paddedFloats(g))
  }

  public static func backwardWeightsWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    if BF16.applies(g) { return BF16.backwardWeightsWorkspaceBytes(g, threads: threads) }
    if Phases.applies(g) { return Phases.backwardWeightsWorkspaceBytes(g, threads: threads) }
    if Winograd.appliesToWeights(g) { return Winograd.backwardWeightsWorkspaceBytes(g, threads: threads) }
    let P = g.outHeight * g.outWidth, Kpad = (g.groupOutChannels + lanes - 1) / lanes * lanes
    let imageMode = imageWorkers(g, threads: threads)
    let workers = imageMode > 1 ? imageMode : max(1, min(P, threads))
    let copies = imageMode > 1 ? imageMode : 1
    return 4 * (workers * g.groups * g.taps * Kpad + copies * (g.groups * P * Kpad + paddedFloats(g)))
  }

  public static func backwardDataWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    if let gt = transposedGeometry(g) {
      return 4 * g.weightCount + forwardWorkspaceBytes(gt, threads: threads, winograd: Winograd.inTraining)
    }
    if PhasedData.applies(g), let phases = PhasedData.phases(g) { return PhasedData.workspaceBytes(phases, threads: threads) }
    return 4 * (g.groups * g.groupOutChannels * (g.taps + lanes) + max(imageWorkers(g, threads: threads), 1) * paddedFloats(g))
  }

  /// Offsets of each tap of one group, relative to the group's first channel in the padded image.
  static func tapOffsets(_ g: ConvGeometry, hp: Int, wp: Int) -> [Int] {
    var to = [Int]()
    to.reserveCapacity(g.taps)
    for c in 0..<g.groupInChannels {
      for ky in 0..<g.kernelH {
        for kx in 0..<g.kernelW { to.append(c * hp * wp + ky * g.dilationH * wp + kx * g.dilationW) }
      }
    }
    return to
  }

  /// Offsets of the window origins in the padded image of output pixels `pixels` (flat indices
  /// into the Ho×Wo map) into out[0..<pixels.count]: one division, then a walk along the rows.
  /// Kernels fill them chunk by chunk on the stack, so no buffer the size of the map is made.
  @inline(__always)
  static func pixelBases(_ g: ConvGeometry, wp: Int, _ pixels: Range<Int>, into out: UnsafeMutablePointer<Int>) {
    let wo = g.outWidth, rowStep = g.strideH * wp
    var oy = pixels.lowerBound / wo, ox = pixels.lowerBound - oy * wo
    for i in 0..<pixels.count {
      out[i] = oy * rowStep + ox * g.strideW
      ox += 1
      if ox == wo { ox = 0; oy += 1 }
    }
  }

  // MARK: forward

  /// y (N, K, Ho, Wo) = conv(x (N, C, H, W), w (K, C/groups, kh, kw)) + bias (K). Overwrites y.
  ///
  /// With `scale`, each output channel's weights are multiplied by scale[k] as they are packed, and
  /// `relu` clamps the result at 0 as it is stored: y = max(scale·conv(x, w) + bias, 0), an
  /// inference-mode BatchNorm (+ ReLU) folded into the convolution at no extra pass or tensor.
  /// `winograd` lets 3×3 stride-1 layers take `Winograd`, and 7×7 stride-2 ones `StridedWinograd`
  /// (inference, and training unless `Winograd.inTraining` is off: their rounding is a few times
  /// the direct kernel's). With
  /// `BF16.enabled` (`--compute bf16`) ungrouped layers multiply in bf16 instead, training too.
  public static func forward(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, scale: UnsafePointer<Float>? = nil, relu: Bool = false, winograd: Bool = false
  ) {
    if BF16.applies(g) { return BF16.forward(g, x: x, w: w, bias: bias, y: y, scale: scale, relu: relu) }
    if winograd && Winograd.applies(g) {
      return Winograd.forward(g, x: x, w: w, bias: bias, y: y, scale: scale, relu: relu)
    }
    if winograd && StridedWinograd.applies(g) {
      return StridedWinograd.forward(g, x: x, w: w, bias: bias, y: y, scale: scale, relu: relu)
    }
    let P = g.outHeight * g.outWidth
    let wtBuf = packWeights(g, w: w, scale: scale)
    let wt = wtBuf.floats
    let tiles = (P + tile - 1) / tile
    let yy = SendablePointer(y), wtp = SendablePointer(wt)
    let workers = imageWorkers(g, threads: Parallel.threadCount)
    // All padded-image buffers are made here, before any thread starts, so the peak is fixed.
    let imgs = (0..<max(workers, 1)).map { _ in PaddedImage(g) }
    let to = tapOffsets(g, hp: imgs[0].hp, wp: imgs[0].wp), wp = imgs[0].wp
    to.withUnsafeBufferPointer { tob in
      let top = tob.baseAddress!
      func run(_ n: Int, _ xn: UnsafePointer<Float>, _ range: Range<Int>) {
        forwardTiles(g, image: n, xn: xn, plane: imgs[0].hp * wp, wp: wp, tiles: range, to: top,
                     wt: UnsafePointer(wtp.p), bias: bias, relu: relu, y: yy.p)
      }
      if workers > 1 {
        // Whole images per worker: one parallel region for the batch, no per-image barriers.
        Parallel.forRanges(g.batch, maxWorkers: workers) { w, r in
          for n in r { run(n, imgs[w].load(x, image: n, parallel: false), 0..<tiles) }
        }
      } else {
        for n in 0..<g.batch {
          let xn = imgs[0].load(x, image: n, parallel: true)
          // Blocks of 48 tiles handed out on demand: a slowed core takes fewer.
          Parallel.forChunks(tiles, chunk: 48) { _, range in run(n, xn, range) }
        }
      }
    }
    withExtendedLifetime(wtBuf) {}
    withExtendedLifetime(imgs) {}
  }

  /// Weights packed [group][16-channel block][tap][16], zero beyond the group's channels, each output
  /// channel's multiplied by scale[k] when given.
  static func packWeights(_ g: ConvGeometry, w: UnsafePointer<Float>, scale: UnsafePointer<Float>?) -> Buffer {
    let T = g.taps, kg = g.groupOutChannels, KB = (kg + lanes - 1) / lanes
    let buf = Buffer(floats: packedWeightFloats(g))
    for gi in 0..<g.groups {
      for k in 0..<kg {
        let src = w + (gi * kg + k) * T
        let dst = buf.floats + (gi * KB + k / lanes) * T * lanes + k % lanes
        let sk = scale?[gi * kg + k] ?? 1
        for t in 0..<T { dst[t * lanes] = src[t] * sk }
      }
    }
    return buf
  }

  /// Threads that each take whole images (> 1), or 1 when the batch is spread tile by tile: whole
  /// images when the batch divides evenly among the threads, which spares a barrier per image.
  static func imageWorkers(_ g: ConvGeometry, threads: Int) -> Int {
    threads > 1 && g.batch >= threads && g.batch % threads == 0 ? threads : 1
  }

  /// Output tiles `tiles` (6 pixels each) of image n, all groups and channel blocks.
  static func forwardTiles(
    _ g: ConvGeometry, image n: Int, xn: UnsafePointer<Float>, plane: Int, wp: Int, tiles: Range<Int>,
    to: UnsafePointer<Int>, wt: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    relu: Bool = false, y: UnsafeMutablePointer<Float>
  ) {
    let P = g.outHeight * g.outWidth
    forwardPixels(g, xn: xn, plane: plane, wp: wp, pixels: (tiles.lowerBound * tile)..<min(P, tiles.upperBound * tile),
                  to: to, wt: wt, bias: bias, relu: relu, out: y + n * g.outChannels * P, outPlane: P,
                  outOrigin: 0)
  }

  /// Output pixels `pixels` of one image (flat indices into its Ho×Wo map), six at a time, all
  /// groups and channel blocks; channel k's pixel p is stored at out[k·outPlane + p − outOrigin]
  /// (the whole map, or a band of rows of it).
  @inline(__always)
  static func forwardPixels(
    _ g: ConvGeometry, xn: UnsafePointer<Float>, plane: Int, wp: Int, pixels: Range<Int>,
    to: UnsafePointer<Int>, wt: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    relu: Bool, out: UnsafeMutablePointer<Float>, outPlane: Int, outOrigin: Int
  ) {
    let T = g.taps, kg = g.groupOutChannels, KB = (kg + lanes - 1) / lanes
    let end = pixels.upperBound, cg = g.groupInChannels
    let floor: Float = relu ? 0 : -.infinity
    // The scratch tile, then the epilogue's bias (16) and clamp (8); the block's pixel bases.
    let block = 48 * tile
    withUnsafeTemporaryAllocation(of: Float.self, capacity: tile * lanes + lanes + 8) { scratch in
      withUnsafeTemporaryAllocation(of: Int.self, capacity: block) { bases in
        let s = scratch.baseAddress!, epilogue = s + tile * lanes
        for i in 0..<8 { epilogue[lanes + i] = floor }
        var b0 = pixels.lowerBound
        while b0 < end {
          let b1 = min(end, b0 + block)
          pixelBases(g, wp: wp, b0..<b1, into: bases.baseAddress!)
          // Indexed by pixel: pb[p] for p in b0..<b1 (tiles start at multiples of 6 from b0, and
          // only the map's last tile runs past b1, where end = b1 clamps it).
          let pb = UnsafePointer(bases.baseAddress! - b0)
          for gi in 0..<g.groups {
            let xg = xn + gi * cg * plane
            for kb in 0..<KB {
              let wk = wt + (gi * KB + kb) * T * lanes
              let kValid = min(lanes, kg - kb * lanes)
              let kBase = gi * kg + kb * lanes
              // Bias and the clamp go on in registers, 16 channels at a time; what is left per
              // output is one move from the pixel-major scratch into its channel's plane.
              for j in 0..<lanes { epilogue[j] = j < kValid ? bias?[kBase + j] ?? 0 : 0 }
              var p0 = b0
              while p0 < b1 {
                forwardTile(T: T, to: to, pb: pb, p0: p0, P: b1, xg: xg, wk: wk, out: s,
                            epilogue: UnsafePointer(epilogue))
                let y = out + kBase * outPlane + p0 - outOrigin
                // A whole tile with two more pixels of room before `end`: eight lanes a channel,
                // the two past the tile rewritten by the next tile (the same thread, later).
                if end - p0 >= 8 {
                  storeTileWide(s, channels: kValid, to: y, plane: outPlane)
                } else {
                  storeTile(s, pixels: min(tile, end - p0), channels: kValid, to: y, plane: outPlane)
                }
                p0 += tile
              }
            }
          }
          b0 = b1
        }
      }
    }
  }

  /// The pixel-major scratch tile s[pixel][16] into `channels` planes of `pixels` outputs each.
  @inline(__always)
  static func storeTile(_ s: UnsafePointer<Float>, pixels: Int, channels: Int, to y: UnsafeMutablePointer<Float>, plane: Int) {
    if pixels == tile {
      for j in 0..<channels {
        let yj = y + j * plane
        yj[0] = s[j]; yj[1] = s[lanes + j]; yj[2] = s[2 * lanes + j]
        yj[3] = s[3 * lanes + j]; yj[4] = s[4 * lanes + j]; yj[5] = s[5 * lanes + j]
      }
    } else {
      for j in 0..<channels {
        for i in 0..<pixels { y[j * plane + i] = s[i * lanes + j] }
      }
    }
  }

  /// The pixel-major scratch tile s[pixel][16] of a whole tile (6 pixels) into `channels` planes,
  /// transposed in registers (unpack, shuffle, 128-bit lanes: the 8 × 8 transpose with two rows
  /// zero) and stored eight lanes a channel: y[j·plane + 0..<8] — lanes 6 and 7 are zero, so the
  /// caller must own two floats past the tile and write them again later. Measured on the stem
  /// (3→16, 7×7/2, one thread): the scalar stores took ~15 % of the forward.
  @inline(__always)
  static func storeTileWide(_ s: UnsafePointer<Float>, channels: Int, to y: UnsafeMutablePointer<Float>, plane: Int) {
    @inline(__always) func lo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
      SIMD8(a[0], b[0], a[1], b[1], a[4], b[4], a[5], b[5])
    }
    @inline(__always) func hi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
      SIMD8(a[2], b[2], a[3], b[3], a[6], b[6], a[7], b[7])
    }
    @inline(__always) func even(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
      SIMD8(a[0], a[1], b[0], b[1], a[4], a[5], b[4], b[5])
    }
    @inline(__always) func odd(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
      SIMD8(a[2], a[3], b[2], b[3], a[6], a[7], b[6], b[7])
    }
    let z = SIMD8<Float>()
    for half in 0..<2 where half * 8 < channels {
      let b = s + half * 8
      let r0 = load8(b), r1 = load8(b + lanes), r2 = load8(b + 2 * lanes)
      let r3 = load8(b + 3 * lanes), r4 = load8(b + 4 * lanes), r5 = load8(b + 5 * lanes)
      let t0 = lo(r0, r1), t1 = hi(r0, r1), t2 = lo(r2, r3), t3 = hi(r2, r3), t4 = lo(r4, r5), t5 = hi(r4, r5)
      // u_j holds channels j and j + 4 of pixels 0–3; v_j of pixels 4–5 (then zeros).
      let u = (even(t0, t2), odd(t0, t2), even(t1, t3), odd(t1, t3))
      let v = (even(t4, z), odd(t4, z), even(t5, z), odd(t5, z))
      let rows = (SIMD8(lowHalf: u.0.lowHalf, highHalf: v.0.lowHalf), SIMD8(lowHalf: u.1.lowHalf, highHalf: v.1.lowHalf),
                  SIMD8(lowHalf: u.2.lowHalf, highHalf: v.2.lowHalf), SIMD8(lowHalf: u.3.lowHalf, highHalf: v.3.lowHalf),
                  SIMD8(lowHalf: u.0.highHalf, highHalf: v.0.highHalf), SIMD8(lowHalf: u.1.highHalf, highHalf: v.1.highHalf),
                  SIMD8(lowHalf: u.2.highHalf, highHalf: v.2.highHalf), SIMD8(lowHalf: u.3.highHalf, highHalf: v.3.highHalf))
      let n = min(8, channels - half * 8), yh = y + half * 8 * plane
      if n == 8 {
        store8(rows.0, yh); store8(rows.1, yh + plane); store8(rows.2, yh + 2 * plane); store8(rows.3, yh + 3 * plane)
        store8(rows.4, yh + 4 * plane); store8(rows.5, yh + 5 * plane); store8(rows.6, yh + 6 * plane)
        store8(rows.7, yh + 7 * plane)
      } else {
        withUnsafeBytes(of: rows) { rb in
          let all = rb.baseAddress!.assumingMemoryBound(to: SIMD8<Float>.self)
          for j in 0..<n { store8(all[j], yh + j * plane) }
        }
      }
    }
  }

  @inline(__always)
  static func forwardTile(
    T: Int, to: UnsafePointer<Int>, pb: UnsafePointer<Int>, p0: Int, P: Int,
    xg: UnsafePointer<Float>, wk: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
    epilogue: UnsafePointer<Float>? = nil
  ) {
    let x0 = xg + pb[min(p0, P - 1)], x1 = xg + pb[min(p0 + 1, P - 1)], x2 = xg + pb[min(p0 + 2, P - 1)]
    let x3 = xg + pb[min(p0 + 3, P - 1)], x4 = xg + pb[min(p0 + 4, P - 1)], x5 = xg + pb[min(p0 + 5, P - 1)]
    var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
    var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
    var c40 = SIMD8<Float>(), c41 = SIMD8<Float>(), c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
    var wp = wk
    for t in 0..<T {
      let o = to[t]
      let w0 = load8(wp), w1 = load8(wp + 8)
      var v = SIMD8<Float>(repeating: x0[o])
      c00 = c00.addingProduct(v, w0); c01 = c01.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: x1[o])
      c10 = c10.addingProduct(v, w0); c11 = c11.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: x2[o])
      c20 = c20.addingProduct(v, w0); c21 = c21.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: x3[o])
      c30 = c30.addingProduct(v, w0); c31 = c31.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: x4[o])
      c40 = c40.addingProduct(v, w0); c41 = c41.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: x5[o])
      c50 = c50.addingProduct(v, w0); c51 = c51.addingProduct(v, w1)
      wp += 16
    }
    if let e = epilogue {
      // max(c + bias, floor) with bias e[0..<16] and floor e[16]; loaded only now, after the loop,
      // so they take no register from it. NaN kept, as a lane select (pointwiseMax is not lowered
      // to vmaxps); at v = floor the floor, as Swift.max(v, floor): +0 for a ReLU of −0.
      let b0 = load8(e), b1 = load8(e + 8), f = load8(e + 16)
      @inline(__always) func clamp(_ v: SIMD8<Float>) -> SIMD8<Float> { v.replacing(with: f, where: v .<= f) }
      c00 = clamp(c00 + b0); c01 = clamp(c01 + b1); c10 = clamp(c10 + b0); c11 = clamp(c11 + b1)
      c20 = clamp(c20 + b0); c21 = clamp(c21 + b1); c30 = clamp(c30 + b0); c31 = clamp(c31 + b1)
      c40 = clamp(c40 + b0); c41 = clamp(c41 + b1); c50 = clamp(c50 + b0); c51 = clamp(c51 + b1)
    }
    store8(c00, out); store8(c01, out + 8); store8(c10, out + 16); store8(c11, out + 24)
    store8(c20, out + 32); store8(c21, out + 40); store8(c30, out + 48); store8(c31, out + 56)
    store8(c40, out + 64); store8(c41, out + 72); store8(c50, out + 80); store8(c51, out + 88)
  }
}
