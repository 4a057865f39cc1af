import Foundation

/// Backward-weights of stride-2 convolutions of few input channels — a network's stem (3 colour
/// channels, 7×7, stride 2) — with output pixels in the vector lanes instead of output channels.
/// The zero-padded image is split into its four phases (even/odd rows × even/odd columns), so what
/// tap (c, ky, kx) sees at 8 neighbouring output pixels is 8 consecutive floats of phase
/// (ky mod 2, kx mod 2): register tile 3 taps × 4 channels over 8 pixels at a time,
/// dw[k, t] += Σ x-phase-row · dy[k, row], summed across the lanes once per block of 8 rows. The
/// pixel-broadcast kernel (`backwardWeights`) keeps 16 output channels in the lanes and gathers
/// each tap's value pixel by pixel (2 floats apart at stride 2) from dy transposed; here every
/// load is contiguous and dy is read in place (measured 1.1–1.35× on fcn-large's stem). The same
/// layout for the forward pass (24 pixels × 4 channels) measured no faster on one thread and
/// slower on two, and was dropped.
extension Conv2DKernels {
  enum Phases {
    static let channels = 4, taps = 3
    /// Off with TESSERA_PHASES=0 (the pixel-broadcast kernels everywhere, for comparisons).
    nonisolated(unsafe) public static var enabled: Bool = ProcessInfo.processInfo.environment["TESSERA_PHASES"] != "0"

    /// Stride-2 convolutions of at most 4 input channels and output channels in fours (no groups,
    /// dilation 1), at least 8 output pixels wide.
    static func applies(_ g: ConvGeometry) -> Bool {
      enabled && g.strideH == 2 && g.strideW == 2 && g.dilationH == 1 && g.dilationW == 1 && g.groups == 1
        && g.inChannels <= 4 && g.outChannels % channels == 0 && g.outWidth >= 8
    }

    /// The phase-split image: for each channel, 4 phases of hq rows × wq columns (zeros past the
    /// padded image).
    struct Layout {
      let hq: Int, wq: Int
      init(_ g: ConvGeometry) {
        hq = g.outHeight + (g.kernelH - 1) / 2
        wq = g.outWidth + (g.kernelW - 1) / 2
      }
      func floats(_ g: ConvGeometry) -> Int { g.inChannels * 4 * hq * wq }
      /// Offset of tap (c, ky, kx) from output pixel (oy, ox)'s base oy·wq + ox.
      func offsets(_ g: ConvGeometry) -> [Int] {
        var o = [Int]()
        for c in 0..<g.inChannels {
          for ky in 0..<g.kernelH {
            for kx in 0..<g.kernelW { o.append(((c * 4 + (ky % 2) * 2 + kx % 2) * hq + ky / 2) * wq + kx / 2) }
          }
        }
        return o
      }
    }

    /// Threads with whole images (batch divisible among them), else 1 (rows of one image shared).
    static func imageWorkers(_ g: ConvGeometry, threads: Int) -> Int { Conv2DKernels.imageWorkers(g, threads: threads) }

    static func backwardWeightsWorkspaceBytes(_ g: ConvGeometry, threads: Int) -> Int {
      let imageMode = imageWorkers(g, threads: threads)
      let workers = imageMode > 1 ? imageMode : max(1, min(g.outHeight, threads))
      return 4 * (max(imageMode, 1) * Layout(g).floats(g) + workers * g.taps * g.outChannels)
    }

    /// Image n of x split into phases into `q` (rows `rows` of the c·4·hq phase rows).
    static func split(_ g: ConvGeometry, _ L: Layout, x: UnsafePointer<Float>, image n: Int,
                      into q: UnsafeMutablePointer<Float>, rows: Range<Int>) {
      let H = g.inHeight, W = g.inWidth, xn = x + n * g.inChannels * H * W
      for r in rows {
        let c = r / (4 * L.hq), phase = r / L.hq % 4, yq = r % L.hq
        let row = 2 * yq + phase / 2 - g.padTop, col0 = phase % 2 - g.padLeft
        let dst = q + r * L.wq
        guard row >= 0 && row < H else {
          dst.update(repeating: 0, count: L.wq)
          continue
        }
        let src = xn + (c * H + row) * W
        // Columns 2j + col0 inside the image: j in lo..<hi; zeros on either side.
        let lo = min(L.wq, max(0, (1 - col0) / 2)), hi = max(lo, min(L.wq, (W - col0 + 1) / 2))
        dst.update(repeating: 0, count: lo)
        for j in lo..<hi { dst[j] = src[2 * j + col0] }
        (dst + hi).update(repeating: 0, count: L.wq - hi)
      }
    }

    /// Splits image n, on every thread (`parallel`) or this one.
    static func load(_ g: ConvGeometry, _ L: Layout, x: UnsafePointer<Float>, image n: Int,
                     into q: UnsafeMutablePointer<Float>, parallel: Bool) {
      let qs = SendablePointer(q)
      Parallel.forRanges(g.inChannels * 4 * L.hq, maxWorkers: parallel ? nil : 1) { _, r in
        split(g, L, x: x, image: n, into: qs.p, rows: r)
      }
    }

    // MARK: backward-weights

