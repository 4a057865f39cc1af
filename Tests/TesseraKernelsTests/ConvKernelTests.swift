import TestSupport
@testable import TesseraKernels
import XCTest

final class ConvKernelTests: XCTestCase {
  /// Awkward shapes: 1×1, 7×7 stride 2, dilation 2, groups, depthwise, non-square, odd sizes, batch 1 and 3.
  static let cases: [ConvGeometry] = [
    ConvGeometry(batch: 1, inChannels: 3, inHeight: 5, inWidth: 7, outChannels: 4, kernelH: 1, kernelW: 1),
    ConvGeometry(batch: 3, inChannels: 3, inHeight: 19, inWidth: 14, outChannels: 16, kernelH: 7, kernelW: 7,
                 strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3),
    ConvGeometry(batch: 1, inChannels: 5, inHeight: 11, inWidth: 9, outChannels: 7, kernelH: 3, kernelW: 3,
                 dilationH: 2, dilationW: 2, padTop: 2, padLeft: 2, padBottom: 2, padRight: 2),
    ConvGeometry(batch: 3, inChannels: 6, inHeight: 8, inWidth: 10, outChannels: 9, kernelH: 3, kernelW: 2,
                 strideH: 1, strideW: 2, padTop: 1, padLeft: 0, padBottom: 1, padRight: 1, groups: 3),
    ConvGeometry(batch: 1, inChannels: 8, inHeight: 9, inWidth: 9, outChannels: 8, kernelH: 3, kernelW: 3,
                 strideH: 2, strideW: 2, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1, groups: 8),
    ConvGeometry(batch: 1, inChannels: 17, inHeight: 6, inWidth: 13, outChannels: 33, kernelH: 3, kernelW: 3,
                 padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    ConvGeometry(batch: 3, inChannels: 4, inHeight: 3, inWidth: 3, outChannels: 20, kernelH: 3, kernelW: 3,
                 strideH: 3, strideW: 3),
    // Stride larger than the kernel (phases that receive nothing), and stride 2 with `same` padding.
    ConvGeometry(batch: 2, inChannels: 3, inHeight: 10, inWidth: 9, outChannels: 5, kernelH: 2, kernelW: 1,
                 strideH: 3, strideW: 2, padTop: 1, padLeft: 0, padBottom: 1, padRight: 0),
    ConvGeometry(batch: 2, inChannels: 6, inHeight: 12, inWidth: 11, outChannels: 8, kernelH: 3, kernelW: 3,
                 strideH: 2, strideW: 2, padTop: 0, padLeft: 1, padBottom: 1, padRight: 1, groups: 2),
    ConvGeometry(batch: 4, inChannels: 5, inHeight: 9, inWidth: 10, outChannels: 18, kernelH: 3, kernelW: 3,
                 padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    ConvGeometry(batch: 4, inChannels: 3, inHeight: 13, inWidth: 12, outChannels: 7, kernelH: 5, kernelW: 5,
                 strideH: 2, strideW: 2, padTop: 1, padLeft: 2, padBottom: 2, padRight: 1),
    // Stems whose backward-weights the phase-split kernel takes (`Phases`): 31 wide (a tail past
    // the last 8 pixels), 48 wide with no left padding, a 5×4 kernel on one channel 29 wide.
    ConvGeometry(batch: 3, inChannels: 3, inHeight: 23, inWidth: 61, outChannels: 16, kernelH: 7, kernelW: 7,
                 strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3),
    ConvGeometry(batch: 2, inChannels: 4, inHeight: 9, inWidth: 96, outChannels: 8, kernelH: 3, kernelW: 3,
                 strideH: 2, strideW: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
    ConvGeometry(batch: 1, inChannels: 1, inHeight: 14, inWidth: 57, outChannels: 4, kernelH: 5, kernelW: 4,
                 strideH: 2, strideW: 2, padTop: 1, padLeft: 2, padBottom: 2, padRight: 1),
  ]

  /// The phase-split backward-weights takes the three stems above; turned off, the pixel-broadcast
  /// kernel gives the same results to float rounding (both against the double-precision reference
  /// in `testFastMatchesReference`).
  func testPhaseSplitStemsAgreeWithThePixelBroadcastKernels() {
    let saved = (Parallel.threadCount, Conv2DKernels.Phases.enabled)
    defer { (Parallel.threadCount, Conv2DKernels.Phases.enabled) = saved }
    let stems = Self.cases.suffix(3)
    XCTAssertEqual(stems.filter(Conv2DKernels.Phases.applies).count, 3)
    XCTAssertEqual(Self.cases.dropLast(3).filter(Conv2DKernels.Phases.applies).count, 0)
    for (i, g) in stems.enumerated() {
      let x = randomFloats(g.inputCount, seed: 70 + UInt64(i))
      let dy = randomFloats(g.outputCount, seed: 90 + UInt64(i))
      func run(_ phases: Bool, _ threads: Int) -> ([Float], [Float]) {
        (Conv2DKernels.Phases.enabled, Parallel.threadCount) = (phases, threads)
        var dw = [Float](repeating: 0.5, count: g.weightCount), db = [Float](repeating: 0.25, count: g.outChannels)
        Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: &db)
        return (dw, db)
      }
      let ref = run(false, 1)
      for threads in [1, 2, 3] {
        let got = run(true, threads)
        assertClose(got.0, ref.0, "backward-weights \(g) threads \(threads)")
        assertClose(got.1, ref.1, "bias \(g) threads \(threads)")
      }
    }
  }

  func testFastMatchesReference() {
    // Thread counts 1–3: batches of 2, 3 and 4 also take the whole-image-per-thread paths; with
    // Winograd off, the direct kernel on every case.
    let saved = (Parallel.threadCount, Winograd.enabled)
    defer { (Parallel.threadCount, Winograd.enabled) = saved }
    for threads in [1, 2, 3] {
      for winograd in [true, false] {
        Parallel.threadCount = threads
        Winograd.enabled = winograd
        compareAllCases()
      }
    }
  }

  /// The direct kernel element by element; the Winograd path (its transforms round more) by the
  /// largest error relative to the largest reference value.
  func assertConv(_ g: ConvGeometry, _ got: [Float], _ ref: [Float], _ what: String,
                  file: StaticString = #filePath, line: UInt = #line, winograd: Bool = true) {
    if winograd && (Winograd.applies(g) || StridedWinograd.applies(g)) {
      XCTAssertLessThanOrEqual(maxRelativeError(got, ref), 1e-5, "Winograd \(what)", file: file, line: line)
    } else {
      assertClose(got, ref, what, file: file, line: line)
    }
  }

  /// Winograd F(4×4, 3×3) on awkward shapes (partial tiles at both edges, no padding, uneven
  /// padding, channels not a multiple of 8 or 16, several tile blocks, 1–3 threads), against the
  /// double-precision reference; its error stays within a small multiple of the direct kernel's.
  func testWinogradMatchesReferenceOnAwkwardShapes() {
    let shapes = [
      ConvGeometry(batch: 3, inChannels: 16, inHeight: 7, inWidth: 9, outChannels: 20, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      ConvGeometry(batch: 2, inChannels: 24, inHeight: 13, inWidth: 6, outChannels: 16, kernelH: 3, kernelW: 3),
      ConvGeometry(batch: 1, inChannels: 19, inHeight: 10, inWidth: 11, outChannels: 33, kernelH: 3, kernelW: 3,
                   padTop: 2, padLeft: 0, padBottom: 1, padRight: 2),
      ConvGeometry(batch: 2, inChannels: 64, inHeight: 30, inWidth: 37, outChannels: 48, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    ]
    let saved = (Parallel.threadCount, Winograd.enabled)
    defer { (Parallel.threadCount, Winograd.enabled) = saved }
    for (i, g) in shapes.enumerated() {
      XCTAssertTrue(Winograd.applies(g), "\(g)")
      let x = randomFloats(g.inputCount, seed: 40 + UInt64(i)), w = randomFloats(g.weightCount, seed: 50 + UInt64(i))
      let bias = randomFloats(g.outChannels, seed: 60)
      var ref = [Float](repeating: 0, count: g.outputCount), direct = ref
      ConvReference.forward(g, x: x, w: w, bias: bias, y: &ref)
      Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &direct)
      let directError = maxRelativeError(direct, ref)
      for threads in [1, 2, 3] {
        Parallel.threadCount = threads
        var y = [Float](repeating: .nan, count: g.outputCount)
        Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &y, winograd: true)
        let error = maxRelativeError(y, ref)
        XCTAssertLessThanOrEqual(error, 1e-5, "\(g) threads \(threads)")
        XCTAssertLessThanOrEqual(error, max(30 * directError, 1e-6), "\(g): Winograd \(error), direct \(directError)")
        if threads == 1 { print("winograd error \(error) direct \(directError) \(g)") }
      }
      // Training's stride-1 backward-data: a forward of the flipped weights, Winograd when it applies.
      let dy = randomFloats(g.outputCount, seed: 70 + UInt64(i))
      var dxRef = [Float](repeating: 0, count: g.inputCount), dxDirect = dxRef
      ConvReference.backwardData(g, dy: dy, w: w, dx: &dxRef)
      let inTraining = Winograd.inTraining
      defer { Winograd.inTraining = inTraining }
      Winograd.inTraining = false
      Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dxDirect)
      let dxDirectError = maxRelativeError(dxDirect, dxRef)
      Winograd.inTraining = true
      guard let gt = Conv2DKernels.transposedGeometry(g) else { XCTFail("\(g): stride 1 is a transposed forward"); continue }
      XCTAssertTrue(Winograd.applies(gt), "\(gt)")
      for threads in [1, 3] where Winograd.applies(gt) {
        Parallel.threadCount = threads
        var dx = [Float](repeating: .nan, count: g.inputCount)
        Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dx)
        let error = maxRelativeError(dx, dxRef)
        XCTAssertNotEqual(dx, dxDirect, "\(g): backward-data took Winograd")
        XCTAssertLessThanOrEqual(error, 1e-5, "backward-data \(g) threads \(threads)")
        XCTAssertLessThanOrEqual(error, max(30 * dxDirectError, 1e-6), "backward-data \(g): Winograd \(error), direct \(dxDirectError)")
      }
    }
    // Below 16 channels, or a map under one tile, the direct kernel runs.
    XCTAssertFalse(Winograd.applies(ConvGeometry(batch: 1, inChannels: 8, inHeight: 9, inWidth: 9, outChannels: 32,
                                                 kernelH: 3, kernelW: 3)))
    XCTAssertFalse(Winograd.applies(ConvGeometry(batch: 1, inChannels: 32, inHeight: 5, inWidth: 9, outChannels: 32,
                                                 kernelH: 3, kernelW: 3)))
  }

