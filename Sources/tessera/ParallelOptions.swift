import ArgumentParser
import Foundation
import Tessera
import TesseraDistributed
import TesseraKernels
import TesseraPlanner

extension ParallelOptions {
  /// The pipeline for `model` on `size` ranks: the planner's split into one stage per rank, within
  /// `stageMemory` when given (each stage's peak), balanced by MACs.
  func pipeline(_ model: Sequential, input: [Int], batch: Int, communicator c: Communicator, stageMemory: Int?,
                optimizer: OptimizerKind) throws -> (PipelineParallel, PipelinePlan) {
    guard batch >= microBatches else {
      throw ValidationError("--micro-batches \(microBatches) needs a batch of at least as many images, got \(batch)")
    }
    let plan = try Planner.planPipeline(model, input: input, batch: batch, microBatches: microBatches, stages: c.size,
                                        stageMemory: stageMemory, optimizer: optimizer)
    let stages = plan.stages.map(\.blocks)
    if c.rank == 0 {
      note("pipeline: " + plan.stages.enumerated().map { "rank \($0.offset): \($0.element.names.joined(separator: ", ")) (peak \(ByteSize.format($0.element.peakBytes)))" }.joined(separator: "; ") + "; \(microBatches) micro-batches")
    }
    return (try PipelineParallel(model: model, stages: stages, microBatches: microBatches, communicator: c), plan)
  }
}

/// How a command runs under `mpirun` (flags shared by step, bench train and train).
struct ParallelOptions: ParsableArguments {
  @Option(help: ArgumentHelp(
    "Under mpirun: data (each rank a share of every batch; the default there), tiles (the tiles of each image spread over the ranks; needs --tile) or pipeline (the network split into one stage per rank, GPipe-style).",
    discussion: "Needs a tessera built with Open MPI inside (swift build -c release --traits MPI) and mpirun -np N. Results equal one process's on the same global batch (pipeline: one process accumulating the same micro-batches)."))
  var parallel: String?
  @Option(help: "BatchNorm with --parallel data: sync (the global batch's statistics, so N ranks equal one process) or local (each rank's own share).")
  var bn = "sync"
  @Option(help: "Gradient bucket size in MiB for --parallel data (each bucket's allreduce starts as soon as backward is done with it).")
  var bucketMb = 25
  @Option(help: "Seconds a rank waits for the others in a collective before stopping with an error.")
  var commTimeout = 300
  @Option(help: "With --parallel pipeline: micro-batches per batch (more keep the stages busier; each stage stores every micro-batch's input).")
  var microBatches = 4

  enum Mode: String { case data, tiles, pipeline }

  func validate() throws {
    if let p = parallel, Mode(rawValue: p) == nil {
      throw ValidationError("--parallel must be data, tiles or pipeline, got '\(p)'")
    }
    try checkRange(microBatches, 1...Limits.maxBatch, "--micro-batches")
    guard bn == "sync" || bn == "local" else { throw ValidationError("--bn must be sync or local, got '\(bn)'") }
    try checkRange(bucketMb, 1...4096, "--bucket-mb")
    try checkRange(commTimeout, 1...86_400, "--comm-timeout")
  }

  /// The run's processes: nil for one process. Refuses --parallel outside mpirun or without MPI
  /// built in, and ranks started with different settings.
  func start() throws -> (communicator: Communicator, mode: Mode)? {
    let launch = Communicator.launch
    if parallel != nil && !Communicator.isAvailable {
      throw ValidationError("--parallel: \(Communicator.buildHint)")
    }
    guard let l = launch, l.size > 1 else {
      if let p = parallel {
        throw ValidationError("--parallel \(p) spreads a run over processes started by mpirun, e.g. mpirun -np 2 tessera … --parallel \(p)")
      }
      return nil
    }
    guard let c = try Communicator.start(timeout: Double(commTimeout)) else { return nil }
    quietRank = c.rank
    try c.checkSameSettings(Communicator.fingerprint())
    return (c, Mode(rawValue: parallel ?? "data")!)
  }
}

/// This process's rank under mpirun: ranks other than 0 print only warnings and errors, prefixed
/// with their rank.
nonisolated(unsafe) var quietRank = 0
