import CTesseraBF16
import Foundation

/// Convolutions with bf16 multiplies and fp32 sums (`--compute bf16`), the arithmetic of
/// TensorFlow's `mixed_bfloat16` policy. The kernels are C (CTesseraBF16, `vdpbf16ps` under target
/// attributes): one instruction multiplies 16 pairs and adds them to 16 fp32 sums, twice the
/// multiply-adds of an fp32 FMA per cycle on this CPU. Channels go in pairs (c, c+1), so the
/// padded image is held as bf16 pairs [C/2][Hp][Wp] and the weights as [16-channel block]
/// [pair, ky, kx][16] pairs; the tile is 12 pixels × 16 channels in 12 of the 32 zmm registers.
///
/// A bf16 × bf16 product is exact in fp32, so the result is the fp32 convolution of the rounded
/// inputs and weights (round to nearest even), summed in fp32 in a fixed order per output, whichever
/// tile computes it. Streamed training is therefore exact per kernel but agrees with the plain step
/// only to bf16's precision (~0.5 %, not fp32's 1e-5): a gradient summed from different parts in a
/// tile's halo differs by ~1e-7, and its bf16 rounding can make that 2⁻⁸ (tests: ComputeTests).
/// The convolutions' three products take it: forward,
/// backward-data (stride 1: itself a forward convolution; larger strides: one forward convolution
/// per phase, `PhasedData`) and backward-weights (`backwardWeights` below, pixels in pairs). The
/// parameters, their gradients' sums across tiles and workers, BatchNorm, pooling and the loss stay
/// fp32 (TF's policy also keeps fp32 variables).
public enum BF16 {
  /// This CPU has AVX512_BF16 and the OS keeps AVX-512 state.
  public static let supported = tb16_supported() != 0
  /// Set by `--compute bf16`: convolutions of one group take this path where `supported`.
  nonisolated(unsafe) public static var enabled = false

  public static func applies(_ g: ConvGeometry) -> Bool { enabled && supported && g.groups == 1 }

  /// The value a float becomes in bf16 (round to nearest even), as a Float, for references.
  public static func rounded(_ v: Float) -> Float { Float(bitPattern: UInt32(tb16_round(v)) << 16) }

  static let lanes = 16

  /// An odd last channel paired along x (its taps kx, kx+1 in one step) rather than with zero:
  /// the 7×7 stem on RGB takes 77 steps instead of 98. A zero weight pairs with the value one
  /// column past the window, so a non-finite input there spreads one output further than in fp32.
  static func xPairs(_ g: ConvGeometry) -> Bool { g.inChannels % 2 == 1 && g.dilationW == 1 && g.kernelW > 1 }

  static func steps(_ g: ConvGeometry) -> Int {
    let taps = g.kernelH * g.kernelW
    return g.inChannels / 2 * taps + (g.inChannels % 2 == 0 ? 0 : xPairs(g) ? g.kernelH * ((g.kernelW + 1) / 2) : taps)
  }
  /// 4-byte pairs of one packed image (padded; its layout differs from x's, so always a copy).
  static func imagePairs(_ g: ConvGeometry) -> Int { (g.inChannels + 1) / 2 * g.paddedHeight * g.paddedWidth }
  static func weightPairs(_ g: ConvGeometry) -> Int { (g.outChannels + lanes - 1) / lanes * steps(g) * lanes }

