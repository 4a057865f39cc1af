@testable import Tessera
import TesseraKernels
@testable import TesseraPlanner
import TestSupport
import XCTest

/// Exact streamed training: the same logits, gradients and running statistics as the plain run,
/// tile by tile, for several splits and tile sizes; frozen BatchNorm; planner equal to the ledger.
final class StreamingTests: XCTestCase {
  struct Result { var logits: [Float]; var values: [String: [Float]] }

  /// These tests hold the streaming machinery to the plain step at 1e-5, so both run the direct
  /// kernel: Winograd's rounding depends on where its 4×4 tiles fall in each crop
  /// (`testWinogradTrainingStreamsWithinItsRounding` checks streaming with it).
  private var winograd = true
  override func setUp() {
    winograd = Winograd.inTraining
    Winograd.inTraining = false
  }
  override func tearDown() { Winograd.inTraining = winograd }

  func step(_ model: Sequential, _ x: Tensor, _ labels: [Int]) throws -> Result {
    let r = try model.trainingStep(input: x, labels: labels)
    var out = [String: [Float]]()
    for (n, p) in model.namedParameters() { out[n] = p.trainable ? p.grad!.toArray() : p.value.toArray() }
    return Result(logits: r.logits.toArray(), values: out)
  }

  func fcn(bnMomentum: Float = 0.9, initialized: Bool = true) -> Sequential {
    let m = Zoo.fcnLarge(classes: 4, bnMomentum: bnMomentum)
    if initialized { m.initializeParameters(seed: 2) }
    return m
  }

  func assertSame(_ got: Result, _ ref: Result, _ what: String, tolerance: Float = 1e-5,
                  file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertLessThanOrEqual(maxRelativeError(got.logits, ref.logits), tolerance, "\(what) logits", file: file, line: line)
    XCTAssertEqual(Set(got.values.keys), Set(ref.values.keys), file: file, line: line)
    for (name, r) in ref.values {
      // Every gradient, and the BatchNorm running statistics (updated once, with the whole image's).
      // A bias right before BatchNorm has a gradient of exactly 0 in exact arithmetic (BN removes
      // the mean): there only rounding is compared, against the layer's weight gradient.
      let g = got.values[name]!
      if name.hasSuffix("conv.bias"), let w = ref.values[name.replacingOccurrences(of: ".bias", with: ".weight")],
         (r.map(abs).max() ?? 0) < 1e-4 * (w.map(abs).max() ?? 0) {
        let zero = 1e-5 * w.map(abs).max()!
        XCTAssertLessThanOrEqual(g.map(abs).max() ?? 0, zero, "\(what) \(name): \(g.prefix(3)) is not 0", file: file, line: line)
        continue
      }
      XCTAssertLessThanOrEqual(maxRelativeError(g, r), tolerance, "\(what) \(name)", file: file, line: line)
    }
  }

  func testExactStreamingEqualsPlain() throws {
    // 200×168: not a multiple of any stride, so the last tiles are partial and padding is uneven.
    let x = randomTensor([2, 3, 200, 168], seed: 1), labels = [1, 3]
    let ref = try step(fcn(), x, labels)
    // (blocks streamed, tile): stem+stage1 (stride 8) with crops well inside the image; up to
    // stage3 (stride 32, 7 BatchNorm layers); everything before the head.
    for (blocks, tile) in [(2, 32), (2, 48), (2, 96), (4, 64), (4, 32), (5, 64)] {
      let m = try Streamed.apply(to: fcn(), blocks: blocks, tile: tile)
      XCTAssertEqual(m.namedParameters().map(\.0), fcn().namedParameters().map(\.0), "names unchanged")
      let s = m.layers[0].1 as! Streamed
      let geo = try s.geometry(for: x.shape)
      XCTAssertGreaterThan(geo.tiles.count, 1)
      assertSame(try step(m, x, labels), ref, "\(blocks) blocks, tile \(tile) (\(geo.tiles.count) tiles, halo \(geo.halo))")
    }
  }

