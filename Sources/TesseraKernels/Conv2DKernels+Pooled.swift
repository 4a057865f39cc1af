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
  static func pooledLayout(_ g: ConvGeometry, _ pg: PoolGeometry, threads: Int) -> (bands: Int, bandRows: Int, buffers: Int) {
    let bands = (pg.outHeight + poolBandRows - 1) / poolBandRows
    let bandRows = min(pg.inHeight, (poolBandRows - 1) * pg.strideH + pg.kernelH)
    return (bands, bandRows, max(1, min(bands, threads)))
  }

  /// Floats between two channels' rows in a band buffer: the rows, plus one cache line when that
  /// would put every channel at the same offset modulo 4 KiB (the L1 sets the stores go to).
  static func bandPlane(_ rows: Int, _ width: Int) -> Int {
    let n = rows * width
    return n % 512 < 16 || n % 512 > 496 ? n + 16 : n
  }

  /// Workspace bytes of `forwardMaxPooled` at its peak, for the planner (tests hold it to the ledger).
  public static func forwardMaxPooledWorkspaceBytes(_ g: ConvGeometry, pool pg: PoolGeometry, threads: Int) -> Int {
    let l = pooledLayout(g, pg, threads: threads)
    let weightsAndImage = BF16.applies(g) ? BF16.weightPairs(g) + BF16.imagePairs(g) : packedWeightFloats(g) + paddedFloats(g)
    return 4 * (weightsAndImage + l.buffers * g.outChannels * bandPlane(l.bandRows, g.outWidth))
  }

  /// y (N, K, Hq, Wq) = maxpool(max(scale·conv(x, w) + bias, floor)), pg being the pooling of the
  /// convolution's output (planes N·K, Ho × Wo). The same values as `forward` then
  /// `Pool2DKernels.maxForward`.
  public static func forwardMaxPooled(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    scale: UnsafePointer<Float>?, relu: Bool, pool pg: PoolGeometry, y: UnsafeMutablePointer<Float>
  ) {
    precondition(pg.planes == g.batch * g.outChannels && pg.inHeight == g.outHeight && pg.inWidth == g.outWidth,
                 "pooling \(pg) does not match the convolution \(g)")
    let K = g.outChannels, Wo = g.outWidth, Hq = pg.outHeight, Wq = pg.outWidth
    let layout = pooledLayout(g, pg, threads: Parallel.threadCount)
    // The convolution's rows in fp32 or (`BF16.applies`) bf16: weights, one padded image, offsets.
    let bf16 = BF16.applies(g)
    let wtBuf = bf16 ? BF16.packWeights(g, w: w, scale: scale) : packWeights(g, w: w, scale: scale)
    let img: PaddedImage? = bf16 ? nil : PaddedImage(g)
    let packed: BF16.PackedImage? = bf16 ? BF16.PackedImage(g) : nil
    let bandPlane = Self.bandPlane(layout.bandRows, Wo)
    let bufs = (0..<layout.buffers).map { _ in Buffer(floats: K * bandPlane, zeroed: false) }
    let hp = img?.hp ?? packed!.hp, wp = img?.wp ?? packed!.wp, plane = hp * wp
    let to = bf16 ? [] : tapOffsets(g, hp: hp, wp: wp), to16 = bf16 ? BF16.stepOffsets(g, hp: hp, wp: wp) : []
    let yy = SendablePointer(y)
    to.withUnsafeBufferPointer { tob in to16.withUnsafeBufferPointer { to16b in
      /// Image n's conv rows into `out` (see `forwardPixels`), from its padded copy in fp32 or bf16.
      func convolve(_ xn: UnsafeRawPointer, _ pixels: Range<Int>, _ out: UnsafeMutablePointer<Float>, _ outOrigin: Int) {
        if bf16 {
          BF16.forwardPixels(g, xn: xn.assumingMemoryBound(to: UInt32.self), wp: wp, pixels: pixels,
                             to: to16b.baseAddress!, wt: UnsafePointer(wtBuf.pairs), bias: bias, relu: relu,
                             out: out, outPlane: bandPlane, outOrigin: outOrigin)
        } else {
          forwardPixels(g, xn: xn.assumingMemoryBound(to: Float.self), plane: plane, wp: wp, pixels: pixels,
                        to: tob.baseAddress!, wt: UnsafePointer(wtBuf.floats), bias: bias, relu: relu, out: out,
                        outPlane: bandPlane, outOrigin: outOrigin)
        }
      }
      /// Bands `bands` of image n in order, in buffer `buf`.
      func run(_ n: Int, _ xn: UnsafeRawPointer, _ bands: Range<Int>, _ buf: UnsafeMutablePointer<Float>) {
        var have = 0..<0  // conv rows in buf, from its first row
        withUnsafeTemporaryAllocation(of: Float.self, capacity: Wo) { scratch in
          for band in bands {
            let q = (band * poolBandRows)..<min(Hq, (band + 1) * poolBandRows)
            let need = convRows(pg, q)
            // Rows the previous band already holds move to the front; the rest are computed.
            let keep = max(need.lowerBound, have.lowerBound)..<max(need.lowerBound, min(need.upperBound, have.upperBound))
            if !keep.isEmpty && keep.lowerBound == need.lowerBound && keep.lowerBound > have.lowerBound {
              for k in 0..<K {
                let seg = buf + k * bandPlane
                seg.update(from: seg + (keep.lowerBound - have.lowerBound) * Wo, count: keep.count * Wo)
              }
            }
            let fresh = keep.isEmpty || keep.lowerBound != need.lowerBound ? need : keep.upperBound..<need.upperBound
            if !fresh.isEmpty {
              convolve(xn, (fresh.lowerBound * Wo)..<(fresh.upperBound * Wo), buf, need.lowerBound * Wo)
            }
            have = need
            for k in 0..<K {
              let virtualPlane = UnsafePointer(buf + k * bandPlane) - need.lowerBound * Wo
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
          ?? UnsafeRawPointer(packed!.load(x, image: n, parallel: true))
        // Contiguous runs of bands per worker, so each carries its shared rows forward.
        Parallel.forRanges(layout.bands, maxWorkers: layout.buffers) { wk, r in run(n, xn, r, bufs[wk].floats) }
      }
    } }
    withExtendedLifetime((wtBuf, img, packed, bufs)) {}
  }
}