  /// Workspace bytes of `Conv2DKernels.forward` on this path (the packed weights and one packed
  /// image per worker), for the planner.
  static func forwardWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    4 * (weightPairs(g) + Conv2DKernels.imageWorkers(g, threads: threads) * imagePairs(g))
  }

  /// Offsets, in pairs, of each step (pair, ky, kx) from a window's origin.
  static func stepOffsets(_ g: ConvGeometry, hp: Int, wp: Int) -> [Int64] {
    var to = [Int64]()
    to.reserveCapacity(steps(g))
    for p in 0..<(g.inChannels + 1) / 2 {
      let kxStep = p == g.inChannels / 2 && xPairs(g) ? 2 : 1
      for ky in 0..<g.kernelH {
        for kx in stride(from: 0, to: g.kernelW, by: kxStep) {
          to.append(Int64(p * hp * wp + ky * g.dilationH * wp + kx * g.dilationW))
        }
      }
    }
    return to
  }

  static func packWeights(_ g: ConvGeometry, w: UnsafePointer<Float>, scale: UnsafePointer<Float>?) -> Buffer {
    let buf = Buffer(byteCount: 4 * weightPairs(g), category: .workspace, zeroed: false)
    tb16_pack_weights(w, scale, Int32(g.outChannels), Int32(g.inChannels), Int32(g.kernelH), Int32(g.kernelW),
                      xPairs(g) ? 1 : 0, buf.pairs)
    return buf
  }

  /// One image as bf16 channel pairs, zero-padded; the border is zeroed once (only an x-paired last
  /// channel rewrites the column left of the image).
  final class PackedImage {
    let g: ConvGeometry
    let hp: Int, wp: Int
    let buffer: Buffer

    init(_ g: ConvGeometry) {
      self.g = g
      hp = g.paddedHeight
      wp = g.paddedWidth
      buffer = Buffer(byteCount: 4 * BF16.imagePairs(g), category: .workspace)
    }

    func load(_ x: UnsafePointer<Float>, image n: Int, parallel: Bool = true) -> UnsafePointer<UInt32> {
      let g = g, hp = hp, wp = wp, dst = SendablePointer(buffer.pairs)
      let image = x + n * g.inChannels * g.inHeight * g.inWidth
      Parallel.forRanges((g.inChannels + 1) / 2 * g.inHeight, maxWorkers: parallel ? nil : 1) { _, r in
        tb16_pack_image(image, Int32(g.inChannels), Int32(g.inHeight), Int32(g.inWidth), Int32(g.padTop),
                        Int32(g.padLeft), Int32(hp), Int32(wp), BF16.xPairs(g) ? 1 : 0, r.lowerBound, r.upperBound, dst.p)
      }
      return UnsafePointer(buffer.pairs)
    }
  }

  /// `Conv2DKernels.forward` on this path: y = max(scale·conv(x, w) + bias, floor) with x and the
  /// scaled weights rounded to bf16.
  static func forward(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, scale: UnsafePointer<Float>?, relu: Bool
  ) {
    let P = g.outHeight * g.outWidth, tile = 12
    let wtBuf = packWeights(g, w: w, scale: scale)
    let workers = Conv2DKernels.imageWorkers(g, threads: Parallel.threadCount)
    // Every buffer is made before any thread starts, so the peak is fixed (and planned).
    let imgs = (0..<max(workers, 1)).map { _ in PackedImage(g) }
    let to = stepOffsets(g, hp: imgs[0].hp, wp: imgs[0].wp), wp = imgs[0].wp
    let yy = SendablePointer(y), wt = UnsafePointer(wtBuf.pairs)
    to.withUnsafeBufferPointer { tob in
      let top = tob.baseAddress!
      func run(_ n: Int, _ xn: UnsafePointer<UInt32>, _ pixels: Range<Int>) {
        forwardPixels(g, xn: xn, wp: wp, pixels: pixels, to: top, wt: wt, bias: bias, relu: relu,
                      out: yy.p + n * g.outChannels * P, outPlane: P, outOrigin: 0)
      }
      if workers > 1 {
        Parallel.forRanges(g.batch, maxWorkers: workers) { w, r in
          for n in r { run(n, imgs[w].load(x, image: n, parallel: false), 0..<P) }
        }
      } else {
        let tiles = (P + tile - 1) / tile
        for n in 0..<g.batch {
          let xn = imgs[0].load(x, image: n, parallel: true)
          // Blocks of 32 tiles handed out on demand: a slowed core takes fewer.
          Parallel.forChunks(tiles, chunk: 32) { _, r in run(n, xn, (r.lowerBound * tile)..<min(P, r.upperBound * tile)) }
        }
      }
    }
    withExtendedLifetime((wtBuf, imgs)) {}
  }

  /// Output pixels `pixels` (flat indices into the Ho×Wo map) of one packed image, every channel;
  /// channel k's pixel p goes to out[k·outPlane + p − outOrigin].
  static func forwardPixels(
    _ g: ConvGeometry, xn: UnsafePointer<UInt32>, wp: Int, pixels: Range<Int>, to: UnsafePointer<Int64>,
    wt: UnsafePointer<UInt32>, bias: UnsafePointer<Float>?, relu: Bool,
    out: UnsafeMutablePointer<Float>, outPlane: Int, outOrigin: Int
  ) {
    let block = 384  // pixel bases on the stack, 32 tiles at a time
    withUnsafeTemporaryAllocation(of: Int.self, capacity: block) { bases in
      var b0 = pixels.lowerBound
      while b0 < pixels.upperBound {
        let b1 = min(pixels.upperBound, b0 + block)
        Conv2DKernels.pixelBases(g, wp: wp, b0..<b1, into: bases.baseAddress!)
        bases.baseAddress!.withMemoryRebound(to: Int64.self, capacity: block) { pb in
          tb16_conv_pixels(xn, pb, b1 - b0, g.strideW, to, steps(g), wt, g.outChannels, bias,
                           relu ? 0 : -.infinity, out + b0 - outOrigin, outPlane)
        }
        b0 = b1
      }
    }
  }
}

// MARK: backward-weights

extension BF16 {
  /// Column phases of the backward-weights image: each padded row split into `strideW` phases of
  /// `phaseLen` values (one more than needed: the odd last pixel's partner reads a zero there), so
  /// the two pixels of a pair are adjacent for every tap.
  static func phaseLayout(_ g: ConvGeometry) -> (hp: Int, phaseLen: Int, rowLen: Int) {
    let phaseLen = (g.paddedWidth + g.strideW - 1) / g.strideW + 1
    return (g.paddedHeight, phaseLen, g.strideW * phaseLen)
  }

