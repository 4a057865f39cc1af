import Tessera
import TesseraKernels

/// One stage of a pipeline: consecutive top-level blocks run by one rank.
public struct PipelineStage: Sendable, Codable, Equatable {
  /// Indices of its top-level blocks, and their names.
  public var blocks: Range<Int>
  public var names: [String]
  /// (C, H, W) of one image at its input.
  public var input: [Int]
  /// Forward multiply-accumulates per image.
  public var macs: Int
  /// The planned ledger peak of the rank that runs it.
  public var peakBytes: Int
}

/// A network split into consecutive stages for GPipe-style training over ranks: the batch in
/// `microBatches` micro-batches of at most `microBatch` images.
public struct PipelinePlan: Sendable, Codable, Equatable {
  public var stages: [PipelineStage]
  public var microBatches: Int
  public var microBatch: Int
  public var stageMemory: Int?
  /// Largest stage's MACs over the mean (1 = perfectly balanced).
  public var imbalance: Double
}

extension Planner {
  /// The planned peak of a rank running `blocks` of `model` as a pipeline stage, with re-materialisation
  /// (GPipe): in forward each micro-batch runs without keeping anything and its input is stored; in
  /// backward each stored input is run again keeping what backward needs. So the peak is one
  /// micro-batch's training step on the stage (its parameters, gradients and optimizer state, with
  /// the gradient of its input when the stage is not the first) plus the other micro-batches' stored
  /// inputs — and, for the first stage, the whole batch it cuts them from; for the last, the logits
  /// of every micro-batch.
  public static func pipelineStagePeak(_ model: Sequential, blocks: Range<Int>, input: [Int], batch: Int, microBatches: Int,
                                       optimizer: OptimizerKind, threads: Int = Parallel.threadCount) throws -> Int {
    let micro = (batch + microBatches - 1) / microBatches
    let stage = Sequential(Array(model.layers[blocks]))
    let p = try plan(stage, name: "stage", input: input, batch: micro, optimizer: optimizer, threads: threads,
                     inputGradient: blocks.lowerBound > 0, logits: false, holdOutput: blocks.upperBound == model.layers.count)
    let perImage = input.reduce(4, *)
    var peak = p.peakTrainingBytes + (batch - micro) * perImage
    if blocks.lowerBound == 0 { peak += batch * perImage }
    // The last stage gathers the logits of every micro-batch (the plan counts one micro-batch's).
    if blocks.upperBound == model.layers.count, let k = try stage.outputShape(for: [1] + input).last {
      peak += (batch - micro) * k * 4
    }
    return peak
  }

  /// Splits `model`'s top-level blocks into `stages` consecutive stages whose planned peaks fit
  /// `stageMemory` (when given) and whose MACs are as even as they can be (the slowest stage sets
  /// the pace). Throws when no split fits, naming the smallest peak a stage cannot go under.
  public static func planPipeline(_ model: Sequential, input: [Int], batch: Int, microBatches: Int, stages: Int,
                                  stageMemory: Int?, optimizer: OptimizerKind = .momentum,
                                  threads: Int = Parallel.threadCount) throws -> PipelinePlan {
    let L = model.layers
    guard stages >= 1, stages <= L.count else {
      throw SizeError("the model has \(L.count) top-level blocks: it can be split into 1 to \(L.count) stages, not \(stages)")
    }
    guard microBatches >= 1, microBatches <= batch else {
      throw SizeError("micro-batches must be between 1 and the batch (\(batch)), got \(microBatches)")
    }
    // Each block's input shape and MACs (from the whole model's plan: its rows are named by block).
    let whole = try plan(model, name: "model", input: input, batch: 1, optimizer: optimizer, threads: threads)
    let macs = L.map { block in whole.layers.filter { $0.name == block.0 || $0.name.hasPrefix(block.0 + ".") }.reduce(0) { $0 + $1.macs } }
    var shapes = [input]
    for (_, layer) in L { shapes.append(Array(try layer.outputShape(for: [1] + shapes.last!).dropFirst())) }
    var peaks = [Range<Int>: Int]()
    func peak(_ r: Range<Int>) throws -> Int {
      if let p = peaks[r] { return p }
      let p = try pipelineStagePeak(model, blocks: r, input: shapes[r.lowerBound], batch: batch, microBatches: microBatches,
                                    optimizer: optimizer, threads: threads)
      peaks[r] = p
      return p
    }
    func cost(_ r: Range<Int>) -> Int { r.reduce(0) { $0 + macs[$1] } }
    // best[k][j]: the least largest-stage cost splitting blocks 0..<j into k stages that fit.
    let inf = Int.max
    var best = [[Int]](repeating: [Int](repeating: inf, count: L.count + 1), count: stages + 1)
    var cut = [[Int]](repeating: [Int](repeating: -1, count: L.count + 1), count: stages + 1)
    best[0][0] = 0
    for k in 1...stages {
      for j in k...L.count {
        // (a stage starts where the map is still (C, H, W): not after the flatten)
        for i in (k - 1)..<j where best[k - 1][i] < inf && shapes[i].count == 3 {
          if let m = stageMemory, try peak(i..<j) > m { continue }
          let c = max(best[k - 1][i], cost(i..<j))
          if c < best[k][j] { (best[k][j], cut[k][j]) = (c, i) }
        }
      }
    }
    guard best[stages][L.count] < inf else {
      let single = try (0..<L.count).filter { shapes[$0].count == 3 }.map { (L[$0].0, try peak($0..<($0 + 1))) }
      let worst = single.max { $0.1 < $1.1 }
      throw SizeError("no split of the \(L.count) blocks into \(stages) stages fits \(ByteSize.format(stageMemory ?? 0)) per stage\(worst.map { " (\($0.0) alone needs \(ByteSize.format($0.1)))" } ?? ""); give more stages (at most \(L.count)), more micro-batches or more memory")
    }
    var ranges = [Range<Int>](), j = L.count
    for k in stride(from: stages, to: 0, by: -1) {
      let i = cut[k][j]
      ranges.insert(i..<j, at: 0)
      j = i
    }
    let out = try ranges.map { r in
      PipelineStage(blocks: r, names: L[r].map(\.0), input: shapes[r.lowerBound], macs: cost(r), peakBytes: try peak(r))
    }
    let mean = Double(out.reduce(0) { $0 + $1.macs }) / Double(stages)
    return PipelinePlan(stages: out, microBatches: microBatches, microBatch: (batch + microBatches - 1) / microBatches,
                        stageMemory: stageMemory, imbalance: mean > 0 ? Double(out.map(\.macs).max()!) / mean : 1)
  }
}
