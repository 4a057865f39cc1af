/// Batch normalisation over NCHW: statistics per channel over N, H and W.
public enum BatchNormKernels {
  /// Mean and biased variance of each channel (two passes, Double accumulation per plane).
  public static func statistics(
    x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int,
    mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>
  ) {
    let m = SendablePointer(mean), v = SendablePointer(variance)
    let count = Double(batch * spatial)
    Parallel.forRanges(channels) { _, r in
      for c in r {
        var s = 0.0
        for n in 0..<batch { s += Double(sum(x + (n * channels + c) * spatial, spatial)) }
        let mu = s / count
        var q = 0.0
        for n in 0..<batch { q += Double(sumSquaredDeviation(x + (n * channels + c) * spatial, spatial, Float(mu))) }
        m.p[c] = Float(mu)
        v.p[c] = Float(q / count)
      }
    }
  }

  @inline(__always) static func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var a = SIMD8<Float>(), b = SIMD8<Float>(), i = 0
    while i + 16 <= n { a += load8(p + i); b += load8(p + i + 8); i += 16 }
    var s = (a + b).sum()
    while i < n { s += p[i]; i += 1 }
    return s
  }

  @inline(__always) static func sumSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, _ mu: Float) -> Float {
    let m = SIMD8<Float>(repeating: mu)
    var a = SIMD8<Float>(), b = SIMD8<Float>(), i = 0
    while i + 16 <= n {
      let d0 = load8(p + i) - m, d1 = load8(p + i + 8) - m
      a = a.addingProduct(d0, d0); b = b.addingProduct(d1, d1); i += 16
    }
    var s = (a + b).sum()
    while i < n { let d = p[i] - mu; s += d * d; i += 1 }
    return s
  }

  /// The fused ReLU's gate in backward: dy where scale·x + shift > 0 (recomputed from the kept x, as
  /// `affine` rounds it), else 0; when off, dy unchanged.
  struct ReLUGate {
    let on: Bool, scale: Float, shift: Float
    let vs: SIMD8<Float>, vb: SIMD8<Float>
    @inline(__always) init(_ on: Bool, scale: Float, shift: Float) {
      (self.on, self.scale, self.shift) = (on, scale, shift)
      (vs, vb) = (SIMD8(repeating: scale), SIMD8(repeating: shift))
    }
    @inline(__always) func callAsFunction(_ d: SIMD8<Float>, _ x: SIMD8<Float>) -> SIMD8<Float> {
      on ? d.replacing(with: SIMD8<Float>(), where: x * vs + vb .<= SIMD8<Float>()) : d
    }
    @inline(__always) func callAsFunction(_ d: Float, _ x: Float) -> Float { on && x * scale + shift <= 0 ? 0 : d }
  }

  /// y = x · scale[c] + shift[c], optionally followed by ReLU: a multiply rounded, then an add, for
  /// every value alike (no fused multiply-add in the vector part: a value's result must not depend
  /// on where it sits in its plane, which streamed tiles move); where x is the mean and β = 0 the
  /// result is exactly 0 (shift = −mean·scale cancels the rounded product), a clean ReLU tie.
  public static func affine(
    x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, batch: Int, channels: Int, spatial: Int,
    scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu: Bool = false
  ) {
    let yy = SendablePointer(y)
    Parallel.forRanges(batch * channels) { _, r in
      for pl in r {
        let c = pl % channels
        let a = SIMD8<Float>(repeating: scale[c]), b = SIMD8<Float>(repeating: shift[c])
        let xp = x + pl * spatial, yp = yy.p + pl * spatial
        var i = 0
        if relu {
          let z = SIMD8<Float>()
          while i + 8 <= spatial {
            let v = load8(xp + i) * a + b
            store8(v.replacing(with: z, where: v .< z), yp + i)
            i += 8
          }
          while i < spatial { yp[i] = max(xp[i] * scale[c] + shift[c], 0); i += 1 }
        } else {
          while i + 8 <= spatial { store8(load8(xp + i) * a + b, yp + i); i += 8 }
          while i < spatial { yp[i] = xp[i] * scale[c] + shift[c]; i += 1 }
        }
      }
    }
  }

  /// Training-mode backward. With x̂ = (x − mean)·invstd and M = N·H·W:
  /// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ·invstd·(dy − dβ/M − x̂·dγ/M). dγ and dβ accumulate; dx is overwritten.
  /// With `reluShift` (β − mean·γ·invstd per channel) the forward was ReLU(BN(x)): dy is first
  /// zeroed where γ·invstd·x + shift ≤ 0, recomputed from x, so the ReLU output need not be kept.
  public static func backward(
    x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
    batch: Int, channels: Int, spatial: Int,
    mean: UnsafePointer<Float>, invstd: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    dgamma: UnsafeMutablePointer<Float>, dbeta: UnsafeMutablePointer<Float>,
    reluShift: UnsafePointer<Float>? = nil
  ) {
    let dxx = SendablePointer(dx), dg = SendablePointer(dgamma), db = SendablePointer(dbeta)
    let M = Float(batch * spatial)
    Parallel.forRanges(channels) { _, r in
      for c in r {
        let mu = mean[c], istd = invstd[c]
        let gate = ReLUGate(reluShift != nil, scale: gamma[c] * istd, shift: reluShift?[c] ?? 0)
        var sdy = 0.0, sdyx = 0.0
        for n in 0..<batch {
          let xp = x + (n * channels + c) * spatial, dyp = dy + (n * channels + c) * spatial
          let m = SIMD8<Float>(repeating: mu)
          var a = SIMD8<Float>(), b = SIMD8<Float>(), i = 0
          while i + 8 <= spatial {
            let xv = load8(xp + i)
            let d = gate(load8(dyp + i), xv)
            a += d
            b = b.addingProduct(d, xv - m)
            i += 8
          }
          var sa = a.sum(), sb = b.sum()
          while i < spatial { let d = gate(dyp[i], xp[i]); sa += d; sb += d * (xp[i] - mu); i += 1 }
          sdy += Double(sa)
          sdyx += Double(sb)
        }
        let dbeta = Float(sdy), dgam = Float(sdyx) * istd
        db.p[c] += dbeta
        dg.p[c] += dgam
        // dx = k·(dy − dβ/M − (x − μ)·istd·dγ/M) with k = γ·istd
        let k = gamma[c] * istd
        let c1 = dbeta / M, c2 = istd * dgam / M
        for n in 0..<batch {
          let xp = x + (n * channels + c) * spatial, dyp = dy + (n * channels + c) * spatial
          let dxp = dxx.p + (n * channels + c) * spatial
          let vk = SIMD8<Float>(repeating: k), v1 = SIMD8<Float>(repeating: c1)
          let v2 = SIMD8<Float>(repeating: c2), vm = SIMD8<Float>(repeating: mu)
          var i = 0
          while i + 8 <= spatial {
            let xv = load8(xp + i)
            let t = gate(load8(dyp + i), xv) - v1 - (xv - vm) * v2
            store8(t * vk, dxp + i)
            i += 8
          }
          while i < spatial { dxp[i] = k * (gate(dyp[i], xp[i]) - c1 - (xp[i] - mu) * c2); i += 1 }
        }
      }
    }
  }
}

