import Tessera
import TesseraPlanner
import XCTest

/// The cost model against numbers worked out by hand.
final class ClusterTests: XCTestCase {
  func testDataParallelEstimateByHand() throws {
    let model = Zoo.fcnLarge(classes: 10)
    let plan = try Planner.plan(model, name: "fcn-large", input: [3, 64, 64], batch: 8, optimizer: .momentum)
    let bns = plan.layers.filter { $0.kind.hasPrefix("BatchNorm") }.count
    XCTAssertGreaterThan(bns, 0)
    // One rank: the measured step, no communication.
    let one = Planner.dataParallelEstimate(plan: plan, stepSeconds: 2, ranks: 1, linkGbps: 10)
    XCTAssertEqual(one.secondsPerStep, 2)
    XCTAssertEqual(one.bytesSent, 0)
    XCTAssertEqual(one.speedup, 1)
    // Four ranks over 8 Gbit/s (1 GB/s), 1 ms a message: 2 of the 8 images each; a ring sends 3/2 of
    // the gradient bytes in 2·3 messages per bucket (1 bucket + the packed small parameters); the
    // BatchNorm sums 3 per layer, ⌈log2 4⌉ = 2 messages each, blocking.
    let e = Planner.dataParallelEstimate(plan: plan, stepSeconds: 2, ranks: 4, linkGbps: 8, latency: 1e-3)
    XCTAssertEqual(e.computeSeconds, 0.5, accuracy: 1e-12)
    XCTAssertEqual(e.bytesSent, plan.gradientBytes * 3 / 2)
    let hideable = 2 * 6 * 1e-3 + Double(plan.gradientBytes) * 1.5 / 1e9, blocking = Double(3 * bns) * 2 * 1e-3
    XCTAssertEqual(e.commSeconds, hideable + blocking, accuracy: 1e-9)
    XCTAssertEqual(e.secondsPerStep, 0.5 + hideable + blocking, accuracy: 1e-9)
    XCTAssertEqual(e.secondsPerStepOverlapped, 0.5 + blocking + max(0, hideable - 0.5 * 2 / 3), accuracy: 1e-9)
    XCTAssertEqual(e.efficiency, 2 / e.secondsPerStepOverlapped / 4, accuracy: 1e-12)
  }

  func testTileParallelDividesOnlyTheStreamedShare() throws {
    let model = try Streamed.apply(to: Zoo.fcnLarge(classes: 10), blocks: 2, tile: 64)
    let plan = try Planner.plan(model, name: "fcn-large", input: [3, 256, 256], batch: 1, optimizer: .momentum)
    let e = try Planner.tileParallelEstimate(model: model, plan: plan, stepSeconds: 10, streamedShare: 0.8, ranks: 4, linkGbps: 10)
    XCTAssertEqual(e.computeSeconds, 10 * (0.8 / 4 + 0.2), accuracy: 1e-12)
    // The streamed output (stage1's, 1×C×64×64 at stride 4) is among the summed bytes.
    let out = try model.layers[0].1.outputShape(for: [1, 3, 256, 256])
    XCTAssertGreaterThan(e.allreduceBytes, out.reduce(4, *))
    XCTAssertLessThan(e.speedup, 1 / 0.2 + 1e-9, "the unstreamed rest bounds the speed-up")
  }
}

/// The pipeline split: every stage within its memory, the slowest stage as light as a split can make it.
final class PipelinePlanTests: XCTestCase {
  func testStagesFitTheirMemoryAndBalanceTheWork() throws {
    let model = Zoo.fcnLarge(classes: 10)
    let input = [3, 512, 512]
    let free = try Planner.planPipeline(model, input: input, batch: 8, microBatches: 4, stages: 3, stageMemory: nil, optimizer: .momentum, threads: 1)
    XCTAssertEqual(free.stages.map(\.blocks.count).reduce(0, +), model.layers.count)
    XCTAssertEqual(free.stages.first?.blocks.lowerBound, 0)
    for (a, b) in zip(free.stages, free.stages.dropFirst()) { XCTAssertEqual(a.blocks.upperBound, b.blocks.lowerBound) }
    // Against every split into 3 (each stage's peak from pipelineStagePeak): within each memory, the
    // split's slowest stage is the lightest of those that fit.
    let perBlock = try Planner.planPipeline(model, input: input, batch: 8, microBatches: 4, stages: model.layers.count,
                                            stageMemory: nil, optimizer: .momentum, threads: 1).stages
    let shapes = perBlock.map(\.input)
    for memory in [nil, 75 << 20, 80 << 20] as [Int?] {
      var bestMax = Int.max
      for i in 1..<(perBlock.count - 1) where shapes[i].count == 3 {
        for j in (i + 1)..<perBlock.count where shapes[j].count == 3 {
          let ranges = [0..<i, i..<j, j..<perBlock.count]
          let peaks = try ranges.map { try Planner.pipelineStagePeak(model, blocks: $0, input: shapes[$0.lowerBound], batch: 8,
                                                                     microBatches: 4, optimizer: .momentum, threads: 1) }
          guard memory.map({ m in peaks.allSatisfy { $0 <= m } }) ?? true else { continue }
          bestMax = min(bestMax, ranges.map { r in r.reduce(0) { $0 + perBlock[$1].macs } }.max()!)
        }
      }
      let split = try Planner.planPipeline(model, input: input, batch: 8, microBatches: 4, stages: 3, stageMemory: memory,
                                           optimizer: .momentum, threads: 1)
      XCTAssertEqual(split.stages.map(\.macs).max(), bestMax, "memory \(String(describing: memory))")
      if let m = memory { XCTAssert(split.stages.allSatisfy { $0.peakBytes <= m }) }
    }
    // Each stage's peak is its own plan: more micro-batches store more inputs but run smaller steps.
    let more = try Planner.planPipeline(model, input: input, batch: 8, microBatches: 8, stages: 3, stageMemory: nil, optimizer: .momentum, threads: 1)
    XCTAssertLessThan(more.stages[0].peakBytes, free.stages[0].peakBytes)
    // Too little memory for any split: refused, naming the block that cannot fit.
    XCTAssertThrowsError(try Planner.planPipeline(model, input: input, batch: 8, microBatches: 4, stages: 3, stageMemory: 1 << 20,
                                                  optimizer: .momentum, threads: 1)) { e in
      XCTAssert("\(e)".contains("alone needs"), "\(e)")
    }
    XCTAssertThrowsError(try Planner.planPipeline(model, input: input, batch: 8, microBatches: 4, stages: 8, stageMemory: nil))
    XCTAssertThrowsError(try Planner.planPipeline(model, input: input, batch: 2, microBatches: 4, stages: 2, stageMemory: nil))
  }
}
