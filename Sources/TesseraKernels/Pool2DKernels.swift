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
  /// y = max over each window. With `argmax`, also records where each max was (the index of the
  /// first cell holding it within its input plane) so backward is a scatter.
  public static func maxForward(
    _ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    argmax: UnsafeMutablePointer<Int32>? = nil
  ) {
    guard let argmax else { return maxForwardRows(g, x: x, y: y) }
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let yy = SendablePointer(y), am = SendablePointer(argmax)
    let k3 = g.kernelH == 3 && g.kernelW == 3
    Parallel.forRanges(g.planes) { _, r in
     // Stride 2: the window rows' even and odd columns apart, so 8 neighbouring windows' cells are
     // 8 consecutive floats (3 rows × 2 halves of Wo + 1).
     withUnsafeTemporaryAllocation(of: Float.self, capacity: 6 * (Wo + 1)) { split in
      for pl in r {
        let xp = x + pl * H * W, yp = yy.p + pl * Ho * Wo
        let ap = am.p + pl * Ho * Wo
        for oy in 0..<Ho {
          let (y0, y1, _, _) = g.window(oy, 0)
          // Columns whose 3×3 window lies inside the input.
          let oxLo = k3 && y1 - y0 == 3 ? min(Wo, (g.padLeft + g.strideW - 1) / g.strideW) : Wo
          let oxHi = k3 && y1 - y0 == 3 ? max(oxLo, min(Wo, (W - 3 + g.padLeft) / g.strideW + 1)) : Wo
          var vectorEnd = oxLo
          if g.strideW == 2 && oxHi - oxLo >= 8 {
            vectorEnd = oxLo + (oxHi - oxLo) / 8 * 8
            argmaxStride2(xp, W: W, y0: y0, padLeft: g.padLeft, columns: oxLo..<vectorEnd, split: split.baseAddress!,
                          Wo: Wo, y: yp + oy * Wo, argmax: ap + oy * Wo)
          }
          for ox in 0..<Wo {
            if ox < vectorEnd && ox >= oxLo { continue }
            if ox == vectorEnd && vectorEnd < oxHi {
              // Interior 3×3 windows: fixed offsets, selects instead of unpredictable branches.
              for ox2 in vectorEnd..<oxHi {
                let base = y0 * W + ox2 * g.strideW - g.padLeft
                let r0 = xp + base, r1 = r0 + W, r2 = r1 + W
                var m = r0[0], at = base
                @inline(__always) func visit(_ v: Float, _ i: Int) {
                  let c = v > m
                  at = c ? base + i : at
                  m = c ? v : m
                }
                visit(r0[1], 1); visit(r0[2], 2)
                visit(r1[0], W); visit(r1[1], W + 1); visit(r1[2], W + 2)
                visit(r2[0], 2 * W); visit(r2[1], 2 * W + 1); visit(r2[2], 2 * W + 2)
                yp[oy * Wo + ox2] = m
                ap[oy * Wo + ox2] = Int32(truncatingIfNeeded: at)
              }
            }
            if ox >= oxLo && ox < oxHi { continue }
            let (_, _, x0, x1) = g.window(oy, ox)
            var m = -Float.infinity, at = y0 * W + x0
            for iy in y0..<y1 {
              for ix in x0..<x1 where xp[iy * W + ix] > m {
                m = xp[iy * W + ix]
                at = iy * W + ix
              }
            }
            yp[oy * Wo + ox] = m
            ap[oy * Wo + ox] = Int32(truncatingIfNeeded: at)
          }
        }
      }
     }
    }
  }

  /// Interior 3×3 stride-2 windows `columns` (a multiple of 8 of them) of the output row whose
  /// window starts at input row y0: each input row's even and odd columns copied apart, then eight
  /// windows at a time, their nine cells in row-major order, a cell winning only when strictly
  /// greater — the scalar path's maxima and arg-maxes, ties and NaNs included.
  @inline(__always)
  static func argmaxStride2(_ xp: UnsafePointer<Float>, W: Int, y0: Int, padLeft: Int, columns: Range<Int>,
                            split: UnsafeMutablePointer<Float>, Wo: Int, y: UnsafeMutablePointer<Float>,
                            argmax: UnsafeMutablePointer<Int32>) {
    let lo = columns.lowerBound, hi = columns.upperBound, n = Wo + 1
    assert(columns.count % 8 == 0, "argmaxStride2 takes whole eights of windows")
    // Row k's window cells of output column j: even[j] (kx 0), odd[j] (kx 1), even[j + 1] (kx 2),
    // where even[j] = x[2j − padLeft] and odd[j] = x[2j − padLeft + 1].
    for k in 0..<3 {
      let row = xp + (y0 + k) * W - padLeft, even = split + 2 * k * n, odd = even + n
      // Sixteen pixels at a time into their eight even and eight odd ones (`columns` is whole eights).
      for j in stride(from: lo, to: hi, by: 8) {
        let v = UnsafeRawPointer(row + 2 * j).loadUnaligned(as: SIMD16<Float>.self)
        store8(v.evenHalf, even + j)
        store8(v.oddHalf, odd + j)
      }
      even[hi] = row[2 * hi]
    }
    let lanes = SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14)
    var ox = lo
    while ox < hi {
      let base = Int32(truncatingIfNeeded: y0 * W - padLeft + 2 * ox)
      var m = load8(split + ox), at = lanes &+ base
      @inline(__always) func visit(_ v: SIMD8<Float>, _ offset: Int) {
        let c = v .> m
        m.replace(with: v, where: c)
        at.replace(with: lanes &+ (base &+ Int32(truncatingIfNeeded: offset)), where: c)
      }
      for k in 0..<3 {
        let even = split + 2 * k * n, odd = even + n, rowOffset = k * W
        if k > 0 { visit(load8(even + ox), rowOffset) }
        visit(load8(odd + ox), rowOffset + 1)
        visit(load8(even + ox + 1), rowOffset + 2)
      }
      store8(m, y + ox)
      UnsafeMutableRawPointer(argmax + ox).storeBytes(of: at, as: SIMD8<Int32>.self)
      ox += 8
    }
  }

  /// Max pooling with no arg-maxes to record (inference): for each output row, the element-wise max
  /// of the window's input rows, 8 lanes at a time, then the max along each window of that one row.
  /// The same values as the recording path (a cell wins only when strictly greater).
  static func maxForwardRows(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    let Ho = g.outHeight, Wo = g.outWidth, H = g.inHeight, W = g.inWidth
    let yy = SendablePointer(y)
    Parallel.forRanges(g.planes * Ho) { _, r in
      withUnsafeTemporaryAllocation(of: Float.self, capacity: W) { buf in
        for row in r {
          maxPoolRow(g, oy: row % Ho, plane: x + row / Ho * H * W, scratch: buf.baseAddress!, y: yy.p + row * Wo)
        }
      }
    }
  }

  /// Output row oy of one plane, whose input row iy is at plane + iy·W (only the window's rows are
  /// read, so `plane` may point before a band of rows held elsewhere). `scratch` holds W floats.
  @inline(__always)
  static func maxPoolRow(_ g: PoolGeometry, oy: Int, plane xp: UnsafePointer<Float>, scratch m: UnsafeMutablePointer<Float>,
                         y yp: UnsafeMutablePointer<Float>) {
    let Wo = g.outWidth, W = g.inWidth
    let (y0, y1, _, _) = g.window(oy, 0)
    guard y1 > y0 else {
      yp.update(repeating: -.infinity, count: Wo)
      return
    }
    m.update(from: xp + y0 * W, count: W)
    for iy in (y0 + 1)..<max(y0 + 1, y1) {
      let src = xp + iy * W
      var i = 0
      while i + 8 <= W {
        let a = load8(m + i), b = load8(src + i)
        store8(a.replacing(with: b, where: b .> a), m + i)
        i += 8
      }
      while i < W {
        if src[i] > m[i] { m[i] = src[i] }
        i += 1
      }
    }
    @inline(__always) func scalar(_ ox: Int) {
      let (_, _, x0, x1) = g.window(oy, ox)
      var v = -Float.infinity
      if x1 > x0 {
        v = m[x0]
        for ix in (x0 + 1)..<max(x0 + 1, x1) where m[ix] > v { v = m[ix] }
      }
      yp[ox] = v
    }
    var ox = 0
    if g.strideW == 2 && g.kernelW == 3 {
      // Interior windows eight at a time: cells 2·ox − left + 0, 1, 2 are the even and odd lanes of
      // 16 values and the even lanes of the 16 two further on, compared in the scalar scan's order.
      let left = g.padLeft, firstInterior = min(Wo, (left + 1) / 2)
      while ox < firstInterior { scalar(ox); ox += 1 }
      while ox + 8 <= Wo && 2 * ox - left + 18 <= W {
        let b = UnsafeRawPointer(m + 2 * ox - left)
        let a = b.loadUnaligned(as: SIMD16<Float>.self), c = b.loadUnaligned(fromByteOffset: 8, as: SIMD16<Float>.self)
        var v = a.evenHalf
        let v1 = a.oddHalf, v2 = c.evenHalf
        v = v.replacing(with: v1, where: v1 .> v)
        v = v.replacing(with: v2, where: v2 .> v)
        store8(v, yp + ox)
        ox += 8
      }
    }
    while ox < Wo { scalar(ox); ox += 1 }
  }

  /// Where the max of f(x) over each window lies when f is monotone per channel, found on x itself:
  /// for a channel with `direction` > 0 (f non-decreasing) each window's max, < 0 (non-increasing)
  /// its min, 0 (f constant: every cell ties and, as in `maxForward`, the first wins) its first
  /// cell. Then max-pooling f(x) gives f(y) exactly — f(max x) = max f(x) for rounded arithmetic
  /// too, as rounding is monotone — without f(x) ever being made (streamed training's fused
  /// statistics and output pass). The min planes of x are negated in place and restored (−(−v) = v).
  public static func extremeForward(_ g: PoolGeometry, x: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>,
                                    direction: [Int8]) {
    let C = direction.count, inPlane = g.inHeight * g.inWidth, outPlane = g.outHeight * g.outWidth
    precondition(C > 0 && g.planes % C == 0, "one direction per channel")
    let mins = (0..<g.planes).filter { direction[$0 % C] < 0 }, firsts = (0..<g.planes).filter { direction[$0 % C] == 0 }
    let xx = SendablePointer(x), yy = SendablePointer(y)
    func negate(_ planes: [Int], _ p: SendablePointer<Float>, _ size: Int) {
      Parallel.forRanges(planes.count) { _, r in
        for i in r {
          let q = p.p + planes[i] * size
          for j in 0..<size { q[j] = -q[j] }
        }
      }
    }
    negate(mins, xx, inPlane)
    maxForwardRows(g, x: x, y: y)
    negate(mins, xx, inPlane)
    negate(mins, yy, outPlane)
    for p in firsts {
      for oy in 0..<g.outHeight {
        for ox in 0..<g.outWidth {
          let (y0, y1, x0, x1) = g.window(oy, ox)
          y[p * outPlane + oy * g.outWidth + ox] = y1 > y0 && x1 > x0 ? x[p * inPlane + y0 * g.inWidth + x0] : -.infinity
        }
      }
    }
  }

  /// Backward from recorded arg-maxes: dx = 0, then dx[argmax] += dy. Overwrites dx.
  public static func maxBackward(
    _ g: PoolGeometry, argmax: UnsafePointer<Int32>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>
  ) {
    let HW = g.inHeight * g.inWidth, out = g.outHeight * g.outWidth
    let dd = SendablePointer(dx)
    Parallel.forRanges(g.planes) { _, r in
      for pl in r {
        let dxp = dd.p + pl * HW, dyp = dy + pl * out, ap = argmax + pl * out
        dxp.update(repeating: 0, count: HW)
        for i in 0..<out { dxp[Int(ap[i])] += dyp[i] }
      }
    }
  }

  /// Reference backward that finds each window's max again: dx = 0, then each dy goes to the first
  /// cell holding its window's max. Overwrites dx.
  public static func maxBackwardRecomputing(
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
