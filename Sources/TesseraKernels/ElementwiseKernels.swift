import Foundation

/// Element-by-element kernels on contiguous Float32 buffers (SIMD, parallel for large counts).
public enum ElementwiseKernels {
  static let grain = 1 << 16

  @inline(__always) static func chunks(_ n: Int, _ body: (Range<Int>) -> Void) {
    if n < grain * 2 { body(0..<n); return }
    Parallel.forRanges((n + grain - 1) / grain) { _, r in body(r.lowerBound * grain..<min(n, r.upperBound * grain)) }
  }

  /// y = x < 0 ? slope·x : x (slope 0: ReLU). x and y may be the same buffer.
  public static func leakyRelu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, slope: Float = 0) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      let s = SIMD8<Float>(repeating: slope), z = SIMD8<Float>()
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let v = load8(x + i)
        // (pointwiseMax/Min are not lowered to vmaxps/vminps; a lane select is.)
        store8(v.replacing(with: v * s, where: v .< z), yy.p + i)
        i += 8
      }
      while i < r.upperBound { yy.p[i] = x[i] < 0 ? slope * x[i] : x[i]; i += 1 }
    }
  }

  /// dx = y > 0 ? dy : slope·dy, from the activation's output y (valid for slope ≥ 0).
  public static func leakyReluBackward(
    y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int, slope: Float = 0
  ) {
    let dd = SendablePointer(dx)
    chunks(count) { r in
      let z = SIMD8<Float>(), s = SIMD8<Float>(repeating: slope), one = SIMD8<Float>(repeating: 1)
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let f = one.replacing(with: s, where: load8(y + i) .<= z)
        store8(load8(dy + i) * f, dd.p + i)
        i += 8
      }
      while i < r.upperBound { dd.p[i] = y[i] > 0 ? dy[i] : slope * dy[i]; i += 1 }
    }
  }

  /// y = a + b.
  public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      var i = r.lowerBound
      while i + 8 <= r.upperBound { store8(load8(a + i) + load8(b + i), yy.p + i); i += 8 }
      while i < r.upperBound { yy.p[i] = a[i] + b[i]; i += 1 }
    }
  }

  /// y += alpha · x.
  public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      let a = SIMD8<Float>(repeating: alpha)
      var i = r.lowerBound
      while i + 8 <= r.upperBound { store8(load8(yy.p + i).addingProduct(a, load8(x + i)), yy.p + i); i += 8 }
      while i < r.upperBound { yy.p[i] += alpha * x[i]; i += 1 }
    }
  }

  /// y = alpha · x.
  public static func scaled(_ x: UnsafePointer<Float>, by alpha: Float, into y: UnsafeMutablePointer<Float>, count: Int) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      let a = SIMD8<Float>(repeating: alpha)
      var i = r.lowerBound
      while i + 8 <= r.upperBound { store8(load8(x + i) * a, yy.p + i); i += 8 }
      while i < r.upperBound { yy.p[i] = alpha * x[i]; i += 1 }
    }
  }

  /// x *= alpha.
  public static func scale(_ x: UnsafeMutablePointer<Float>, by alpha: Float, count: Int) {
    let xx = SendablePointer(x)
    chunks(count) { r in
      let a = SIMD8<Float>(repeating: alpha)
      var i = r.lowerBound
      while i + 8 <= r.upperBound { store8(load8(xx.p + i) * a, xx.p + i); i += 8 }
      while i < r.upperBound { xx.p[i] *= alpha; i += 1 }
    }
  }

  /// y = min(max(x, lo), hi) (ReLU6: lo 0, hi 6).
  public static func clamp(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, lo: Float, hi: Float) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      let l = SIMD8<Float>(repeating: lo), h = SIMD8<Float>(repeating: hi)
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let v = load8(x + i)
        store8(v.replacing(with: l, where: v .< l).replacing(with: h, where: v .> h), yy.p + i)
        i += 8
      }
      while i < r.upperBound { yy.p[i] = Swift.min(Swift.max(x[i], lo), hi); i += 1 }
    }
  }

  /// dx = lo < y < hi ? dy : 0, from the clamp's output y.
  /// y = 1 / (1 + e^(−x)), written so that neither side overflows. x and y may be the same buffer.
  public static func sigmoid(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    let yy = SendablePointer(y)
    chunks(count) { r in
      for i in r {
        let v = x[i]
        if v >= 0 {
          yy.p[i] = 1 / (1 + expf(-v))
        } else {
          let e = expf(v)
          yy.p[i] = e / (1 + e)
        }
      }
    }
  }

  /// dx = dy · y (1 − y), from the output y.
  public static func sigmoidBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
    let dd = SendablePointer(dx)
    chunks(count) { r in
      let one = SIMD8<Float>(repeating: 1)
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let v = load8(y + i)
        store8(load8(dy + i) * v * (one - v), dd.p + i)
        i += 8
      }
      while i < r.upperBound { dd.p[i] = dy[i] * y[i] * (1 - y[i]); i += 1 }
    }
  }

  public static func clampBackward(
    y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int, lo: Float, hi: Float
  ) {
    let dd = SendablePointer(dx)
    chunks(count) { r in
      let l = SIMD8<Float>(repeating: lo), h = SIMD8<Float>(repeating: hi), z = SIMD8<Float>()
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let v = load8(y + i)
        store8(load8(dy + i).replacing(with: z, where: (v .<= l) .| (v .>= h)), dd.p + i)
        i += 8
      }
      while i < r.upperBound { dd.p[i] = y[i] > lo && y[i] < hi ? dy[i] : 0; i += 1 }
    }
  }
}
