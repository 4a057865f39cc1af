/// Plain, obviously-correct convolution loops with Double accumulation: the reference the fast
/// kernels are tested against. Slow by design; never used in training.
public enum ConvReference {
  @inline(__always) static func inputIndex(
    _ g: ConvGeometry, oy: Int, ox: Int, ky: Int, kx: Int
  ) -> (Int, Int)? {
    let iy = oy * g.strideH - g.padTop + ky * g.dilationH
    let ix = ox * g.strideW - g.padLeft + kx * g.dilationW
    guard iy >= 0, iy < g.inHeight, ix >= 0, ix < g.inWidth else { return nil }
    return (iy, ix)
  }

  public static func forward(
    _ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, cg = g.groupInChannels, kg = g.groupOutChannels
    for n in 0..<g.batch {
      for k in 0..<g.outChannels {
        let gi = k / kg
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            var s = Double(bias?[k] ?? 0)
            for c in 0..<cg {
              let ci = gi * cg + c
              for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                  guard let (iy, ix) = inputIndex(g, oy: oy, ox: ox, ky: ky, kx: kx) else { continue }
                  let xv = x[((n * g.inChannels + ci) * g.inHeight + iy) * g.inWidth + ix]
                  let wv = w[((k * cg + c) * g.kernelH + ky) * g.kernelW + kx]
                  s += Double(xv) * Double(wv)
                }
              }
            }
            y[((n * g.outChannels + k) * Ho + oy) * Wo + ox] = Float(s)
          }
        }
      }
    }
  }

  /// Overwrites dx.
  public static func backwardData(
    _ g: ConvGeometry, dy: UnsafePointer<Float>, w: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, cg = g.groupInChannels, kg = g.groupOutChannels
    var acc = [Double](repeating: 0, count: g.inputCount)
    for n in 0..<g.batch {
      for k in 0..<g.outChannels {
        let gi = k / kg
        for oy in 0..<Ho {
          for ox in 0..<Wo {
            let d = Double(dy[((n * g.outChannels + k) * Ho + oy) * Wo + ox])
            for c in 0..<cg {
              let ci = gi * cg + c
              for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                  guard let (iy, ix) = inputIndex(g, oy: oy, ox: ox, ky: ky, kx: kx) else { continue }
                  acc[((n * g.inChannels + ci) * g.inHeight + iy) * g.inWidth + ix] +=
                    d * Double(w[((k * cg + c) * g.kernelH + ky) * g.kernelW + kx])
                }
              }
            }
          }
        }
      }
    }
    for i in 0..<acc.count { dx[i] = Float(acc[i]) }
  }

  /// Accumulates into dw and dbias.
  public static func backwardWeights(
    _ g: ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
    dw: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?
  ) {
    let Ho = g.outHeight, Wo = g.outWidth, cg = g.groupInChannels, kg = g.groupOutChannels
    for k in 0..<g.outChannels {
      let gi = k / kg
      var sb = 0.0
      for c in 0..<cg {
        let ci = gi * cg + c
        for ky in 0..<g.kernelH {
          for kx in 0..<g.kernelW {
            var s = 0.0
            for n in 0..<g.batch {
              for oy in 0..<Ho {
                for ox in 0..<Wo {
                  guard let (iy, ix) = inputIndex(g, oy: oy, ox: ox, ky: ky, kx: kx) else { continue }
                  s += Double(x[((n * g.inChannels + ci) * g.inHeight + iy) * g.inWidth + ix])
                    * Double(dy[((n * g.outChannels + k) * Ho + oy) * Wo + ox])
                }
              }
            }
            dw[((k * cg + c) * g.kernelH + ky) * g.kernelW + kx] += Float(s)
          }
        }
      }
      if let db = dbias {
        for n in 0..<g.batch { for p in 0..<(Ho * Wo) { sb += Double(dy[(n * g.outChannels + k) * Ho * Wo + p]) } }
        db[k] += Float(sb)
      }
    }
  }
}
