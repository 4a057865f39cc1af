import Tessera
import TesseraKernels
@testable import TesseraPlanner
import TestSupport
import XCTest

/// The planner's side of streamed training: planned peaks equal to the ledger's (kept tiles, tile
/// caches, segments), what it keeps within a budget, and the cost model's ranking. (The exact-step
/// checks are in StreamingTests.swift; both share its helpers and its direct-kernel setUp.)
extension StreamingTests {
  func testPlannerEqualsLedgerAndStreamingSavesMemory() throws {
    let input = [3, 384, 320], batch = 1
    let plainPeak = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(fcn(initialized: false), input: input, batch: batch).training
    for (blocks, tile, frozen, precision) in [(2, 64, false, StoragePrecision.fp32), (4, 128, false, .fp32),
                                              (4, 64, true, .fp32), (3, 64, false, .fp16), (0, 0, false, .fp32),
                                              (-3, 128, false, .fp32), (3, 64, true, .fp16)] {
      ActivationStorage.precision = precision
      defer { ActivationStorage.precision = .fp32 }
      // 0: two segments by hand; −3: three blocks as three segments.
      let m = blocks == 0 ? try chained(fcn(initialized: false), 128, 32)
        : blocks < 0 ? try Streamed.apply(to: fcn(initialized: false), blocks: -blocks, tile: tile, splits: [1, 2])
        : try Streamed.apply(to: fcn(initialized: false), blocks: blocks, tile: tile, frozenBatchNorm: frozen)
      // The fp16 frozen case keeps its last tile's forward for backward (`keepsLastTile`).
      if frozen && precision == .fp16 { (m.layers[0].1 as! Streamed).keepsLastTile = true }
      let plan = try Planner.plan(m, name: "s", input: input, batch: batch)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(m, input: input, batch: batch)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "\(blocks) blocks tile \(tile) frozen \(frozen) \(precision): training")
      XCTAssertEqual(plan.peakInferenceBytes, measured.inference, "\(blocks) blocks tile \(tile): inference")
      if precision == .fp32 { XCTAssertLessThan(measured.training, plainPeak, "\(blocks) blocks tile \(tile)") }
      print("streaming \(blocks) blocks tile \(tile) frozen \(frozen) \(precision): \(measured.training) B vs plain \(plainPeak) B")
    }
  }
  /// The planner keeps a frozen segment's last tile for backward unless that passes the budget;
  /// its estimate is then lower and its plan the plan of what runs.
  func testPlannerKeepsTheLastTileWithinTheBudget() throws {
    let input = [3, 384, 320]
    var grows = 0
    for tile in [64, 128] {
      let m = try Streamed.apply(to: fcn(initialized: false), blocks: 3, tile: tile, frozenBatchNorm: true)
      let without = try Planner.plan(m, name: "", input: input, batch: 1).peakTrainingBytes
      let off = try Planner.streamingCost(m, input: input, batch: 1)
      (m.layers[0].1 as! Streamed).keepsLastTile = true
      let with = try Planner.plan(m, name: "", input: input, batch: 1).peakTrainingBytes
      if with > without { grows += 1 }
      let settings = StreamingSettings(tile: tile, blocks: 3, frozenBatchNorm: true, split: 0)
      for budget in [nil, with, with - 1] {
        let c = try Planner.applyStreaming(fcn(initialized: false), settings, input: input, batch: 1, budget: budget)
        let seg = c.model.layers[0].1 as! Streamed
        let keeps = budget.map { with <= max(without, $0) } ?? true
        XCTAssertEqual(seg.keepsLastTile, keeps, "tile \(tile), budget \(budget ?? 0): \(with) B kept against \(without) B")
        XCTAssertEqual(c.plan.peakTrainingBytes, keeps ? with : without)
        if keeps { XCTAssertLessThan(c.relativeTime, off) } else { XCTAssertEqual(c.relativeTime, off) }
        XCTAssertEqual(c.keepsLastTile, keeps)
        // A memory mode made from the choice (`train --batch auto`) runs what was planned.
        var kept = settings
        kept.keepsLastTile = c.keepsLastTile
        let run = try MemoryMode(precision: .fp32, checkpointing: .none, streaming: kept).apply(to: fcn(initialized: false))
        XCTAssertEqual((run.layers[0].1 as! Streamed).keepsLastTile, keeps)
      }
    }
    XCTAssertGreaterThan(grows, 0, "a case where keeping the tile grows the peak, so the budget decides")
  }

  /// Several tiles kept (`Streamed.keptTiles`): the plan equals the ledger; within a budget the
  /// planner keeps the most whose plan fits, and the estimate falls with each.
  func testPlannerKeepsAsManyTilesAsTheBudgetHolds() throws {
    let input = [3, 384, 320]
    func frozen() throws -> Sequential {
      try Streamed.apply(to: fcn(initialized: false), blocks: 3, tile: 64, frozenBatchNorm: true)
    }
    let tiles = try (frozen().layers[0].1 as! Streamed).geometry(for: [1] + input).tiles.count
    XCTAssertGreaterThan(tiles, 6)
    var peaks = [Int](), costs = [Double]()
    for n in [0, 1, 3, tiles] {
      // A fresh model each time: `measure` counts from what the model holds (its gradients).
      let m = try frozen()
      (m.layers[0].1 as! Streamed).keptTiles = n
      let plan = try Planner.plan(m, name: "", input: input, batch: 1)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(m, input: input, batch: 1)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "\(n) of \(tiles) tiles kept")
      peaks.append(plan.peakTrainingBytes)
      costs.append(try Planner.streamingCost(m, input: input, batch: 1))
    }
    XCTAssertLessThan(peaks[1], peaks[2], "three tiles kept hold more than one")
    XCTAssertLessThan(peaks[2], peaks[3])
    XCTAssertEqual(costs, costs.sorted(by: >), "each kept tile saves its forward: \(costs)")
    let settings = StreamingSettings(tile: 64, blocks: 3, frozenBatchNorm: true, split: 0)
    // A budget of three kept tiles' plan keeps three (or more, when a fourth fits the same bytes).
    let c = try Planner.applyStreaming(fcn(initialized: false), settings, input: input, batch: 1, budget: peaks[2])
    XCTAssertGreaterThanOrEqual(c.keptTiles, 3)
    XCTAssertLessThan(c.keptTiles, tiles)
    XCTAssertLessThanOrEqual(c.plan.peakTrainingBytes, peaks[2])
    XCTAssertEqual((c.model.layers[0].1 as! Streamed).keptTiles, c.keptTiles)
    // Without a budget: one, as before; asked for, as many as asked.
    XCTAssertEqual(try Planner.applyStreaming(fcn(initialized: false), settings, input: input, batch: 1, budget: nil).keptTiles, 1)
    var asked = settings
    asked.keptTiles = 5
    let five = try Planner.applyStreaming(fcn(initialized: false), asked, input: input, batch: 1, budget: nil)
    XCTAssertEqual(five.keptTiles, 5)
    let run = try MemoryMode(precision: .fp32, checkpointing: .none, streaming: asked).apply(to: fcn(initialized: false))
    XCTAssertEqual((run.layers[0].1 as! Streamed).keptTiles, 5)
  }

  /// Each tile's input of one layer kept across the BatchNorm passes (`Streamed.cacheLevel`): the
  /// same step (to the plain step's tolerance, against streaming without it), fewer tile reads —
  /// one per run that starts from the cache — and the planner's peak equal to the ledger's.
  func testCachedTilesGiveTheSameStep() throws {
    let x = randomTensor([2, 3, 200, 168], seed: 1), labels = [1, 3]
    let ref = try step(try Streamed.apply(to: fcn(), blocks: 3, tile: 48), x, labels)
    let plainRef = try step(fcn(), x, labels)
    let probe = try Streamed(Sequential(Array(fcn().layers[0..<3])), tile: 48)
    let levels = (0...probe.leaves.count).filter { probe.cacheUses($0) > 0 }
    XCTAssertEqual(levels.first, 1, "the stem's convolution output: used by every later run but the last")
    XCTAssertFalse(levels.contains(probe.leaves.count), "the output is no layer's input")
    XCTAssertEqual(probe.cacheUses(probe.batchNorms.last!), 0, "the deepest BatchNorm's input: its pass fills it, none after")
    for j in levels {
      let m = try Streamed.apply(to: fcn(), blocks: 3, tile: 48), seg = m.layers[0].1 as! Streamed
      seg.cacheLevel = j
      XCTAssertEqual(seg.cacheLevelNow, j)
      let got = try step(m, x, labels)
      assertSame(got, ref, "3 blocks, tile 48, input of \(seg.paths[j]) cached", tolerance: 1e-6)
      assertSame(got, plainRef, "3 blocks, tile 48, input of \(seg.paths[j]) cached, against the plain step")
      let tiles = try seg.geometry(for: x.shape).tiles.count
      let source = CountingTileSource(TensorTileSource(x))
      let y = try seg.forward(source: source, training: true)
      _ = seg.backward(randomTensor(y.shape, seed: 8), needInputGradient: false)
      XCTAssertEqual(source.reads, (seg.runs().count - seg.cacheUses(j)) * tiles, "tile reads, level \(j)")
    }
    let frozen = try Streamed(Sequential(Array(fcn().layers[0..<3])), tile: 48, frozenBatchNorm: true)
    frozen.cacheLevel = 3
    XCTAssertNil(frozen.cacheLevelNow, "one pass each way: nothing to start from")

    // Planner = ledger, the cache filled tile by tile and released before the pass that records
    // below it; one segment and three segments.
    let input = [3, 384, 320]
    for (splits, level) in [([Int](), 1), ([], 3), ([], 4), ([1, 2], 1)] {
      let model = try Streamed.apply(to: fcn(initialized: false), blocks: 3, tile: 64, splits: splits)
      let segments = model.layers.compactMap { $0.1 as? Streamed }
      let without = try Planner.plan(model, name: "s", input: input, batch: 1).peakTrainingBytes
      for seg in segments where seg.cacheUses(level) > 0 { seg.cacheLevel = level }
      XCTAssertTrue(segments.contains { $0.cacheLevelNow != nil })
      let plan = try Planner.plan(model, name: "s", input: input, batch: 1)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(model, input: input, batch: 1)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "3 blocks as \(splits), level \(level) cached: training")
      XCTAssertEqual(plan.peakInferenceBytes, measured.inference)
      print("3 blocks as \(splits), level \(level) cached: \(plan.peakTrainingBytes) B, \(without) B without")
    }
  }

  /// The planner caches where it fits: without a budget where the peak does not grow, within one
  /// up to it less `cacheHeadroom`; the estimate falls with it, and a memory mode made from the
  /// choice runs it.
  func testPlannerCachesWithinTheBudget() throws {
    let input = [3, 384, 320]
    let settings = StreamingSettings(tile: 64, blocks: 3, split: 0)
    let none = try Planner.applyStreaming(fcn(initialized: false), { var s = settings; s.cacheLevels = []; return s }(),
                                          input: input, batch: 1)
    XCTAssertEqual(none.cacheLevels, [nil])
    let roomy = none.plan.peakTrainingBytes + Planner.cacheHeadroom + (64 << 20)
    for budget in [nil, none.plan.peakTrainingBytes, roomy] {
      let c = try Planner.applyStreaming(fcn(initialized: false), settings, input: input, batch: 1, budget: budget)
      XCTAssertLessThanOrEqual(c.plan.peakTrainingBytes, max(none.plan.peakTrainingBytes, (budget ?? 0) - Planner.cacheHeadroom))
      let seg = c.model.layers[0].1 as! Streamed
      XCTAssertEqual(c.cacheLevels, [seg.cacheLevel])
      if let j = seg.cacheLevel {
        XCTAssertGreaterThan(seg.cacheUses(j), 0)
        XCTAssertLessThan(c.relativeTime, none.relativeTime, "budget \(budget ?? 0)")
      } else {
        XCTAssertEqual(c.relativeTime, none.relativeTime)
      }
      var run = settings
      run.cacheLevels = c.cacheLevels
      let m = try MemoryMode(precision: .fp32, checkpointing: .none, streaming: run).apply(to: fcn(initialized: false))
      XCTAssertEqual((m.layers[0].1 as! Streamed).cacheLevel, seg.cacheLevel)
    }
    let c = try Planner.applyStreaming(fcn(initialized: false), settings, input: input, batch: 1, budget: roomy)
    XCTAssertNotNil(c.cacheLevels[0], "64 MiB to spare beyond the headroom holds some level's tensors")
  }

  /// The cost model ranks what costs more as costing more: each streamed BatchNorm adds passes, a
  /// frozen one none; a plain step is 1×; a backward-heavy plain step (the measured backward shares)
  /// makes the same extra passes a smaller share of it.
  func testStreamingCostRanksThePasses() throws {
    func est(_ blocks: Int, split: Int? = 0, frozen: Bool = false) throws -> Double {
      let m = try Streamed.apply(to: Zoo.fcnLarge(classes: 4), blocks: blocks, tile: 256, frozenBatchNorm: frozen, split: split)
      return try Planner.streamingCost(m, input: [3, 1024, 1024], batch: 1)
    }
    XCTAssertEqual(try Planner.streamingCost(Zoo.fcnLarge(classes: 4), input: [3, 1024, 1024], batch: 1), 1)
    let stem = try est(1), frozen = try est(3, frozen: true), three = try est(3), six = try est(6)
    XCTAssertGreaterThan(stem, 1)
    XCTAssertLessThan(stem, frozen)
    XCTAssertLessThan(frozen, three, "frozen BatchNorm: one pass each way")
    XCTAssertLessThan(three, six)
    XCTAssertLessThan(try est(3, split: 1), three, "a cut after the stem spares its passes over the stem")
    // The plain step's backward at its measured shares: a strided convolution's backward-data and
    // backward-weights cost more than its forward.
    let conv = Conv2D(inputChannels: 16, outputChannels: 32, kernelSize: (3, 3), stride: (2, 2), padding: .same)
    let w = try Planner.stepWork(conv, input: [1, 16, 64, 64], inputGradient: true)
    let f = try Planner.leafWork(conv, [1, 16, 64, 64], [1, 32, 32, 32])
    XCTAssertGreaterThan(w, 3 * f)
  }
}

/// A tile source that counts its reads.
final class CountingTileSource: TileSource {
  let inner: TileSource
  private(set) var reads = 0
  init(_ inner: TileSource) { self.inner = inner }
  var shape: [Int] { inner.shape }
  func read(_ region: MapRegion) throws -> Tensor {
    reads += 1
    return try inner.read(region)
  }
}