/// A rectangle of a feature map: rows × columns.
public struct MapRegion: Sendable, Equatable {
  public var rows: Range<Int>, cols: Range<Int>
  public init(rows: Range<Int>, cols: Range<Int>) {
    self.rows = rows
    self.cols = cols
  }
  public var count: Int { rows.count * cols.count }
}

/// BatchNorm over a map processed tile by tile (streamed training): statistics and gradient sums
/// gathered tile by tile in Double, and a backward that takes them as given.
extension BatchNormKernels {
  /// Adds Σ(x − shift) and Σ(x − shift)² of each channel over `region` of a (N, C, H, W) tile.
  /// The shift (any value near the mean, e.g. the first tile's mean) keeps E[x²] − E[x]² accurate.
  public static func accumulateStatistics(
    x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int, region: MapRegion,
    shift: [Float], sum: UnsafeMutablePointer<Double>, sumSquares: UnsafeMutablePointer<Double>
  ) {
    let s1 = SendablePointer(sum), s2 = SendablePointer(sumSquares)
    Parallel.forRanges(channels) { _, r in
      for c in r {
        let k = shift[c], vk = SIMD8<Float>(repeating: k)
        var a = 0.0, b = 0.0
        for n in 0..<batch {
          for y in region.rows {
            let p = x + ((n * channels + c) * height + y) * width + region.cols.lowerBound
            let w = region.cols.count
            var va = SIMD8<Float>(), vb = SIMD8<Float>(), i = 0
            while i + 8 <= w { let d = load8(p + i) - vk; va += d; vb = vb.addingProduct(d, d); i += 8 }
            var sa = va.sum(), sb = vb.sum()
            while i < w { let d = p[i] - k; sa += d; sb += d * d; i += 1 }
            a += Double(sa)
            b += Double(sb)
          }
        }
        s1.p[c] += a
        s2.p[c] += b
      }
    }
  }