  /// Winograd F(3×3, 4×4) on the phases of 7×7 and 8×8 stride-2 layers (`StridedWinograd`): the
  /// stem's shape with uneven padding, one channel with an 8×8 kernel and no padding, a 7×8 kernel
  /// on 5 channels with 33 outputs (phase channels and outputs not multiples of 8 or 16), maps not
  /// a multiple of the 3×3 tile, scale, bias and ReLU; against the double-precision reference, its
  /// error a small multiple of the direct kernel's, and 1–3 threads giving the same bits.
  func testStridedWinogradMatchesReferenceOnAwkwardShapes() {
    let shapes = [
      ConvGeometry(batch: 3, inChannels: 3, inHeight: 19, inWidth: 14, outChannels: 16, kernelH: 7, kernelW: 7,
                   strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3),
      ConvGeometry(batch: 2, inChannels: 1, inHeight: 21, inWidth: 17, outChannels: 20, kernelH: 8, kernelW: 8,
                   strideH: 2, strideW: 2),
      ConvGeometry(batch: 1, inChannels: 5, inHeight: 30, inWidth: 27, outChannels: 33, kernelH: 7, kernelW: 8,
                   strideH: 2, strideW: 2, padTop: 3, padLeft: 3, padBottom: 4, padRight: 2),
    ]
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for (i, g) in shapes.enumerated() {
      XCTAssertTrue(StridedWinograd.applies(g), "\(g)")
      let x = randomFloats(g.inputCount, seed: 140 + UInt64(i)), w = randomFloats(g.weightCount, seed: 150 + UInt64(i))
      let bias = randomFloats(g.outChannels, seed: 160), scale = randomFloats(g.outChannels, seed: 161).map { $0 + 1.5 }
      for relu in [false, true] {
        // The reference on the scaled weights, clamped.
        var scaled = w
        for k in 0..<g.outChannels { for t in 0..<(g.weightCount / g.outChannels) { scaled[k * g.weightCount / g.outChannels + t] *= scale[k] } }
        var ref = [Float](repeating: 0, count: g.outputCount), direct = ref
        ConvReference.forward(g, x: x, w: scaled, bias: bias, y: &ref)
        if relu { ref = ref.map { max($0, 0) } }
        Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &direct, scale: scale, relu: relu)
        let directError = maxRelativeError(direct, ref)
        var first: [Float]? = nil
        for threads in [1, 2, 3] {
          Parallel.threadCount = threads
          var y = [Float](repeating: .nan, count: g.outputCount)
          Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &y, scale: scale, relu: relu, winograd: true)
          let error = maxRelativeError(y, ref)
          XCTAssertLessThanOrEqual(error, 1e-5, "\(g) threads \(threads)")
          XCTAssertLessThanOrEqual(error, max(30 * directError, 1e-6), "\(g): Winograd \(error), direct \(directError)")
          if let first { XCTAssertEqual(y, first, "\(g): threads \(threads) against 1") } else { first = y }
          if threads == 1 && !relu { print("strided winograd error \(error) direct \(directError) \(g)") }
        }
      }
    }
    // 3×3 stride 2 (its phase kernels would be mostly zeros), dilation, and 17+ channels: direct.
    XCTAssertFalse(StridedWinograd.applies(ConvGeometry(batch: 1, inChannels: 16, inHeight: 9, inWidth: 9,
                                                        outChannels: 32, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2)))
    XCTAssertFalse(StridedWinograd.applies(ConvGeometry(batch: 1, inChannels: 17, inHeight: 19, inWidth: 19,
                                                        outChannels: 32, kernelH: 7, kernelW: 7, strideH: 2, strideW: 2)))
  }

  /// Winograd over the whole batch's tiles (`Winograd.batched`: many channels, small maps): the
  /// same numbers to the bit as the per-image blocks (the same sums in the same order), tiles
  /// spanning images, a row count not a multiple of the GEMM's 6, channels not a multiple of 8 or
  /// 16, scale, bias and ReLU; against the double-precision reference; and 256→256 on a 16×16 map
  /// (fcn-large's stage 4 at 1024²), which took the direct kernel before, now takes it.
  func testBatchedWinogradMatchesPerImageBlocksToTheBit() {
    let g = ConvGeometry(batch: 3, inChannels: 131, inHeight: 9, inWidth: 10, outChannels: 130, kernelH: 3, kernelW: 3,
                         padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)
    let saved = (Parallel.threadCount, Winograd.batchedEnabled)
    defer { (Parallel.threadCount, Winograd.batchedEnabled) = saved }
    XCTAssertTrue(Winograd.batched(g), "\(g)")
    XCTAssertEqual(Winograd.batchedFloats(g).rows, 30)  // 3 images × 9 tiles, rounded up to 6
    let x = randomFloats(g.inputCount, seed: 81), w = randomFloats(g.weightCount, seed: 82)
    let bias = randomFloats(g.outChannels, seed: 83), scale = randomFloats(g.outChannels, seed: 84).map { $0 + 1.5 }
    var ref = [Float](repeating: 0, count: g.outputCount), direct = ref
    ConvReference.forward(g, x: x, w: w, bias: bias, y: &ref)
    Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &direct)
    for threads in [1, 2, 3] {
      Parallel.threadCount = threads
      for relu in [false, true] {
        var batched = [Float](repeating: .nan, count: g.outputCount), perImage = batched
        Winograd.batchedEnabled = true
        Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &batched, scale: scale, relu: relu, winograd: true)
        Winograd.batchedEnabled = false
        XCTAssertFalse(Winograd.batched(g))
        // Called directly: with the batched path off, `applies` leaves such a layer to the direct kernel.
        x.withUnsafeBufferPointer { xb in
          w.withUnsafeBufferPointer { wb in
            Winograd.forward(g, x: xb.baseAddress!, w: wb.baseAddress!, bias: bias, y: &perImage, scale: scale, relu: relu)
          }
        }
        XCTAssertTrue(batched == perImage, "threads \(threads) relu \(relu): \(maxRelativeError(batched, perImage))")
      }
      Winograd.batchedEnabled = true
      var y = [Float](repeating: .nan, count: g.outputCount)
      Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &y, winograd: true)
      XCTAssertNotEqual(y, direct, "took Winograd")
      XCTAssertLessThanOrEqual(maxRelativeError(y, ref), max(30 * maxRelativeError(direct, ref), 1e-6), "threads \(threads)")
    }
    Winograd.batchedEnabled = true
    let stage4 = ConvGeometry(batch: 4, inChannels: 256, inHeight: 16, inWidth: 16, outChannels: 256, kernelH: 3,
                              kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)
    XCTAssertTrue(Winograd.applies(stage4) && Winograd.batched(stage4))
    let tiny = ConvGeometry(batch: 2, inChannels: 256, inHeight: 4, inWidth: 4, outChannels: 256, kernelH: 3,
                            kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)
    XCTAssertFalse(Winograd.applies(tiny), "2 tiles: the transforms outweigh the multiplies saved")
    Winograd.batchedEnabled = false
    XCTAssertFalse(Winograd.applies(stage4), "per image, U's traffic outweighs the saved multiplies")
  }

  /// Training's weight gradient through Winograd (`Winograd.backwardWeights`: dM = A dy Aᵀ, dU =
  /// Σ dM ⊙ V, dg = Gᵀ dU G) on awkward shapes — partial tiles at both edges, uneven padding,
  /// channels not a multiple of 8 or 16, a batch whose tiles span several chunks (chunks spanning
  /// images), dU in two groups of elements, 1–3 threads — against the double-precision reference:
  /// within a small multiple of the direct kernel's error, accumulating into dw, the same to the bit
  /// on every thread count.
  func testWinogradWeightGradientMatchesReference() {
    let shapes = [
      ConvGeometry(batch: 8, inChannels: 32, inHeight: 7, inWidth: 9, outChannels: 37, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      ConvGeometry(batch: 4, inChannels: 35, inHeight: 13, inWidth: 10, outChannels: 32, kernelH: 3, kernelW: 3,
                   padTop: 2, padLeft: 0, padBottom: 1, padRight: 2),
      ConvGeometry(batch: 5, inChannels: 96, inHeight: 30, inWidth: 37, outChannels: 64, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      ConvGeometry(batch: 6, inChannels: 128, inHeight: 9, inWidth: 10, outChannels: 130, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    ]
    let saved = (Parallel.threadCount, Winograd.inTraining)
    defer { (Parallel.threadCount, Winograd.inTraining) = saved }
    XCTAssertLessThan(Winograd.weightsChunk(shapes[2]), 5 * 80, "several chunks")
    XCTAssertEqual(Winograd.elementGroups(36 * 128 * 144), 2, "dU in two groups of elements")
    for (i, g) in shapes.enumerated() {
      Winograd.inTraining = true
      XCTAssertTrue(Winograd.appliesToWeights(g), "\(g)")
      let x = randomFloats(g.inputCount, seed: 90 + UInt64(i)), dy = randomFloats(g.outputCount, seed: 95 + UInt64(i))
      let start = randomFloats(g.weightCount, seed: 99)  // dw accumulates
      var ref = start, direct = start
      ConvReference.backwardWeights(g, x: x, dy: dy, dw: &ref, dbias: nil)
      Winograd.inTraining = false
      XCTAssertFalse(Winograd.appliesToWeights(g))
      Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &direct, dbias: nil)
      let directError = maxRelativeError(direct, ref)
      Winograd.inTraining = true
      var first: [Float]? = nil
      for threads in [1, 2, 3] {
        Parallel.threadCount = threads
        var dw = start
        Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: nil)
        let error = maxRelativeError(dw, ref)
        XCTAssertNotEqual(dw, direct, "\(g): took Winograd")
        // Its rounding is 10–50× the direct kernel's and grows with the tiles summed (dy's transform
        // has factors up to 8, 64 at a tile's corner): 2e-6 on 60 pixels, 1.1e-5 on 5,550.
        XCTAssertLessThanOrEqual(error, 3e-5, "\(g) threads \(threads)")
        XCTAssertLessThanOrEqual(error, max(100 * directError, 1e-6), "\(g): Winograd \(error), direct \(directError)")
        if let f = first { XCTAssertTrue(f == dw, "\(g): threads \(threads) differ from 1") } else { first = dw }
        if threads == 1 { print("winograd weights error \(error) direct \(directError) \(g)") }
      }
    }
    // Below 32 channels either way, or 48 tiles in the batch, the direct kernel keeps it.
    XCTAssertFalse(Winograd.appliesToWeights(ConvGeometry(batch: 8, inChannels: 16, inHeight: 9, inWidth: 9,
                                                          outChannels: 32, kernelH: 3, kernelW: 3)))
    XCTAssertFalse(Winograd.appliesToWeights(ConvGeometry(batch: 1, inChannels: 32, inHeight: 9, inWidth: 9,
                                                          outChannels: 32, kernelH: 3, kernelW: 3)))
  }

  /// The inference fold: y = max(scale·conv(x, w) + shift, 0) from scaled packed weights, against
  /// the reference convolution followed by the affine map and the clamp.
  func testFoldedScaleShiftReLUMatchesReference() {
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    for threads in [1, 2] {
      Parallel.threadCount = threads
      for (ci, g) in Self.cases.enumerated() {
        let x = randomFloats(g.inputCount, seed: 11 + UInt64(ci)), w = randomFloats(g.weightCount, seed: 12)
        let scale = randomFloats(g.outChannels, seed: 13).map { $0 * 3 }, shift = randomFloats(g.outChannels, seed: 14)
        var ref = [Float](repeating: .nan, count: g.outputCount)
        ConvReference.forward(g, x: x, w: w, bias: nil, y: &ref)
        let P = g.outHeight * g.outWidth
        for relu in [false, true] {
          let want = ref.indices.map { i -> Float in
            let k = i / P % g.outChannels, v = ref[i] * scale[k] + shift[k]
            return relu ? max(v, 0) : v
          }
          var y = [Float](repeating: .nan, count: g.outputCount)
          Conv2DKernels.forward(g, x: x, w: w, bias: shift, y: &y, scale: scale, relu: relu, winograd: true)
          assertConv(g, y, want, "folded relu=\(relu) \(g)")
          if relu { XCTAssertTrue(y.allSatisfy { $0 >= 0 }, "clamped \(g)") }
        }
      }
    }
  }

  /// Convolution + max pooling in bands (inference) equals the convolution then the pooling, bit
  /// for bit: several bands (rows carried between them), windows wider than their stride, padding,
  /// partial last bands, batches that split by image and by band, 1–3 threads; in fp32 and, where
  /// the CPU has it, bf16 (the same sums in the same order per output).
  func testConvolutionWithMaxPoolingInBandsEqualsTheTwoPasses() {
    let saved = (Parallel.threadCount, BF16.enabled)
    defer { (Parallel.threadCount, BF16.enabled) = saved }
    for bf16 in BF16.supported ? [false, true] : [false] {
      BF16.enabled = bf16
      bandsEqualTwoPasses()
    }
  }

  func bandsEqualTwoPasses() {
    let convs = [
      ConvGeometry(batch: 1, inChannels: 3, inHeight: 75, inWidth: 41, outChannels: 16, kernelH: 7, kernelW: 7,
                   strideH: 2, strideW: 2, padTop: 2, padLeft: 3, padBottom: 3, padRight: 3),
      ConvGeometry(batch: 4, inChannels: 5, inHeight: 38, inWidth: 17, outChannels: 20, kernelH: 3, kernelW: 3,
                   padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      ConvGeometry(batch: 3, inChannels: 2, inHeight: 9, inWidth: 6, outChannels: 3, kernelH: 1, kernelW: 1),
    ]
    for (ci, g) in convs.enumerated() {
      let x = randomFloats(g.inputCount, seed: 70 + UInt64(ci)), w = randomFloats(g.weightCount, seed: 80)
      let scale = randomFloats(g.outChannels, seed: 81), shift = randomFloats(g.outChannels, seed: 82)
      let P = g.batch * g.outChannels
      let pools = [
        PoolGeometry(planes: P, inHeight: g.outHeight, inWidth: g.outWidth, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2,
                     padTop: 0, padLeft: 0, padBottom: 1, padRight: 1),
        PoolGeometry(planes: P, inHeight: g.outHeight, inWidth: g.outWidth, kernelH: 2, kernelW: 2, strideH: 2, strideW: 2),
        PoolGeometry(planes: P, inHeight: g.outHeight, inWidth: g.outWidth, kernelH: 3, kernelW: 2, strideH: 1, strideW: 2,
                     padTop: 1, padLeft: 0, padBottom: 1, padRight: 0),
      ]
      for pg in pools {
        for relu in [false, true] {
          var conv = [Float](repeating: .nan, count: g.outputCount)
          var want = [Float](repeating: .nan, count: P * pg.outHeight * pg.outWidth), got = want
          Conv2DKernels.forward(g, x: x, w: w, bias: shift, y: &conv, scale: scale, relu: relu, winograd: true)
          Pool2DKernels.maxForward(pg, x: conv, y: &want)
          for threads in [1, 2, 3] {
            Parallel.threadCount = threads
            Conv2DKernels.forwardMaxPooled(g, x: x, w: w, bias: shift, scale: scale, relu: relu, pool: pg, y: &got)
            XCTAssertEqual(got, want, "\(g) pool \(pg) relu \(relu) threads \(threads) bf16 \(BF16.enabled)")
          }
        }
      }
    }
  }

  func compareAllCases() {
    for (ci, g) in Self.cases.enumerated() {
      XCTAssertNil(g.problem)
      let x = randomFloats(g.inputCount, seed: 1 + UInt64(ci))
      let w = randomFloats(g.weightCount, seed: 100 + UInt64(ci))
      let bias = randomFloats(g.outChannels, seed: 200 + UInt64(ci))
      let dy = randomFloats(g.outputCount, seed: 300 + UInt64(ci))
      var yFast = [Float](repeating: .nan, count: g.outputCount), yRef = yFast
      Conv2DKernels.forward(g, x: x, w: w, bias: bias, y: &yFast, winograd: Winograd.enabled)
      ConvReference.forward(g, x: x, w: w, bias: bias, y: &yRef)
      assertConv(g, yFast, yRef, "forward \(g)")

      var dxFast = [Float](repeating: .nan, count: g.inputCount), dxRef = dxFast
      Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dxFast)
      ConvReference.backwardData(g, dy: dy, w: w, dx: &dxRef)
      assertClose(dxFast, dxRef, "backward-data \(g)")

      let seedW = randomFloats(g.weightCount, seed: 400)  // accumulation onto existing values
      var dwFast = seedW, dwRef = seedW
      var dbFast = [Float](repeating: 0.5, count: g.outChannels), dbRef = dbFast
      Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dwFast, dbias: &dbFast)
      ConvReference.backwardWeights(g, x: x, dy: dy, dw: &dwRef, dbias: &dbRef)
      assertClose(dwFast, dwRef, "backward-weights \(g)")
      assertClose(dbFast, dbRef, "backward-bias \(g)")
    }
  }

  func testSingleAndTwoThreadsAgree() {
    let g = Self.cases[5]
    let x = randomFloats(g.inputCount, seed: 5)
    let saved = Parallel.threadCount
    defer { Parallel.threadCount = saved }
    var outs = [[Float]]()
    for t in [1, 2] {
      Parallel.threadCount = t
      var dw = [Float](repeating: 0, count: g.weightCount)
      Conv2DKernels.backwardWeights(g, x: x, dy: randomFloats(g.outputCount, seed: 7), dw: &dw, dbias: nil)
      outs.append(dw)
    }
    assertClose(outs[0], outs[1], rtol: 1e-5, "threads")
  }

  func testSamePaddingFollowsTensorFlow() {
    // 7×7 stride 2 on 1024: out 512, pad 2 before, 3 after (peers/keras_bench.py).
    XCTAssertTrue(ConvGeometry.samePadding(input: 1024, kernel: 7, stride: 2, dilation: 1) == (2, 3))
    XCTAssertTrue(ConvGeometry.samePadding(input: 1024, kernel: 3, stride: 2, dilation: 1) == (0, 1))
    XCTAssertTrue(ConvGeometry.samePadding(input: 7, kernel: 3, stride: 1, dilation: 2) == (2, 2))
    XCTAssertTrue(ConvGeometry.samePadding(input: 5, kernel: 1, stride: 1, dilation: 1) == (0, 0))
  }

  func testGeometryProblems() {
    var g = Self.cases[0]
    g.groups = 2
    XCTAssertNotNil(g.problem)
    g = ConvGeometry(batch: 1, inChannels: 1, inHeight: 2, inWidth: 2, outChannels: 1, kernelH: 3, kernelW: 3)
    XCTAssertNotNil(g.problem)
  }
}

