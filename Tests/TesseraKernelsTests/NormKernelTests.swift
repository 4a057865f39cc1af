import TestSupport
import TesseraKernels
import XCTest

/// Batch-norm and element-wise kernels against plain Double loops.
final class NormKernelTests: XCTestCase {
  func testBatchNormAgainstDoubleReference() {
    for (n, c, hw) in [(1, 3, 1), (3, 2, 13), (2, 5, 64)] {
      let x = randomFloats(n * c * hw, seed: UInt64(n * 100 + hw)).map { $0 * 3 + 1 }
      let dy = randomFloats(n * c * hw, seed: 7)
      var mean = [Float](repeating: 0, count: c), variance = mean
      BatchNormKernels.statistics(x: x, batch: n, channels: c, spatial: hw, mean: &mean, variance: &variance)
      let gamma = (0..<c).map { Float($0) * 0.5 + 0.75 }, beta = (0..<c).map { Float($0) - 1 }
      let eps: Float = 1e-3
      for relu in [false, true] {
        var rm = [Double](repeating: 0, count: c), rv = rm
        for ch in 0..<c {
          var s = 0.0
          for i in 0..<n { for p in 0..<hw { s += Double(x[(i * c + ch) * hw + p]) } }
          rm[ch] = s / Double(n * hw)
          var q = 0.0
          for i in 0..<n { for p in 0..<hw { let d = Double(x[(i * c + ch) * hw + p]) - rm[ch]; q += d * d } }
          rv[ch] = q / Double(n * hw)
          XCTAssertEqual(Double(mean[ch]), rm[ch], accuracy: 1e-5)
          XCTAssertEqual(Double(variance[ch]), rv[ch], accuracy: 1e-4 * max(1, rv[ch]))
        }
        let invstd = variance.map { 1 / ($0 + eps).squareRoot() }
        let scale = (0..<c).map { gamma[$0] * invstd[$0] }, shift = (0..<c).map { beta[$0] - mean[$0] * scale[$0] }
        var y = [Float](repeating: 0, count: x.count)
        BatchNormKernels.affine(x: x, y: &y, batch: n, channels: c, spatial: hw, scale: scale, shift: shift, relu: relu)
        var dx = [Float](repeating: 0, count: x.count), dg = [Float](repeating: 0, count: c), db = dg
        BatchNormKernels.backward(x: x, dy: dy, dx: &dx, batch: n, channels: c, spatial: hw, mean: mean, invstd: invstd,
                                  gamma: gamma, dgamma: &dg, dbeta: &db, reluShift: relu ? shift : nil)
        // Reference: y = relu?(γ·x̂ + β); dβ = Σ g, dγ = Σ g·x̂, dx = γ/σ·(g − dβ/M − x̂·dγ/M), g = gated dy.
        let M = Double(n * hw)
        for ch in 0..<c {
          let sd = (rv[ch] + Double(eps)).squareRoot()
          var sg = 0.0, sgx = 0.0
          var gated = [Double](), xhat = [Double]()
          for i in 0..<n {
            for p in 0..<hw {
              let idx = (i * c + ch) * hw + p
              let xh = (Double(x[idx]) - rm[ch]) / sd
              var out = Double(gamma[ch]) * xh + Double(beta[ch])
              let on = !relu || out > 0
              if !on { out = 0 }
              XCTAssertEqual(Double(y[idx]), out, accuracy: 1e-4)
              let g = on ? Double(dy[idx]) : 0
              gated.append(g); xhat.append(xh)
              sg += g; sgx += g * xh
            }
          }
          XCTAssertEqual(Double(db[ch]), sg, accuracy: 1e-4)
          XCTAssertEqual(Double(dg[ch]), sgx, accuracy: 1e-4)
          var j = 0
          for i in 0..<n {
            for p in 0..<hw {
              let ref = Double(gamma[ch]) / sd * (gated[j] - sg / M - xhat[j] * sgx / M)
              XCTAssertEqual(Double(dx[(i * c + ch) * hw + p]), ref, accuracy: 1e-4)
              j += 1
            }
          }
        }
      }
    }
  }

  func testElementwiseAgainstScalar() {
    let x = randomFloats(1000, seed: 3), b = randomFloats(1000, seed: 4)
    var y = [Float](repeating: 0, count: 1000)
    ElementwiseKernels.leakyRelu(x, &y, count: 1000, slope: 0.1)
    XCTAssertEqual(y, x.map { $0 < 0 ? 0.1 * $0 : $0 })
    var dx = y
    ElementwiseKernels.leakyReluBackward(y: y, dy: b, dx: &dx, count: 1000, slope: 0.1)
    XCTAssertEqual(dx, (0..<1000).map { y[$0] > 0 ? b[$0] : 0.1 * b[$0] })
    ElementwiseKernels.add(x, b, &y, count: 1000)
    XCTAssertEqual(y, zip(x, b).map { $0 + $1 })
    var acc = x
    ElementwiseKernels.axpy(2, b, &acc, count: 1000)
    for i in 0..<1000 { XCTAssertEqual(acc[i], x[i] + 2 * b[i], accuracy: 1e-6) }
    // Large enough to take the parallel path.
    let big = randomFloats(300_000, seed: 5)
    var out = [Float](repeating: 0, count: big.count)
    ElementwiseKernels.leakyRelu(big, &out, count: big.count)
    XCTAssertEqual(out, big.map { max($0, 0) })
  }
}
