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

  /// Winograd's U, V and M (several tile blocks, fewer blocks than threads; the whole batch's
  /// tiles at once) to the byte.
  func testWinogradWorkspaceMatchesLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    let batched = ConvGeometry(batch: 3, inChannels: 131, inHeight: 9, inWidth: 10, outChannels: 130, kernelH: 3,
                               kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)
    XCTAssertTrue(Winograd.batched(batched))
    for threads in [1, 2, 3, 5] {
      Parallel.threadCount = threads
      for g in [ConvGeometry(batch: 1, inChannels: 16, inHeight: 9, inWidth: 9, outChannels: 20, kernelH: 3, kernelW: 3),
                ConvGeometry(batch: 2, inChannels: 24, inHeight: 30, inWidth: 37, outChannels: 40, kernelH: 3, kernelW: 3,
                             padTop: 1, padLeft: 1, padBottom: 1, padRight: 1), batched] {
        XCTAssertTrue(Winograd.applies(g))
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        var y = [Float](repeating: 0, count: g.outputCount)
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y, winograd: true) },
                       Winograd.workspaceBytes(g, threads: threads), "\(g) threads \(threads)")
      }
    }
  }

  /// The stride-2 Winograd's U, and V and M per worker (fewer tile blocks than threads, several).
  func testStridedWinogradWorkspaceMatchesLedger() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2, 3, 5] {
      Parallel.threadCount = threads
      for g in [ConvGeometry(batch: 1, inChannels: 3, inHeight: 9, inWidth: 11, outChannels: 16, kernelH: 7, kernelW: 7,
                             strideH: 2, strideW: 2, padTop: 3, padLeft: 3, padBottom: 3, padRight: 3),
                ConvGeometry(batch: 2, inChannels: 5, inHeight: 40, inWidth: 37, outChannels: 33, kernelH: 7, kernelW: 8,
                             strideH: 2, strideW: 2, padTop: 3, padLeft: 3, padBottom: 4, padRight: 2)] {
        XCTAssertTrue(StridedWinograd.applies(g))
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        var y = [Float](repeating: 0, count: g.outputCount)
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y, winograd: true) },
                       StridedWinograd.workspaceBytes(g, threads: threads), "\(g) threads \(threads)")
        XCTAssertEqual(StridedWinograd.workspaceBytes(g, threads: threads),
                       Conv2DKernels.forwardWorkspaceBytes(g, threads: threads, winograd: true))
      }
    }
  }

  /// Winograd's weight gradient: dU (whole, in two groups) and one chunk's V and dM (one chunk,
  /// several), to the byte.
  func testWinogradWeightGradientWorkspaceMatchesLedger() {
    let saved = (Parallel.threadCount, Winograd.inTraining)
    defer { (Parallel.threadCount, Winograd.inTraining) = saved }
    Winograd.inTraining = true
    for threads in [1, 2, 3] {
      Parallel.threadCount = threads
      for g in [ConvGeometry(batch: 12, inChannels: 32, inHeight: 9, inWidth: 9, outChannels: 40, kernelH: 3, kernelW: 3),
                ConvGeometry(batch: 5, inChannels: 96, inHeight: 30, inWidth: 37, outChannels: 64, kernelH: 3, kernelW: 3,
                             padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
                ConvGeometry(batch: 6, inChannels: 128, inHeight: 9, inWidth: 10, outChannels: 130, kernelH: 3,
                             kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)] {
        XCTAssertTrue(Winograd.appliesToWeights(g))
        let x = randomFloats(g.inputCount, seed: 1), dy = randomFloats(g.outputCount, seed: 2)
        var dw = [Float](repeating: 0, count: g.weightCount)
        XCTAssertEqual(peak { Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: nil) },
                       Conv2DKernels.backwardWeightsWorkspaceBytes(g, threads: threads), "\(g) threads \(threads)")
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

  /// The block cache keeps freed blocks only while bytes in use, what reused blocks hold beyond
  /// them and the cache stay under the ledger's high-water mark plus its limit; a tile a little
  /// smaller than the last takes the last one's block; a new size evicts what no longer fits.
  func testBlockCacheStaysUnderTheHighWaterMark() {
    let mib = 1 << 20
    XCTAssertEqual(BlockCache.sizeClass(1000), 1000)
    XCTAssertEqual(BlockCache.sizeClass(100 * mib), 100 * mib)
    XCTAssertEqual(BlockCache.sizeClass(97 * mib + 5), 100 * mib)
    XCTAssertEqual(BlockCache.sizeClass(129 * mib), 136 * mib)
    for n in [mib, 3 * mib + 1, 200_000_000, 1 << 40] {
      XCTAssertGreaterThanOrEqual(BlockCache.sizeClass(n), n)
      XCTAssertLessThanOrEqual(BlockCache.sizeClass(n), n + n / 16)
    }
    let ledger = MemoryLedger(), cache = BlockCache()
    cache.limitBytes = 4 * mib
    // Stands in for Buffer: ledger-counted, the block taken from the cache or the system.
    func allocate(_ bytes: Int) -> (p: UnsafeMutableRawPointer, block: Int, reused: Bool) {
      let block = BlockCache.sizeClass(bytes)
      let cached = cache.take(block, for: bytes, ledger: ledger)
      ledger.allocated(bytes, .activation)
      return (cached ?? UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 64), block, cached != nil)
    }
    func free(_ a: (p: UnsafeMutableRawPointer, block: Int, reused: Bool), _ bytes: Int) {
      ledger.freed(bytes, .activation)
      if !cache.give(a.p, a.block, for: bytes, reused: a.reused, ledger: ledger) { a.p.deallocate() }
      check("freed \(bytes)")
    }
    func check(_ what: String) {
      let (resident, bound) = cache.residentBound(ledger: ledger)
      XCTAssertLessThanOrEqual(resident, bound, what)
    }
    // A tile of 100 MiB and 60 MiB tensors, then one 3 and 1.5 MiB smaller: the first reuses its
    // block (3 MiB past its tensor, within the 4 MiB limit), the second would pass it and is fresh.
    let a = allocate(100 * mib), b = allocate(60 * mib)
    XCTAssertEqual(ledger.highWaterBytes, 160 * mib)
    free(a, 100 * mib)
    free(b, 60 * mib)
    XCTAssertEqual(cache.cachedBytes, 160 * mib)
    let a2 = allocate(97 * mib), b2 = allocate(58 * mib + mib / 2)
    XCTAssertTrue(a2.reused)
    XCTAssertEqual(a2.p, a.p, "the smaller tile's tensor takes the freed block")
    XCTAssertFalse(b2.reused, "reused blocks may hold at most limitBytes past their tensors")
    XCTAssertEqual(cache.cachedBytes, 0, "a fresh block evicts what would pass the mark")
    check("second tile")
    free(b2, 58 * mib + mib / 2)
    XCTAssertEqual(cache.cachedBytes, 60 * mib)
    // A new size, a new peak: the cache is emptied down to what fits.
    let c = allocate(80 * mib)
    XCTAssertEqual(cache.cachedBytes, 0)
    XCTAssertEqual(ledger.highWaterBytes, 177 * mib)
    check("new size")
    free(c, 80 * mib)
    free(a2, 97 * mib)
    XCTAssertGreaterThan(cache.cachedBytes, 0)
    // With no slack, a block bigger than the mark it would be kept under is freed.
    cache.empty()
    cache.limitBytes = 0
    let fresh = MemoryLedger(), e = BlockCache.sizeClass(97 * mib)
    let p = UnsafeMutableRawPointer.allocate(byteCount: e, alignment: 64)
    XCTAssertNil(cache.take(e, for: 97 * mib, ledger: fresh))
    fresh.allocated(97 * mib, .activation)
    fresh.freed(97 * mib, .activation)
    XCTAssertFalse(cache.give(p, e, for: 97 * mib, reused: false, ledger: fresh), "100 MiB kept after a 97 MiB peak")
    // … unless the run is known to reach more (a budget's planned peak): then up to that.
    cache.floorBytes = 100 * mib
    XCTAssertTrue(cache.give(p, e, for: 97 * mib, reused: false, ledger: fresh), "within the planned peak")
    XCTAssertEqual(cache.take(e, for: e, ledger: fresh), p)
    cache.floorBytes = 0
    p.deallocate()
    // A negative limit turns the cache off.
    cache.limitBytes = -1
    let d = allocate(2 * mib)
    free(d, 2 * mib)
    XCTAssertEqual(cache.cachedBytes, 0)
  }

  /// A freed block that does not fit makes room by returning the least recently freed blocks to the
  /// system, so a tile loop whose sizes differ from an earlier phase's keeps its own blocks (refused
  /// instead, each would be mapped and faulted in again every tile); the bound still holds.
  func testBlockCacheEvictsTheLeastRecentlyFreed() {
    let mib = 1 << 20
    let ledger = MemoryLedger(), cache = BlockCache()
    cache.limitBytes = 0
    cache.floorBytes = 100 * mib
    var blocks: [UnsafeMutableRawPointer] = []
    func give(_ bytes: Int) -> Bool {
      let kept = giveStandIn(cache, bytes, ledger, keeping: &blocks)
      let (resident, bound) = cache.residentBound(ledger: ledger)
      XCTAssertLessThanOrEqual(resident, bound)
      return kept
    }
    XCTAssertTrue(give(30 * mib))
    XCTAssertTrue(give(40 * mib))
    ledger.allocated(20 * mib, .activation)  // in use, e.g. small tensors the cache never sees
    XCTAssertTrue(give(20 * mib), "kept: the 30 MiB block, least recently freed, goes")
    XCTAssertEqual(cache.cachedBytes, 60 * mib)
    XCTAssertTrue(give(50 * mib), "kept: the 40 MiB block goes, the newer 20 MiB one stays")
    XCTAssertEqual(cache.cachedBytes, 70 * mib)
    XCTAssertEqual(cache.take(20 * mib, for: 20 * mib, ledger: ledger), blocks[2])
    // A block that alone would pass the bound is refused and evicts nothing.
    XCTAssertFalse(give(81 * mib))
    XCTAssertEqual(cache.cachedBytes, 50 * mib)
    // The cache deallocated the evicted stand-ins; these two are the kept ones.
    XCTAssertEqual(cache.take(50 * mib, for: 50 * mib, ledger: ledger), blocks[3])
    blocks[2].deallocate()
    blocks[3].deallocate()
  }

  /// With a budget as the resident ceiling, memory the ledger does not see comes out of the cache:
  /// above the ceiling a freed block goes back to the system, and cached blocks with it (oldest
  /// first) until the overshoot is covered; a fresh block's pages count before it is mapped.
  func testBlockCacheGivesBackAboveTheResidentCeiling() {
    let mib = 1 << 20
    let ledger = MemoryLedger(), cache = BlockCache()
    cache.limitBytes = 1 << 30
    var resident = 0
    cache.residentNow = { resident }
    cache.residentCeilingBytes = 500 * mib
    var stand: [UnsafeMutableRawPointer] = []
    func give(_ bytes: Int) -> Bool { giveStandIn(cache, bytes, ledger, keeping: &stand) }
    resident = 400 * mib
    XCTAssertTrue(give(30 * mib))
    XCTAssertTrue(give(40 * mib))
    XCTAssertTrue(give(50 * mib), "under the ceiling the cache keeps what its bound allows")
    XCTAssertEqual(cache.cachedBytes, 120 * mib)
    XCTAssertEqual(cache.releasedForCeilingBytes, 0)
    // Outside the ledger the process grew 60 MiB past the ceiling: the freed 20 MiB block and the
    // oldest cached ones (30, then 40 MiB) go, the newest stays.
    resident = 560 * mib
    XCTAssertFalse(give(20 * mib))
    XCTAssertEqual(cache.cachedBytes, 50 * mib)
    XCTAssertEqual(cache.releasedForCeilingBytes, 90 * mib)
    XCTAssertEqual(cache.take(50 * mib, for: 50 * mib, ledger: ledger), stand[2])
    // A miss for a fresh 80 MiB block at 450 MiB resident: 30 MiB over once it is mapped.
    resident = 400 * mib
    XCTAssertTrue(give(40 * mib))
    XCTAssertTrue(give(10 * mib))
    resident = 450 * mib
    XCTAssertNil(cache.take(80 * mib, for: 80 * mib, ledger: ledger))
    XCTAssertEqual(cache.cachedBytes, 10 * mib, "the 40 MiB block (oldest) went")
    XCTAssertEqual(cache.releasedForCeilingBytes, 130 * mib)
    // Without a ceiling nothing is read or released.
    cache.residentCeilingBytes = nil
    resident = 10_000 * mib
    XCTAssertTrue(give(20 * mib))
    XCTAssertEqual(cache.cachedBytes, 30 * mib)
    XCTAssertEqual(cache.releasedForCeilingBytes, 130 * mib)
    cache.empty()
    stand[2].deallocate()
  }

  /// The resident-bytes reader the ceiling uses sees a block's pages once they are touched.
  func testResidentBytesFollowTouchedPages() throws {
    #if os(Linux)
    let before = MachineMemory.residentBytes()
    XCTAssertGreaterThan(before, 1 << 20)
    let bytes = 64 << 20
    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
    p.initializeMemory(as: UInt8.self, repeating: 1, count: bytes)
    XCTAssertGreaterThan(MachineMemory.residentBytes() - before, bytes / 2)
    p.deallocate()
    #else
    throw XCTSkip("reads /proc/self/statm")
    #endif
  }
}

/// Frees a block of `bytes` into the cache as a 64-byte stand-in: kept ones go to `kept` (the cache
/// deallocates those it evicts later), a refused one is deallocated here.
private func giveStandIn(_ cache: BlockCache, _ bytes: Int, _ ledger: MemoryLedger,
                         keeping kept: inout [UnsafeMutableRawPointer]) -> Bool {
  let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
  let isKept = cache.give(p, bytes, for: bytes, reused: false, ledger: ledger)
  if isKept { kept.append(p) } else { p.deallocate() }
  return isKept
}
