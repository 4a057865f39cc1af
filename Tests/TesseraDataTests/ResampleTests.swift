import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TestSupport
import XCTest

/// Resizes against a float64 reference written independently: each output pixel evaluated directly
/// in 2-D from the filter's definition (no separable passes, no precomputed tables).
final class ResampleTests: XCTestCase {
  func filter(_ f: ResampleFilter, _ x: Double) -> Double {
    switch f {
    case .area: return 0  // not used (area is exact overlap, below)
    case .bilinear: return max(0, 1 - abs(x))
    case .lanczos3:
      if x == 0 { return 1 }
      if abs(x) >= 3 { return 0 }
      return sin(.pi * x) / (.pi * x) * sin(.pi * x / 3) / (.pi * x / 3)
    }
  }

  /// 1-D weights of output i over inputs 0..<n, unnormalised.
  func weights1D(_ f: ResampleFilter, _ i: Int, _ n: Int, _ m: Int) -> [Double] {
    let s = Double(n) / Double(m)
    if f == .area {
      if s < 1 { return (0..<n).map { $0 == min(n - 1, Int((Double(i) + 0.5) * s)) ? 1 : 0 } }
      let a = Double(i) * s, b = Double(i + 1) * s
      return (0..<n).map { j in max(0, min(Double(j + 1), b) - max(Double(j), a)) }
    }
    let fs = max(s, 1), c = (Double(i) + 0.5) * s
    return (0..<n).map { j in filter(f, (Double(j) + 0.5 - c) / fs) }
  }

  func reference(_ img: [Double], c: Int, h: Int, w: Int, oh: Int, ow: Int, _ f: ResampleFilter) -> [Double] {
    var out = [Double](repeating: 0, count: c * oh * ow)
    for oy in 0..<oh {
      let wy = weights1D(f, oy, h, oh)
      for ox in 0..<ow {
        let wx = weights1D(f, ox, w, ow)
        for ch in 0..<c {
          var s = 0.0, norm = 0.0
          for y in 0..<h where wy[y] != 0 {
            for x in 0..<w where wx[x] != 0 {
              s += wy[y] * wx[x] * img[(ch * h + y) * w + x]
              norm += wy[y] * wx[x]
            }
          }
          out[(ch * oh + oy) * ow + ox] = s / norm
        }
      }
    }
    return out
  }

  func testResizesAgainstFloat64Reference() {
    let (c, h, w) = (2, 37, 53)
    var g = SeededGenerator(seed: 9)
    var img = [Double]()
    for i in 0..<(c * h * w) {
      let x = Double(i % w), y = Double((i / w) % h)
      let wave: Double = 0.3 * sin(x / 3) * cos(y / 5)
      let noise: Double = 0.1 * Double(g.nextUniform())
      img.append(0.5 + wave + noise)
    }
    let t = Tensor(shape: [c, h, w], values: img.map { Float($0) })
    for f in ResampleFilter.allCases {
      for (oh, ow) in [(11, 17), (20, 31), (37, 19), (60, 90)] {
        let got = Resample.resize(t, height: oh, width: ow, filter: f).toArray()
        let ref = reference(img, c: c, h: h, w: w, oh: oh, ow: ow, f)
        var total = 0.0
        for k in 0..<ref.count { total += abs(Double(got[k]) - ref[k]) }
        let mad = total / Double(ref.count)
        XCTAssertLessThan(mad * 255, 1, "\(f) \(h)×\(w) → \(oh)×\(ow): mean |diff| \(mad * 255) grey levels")
        XCTAssertLessThan(mad * 255, 0.01, "\(f) \(h)×\(w) → \(oh)×\(ow): far from the reference")
      }
    }
  }

  func testAreaShrinkByTwoIsTheMeanOfEachSquare() {
    let t = Tensor(shape: [1, 2, 4], values: [1, 3, 5, 7, 2, 4, 6, 8])
    XCTAssertEqual(Resample.resize(t, height: 1, width: 2, filter: .area).toArray(), [2.5, 6.5])
  }
}