    /// dw (K, C, kh, kw) += Σ over images and pixels of x-window · dy; dbias (K) += Σ dy.
    static func backwardWeights(
      _ g: ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
      dw: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?
    ) {
      let T = g.taps, K = g.outChannels, L = Layout(g), Ho = g.outHeight
      let imageMode = imageWorkers(g, threads: Parallel.threadCount)
      let workers = imageMode > 1 ? imageMode : Parallel.workers(for: Ho)
      let phases = (0..<max(imageMode, 1)).map { _ in Buffer(floats: L.floats(g)) }
      let partials = Buffer(floats: workers * T * K)  // per worker [K][T], zeroed
      let off = L.offsets(g)
      let ps = SendablePointer(partials.floats)
      off.withUnsafeBufferPointer { ob in
        let o = ob.baseAddress!
        if imageMode > 1 {
          Parallel.forRanges(g.batch, maxWorkers: imageMode) { wi, r in
            for n in r {
              load(g, L, x: x, image: n, into: phases[wi].floats, parallel: false)
              accumulate(g, L, UnsafePointer(phases[wi].floats), dy: dy, image: n, rows: 0..<Ho, off: o,
                         acc: ps.p + wi * T * K)
            }
          }
        } else {
          for n in 0..<g.batch {
            load(g, L, x: x, image: n, into: phases[0].floats, parallel: true)
            let q = SendablePointer(phases[0].floats)
            // A fixed row range per worker: the same sums in the same order every run.
            Parallel.forRanges(Ho, maxWorkers: workers) { wi, r in
              accumulate(g, L, UnsafePointer(q.p), dy: dy, image: n, rows: r, off: o, acc: ps.p + wi * T * K)
            }
          }
        }
      }
      for i in 0..<(T * K) {
        var s = partials.floats[i]
        for wi in 1..<max(workers, 1) { s += partials.floats[wi * T * K + i] }
        dw[i] += s
      }
      if let db = dbias { Conv2DKernels.addBiasGradient(g, dy: dy, dbias: db) }
      withExtendedLifetime((phases, partials)) {}
    }

    /// acc (K, T) += the sums over output rows `rows` of image n, in blocks of 8 rows: each block
    /// sweeps every (3 taps, 4 channels) tile over its pixels, 8 at a time, then the tail pixels.
    static func accumulate(
      _ g: ConvGeometry, _ L: Layout, _ q: UnsafePointer<Float>, dy: UnsafePointer<Float>, image n: Int,
      rows: Range<Int>, off: UnsafePointer<Int>, acc: UnsafeMutablePointer<Float>
    ) {
      let T = g.taps, K = g.outChannels, Ho = g.outHeight, Wo = g.outWidth, vecEnd = Wo / 8 * 8
      let dyn = dy + n * K * Ho * Wo
      var r0 = rows.lowerBound
      while r0 < rows.upperBound {
        let r1 = min(rows.upperBound, r0 + 8)
        var t0 = 0
        while t0 < T {
          let o0 = off[t0], o1 = off[min(t0 + 1, T - 1)], o2 = off[min(t0 + 2, T - 1)]
          for kq in 0..<(K / channels) {
            var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c02 = SIMD8<Float>(), c03 = SIMD8<Float>()
            var c10 = SIMD8<Float>(), c11 = SIMD8<Float>(), c12 = SIMD8<Float>(), c13 = SIMD8<Float>()
            var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c22 = SIMD8<Float>(), c23 = SIMD8<Float>()
            var tail = SIMD16<Float>()  // the tail pixels' sums, [tap i][channel j] at 4i + j
            for oy in r0..<r1 {
              let xb = q + oy * L.wq
              let d0 = dyn + ((kq * channels) * Ho + oy) * Wo, plane = Ho * Wo
              let x0 = xb + o0, x1 = xb + o1, x2 = xb + o2
              var ox = 0
              while ox < vecEnd {
                let a = load8(x0 + ox), b = load8(x1 + ox), c = load8(x2 + ox)
                var d = load8(d0 + ox)
                c00 = c00.addingProduct(a, d); c10 = c10.addingProduct(b, d); c20 = c20.addingProduct(c, d)
                d = load8(d0 + plane + ox)
                c01 = c01.addingProduct(a, d); c11 = c11.addingProduct(b, d); c21 = c21.addingProduct(c, d)
                d = load8(d0 + 2 * plane + ox)
                c02 = c02.addingProduct(a, d); c12 = c12.addingProduct(b, d); c22 = c22.addingProduct(c, d)
                d = load8(d0 + 3 * plane + ox)
                c03 = c03.addingProduct(a, d); c13 = c13.addingProduct(b, d); c23 = c23.addingProduct(c, d)
                ox += 8
              }
              while ox < Wo {
                for j in 0..<channels {
                  let d = d0[j * plane + ox]
                  tail[j] += x0[ox] * d
                  tail[4 + j] += x1[ox] * d
                  tail[8 + j] += x2[ox] * d
                }
                ox += 1
              }
            }
            let a = acc + kq * channels * T + t0
            @inline(__always) func add(_ i: Int, _ j: Int, _ v: SIMD8<Float>) {
              if t0 + i < T { a[j * T + i] += v.sum() + tail[i * 4 + j] }
            }
            add(0, 0, c00); add(0, 1, c01); add(0, 2, c02); add(0, 3, c03)
            add(1, 0, c10); add(1, 1, c11); add(1, 2, c12); add(1, 3, c13)
            add(2, 0, c20); add(2, 1, c21); add(2, 2, c22); add(2, 3, c23)
          }
          t0 += taps
        }
        r0 = r1
      }
    }
  }
}
