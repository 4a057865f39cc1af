import TestSupport
import TesseraKernels
import XCTest

final class GEMMTests: XCTestCase {
  func testMatchesReferenceOnAwkwardShapes() {
    let shapes = [(1, 1, 1), (7, 5, 3), (6, 16, 256), (13, 37, 300), (97, 33, 17), (200, 130, 513)]
    for (si, (m, n, k)) in shapes.enumerated() {
      for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = randomFloats(m * k, seed: UInt64(si * 4 + 1)), b = randomFloats(k * n, seed: UInt64(si * 4 + 2))
        let c0 = randomFloats(m * n, seed: 9)
        var fast = c0, ref = c0
        let lda = ta ? m : k, ldb = tb ? k : n
        GEMM.sgemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb,
                   beta: 0.25, c: &fast, ldc: n)
        GEMM.reference(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb,
                       beta: 0.25, c: &ref, ldc: n)
        assertClose(fast, ref, rtol: 1e-4, atol: 1e-4, "gemm \(m)x\(n)x\(k) tA=\(ta) tB=\(tb)")
      }
    }
  }

  func testBetaZeroIgnoresNaN() {
    var c = [Float](repeating: .nan, count: 4)
    GEMM.sgemm(m: 2, n: 2, k: 1, a: [1, 2], lda: 1, b: [3, 4], ldb: 2, beta: 0, c: &c, ldc: 2)
    XCTAssertEqual(c, [3, 4, 6, 8])
  }
}