extension ConvKernelTests {
  /// Both backward-data paths (the stride-1 transposed forward and the general scatter) against the reference.
  /// Scatter, the transposed forward (stride 1) and the strided phases (`PhasedData`, stride > 1:
  /// strides 2 and 3, a stride above the kernel size, phases no tap reaches, uneven padding) each
  /// against the reference.
  func testBackwardDataPathsAgree() {
    var phased = 0
    for (ci, g) in Self.cases.enumerated() {
      let w = randomFloats(g.weightCount, seed: 100 + UInt64(ci)), dy = randomFloats(g.outputCount, seed: 300 + UInt64(ci))
      var ref = [Float](repeating: 0, count: g.inputCount), scatter = ref
      ConvReference.backwardData(g, dy: dy, w: w, dx: &ref)
      Conv2DKernels.backwardDataScatter(g, dy: dy, w: w, dx: &scatter)
      assertClose(scatter, ref, "scatter \(g)")

      if let (gt, wf) = Conv2DKernels.transposedForward(g, w) {
        var viaForward = ref
        Conv2DKernels.forward(gt, x: dy, w: wf.floats, bias: nil, y: &viaForward)
        assertClose(viaForward, ref, "transposed forward \(g)")
      }
      if let phases = Conv2DKernels.PhasedData.phases(g) {
        var viaPhases = [Float](repeating: .nan, count: g.inputCount)
        Conv2DKernels.PhasedData.backwardData(g, phases, dy: dy, w: w, dx: &viaPhases)
        assertClose(viaPhases, ref, "phases \(g)")
        phased += 1
      }
    }
    XCTAssertGreaterThanOrEqual(phased, 6, "strided cases the phases take")
  }
}

extension ConvKernelTests {
  /// The same inputs give bit-identical results run after run (resuming a run relies on it).
  func testKernelsAreDeterministic() {
    for g in [Self.cases[5], Self.cases[1], Self.cases[3]] {
      let x = randomFloats(g.inputCount, seed: 1), w = randomFloats(g.weightCount, seed: 2)
      let dy = randomFloats(g.outputCount, seed: 3)
      var runs = [[Float]]()
      for _ in 0..<3 {
        var y = [Float](repeating: 0, count: g.outputCount), dx = [Float](repeating: 0, count: g.inputCount)
        var dw = [Float](repeating: 0, count: g.weightCount)
        Conv2DKernels.forward(g, x: x, w: w, bias: nil, y: &y)
        Conv2DKernels.backwardData(g, dy: dy, w: w, dx: &dx)
        Conv2DKernels.backwardWeights(g, x: x, dy: dy, dw: &dw, dbias: nil)
        runs.append(y + dx + dw)
      }
      XCTAssertEqual(runs[0], runs[1])
      XCTAssertEqual(runs[0], runs[2])
    }
  }
}
