import ArgumentParser
import Foundation
import Tessera
import TesseraDistributed

/// How a command runs under `mpirun` (flags shared by step, bench train and train).
struct ParallelOptions: ParsableArguments {
  @Option(help: ArgumentHelp(
    "Under mpirun: data (each rank a share of every batch; the default there) or tiles (the tiles of each image spread over the ranks; needs --tile).",
    discussion: "Needs a tessera built with Open MPI inside (swift build -c release --traits MPI) and mpirun -np N. Results equal one process's on the same global batch."))
  var parallel: String?
  @Option(help: "BatchNorm with --parallel data: sync (the global batch's statistics, so N ranks equal one process) or local (each rank's own share).")
  var bn = "sync"
  @Option(help: "Gradient bucket size in MiB for --parallel data (each bucket's allreduce starts as soon as backward is done with it).")
  var bucketMb = 25
  @Option(help: "Seconds a rank waits for the others in a collective before stopping with an error.")
  var commTimeout = 300

  enum Mode: String { case data, tiles }

  func validate() throws {
    if let p = parallel, Mode(rawValue: p) == nil {
      if p == "pipeline" {
        throw ValidationError("--parallel pipeline is not built yet; use data or tiles (see README, \"Beyond one machine\")")
      }
      throw ValidationError("--parallel must be data or tiles, got '\(p)'")
    }
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
