import TestSupport
@testable import TesseraKernels
import XCTest

/// `--compute bf16`: the forward convolution with bf16 multiplies and fp32 sums (C, vdpbf16ps).
/// A bf16 × bf16 product is exact in fp32, so the kernel must give the double-precision reference
/// convolution of the bf16-rounded inputs and weights to fp32 summation rounding.
final class BF16KernelTests: XCTestCase {
  /// Geometries of one group from the direct kernel's awkward cases, and rows wide enough for
  /// the one-row tiles at strides 1 and 2 beside tiles that span rows and partial last tiles.
  static let cases: [ConvGeometry] = ConvKernelTests.cases.filter { $0.groups == 1 } + [
    ConvGeometry(batch: 2, inChannels: 3, inHeight: 21, inWidth: 70, outChannels: 16, kernelH: 7, kernelW: 7,
                 strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3),
    ConvGeometry(batch: 3, inChannels: 32, inHeight: 9, inWidth: 41, outChannels: 40, kernelH: 3, kernelW: 3,
                 padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    ConvGeometry(batch: 1, inChannels: 16, inHeight: 30, inWidth: 50, outChannels: 32, kernelH: 3, kernelW: 3,
                 strideH: 2, strideW: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
  ]

  /// Thread count and the bf16 switch as they were; every test runs with bf16 on.
  var saved: (threads: Int, bf16: Bool)?

  override func setUpWithError() throws {
    try XCTSkipUnless(BF16.supported, "this CPU has no AVX512_BF16 (or the OS keeps AVX-512 off): the bf16 kernels are not run")
    saved = (Parallel.threadCount, BF16.enabled)
    BF16.enabled = true
  }

  override func tearDown() {
    if let saved { (Parallel.threadCount, BF16.enabled) = saved }
    super.tearDown()
  }

  /// Round to nearest even, from a double-precision reference: the two bf16 neighbours of v and
  /// the nearer one (the even one at a tie); NaN stays NaN, overflow goes to infinity, subnormals
  /// become zero (what vcvtneps2bf16 does, so the scalar tails and the vector loops agree).
  func testRoundingIsToNearestEven() {
    func reference(_ v: Float) -> Float {
      if v.isNaN || v.isInfinite { return v }
      if v.isSubnormal { return Float(signOf: v, magnitudeOf: 0) }  // as vcvtneps2bf16: subnormals are ±0
      let down = Float(bitPattern: v.bitPattern & 0xffff_0000)
      let upBits = (v.bitPattern & 0xffff_0000) &+ 0x1_0000
      let up = Float(bitPattern: upBits)  // the next bf16 away from zero (inf past the largest)
      // Past the largest bf16 the next step is 2^128, where rounding gives infinity.
      let upValue = up.isInfinite ? (v < 0 ? -0x1p128 : 0x1p128) : Double(up)
      let dDown = abs(Double(v) - Double(down)), dUp = abs(upValue - Double(v))
      if dDown < dUp { return down }
      if dUp < dDown { return up }
      return (v.bitPattern >> 16) & 1 == 0 ? down : up
    }
    var values: [Float] = [0, -0, 1, -1, 1 + 0x1p-8, 1 + 0x3p-8, -(1 + 0x1p-8), 0x1p-130, .leastNonzeroMagnitude,
                           .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .infinity, -.infinity, 3.14159265]
    values += randomFloats(2000, seed: 9).map { $0 * 1000 }
    for v in values {
      let got = BF16.rounded(v), want = reference(v)
      XCTAssertEqual(got.bitPattern, want.bitPattern, "\(v) → \(got), want \(want)")
    }
    XCTAssertEqual(BF16.rounded(1 + 0x1p-8), 1)              // tie: to the even neighbour
    XCTAssertEqual(BF16.rounded(1 + 0x3p-8), 1 + 0x1p-6)     // tie: up to the even one
    XCTAssertTrue(BF16.rounded(.nan).isNaN)
    XCTAssertEqual(BF16.rounded(-0x1p-130).bitPattern, (-Float.zero).bitPattern)
  }

  /// The kernel, 1–3 threads (batches split by image and by tiles), with folded scale, bias and
  /// ReLU, against the reference on rounded values; and far enough from the unrounded fp32
  /// convolution that the bf16 path was surely taken.
  func testForwardIsTheConvolutionOfTheRoundedValues() {
    var largestRoundingEffect: Float = 0
    for (ci, g) in Self.cases.enumerated() {
      XCTAssertTrue(BF16.applies(g))
      let x = randomFloats(g.inputCount, seed: 500 + UInt64(ci)), w = randomFloats(g.weightCount, seed: 600 + UInt64(ci))
      let scale = randomFloats(g.outChannels, seed: 700).map { $0 * 2 + 3 }, shift = randomFloats(g.outChannels, seed: 701)
      let perChannel = g.weightCount / g.outChannels, scaledW = w.indices.map { w[$0] * scale[$0 / perChannel] }
      var ref = [Float](repeating: .nan, count: g.outputCount), exact = ref
      ConvReference.forward(g, x: x.map(BF16.rounded), w: scaledW.map(BF16.rounded), bias: shift, y: &ref)
      ConvReference.forward(g, x: x, w: scaledW, bias: shift, y: &exact)
      for relu in [false, true] {
        let want = relu ? ref.map { max($0, 0) } : ref
        for threads in [1, 2, 3] {
          Parallel.threadCount = threads
          var y = [Float](repeating: .nan, count: g.outputCount)
          Conv2DKernels.forward(g, x: x, w: w, bias: shift, y: &y, scale: scale, relu: relu, winograd: true)
          assertClose(y, want, "bf16 relu=\(relu) threads \(threads) \(g)")
        }
      }
      largestRoundingEffect = max(largestRoundingEffect, maxRelativeError(ref, exact))
    }
    XCTAssertGreaterThan(largestRoundingEffect, 1e-4, "bf16 rounding changes the result measurably")
  }

  /// Backward-weights in pixel pairs (odd widths: a zero partner; strides 1–3 through column
  /// phases; dilation), accumulated onto existing values, 1–3 threads, against the reference on
  /// rounded x and dy; the bias gradient stays fp32 (the reference's on unrounded dy).
  func testBackwardWeightsIsTheGradientOfTheRoundedValues() {
    var largestRoundingEffect: Float = 0
    for (ci, g) in Self.cases.enumerated() {
      let x = randomFloats(g.inputCount, seed: 800 + UInt64(ci)), dy = randomFloats(g.outputCount, seed: 900 + UInt64(ci))
      let seedW = randomFloats(g.weightCount, seed: 400)
      var ref = seedW, exact = seedW
      var dbRef = [Float](repeating: 0.5, count: g.outChannels)
      ConvReference.backwardWeights(g, x: x.map(BF16.rounded), dy: dy.map(BF16.rounded), dw: &ref, dbias: nil)
      ConvReference.backwardWeights(g, x: x, dy: dy, dw: &exact, dbias: &dbRef)
      for threads in [1, 2, 3] {
        Parallel.threadCount = threads
        var dw = seedW, db = [Float](repeating: 0.5, count: g.outChannels)
        Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: &db)
        assertClose(dw, ref, "bf16 backward-weights threads \(threads) \(g)")
        assertClose(db, dbRef, "bias threads \(threads) \(g)")
      }
      largestRoundingEffect = max(largestRoundingEffect, maxRelativeError(ref, exact))
    }
    XCTAssertGreaterThan(largestRoundingEffect, 1e-4, "bf16 rounding changes the result measurably")
  }

  /// Backward-data in bf16: stride 1 through the transposed forward, larger strides through the
  /// phases' forward convolutions; the reference on rounded dy and weights.
  func testBackwardDataIsTheGradientOfTheRoundedValues() {
    var strided = 0
    for (ci, g) in Self.cases.enumerated() {
      let w = randomFloats(g.weightCount, seed: 100 + UInt64(ci)), dy = randomFloats(g.outputCount, seed: 300 + UInt64(ci))
      guard Conv2DKernels.transposedGeometry(g) != nil || Conv2DKernels.PhasedData.phases(g) != nil else { continue }
      if g.strideH > 1 || g.strideW > 1 { strided += 1 }
      var ref = [Float](repeating: .nan, count: g.inputCount)
      ConvReference.backwardData(g, dy: dy.map(BF16.rounded), w: w.map(BF16.rounded), dx: &ref)
      for threads in [1, 2] {
        Parallel.threadCount = threads
        var dx = [Float](repeating: .nan, count: g.inputCount)
        Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dx)
        assertClose(dx, ref, "bf16 backward-data threads \(threads) \(g)")
      }
    }
    XCTAssertGreaterThanOrEqual(strided, 6)
  }

