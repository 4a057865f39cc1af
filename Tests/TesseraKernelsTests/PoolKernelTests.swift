import TestSupport
import TesseraKernels
import XCTest

final class PoolKernelTests: XCTestCase {
  static let cases: [PoolGeometry] = [
    PoolGeometry(planes: 3, inHeight: 9, inWidth: 8, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2,
                 padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
    PoolGeometry(planes: 2, inHeight: 7, inWidth: 7, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2,
                 padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    PoolGeometry(planes: 1, inHeight: 5, inWidth: 6, kernelH: 2, kernelW: 3, strideH: 1, strideW: 3),
    PoolGeometry(planes: 4, inHeight: 6, inWidth: 6, kernelH: 3, kernelW: 3, strideH: 1, strideW: 1),
    // Wide rows (the SIMD part and its tail), odd widths, asymmetric padding.
    PoolGeometry(planes: 2, inHeight: 11, inWidth: 37, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2,
                 padTop: 1, padLeft: 1, padBottom: 1, padRight: 0),
    PoolGeometry(planes: 3, inHeight: 5, inWidth: 19, kernelH: 2, kernelW: 4, strideH: 3, strideW: 1,
                 padTop: 0, padLeft: 2, padBottom: 1, padRight: 3),
    // 3×3 stride 2 with no left padding (TensorFlow's `same` on even sizes): eight windows at a time.
    PoolGeometry(planes: 2, inHeight: 8, inWidth: 40, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2,
                 padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
  ]

  /// Max over each window by the definition, with padded cells never winning.
  func referenceMax(_ g: PoolGeometry, _ x: [Float]) -> [Float] {
    var y = [Float]()
    for pl in 0..<g.planes {
      for oy in 0..<g.outHeight {
        for ox in 0..<g.outWidth {
          var m = -Float.infinity
          for ky in 0..<g.kernelH {
            for kx in 0..<g.kernelW {
              let iy = oy * g.strideH - g.padTop + ky, ix = ox * g.strideW - g.padLeft + kx
              if iy >= 0, iy < g.inHeight, ix >= 0, ix < g.inWidth { m = max(m, x[(pl * g.inHeight + iy) * g.inWidth + ix]) }
            }
          }
          y.append(m)
        }
      }
    }
    return y
  }

  func testMaxForwardAndArgmaxBackward() {
    for (i, g) in Self.cases.enumerated() {
      // Negative values everywhere: a padded zero would win if padding were counted.
      checkMax(g, randomFloats(g.planes * g.inHeight * g.inWidth, seed: UInt64(i)).map { $0 - 2 })
      // Ties everywhere (a ReLU's zeros, three levels): the gradient goes to the first cell holding
      // the maximum in row-major order, as TensorFlow's and the recomputing reference's.
      checkMax(g, randomFloats(g.planes * g.inHeight * g.inWidth, seed: 90 + UInt64(i)).map { max(0, ($0 * 2).rounded()) })
    }
  }

  /// Max pooling of a per-channel monotone f(x) — ReLU(x·scale + shift) with scale > 0, < 0 and 0,
  /// as BatchNorm+ReLU — equals f of each window's max, min or first cell of x, bit for bit
  /// (streamed training's fused statistics and output pass); x is left as it was.
  func testExtremesGiveTheMaxOfAMonotoneFunction() {
    let scales: [Float] = [0.7, -1.3, 0, 2.1], shifts: [Float] = [0.1, 0.2, 0.3, -0.4]
    for (i, g) in Self.cases.enumerated() {
      let C = g.planes
      let direction = (0..<C).map { Int8(scales[$0 % 4].sign == .minus ? -1 : scales[$0 % 4] == 0 ? 0 : 1) }
      func f(_ v: Float, _ plane: Int) -> Float { max(0, shifts[plane % C % 4].addingProduct(v, scales[plane % C % 4])) }
      for x0 in [randomFloats(g.planes * g.inHeight * g.inWidth, seed: 200 + UInt64(i)).map { $0 - 0.3 },
                 randomFloats(g.planes * g.inHeight * g.inWidth, seed: 300 + UInt64(i)).map { ($0 * 3).rounded() / 3 }] {
        let plane = g.inHeight * g.inWidth, outCount = g.planes * g.outHeight * g.outWidth
        let fx = x0.indices.map { f(x0[$0], $0 / plane) }
        var want = [Float](repeating: 0, count: outCount)
        Pool2DKernels.maxForward(g, x: fx, y: &want)
        var x = x0, e = [Float](repeating: 0, count: outCount)
        x.withUnsafeMutableBufferPointer { xp in
          e.withUnsafeMutableBufferPointer { Pool2DKernels.extremeForward(g, x: xp.baseAddress!, y: $0.baseAddress!, direction: direction) }
        }
        let got = e.indices.map { f(e[$0], $0 / (g.outHeight * g.outWidth)) }
        XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(g)")
        XCTAssertEqual(x, x0, "x restored \(g)")
        // Where f is constant every cell ties: the first inside the window, as `maxForward` picks.
        for pl in 0..<g.planes where direction[pl] == 0 {
          for oy in 0..<g.outHeight {
            for ox in 0..<g.outWidth {
              let iy = max(0, oy * g.strideH - g.padTop), ix = max(0, ox * g.strideW - g.padLeft)
              XCTAssertEqual(e[(pl * g.outHeight + oy) * g.outWidth + ox], x0[pl * plane + iy * g.inWidth + ix], "first cell \(g)")
            }
          }
        }
      }
    }
  }

  func checkMax(_ g: PoolGeometry, _ x: [Float]) {
    do {
      let outCount = g.planes * g.outHeight * g.outWidth
      var y = [Float](repeating: 0, count: outCount)
      var argmax = [Int32](repeating: -1, count: outCount)
      Pool2DKernels.maxForward(g, x: x, y: &y, argmax: &argmax)
      XCTAssertEqual(y, referenceMax(g, x), "forward \(g)")
      // Inference (no arg-max): the same values.
      var yi = [Float](repeating: 0, count: outCount)
      Pool2DKernels.maxForward(g, x: x, y: &yi)
      XCTAssertEqual(yi, referenceMax(g, x), "inference forward \(g)")
      let dy = randomFloats(outCount, seed: 50)
      var fast = [Float](repeating: 9, count: x.count), slow = fast
      Pool2DKernels.maxBackward(g, argmax: argmax, dy: dy, dx: &fast)
      Pool2DKernels.maxBackwardRecomputing(g, x: x, dy: dy, dx: &slow)
      XCTAssertEqual(fast, slow, "backward \(g)")
    }
  }
}