  static func gradientWorkers(_ g: ConvGeometry, threads: Int) -> Int { max(1, min(g.outHeight, threads)) }
  /// Pixel pairs of an output row (the last one's partner 0 when the width is odd).
  static func pixelPairs(_ g: ConvGeometry) -> Int { (g.outWidth + 1) / 2 }
  /// Output rows per kernel call: ≥ 128 pixel pairs summed before the tile's sums go to memory.
  static func gradientRows(_ g: ConvGeometry) -> Int { min(g.outHeight, max(1, 128 / pixelPairs(g))) }
  /// 4-byte pairs of one call's rows of dy, [16-channel block][row · pixel pair][16].
  static func gradientRowPairs(_ g: ConvGeometry) -> Int {
    (g.outChannels + lanes - 1) / lanes * gradientRows(g) * pixelPairs(g) * lanes
  }

  /// Workspace bytes of `backwardWeights` on this path: the image in bf16 phases, and per worker
  /// its dw partial and one row of dy in pixel pairs.
  static func backwardWeightsWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
    let (hp, _, rowLen) = phaseLayout(g), workers = gradientWorkers(g, threads: threads)
    return 2 * g.inChannels * hp * rowLen + 4 * workers * (g.outChannels * g.taps + gradientRowPairs(g))
  }

  /// dw += Σ x-window · dy with both rounded to bf16 and the products summed in fp32: each output
  /// row's pixels in adjacent pairs (vdpbf16ps sums a pair), 12 taps × 16 channels a tile summed
  /// over a few rows (`gradientRows`) before it goes to memory; each worker owns a fixed band of
  /// rows and its own partial dw (reproducible), summed into dw at the end. dbias (Σ dy) stays fp32.
  static func backwardWeights(
    _ g: ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
    dw: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?
  ) {
    let K = g.outChannels, T = g.taps, C = g.inChannels, P = g.outHeight * g.outWidth
    let (hp, phaseLen, rowLen) = phaseLayout(g), sw = g.strideW
    let pairs = pixelPairs(g), rowsPerCall = gradientRows(g), rowPairs = gradientRowPairs(g)
    let workers = gradientWorkers(g, threads: Parallel.threadCount)
    let imageBuf = Buffer(byteCount: 2 * C * hp * rowLen, category: .workspace)  // zero padding
    let partialBuf = Buffer(floats: workers * K * T)
    let rowBuf = Buffer(byteCount: 4 * workers * rowPairs, category: .workspace, zeroed: false)
    let image = imageBuf.raw.assumingMemoryBound(to: UInt16.self)
    let partials = SendablePointer(partialBuf.floats), dyPairs = SendablePointer(rowBuf.pairs)
    var tapOff = [Int64]()
    for c in 0..<C {
      for ky in 0..<g.kernelH {
        for kx in 0..<g.kernelW {
          let col = kx * g.dilationW
          tapOff.append(Int64(c * hp * rowLen + ky * g.dilationH * rowLen + col % sw * phaseLen + col / sw))
        }
      }
    }
    let img = SendablePointer(image)
    tapOff.withUnsafeBufferPointer { tob in
      let to = tob.baseAddress!
      for n in 0..<g.batch {
        let xn = x + n * C * g.inHeight * g.inWidth
        Parallel.forRanges(C * g.inHeight) { _, r in
          tb16_pack_phases(xn, Int32(g.inHeight), Int32(g.inWidth), Int32(g.padTop), Int32(g.padLeft), Int32(hp),
                           Int32(sw), phaseLen, r.lowerBound, r.upperBound, img.p)
        }
        Parallel.forRanges(g.outHeight, maxWorkers: workers) { wi, r in
          let d = dyPairs.p + wi * rowPairs
          var oy = r.lowerBound
          while oy < r.upperBound {
            let rows = min(rowsPerCall, r.upperBound - oy)
            tb16_pack_row_pairs(dy + n * K * P + oy * g.outWidth, K, P, g.outWidth, rows, d)
            tb16_weight_grads(img.p + oy * g.strideH * rowLen, to, T, rows, g.strideH * rowLen, d, pairs, K,
                              partials.p + wi * K * T, T)
            oy += rows
          }
        }
      }
    }
    let dwp = SendablePointer(dw)
    Parallel.forRanges(K * T) { _, r in
      for i in r {
        var v: Float = 0
        for wi in 0..<workers { v += partials.p[wi * K * T + i] }
        dwp.p[i] += v
      }
    }
    if let db = dbias { Conv2DKernels.addBiasGradient(g, dy: dy, dbias: db) }
    withExtendedLifetime((imageBuf, partialBuf, rowBuf)) {}
  }
}

extension Buffer {
  /// The buffer as 4-byte bf16 pairs (the C kernels' view).
  var pairs: UnsafeMutablePointer<UInt32> { raw.assumingMemoryBound(to: UInt32.self) }
}
