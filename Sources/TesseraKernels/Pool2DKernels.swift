/// Shapes of a 2-D pooling window over NCHW planes.
public struct PoolGeometry: Sendable, Equatable {
  public var planes: Int  // batch × channels
  public var inHeight: Int, inWidth: Int
  public var kernelH: Int, kernelW: Int
  public var strideH: Int, strideW: Int
  public var padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0

  public init(planes: Int, inHeight: Int, inWidth: Int, kernelH: Int, kernelW: Int, strideH: Int, strideW: Int,
              padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0) {
    self.planes = planes
    self.inHeight = inHeight
    self.inWidth = inWidth
    self.kernelH = kernelH
    self.kernelW = kernelW
    self.strideH = strideH
    self.strideW = strideW
    self.padTop = padTop
    self.padLeft = padLeft
    self.padBottom = padBottom
    self.padRight = padRight
  }

  public var outHeight: Int { (inHeight + padTop + padBottom - kernelH) / strideH + 1 }
  public var outWidth: Int { (inWidth + padLeft + padRight - kernelW) / strideW + 1 }

  /// The window of output (oy, ox), clipped to the input: rows y0..<y1, columns x0..<x1.
  @inline(__always) func window(_ oy: Int, _ ox: Int) -> (Int, Int, Int, Int) {
    let ys = oy * strideH - padTop, xs = ox * strideW - padLeft
    return (max(ys, 0), min(ys + kernelH, inHeight), max(xs, 0), min(xs + kernelW, inWidth))
  }
}

/// Max and average pooling, forward and backward, parallel over planes. Padded cells never win a
/// max (they act as −∞); average pooling divides by the cells inside the input unless
/// `countIncludePad` (TensorFlow's `same` excludes them, PyTorch's default includes them).
/// Memory-bound loops: a window's cells are read once per output.
public enum Pool2DKernels {
  public static func maxForward(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let yy = SendablePointer(y)
    Parallel.forRanges(g.planes) { _, r in
      for pl in r {
        let xp = x + pl * H * W, yp = yy.p + pl * Ho * Wo
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            let (y0, y1, x0, x1) = g.window(oy, ox)
            var m = -Float.infinity
            for iy in y0..<y1 { for ix in x0..<x1 { m = max(m, xp[iy * W + ix]) } }
            yp[oy * Wo + ox] = m
          }
        }
      }
    }
  }

  /// dx = 0, then each dy goes to the first cell holding its window's max. Overwrites dx.
  public static func maxBackward(
    _ g: PoolGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let dd = SendablePointer(dx)
    Parallel.forRanges(g.planes) { _, r in
      for pl in r {
        let xp = x + pl * H * W, dyp = dy + pl * Ho * Wo, dxp = dd.p + pl * H * W
        dxp.update(repeating: 0, count: H * W)
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            let (y0, y1, x0, x1) = g.window(oy, ox)
            var m = -Float.infinity, at = y0 * W + x0
            for iy in y0..<y1 {
              for ix in x0..<x1 where xp[iy * W + ix] > m {
                m = xp[iy * W + ix]
                at = iy * W + ix
              }
            }
            dxp[at] += dyp[oy * Wo + ox]
          }
        }
      }
    }
  }

  @inline(__always) static func divisor(_ g: PoolGeometry, _ w: (Int, Int, Int, Int), _ includePad: Bool) -> Float {
    includePad ? Float(g.kernelH * g.kernelW) : Float((w.1 - w.0) * (w.3 - w.2))
  }

  public static func avgForward(
    _ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, countIncludePad: Bool
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let yy = SendablePointer(y)
    Parallel.forRanges(g.planes) { _, r in
      for pl in r {
        let xp = x + pl * H * W, yp = yy.p + pl * Ho * Wo
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            let w = g.window(oy, ox)
            var s: Float = 0
            for iy in w.0..<w.1 { for ix in w.2..<w.3 { s += xp[iy * W + ix] } }
            yp[oy * Wo + ox] = s / divisor(g, w, countIncludePad)
          }
        }
      }
    }
  }

  /// Overwrites dx.
  public static func avgBackward(
    _ g: PoolGeometry, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, countIncludePad: Bool
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let dd = SendablePointer(dx)
    Parallel.forRanges(g.planes) { _, r in
      for pl in r {
        let dyp = dy + pl * Ho * Wo, dxp = dd.p + pl * H * W
        dxp.update(repeating: 0, count: H * W)
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            let w = g.window(oy, ox)
            let v = dyp[oy * Wo + ox] / divisor(g, w, countIncludePad)
            for iy in w.0..<w.1 { for ix in w.2..<w.3 { dxp[iy * W + ix] += v } }
          }
        }
      }
    }
  }
}
