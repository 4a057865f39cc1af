/// Inference: a convolution (with folded BatchNorm and ReLU) and the max pooling after it in one
/// pass. The convolution's output never exists whole: each worker computes a band of its rows into
/// a small buffer, pools them, and carries the rows the next band's windows share (a 3×3 stride-2
/// pool shares one), so no row is computed twice. For the fcn-large stem at 1024² that is 0.5 MiB
/// per worker instead of a 16 MiB map per image, written and read back by a separate pooling pass.
extension Conv2DKernels {
  /// Pool output rows per band.
  static let poolBandRows = 8

  /// Conv rows (of pg's input, the convolution's output) that pool rows q read.
  static func convRows(_ pg: PoolGeometry, _ q: Range<Int>) -> Range<Int> {
    let lo = max(0, q.lowerBound * pg.strideH - pg.padTop)
    let hi = min(pg.inHeight, (q.upperBound - 1) * pg.strideH - pg.padTop + pg.kernelH)
    return lo..<max(lo, hi)
  }

  /// Bands per image, conv rows per band buffer, and buffers (one per worker). Threads share one
  /// image by bands: whole images per thread (two padded images at once, as `forward` does) measured
  /// ~1.5× slower for the fcn-large stem at 1024² on this 2-core machine.
  /// A band buffer holds its pool rows' conv rows, and with `StridedWinograd` up to two more at
  /// each end: it computes whole tile rows (3 conv rows), and the rows past the band are kept for
  /// the next one.
  static func pooledLayout(_ g: ConvGeometry, _ pg: PoolGeometry, threads: Int) -> (bands: Int, bandRows: Int, buffers: Int) {
    let bands = (pg.outHeight + poolBandRows - 1) / poolBandRows
    let rows = (poolBandRows - 1) * pg.strideH + pg.kernelH + 2 * (tileRows(g) - 1)
    return (bands, min(pg.inHeight, rows), max(1, min(bands, threads)))
  }

  /// Conv rows the pooled pass computes together: a Winograd tile's 3, or 1.
  static func tileRows(_ g: ConvGeometry) -> Int { !BF16.applies(g) && StridedWinograd.applies(g) ? 3 : 1 }

  /// Floats between two channels' rows in a band buffer: the rows, plus one cache line when that
  /// would put every channel at the same offset modulo 4 KiB (the L1 sets the stores go to).
  static func bandPlane(_ rows: Int, _ width: Int) -> Int {
    let n = rows * width
    return n % 512 < 16 || n % 512 > 496 ? n + 16 : n
  }

  /// Workspace bytes of `forwardMaxPooled` at its peak, for the planner (tests hold it to the ledger).
  public static func forwardMaxPooledWorkspaceBytes(_ g: ConvGeometry, pool pg: PoolGeometry, threads: Int) -> Int {
    let l = pooledLayout(g, pg, threads: threads)
    let weightsAndImage = BF16.applies(g) ? BF16.weightPairs(g) + BF16.imagePairs(g)
      : tileRows(g) > 1 ? StridedWinograd.uFloats(g) + l.buffers * StridedWinograd.scratchFloats(g)
      : packedWeightFloats(g) + paddedFloats(g)
    return 4 * (weightsAndImage + l.buffers * g.outChannels * bandPlane(l.bandRows, g.outWidth))
  }