  /// With Winograd in training (the default for 3×3 stride-1 layers of 16+ channels): the plain
  /// step within its rounding of the direct kernel's, and streamed steps — one segment, and four
  /// in tiles of their own inputs, with tile caching — within it of the plain step. Its rounding
  /// differs with each 4×4 tile's place in a crop, so 1e-4 here, where the direct kernel holds 1e-5.
  func testWinogradTrainingStreamsWithinItsRounding() throws {
    let x = randomTensor([2, 3, 200, 168], seed: 1), labels = [1, 3]
    let direct = try step(fcn(), x, labels)
    Winograd.inTraining = true
    XCTAssertTrue(Winograd.applies(ConvGeometry(batch: 2, inChannels: 32, inHeight: 25, inWidth: 21, outChannels: 32,
                                                kernelH: 3, kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)),
                  "stage1.conv2 at this size takes Winograd")
    let plain = try step(fcn(), x, labels)
    assertSame(plain, direct, "Winograd against the direct kernel", tolerance: 1e-4)
    let moved = plain.values.map { maxRelativeError($0.value, direct.values[$0.key]!) }.max() ?? 0
    XCTAssertGreaterThan(moved, 0, "Winograd ran: its rounding is not the direct kernel's")
    for (blocks, tile, splits) in [(2, 32, [Int]()), (4, 64, [1, 2, 3])] {
      let m = try Streamed.apply(to: fcn(), blocks: blocks, tile: tile, splits: splits)
      assertSame(try step(m, x, labels), plain, "Winograd, \(blocks) blocks cut at \(splits), tile \(tile)", tolerance: 1e-4)
    }
    let cached = try Streamed.apply(to: fcn(), blocks: 3, tile: 48)
    let s = cached.layers[0].1 as! Streamed
    s.cacheLevel = (0...s.leaves.count).last { s.cacheUses($0) > 0 }
    XCTAssertNotNil(s.cacheLevelNow)
    assertSame(try step(cached, x, labels), plain, "Winograd, three blocks, tile cache at leaf \(s.cacheLevel!)", tolerance: 1e-4)
    // Its workspaces in the training forward and backward-data: planner = ledger, streamed and plain.
    let input = [3, 384, 320]
    for model in [fcn(initialized: false), try Streamed.apply(to: fcn(initialized: false), blocks: 3, tile: 64, splits: [1, 2])] {
      let plan = try Planner.plan(model, name: "w", input: input, batch: 1)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(model, input: input, batch: 1)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "Winograd in training: planner = ledger")
    }
  }

  /// Layers other than fcn-large's: valid and explicit padding, dilation, stride 3, average pooling
  /// (TensorFlow's count of cells inside), plain BatchNorm, LeakyReLU; odd sizes, batch 3.
  func testOtherLayersAndPaddings() throws {
    func net() -> Sequential {
      let m = Sequential([
        ("a", Sequential([
          ("conv", Conv2D(inputChannels: 2, outputChannels: 4, kernelSize: 5, stride: 3, padding: .valid, bias: true)),
          ("bn", BatchNorm2D(channels: 4, epsilon: 1e-5, momentum: 0.9)),
          ("act", LeakyReLU(slope: 0.1)),
        ])),
        ("b", Sequential([
          ("conv", Conv2D(inputChannels: 4, outputChannels: 6, kernelSize: 3, padding: .explicit(top: 2, left: 1, bottom: 0, right: 2),
                          dilation: 2, bias: false)),
          ("bn", BatchNorm2D(channels: 6, fusedReLU: true)),
          ("pool", Pool2D(.average(countIncludePad: false), kernelSize: 3, stride: 2, padding: .same)),
        ])),
        ("head", Conv2D(inputChannels: 6, outputChannels: 3, kernelSize: 1)),
        ("gap", GlobalAvgPool2D()),
      ])
      m.initializeParameters(seed: 8)
      return m
    }
    let x = randomTensor([3, 2, 131, 97], seed: 9), labels = [0, 2, 1]
    let ref = try step(net(), x, labels)
    for (blocks, tile) in [(1, 18), (2, 24), (2, 60), (3, 30)] {
      let m = try Streamed.apply(to: net(), blocks: blocks, tile: tile)
      let geo = try (m.layers[0].1 as! Streamed).geometry(for: x.shape)
      XCTAssertGreaterThan(geo.tiles.count, 1, "\(blocks) blocks tile \(tile)")
      assertSame(try step(m, x, labels), ref, "\(blocks) blocks, tile \(tile) (\(geo.tiles.count) tiles, halo \(geo.halo))")
    }
  }

  /// Two segments in a row: the stem in 64-px tiles, then stages 1–2 in tiles of their own input
  /// (the stem's output, 4× smaller): the second passes its input gradient to the first.
  func chained(_ m: Sequential, _ t1: Int, _ t2: Int) throws -> Sequential {
    let L = m.layers
    return Sequential([("s1", try Streamed(Sequential([L[0]]), tile: t1)),
                       ("s2", try Streamed(Sequential([L[1], L[2]]), tile: t2))] + Array(L.dropFirst(3)))
  }

  func testChainedSegmentsAndInputGradient() throws {
    let x = randomTensor([2, 3, 200, 168], seed: 1), labels = [1, 3]
    let ref = try step(fcn(), x, labels)
    let m = try chained(fcn(), 64, 16)
    XCTAssertEqual(m.namedParameters().map(\.0), fcn().namedParameters().map(\.0))
    assertSame(try step(m, x, labels), ref, "stem in 64-px tiles, then stages 1–2 in 16-px tiles")
    // Three and four segments from `Streamed.apply(…splits:)`: each in tiles of its own input.
    for (blocks, splits) in [(3, [1, 2]), (4, [1, 2, 3]), (4, [2, 3])] {
      let s = try Streamed.apply(to: fcn(), blocks: blocks, tile: 64, splits: splits)
      let segments = s.layers.compactMap { $0.1 as? Streamed }
      XCTAssertEqual(segments.count, splits.count + 1)
      XCTAssertEqual(s.namedParameters().map(\.0), fcn().namedParameters().map(\.0))
      assertSame(try step(s, x, labels), ref, "\(blocks) blocks cut at \(splits), tiles \(segments.map(\.tile))")
    }
    // A segment's input gradient (and its parameters') against the unstreamed segment's.
    func seg() -> Sequential {
      let s = Sequential([
        ("conv", Conv2D(inputChannels: 2, outputChannels: 3, kernelSize: 3, stride: 2, padding: .same, bias: false)),
        ("bn", BatchNorm2D(channels: 3, fusedReLU: true)),
        ("conv2", Conv2D(inputChannels: 3, outputChannels: 2, kernelSize: 3, padding: .same)),
      ])
      s.initializeParameters(seed: 5)
      return s
    }
    let xs = randomTensor([1, 2, 26, 30], seed: 8), dy = randomTensor([1, 2, 13, 15], seed: 9)
    let plain = seg()
    _ = plain.forward(xs, training: true)
    let plainDx = plain.backward(dy, needInputGradient: true)!.toArray()
    for tile in [4, 8] {
      let inner = seg(), s = try Streamed(inner, tile: tile)
      _ = s.forward(xs, training: true)
      XCTAssertLessThanOrEqual(maxRelativeError(s.backward(dy, needInputGradient: true)!.toArray(), plainDx), 1e-5, "tile \(tile)")
      for ((n, p), (_, q)) in zip(plain.namedParameters(), inner.namedParameters()) where p.trainable {
        XCTAssertLessThanOrEqual(maxRelativeError(q.grad!.toArray(), p.grad!.toArray()), 1e-5, "tile \(tile) \(n)")
      }
    }
  }

  /// An input that is never held: regions of a synthetic source agree where they overlap, and a
  /// step read region by region equals the step on the whole tensor (and the planner, told the input
  /// is not resident, still equals the ledger).
  /// (Seed 5: seed 4's input puts a BatchNorm output of stage 2 or 3 — one image, 9–25 values a
  /// channel — within ~1e-7 of its ReLU's threshold, so the ~1e-7 that streaming's tile-wise sums
  /// move the stem's output by flips that ReLU: stage 4's gradients still agree to 7e-6, stage 2's
  /// and the stem's differ by 4–5 %, for every tile size and split alike. Any two summation orders
  /// do that at an exact tie; seeds 1–3, 5 and 6 agree to ~5e-6.)
  func testStepFromATileSource() throws {
    let source = SyntheticTileSource(shape: [1, 3, 160, 144], seed: 5)
    let whole = source.read(MapRegion(rows: 0..<160, cols: 0..<144))
    let part = source.read(MapRegion(rows: 37..<90, cols: 5..<100))
    XCTAssertEqual(part.toArray(), TensorTileSource(whole).read(MapRegion(rows: 37..<90, cols: 5..<100)).toArray())
    XCTAssertLessThanOrEqual(whole.toArray().map(abs).max()!, 1)
    let ref = try step(fcn(), whole, [2])
    let m = try Streamed.apply(to: fcn(), blocks: 3, tile: 32, split: 1)
    let r = try m.trainingStep(source: source, labels: [2])
    XCTAssertLessThanOrEqual(maxRelativeError(r.logits.toArray(), ref.logits), 1e-5)
    for (n, p) in m.namedParameters() where p.trainable {
      XCTAssertLessThanOrEqual(maxRelativeError(p.grad!.toArray(), ref.values[n]!), 1e-5, n)
    }
    let cold = try Streamed.apply(to: fcn(initialized: false), blocks: 3, tile: 32, split: 1)
    let plan = try Planner.plan(cold, name: "s", input: [3, 160, 144], batch: 1, optimizer: .sgd, inputResident: false)
    cold.initializeParameters(seed: 2)
    try cold.trainingStep(source: source, labels: [2])  // gradients allocated: the steady state
    let ledger = MemoryLedger.shared, before = ledger.currentBytes
    let measured = try ledger.measure { try cold.trainingStep(source: source, labels: [2]) }.peakBytes - before
    let resident = plan.parameterBytes + plan.gradientBytes
    XCTAssertEqual(plan.peakTrainingBytes - resident, measured, "planned step peak (input not resident) vs ledger")
  }

  func testStreamingWithCheckpointingAndInference() throws {
    let x = randomTensor([2, 3, 160, 128], seed: 3), labels = [0, 2]
    let ref = try step(fcn(), x, labels)
    for policy in [CheckpointingPolicy.all, .sqrt] {
      let m = policy.apply(to: try Streamed.apply(to: fcn(), blocks: 2, tile: 32))
      XCTAssertTrue(m.layers[0].1 is Streamed)
      XCTAssertTrue(m.layers[1].1 is Checkpointed)
      XCTAssertEqual(m.namedParameters().map(\.0), fcn().namedParameters().map(\.0))
      assertSame(try step(m, x, labels), ref, "streaming + checkpointing \(policy)")
    }
    // Inference (running statistics), tiled, equals the plain model's.
    let plain = fcn(), streamed = try Streamed.apply(to: fcn(), blocks: 3, tile: 32)
    _ = try step(plain, x, labels)
    _ = try step(streamed, x, labels)
    XCTAssertLessThanOrEqual(maxRelativeError(try streamed.predict(x).toArray(), try plain.predict(x).toArray()), 1e-5)
  }

  /// The deepest BatchNorm's sums from the output gradient (`sumsFromOutput`): taken where only a
  /// max pooling (or nothing) follows it, with one backward pass fewer; exact with negative and
  /// zero γ (the arg-max is then the window's smallest input, or a tie) and a shifted β.
  func testBatchNormSumsFromTheOutput() throws {
    let stem = try Streamed(Sequential([fcn().layers[0]]), tile: 32)
    XCTAssertEqual(stem.sumsFromOutput, 1, "conv, bn (+ReLU), max pool")
    XCTAssertEqual(stem.passes().count, 1, "one backward pass, not two")
    let stages = try Streamed(Sequential(Array(fcn().layers[0..<3])), tile: 32)
    XCTAssertEqual(stages.sumsFromOutput, stages.batchNorms.last, "a stage ends in BatchNorm+ReLU")
    XCTAssertEqual(stages.passes().count, stages.batchNorms.count)
    XCTAssertNil(try Streamed(Sequential(Array(fcn().layers[0..<3])), tile: 32, frozenBatchNorm: true).sumsFromOutput)
    let passes = try Streamed(Sequential(Array(fcn().layers[0..<3])), tile: 32, outputSums: false)
    XCTAssertNil(passes.sumsFromOutput, "turned off (a budget too tight for the output-sized tensor)")
    XCTAssertEqual(passes.passes().count, passes.batchNorms.count + 1)
    let avg = Sequential([("c", Conv2D(inputChannels: 3, outputChannels: 4, kernelSize: 3, padding: .same)),
                          ("bn", BatchNorm2D(channels: 4, fusedReLU: true)),
                          ("p", Pool2D(.average(countIncludePad: false), kernelSize: 2))])
    XCTAssertNil(try Streamed(avg, tile: 8).sumsFromOutput, "average pooling spreads the gradient")

    let x = randomTensor([2, 3, 136, 120], seed: 11), labels = [0, 2]
    func net() -> Sequential {
      let m = fcn()
      let g = m.namedParameters().first { $0.0 == "stem.bn.weight" }!.1, b = m.namedParameters().first { $0.0 == "stem.bn.bias" }!.1
      for i in 0..<g.count {
        g.value.floats[i] = [1.3, -0.7, 0, -1.1][i % 4]
        b.value.floats[i] = [0.2, 0.5, 0.1, -0.3][i % 4]
      }
      return m
    }
    let ref = try step(net(), x, labels)
    for (blocks, tile) in [(1, 32), (1, 48), (2, 64)] {
      assertSame(try step(try Streamed.apply(to: net(), blocks: blocks, tile: tile), x, labels), ref,
                 "\(blocks) blocks in \(tile)-px tiles, γ of both signs and 0")
    }
    assertSame(try step(try Streamed.apply(to: net(), blocks: 2, tile: 64, outputSums: false), x, labels), ref,
               "2 blocks in 64-px tiles, every BatchNorm pass")
    // BatchNorm without ReLU before a 3×3 stride-2 max pooling with padding: no mask, the arg-max decides.
    func plainBN() -> Sequential {
      let m = Sequential([
        ("a", Sequential([("conv", Conv2D(inputChannels: 3, outputChannels: 4, kernelSize: 3, stride: 2, padding: .same)),
                          ("bn", BatchNorm2D(channels: 4)),
                          ("pool", Pool2D(.max, kernelSize: 3, stride: 2, padding: .same))])),
        ("head", Conv2D(inputChannels: 4, outputChannels: 3, kernelSize: 1)),
        ("gap", GlobalAvgPool2D()),
      ])
      m.initializeParameters(seed: 4)
      return m
    }
    let xs = randomTensor([2, 3, 70, 58], seed: 12)
    let s = try Streamed.apply(to: plainBN(), blocks: 1, tile: 16)
    XCTAssertEqual((s.layers[0].1 as! Streamed).sumsFromOutput, 1)
    assertSame(try step(s, xs, [0, 1]), try step(plainBN(), xs, [0, 1]), "BatchNorm without ReLU, then max pooling")
  }

  func testFrozenBatchNorm() throws {
    // Frozen statistics make BatchNorm an affine map: tiles must equal one whole-image tile, and
    // the running statistics must not move.
    let x = randomTensor([1, 3, 176, 144], seed: 5), labels = [2]
    func frozen(_ tile: Int) throws -> Sequential {
      let m = fcn()
      for (n, p) in m.namedParameters() where n.hasSuffix("running_mean") || n.hasSuffix("running_var") {
        for i in 0..<p.count { p.value.floats[i] = n.hasSuffix("mean") ? Float(i % 3) * 0.1 : 1 + Float(i % 5) * 0.2 }
      }
      return try Streamed.apply(to: m, blocks: 3, tile: tile, frozenBatchNorm: true)
    }
    let whole = try step(try frozen(1024), x, labels)
    let tiled = try step(try frozen(32), x, labels)
    assertSame(tiled, whole, "frozen BatchNorm, tile 32 vs one tile")
    // The last tile's forward kept for backward: the same step, one tile read fewer.
    let keeping = try frozen(32), seg = keeping.layers[0].1 as! Streamed
    seg.keepsLastTile = true
    XCTAssertTrue(seg.keepsLastTileNow)
    assertSame(try step(keeping, x, labels), whole, "frozen BatchNorm, tile 32, last tile kept")
    let tiles = try seg.geometry(for: x.shape).tiles.count
    XCTAssertGreaterThan(tiles, 4)
    // Several tiles' forwards kept (`keptTiles`, their recordings stashed out of the layers while
    // the next tile runs): the same step; all of them, the same step again.
    for n in [3, tiles] {
      let m = try frozen(32)
      (m.layers[0].1 as! Streamed).keptTiles = n
      assertSame(try step(m, x, labels), whole, "frozen BatchNorm, tile 32, last \(n) tiles kept")
    }
    for keep in [0, 1, 3, tiles] {
      seg.keptTiles = keep
      let source = CountingTileSource(TensorTileSource(x))
      let y = try seg.forward(source: source, training: true)
      // The stashed tiles' recordings hold no crop: the stem's convolution reads it again.
      XCTAssertEqual(seg.stash.count, max(0, keep - 1))
      XCTAssertTrue(seg.stash.allSatisfy { $0.first is Conv2D.InputToRead }, "stashed crops let go")
      _ = seg.backward(randomTensor(y.shape, seed: 8), needInputGradient: false)
      // Each kept tile's forward is not run again, and all but the last one's crop is read again.
      XCTAssertEqual(source.reads, 2 * tiles - min(keep, 1), "tile reads, last \(keep) tiles kept")
    }
    let exactSegment = try Streamed.apply(to: fcn(), blocks: 3, tile: 32).layers[0].1 as! Streamed
    exactSegment.keepsLastTile = true
    XCTAssertFalse(exactSegment.keepsLastTileNow, "exact BatchNorm (several backward passes) keeps no tile")
    XCTAssertEqual(tiled.values["stem.bn.running_mean"]?[1], 0.1)
    // and it is not the batch-statistics computation
    let exact = try step(try Streamed.apply(to: fcn(), blocks: 3, tile: 32), x, labels)
    XCTAssertGreaterThan(maxRelativeError(tiled.values["stem.conv.weight"]!, exact.values["stem.conv.weight"]!), 1e-3)
  }

  func testGradientsMatchFiniteDifferences() throws {
    for frozen in [true, false] {
    let seg = Sequential([
      ("conv", Conv2D(inputChannels: 2, outputChannels: 3, kernelSize: 3, stride: 2, padding: .same, bias: false)),
      ("bn", BatchNorm2D(channels: 3, fusedReLU: true)),
      ("pool", Pool2D(.max, kernelSize: 3, stride: 2, padding: .same)),
      ("conv2", Conv2D(inputChannels: 3, outputChannels: 2, kernelSize: 3, padding: .same)),
    ])
    let s = try Streamed(seg, tile: 8, frozenBatchNorm: frozen)
    s.keepsLastTile = frozen  // frozen: the last tile's forward kept for backward
    seg.initializeParameters(seed: 4)
    (seg.layers[1].1 as! BatchNorm2D).runningMean.value.floats[0] = 0.3
    let x = randomTensor([1, 2, 30, 26], seed: 6)
    XCTAssertGreaterThan(try s.geometry(for: x.shape).tiles.count, 4)
    // h = 1e-3: with 1e-2 a max-pool/ReLU kink is crossed (the untiled model differs the same way)
    checkGradients(s, input: x, h: 1e-3, checkInput: false)
    }
  }

  func testTileMustBeAMultipleOfTheStride() throws {
    XCTAssertThrowsError(try Streamed.apply(to: fcn(), blocks: 4, tile: 100).layers[0].1.outputShape(for: [1, 3, 256, 256]))
    let s = try Streamed(Sequential(Array(fcn().layers.prefix(4))), tile: 100)
    XCTAssertThrowsError(try s.geometry(for: [1, 3, 256, 256])) { e in
      XCTAssertEqual("\(e)", "tile 100 is not a multiple of the streamed part's output stride 32; use 96 or 128")
    }
    let r = try ResidualBlockProbe.block()
    XCTAssertThrowsError(try Streamed(Sequential([("res", r)]), tile: 32)) { e in
      XCTAssertTrue("\(e)".contains("res (ResidualBlock) cannot be streamed"), "\(e)")
    }
    XCTAssertEqual(Streamed.streamableBlocks(of: fcn()), 6)
    XCTAssertEqual(Streamed.streamableBlocks(of: Zoo.model("resnet18", classes: 2)!), 4)
  }
}

enum ResidualBlockProbe {
  static func block() throws -> ResidualBlock { ResidualBlock.basic(inputChannels: 4, channels: 4, stride: 1) }
}
