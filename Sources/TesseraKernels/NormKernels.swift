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

  /// y = x · scale[c] + shift[c], optionally followed by ReLU.
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
            let v = b.addingProduct(load8(xp + i), a)
            store8(v.replacing(with: z, where: v .< z), yp + i)
            i += 8
          }
          while i < spatial { yp[i] = max(xp[i] * scale[c] + shift[c], 0); i += 1 }
        } else {
          while i + 8 <= spatial { store8(b.addingProduct(load8(xp + i), a), yp + i); i += 8 }
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
        let masked = reluShift != nil
        let rs = gamma[c] * istd, rb = reluShift?[c] ?? 0
        let vrs = SIMD8<Float>(repeating: rs), vrb = SIMD8<Float>(repeating: rb), zero = SIMD8<Float>()
        @inline(__always) func gate(_ d: SIMD8<Float>, _ xv: SIMD8<Float>) -> SIMD8<Float> {
          masked ? d.replacing(with: zero, where: vrb.addingProduct(xv, vrs) .<= zero) : d
        }
        @inline(__always) func gate(_ d: Float, _ xv: Float) -> Float { masked && xv * rs + rb <= 0 ? 0 : d }
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