  /// y (N, K, Hq, Wq) = maxpool(max(scale·conv(x, w) + bias, floor)), pg being the pooling of the
  /// convolution's output (planes N·K, Ho × Wo). The same values as `forward` (with `winograd`)
  /// then `Pool2DKernels.maxForward`.
  public static func forwardMaxPooled(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    scale: UnsafePointer<Float>?, relu: Bool, pool pg: PoolGeometry, y: UnsafeMutablePointer<Float>
  ) {
    precondition(pg.planes == g.batch * g.outChannels && pg.inHeight == g.outHeight && pg.inWidth == g.outWidth,
                 "pooling \(pg) does not match the convolution \(g)")
    let K = g.outChannels, Ho = g.outHeight, Wo = g.outWidth, Hq = pg.outHeight, Wq = pg.outWidth
    let layout = pooledLayout(g, pg, threads: Parallel.threadCount)
    // The convolution's rows in fp32 or (`BF16.applies`) bf16 — weights, one padded image, offsets —
    // or by `StridedWinograd` (U, and V and M per worker; it reads the image itself).
    let bf16 = BF16.applies(g), align = tileRows(g), strided = align > 1
    let wtBuf = bf16 ? BF16.packWeights(g, w: w, scale: scale)
      : strided ? StridedWinograd.weights(g, w: w, scale: scale) : packWeights(g, w: w, scale: scale)
    let img: PaddedImage? = bf16 || strided ? nil : PaddedImage(g)
    let packed: BF16.PackedImage? = bf16 ? BF16.PackedImage(g) : nil
    let winogradScratch = strided ? (0..<layout.buffers).map { _ in StridedWinograd.Scratch(g) } : []
    let bandPlane = Self.bandPlane(layout.bandRows, Wo)
    let bufs = (0..<layout.buffers).map { _ in Buffer(floats: K * bandPlane, zeroed: false) }
    let hp = img?.hp ?? packed?.hp ?? 0, wp = img?.wp ?? packed?.wp ?? 0, plane = hp * wp
    let to = bf16 || strided ? [] : tapOffsets(g, hp: hp, wp: wp), to16 = bf16 ? BF16.stepOffsets(g, hp: hp, wp: wp) : []
    let yy = SendablePointer(y), imageFloats = g.inChannels * g.inHeight * g.inWidth
    to.withUnsafeBufferPointer { tob in to16.withUnsafeBufferPointer { to16b in
      /// Conv rows `rows` of image n into `out` (see `forwardPixels`), from its padded copy in fp32
      /// or bf16, or from the image itself.
      func convolve(_ n: Int, _ xn: UnsafeRawPointer?, _ rows: Range<Int>, _ worker: Int,
                    _ out: UnsafeMutablePointer<Float>, _ outOrigin: Int) {
        let pixels = (rows.lowerBound * Wo)..<(rows.upperBound * Wo)
        if strided {
          StridedWinograd.forwardRows(g, x: x + n * imageFloats, rows: rows, u: UnsafePointer(wtBuf.floats),
                                      scratch: winogradScratch[worker], bias: bias, relu: relu, out: out,
                                      outPlane: bandPlane, outOrigin: outOrigin)
        } else if bf16 {
          BF16.forwardPixels(g, xn: xn!.assumingMemoryBound(to: UInt32.self), wp: wp, pixels: pixels,
                             to: to16b.baseAddress!, wt: UnsafePointer(wtBuf.pairs), bias: bias, relu: relu,
                             out: out, outPlane: bandPlane, outOrigin: outOrigin)
        } else {
          forwardPixels(g, xn: xn!.assumingMemoryBound(to: Float.self), plane: plane, wp: wp, pixels: pixels,
                        to: tob.baseAddress!, wt: UnsafePointer(wtBuf.floats), bias: bias, relu: relu, out: out,
                        outPlane: bandPlane, outOrigin: outOrigin)
        }
      }
      /// Bands `bands` of image n in order, in worker `wk`'s buffer.
      func run(_ n: Int, _ xn: UnsafeRawPointer?, _ bands: Range<Int>, _ wk: Int) {
        let buf = bufs[wk].floats
        var have = 0..<0  // conv rows in buf, from its first row
        withUnsafeTemporaryAllocation(of: Float.self, capacity: Wo) { scratch in
          for band in bands {
            let q = (band * poolBandRows)..<min(Hq, (band + 1) * poolBandRows)
            let need = convRows(pg, q)
            if have.lowerBound <= need.lowerBound && need.lowerBound < have.upperBound {
              // Rows the previous band made from this band's first on move to the front.
              let shift = need.lowerBound - have.lowerBound
              if shift > 0 {
                for k in 0..<K {
                  let seg = buf + k * bandPlane
                  seg.update(from: seg + shift * Wo, count: (have.upperBound - need.lowerBound) * Wo)
                }
              }
              have = need.lowerBound..<have.upperBound
            } else {
              let first = need.lowerBound / align * align
              have = first..<first
            }
            if have.upperBound < need.upperBound {
              // Whole tile rows (Winograd: the rows past `need` stay for the next band).
              let fresh = have.upperBound..<min(Ho, (need.upperBound + align - 1) / align * align)
              convolve(n, xn, fresh, wk, buf, have.lowerBound * Wo)
              have = have.lowerBound..<fresh.upperBound
            }
            for k in 0..<K {
              let virtualPlane = UnsafePointer(buf + k * bandPlane) - have.lowerBound * Wo
              for oy in q {
                Pool2DKernels.maxPoolRow(pg, oy: oy, plane: virtualPlane, scratch: scratch.baseAddress!,
                                         y: yy.p + ((n * K + k) * Hq + oy) * Wq)
              }
            }
          }
        }
      }
      for n in 0..<g.batch {
        let xn = img.map { UnsafeRawPointer($0.load(x, image: n, parallel: true)) }
          ?? packed.map { UnsafeRawPointer($0.load(x, image: n, parallel: true)) }
        // Contiguous runs of bands per worker, so each carries its shared rows forward.
        Parallel.forRanges(layout.bands, maxWorkers: layout.buffers) { wk, r in run(n, xn, r, wk) }
      }
    } }
    withExtendedLifetime((wtBuf, img, packed, bufs, winogradScratch)) {}
  }
}