  /// Backward of one tile of a batch-normalised map whose statistics and gradient sums are the
  /// whole map's. With x̂ = (x − mean)·invstd and dy′ = dy (gated by the fused ReLU when
  /// `reluShift` is given): dx = γ·invstd·(dy′ − [p ∈ region]·(meanDy + x̂·meanDyXhat)) — the
  /// batch-statistic terms belong to the tile whose `region` holds p, so summed over tiles each
  /// position gets them once. Σdy′ and Σdy′·x̂ over the whole tile are added to `sumDy` and
  /// `sumDyXhat` (summed over tiles they are the whole map's dβ and dγ, by linearity). `dx` nil:
  /// only the sums. `meanDy`/`meanDyXhat` nil: no batch-statistic terms (frozen statistics).
  public static func streamedBackward(
    x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?,
    batch: Int, channels: Int, height: Int, width: Int,
    mean: UnsafePointer<Float>, invstd: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    reluShift: UnsafePointer<Float>?, meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
    region: MapRegion, sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>
  ) {
    let dxx = dx.map(SendablePointer.init), s1 = SendablePointer(sumDy), s2 = SendablePointer(sumDyXhat)
    let spatial = height * width
    Parallel.forRanges(channels) { _, r in
      for c in r {
        let mu = mean[c], istd = invstd[c], rs = gamma[c] * istd
        let gate = ReLUGate(reluShift != nil, scale: rs, shift: reluShift?[c] ?? 0)
        let vm = SIMD8<Float>(repeating: mu), vi = SIMD8<Float>(repeating: istd), vk = SIMD8<Float>(repeating: rs)
        let t1 = meanDy?[c] ?? 0, t2 = meanDyXhat?[c] ?? 0
        let v1 = SIMD8<Float>(repeating: t1), v2 = SIMD8<Float>(repeating: t2)
        let hasTerms = meanDy != nil
        var sdy = 0.0, sdyx = 0.0
        /// One run of `count` elements from offset `o` of a plane; `terms`: inside the region.
        @inline(__always) func run(_ xp: UnsafePointer<Float>, _ dyp: UnsafePointer<Float>,
                                   _ dxp: UnsafeMutablePointer<Float>?, _ count: Int, _ terms: Bool) {
          var a = SIMD8<Float>(), b = SIMD8<Float>(), i = 0
          while i + 8 <= count {
            let xv = load8(xp + i)
            let d = gate(load8(dyp + i), xv)
            let xh = (xv - vm) * vi
            a += d
            b = b.addingProduct(d, xh)
            if let o = dxp { store8((terms ? d - v1 - xh * v2 : d) * vk, o + i) }
            i += 8
          }
          var sa = a.sum(), sb = b.sum()
          while i < count {
            let d = gate(dyp[i], xp[i])
            let xh = (xp[i] - mu) * istd
            sa += d
            sb += d * xh
            if let o = dxp { o[i] = (terms ? d - t1 - xh * t2 : d) * rs }
            i += 1
          }
          sdy += Double(sa)
          sdyx += Double(sb)
        }
        for n in 0..<batch {
          let base = (n * channels + c) * spatial
          let xp = x + base, dyp = dy + base, dxp = dxx.map { $0.p + base }
          for y in 0..<height {
            let o = y * width
            if hasTerms && region.rows.contains(y) {
              let c0 = region.cols.lowerBound, c1 = region.cols.upperBound
              run(xp + o, dyp + o, dxp.map { $0 + o }, c0, false)
              run(xp + o + c0, dyp + o + c0, dxp.map { $0 + o + c0 }, c1 - c0, true)
              run(xp + o + c1, dyp + o + c1, dxp.map { $0 + o + c1 }, width - c1, false)
            } else {
              run(xp + o, dyp + o, dxp.map { $0 + o }, width, false)
            }
          }
        }
        s1.p[c] += sdy
        s2.p[c] += sdyx
      }
    }
  }
}