  /// The planner's workspace figures for the bf16 path equal the ledger's peak.
  func testWorkspacesMatchLedger() {
    func peak(_ body: () -> Void) -> Int {
      let base = MemoryLedger.shared.currentBytes
      return MemoryLedger.shared.measure(body).peakBytes - base
    }
    for threads in [1, 2, 3] {
      Parallel.threadCount = threads
      for g in Self.cases {
        let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
        var y = [Float](repeating: 0, count: g.outputCount)
        XCTAssertEqual(peak { Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y, winograd: true) },
                       Conv2DKernels.forwardWorkspaceBytes(g, threads: threads, winograd: true), "\(g) threads \(threads)")
        let dy = randomFloats(g.outputCount, seed: 3)
        var dw = [Float](repeating: 0, count: g.weightCount), dx = [Float](repeating: 0, count: g.inputCount)
        XCTAssertEqual(peak { Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: nil) },
                       Conv2DKernels.backwardWeightsWorkspaceBytes(g, threads: threads), "backward-weights \(g) threads \(threads)")
        XCTAssertEqual(peak { Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dx) },
                       Conv2DKernels.backwardDataWorkspaceBytes(g, threads: threads), "backward-data \(g) threads \(threads)")
      }
      let g = Self.cases[Self.cases.count - 3]
      let pg = PoolGeometry(planes: g.batch * 16, inHeight: g.outHeight, inWidth: g.outWidth, kernelH: 3, kernelW: 3,
                            strideH: 2, strideW: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1)
      let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
      var y = [Float](repeating: 0, count: pg.planes * pg.outHeight * pg.outWidth)
      XCTAssertEqual(peak { Conv2DKernels.forwardMaxPooled(g, x: x, w: w, bias: nil, scale: nil, relu: true, pool: pg, y: &y) },
                     Conv2DKernels.forwardMaxPooledWorkspaceBytes(g, pool: pg, threads: threads), "pooled threads \(threads)")
    }
  }
}
