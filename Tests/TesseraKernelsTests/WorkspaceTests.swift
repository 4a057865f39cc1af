@testable import TesseraKernels
import TestSupport
import XCTest

/// The workspace sizes the planner uses equal what the kernels really allocate (ledger peak).
final class WorkspaceTests: XCTestCase {
  func peak(_ body: () -> Void) -> Int {
    let base = MemoryLedger.shared.currentBytes
    return MemoryLedger.shared.measure(body).peakBytes - base
  }

  func testConvWorkspacesMatchLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2, 3] {
      Parallel.threadCount = threads
      for g in ConvKernelTests.cases {
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        let dy = randomFloats(g.outputCount, seed: 3)
        var y = [Float](repeating: 0, count: g.outputCount), dx = [Float](repeating: 0, count: g.inputCount)
        var dw = [Float](repeating: 0, count: g.weightCount)
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y) },
                       Conv2DKernels.forwardWorkspaceBytes(g, threads: threads), "forward \(g)")
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y, winograd: true) },
                       Conv2DKernels.forwardWorkspaceBytes(g, threads: threads, winograd: true), "inference forward \(g)")
        XCTAssertEqual(peak { Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: nil) },
                       Conv2DKernels.backwardWeightsWorkspaceBytes(g, threads: threads), "backward-weights \(g)")
        XCTAssertEqual(peak { Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dx) },
                       Conv2DKernels.backwardDataWorkspaceBytes(g, threads: threads), "backward-data \(g)")
      }
    }
  }

  /// Winograd's U, V and M (several tile blocks, fewer blocks than threads) to the byte.
  func testWinogradWorkspaceMatchesLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2, 3, 5] {
      Parallel.threadCount = threads
      for g in [ConvGeometry(batch: 1, inChannels: 16, inHeight: 9, inWidth: 9, outChannels: 20, kernelH: 3, kernelW: 3),
                ConvGeometry(batch: 2, inChannels: 24, inHeight: 30, inWidth: 37, outChannels: 40, kernelH: 3, kernelW: 3,
                             padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)] {
        XCTAssertTrue(Winograd.applies(g))
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        var y = [Float](repeating: 0, count: g.outputCount)
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y, winograd: true) },
                       Winograd.workspaceBytes(g, threads: threads), "\(g) threads \(threads)")
      }
    }
  }

  func testConvolutionWithMaxPoolingWorkspaceMatchesLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2, 3] {
      Parallel.threadCount = threads
      for batch in [1, 2, 3] {
        let g = ConvGeometry(batch: batch, inChannels: 3, inHeight: 70, inWidth: 33, outChannels: 16, kernelH: 7,
                             kernelW: 7, strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3)
        let pg = PoolGeometry(planes: batch * 16, inHeight: g.outHeight, inWidth: g.outWidth, kernelH: 3, kernelW: 3,
                              strideH: 2, strideW: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1)
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        var y = [Float](repeating: 0, count: pg.planes * pg.outHeight * pg.outWidth)
        XCTAssertEqual(peak { Conv2DKernels.forwardMaxPooled(g, x: x, w: w, bias: nil, scale: nil, relu: true, pool: pg, y: &y) },
                       Conv2DKernels.forwardMaxPooledWorkspaceBytes(g, pool: pg, threads: threads), "batch \(batch) threads \(threads)")
      }
    }
  }

  func testGEMMWorkspaceMatchesLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2] {
      Parallel.threadCount = threads
      for (m, n, k) in [(4, 10, 512), (2, 1000, 512), (300, 700, 50), (1, 1, 1)] {
        let a = randomFloats(m * k, seed: 1), b = randomFloats(k * n, seed: 2)
        var c = [Float](repeating: 0, count: m * n)
        XCTAssertEqual(peak { GEMM.sgemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n) },
                       GEMM.workspaceBytes(m: m, n: n, k: k, threads: threads), "\(m)x\(n)x\(k) threads \(threads)")
      }
    }
  }
}
