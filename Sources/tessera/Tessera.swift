import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraPlanner
import TesseraTIFF
import TesseraDistributed

@main
struct TesseraCLI: ParsableCommand {
  /// Negative numbers are values, not options: `--lr -1` reaches the option (and its range check)
  /// instead of "Missing value for '--lr'".
  static func main() {
    var args = Array(CommandLine.arguments.dropFirst())
    var i = 0
    while i + 1 < args.count {
      if args[i].hasPrefix("--"), !args[i].contains("="), args[i + 1].count > 1, args[i + 1].hasPrefix("-"),
         Double(args[i + 1]) != nil
      {
        args[i] += "=" + args.remove(at: i + 1)
      }
      i += 1
    }
    TIFFFile.registerWithTesseraData()
    do {
      var command = try parseAsRoot(args)
      try command.run()
    } catch {
      // Under mpirun a usage error is the same on every rank: said once, by rank 0.
      // A rank's own failure (a file only it reads) is said by that rank.
      if let l = Communicator.launch, l.rank != 0 {
        if Communicator.shared != nil && !(error is ValidationError || error is DistributedError || error is ExitCode) {
          FileHandle.standardError.write("rank \(l.rank): \(fullMessage(for: error))\n".data(using: .utf8)!)
        }
        Foundation.exit(exitCode(for: error).rawValue)
      }
      exit(withError: error)
    }
    Communicator.shared?.finish()
  }

  static let configuration = CommandConfiguration(
    commandName: "tessera",
    abstract: "Train and run convolutional networks on images too large for memory.",
    discussion: prose("""
      Quick start:
        swift run -c release tessera demo
            full resolution vs the seed's 112×112, on built-in large images
        tessera plan --model resnet50 --input 3x2400x2400 --budget 16GiB
            will it fit? what batch? which memory mode?
        tessera split --data photos/ --out split.csv
        tessera train --manifest split.csv --image-size 512 --out runs/a
        tessera eval --run runs/a          the run's held-out images
        tessera predict --run runs/a photo.jpg

      Threads: --threads N on any command, or TESSERA_THREADS=N (default: all cores). Results go
      to stdout, progress and warnings to stderr; --json prints one JSON object. Every command has
      --help.
      """),
    subcommands: [DemoCommand.self, PlanCommand.self, RFCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, ReportCommand.self, InfoCommand.self, PreviewCommand.self, ConvertCommand.self, PatchesCommand.self, SplitCommand.self, PCACommand.self, StepCommand.self, ForwardCommand.self, ExportCommand.self, BenchCommand.self]
  )
}

struct GlobalOptions: ParsableArguments {
  @Option(name: .long, help: "Worker threads for the kernels (default: TESSERA_THREADS or all cores).")
  var threads: Int?

  func apply() throws {
    if let t = threads {
      try checkRange(t, 1...1024, "--threads")
      Parallel.threadCount = t
    }
  }
}

/// `--compute`: the arithmetic of the convolutions.
struct ComputeOptions: ParsableArguments {
  @Option(help: ArgumentHelp(
    "Convolutions multiply in fp32, or in bf16 with fp32 sums (bf16: AVX512_BF16 CPUs).",
    discussion: "bf16 is TensorFlow's mixed_bfloat16 arithmetic for the convolutions (forward, backward-data, backward-weights): inputs, weights and gradients rounded to bf16 as they are multiplied, products summed in fp32; parameters, BatchNorm, pooling and the loss stay fp32. Streamed training then matches the plain step to bf16's precision (~0.5 %), not fp32's 1e-5. On a CPU without AVX512_BF16 it warns and computes in fp32."))
  var compute = "fp32"

  /// What the run computes in: `compute`, or fp32 where the CPU has no bf16 kernels.
  var effective: String { compute == "bf16" && !BF16.supported ? "fp32" : compute }

  func validate() throws {
    guard ["fp32", "bf16"].contains(compute) else { throw ValidationError("--compute must be fp32 or bf16") }
  }

  func apply() {
    if compute == "bf16" && !BF16.supported {
      note("warning: --compute bf16: this CPU has no AVX512_BF16 (or the OS has AVX-512 off); computing in fp32")
    }
    BF16.enabled = compute == "bf16"
  }
}

/// Prints one JSON object on stdout, keys sorted; a number that is not finite becomes null (JSON has
/// no NaN). A value JSON cannot hold ends the command with an error rather than a partial object.
func printJSON(_ object: [String: Any]) {
  guard let d = try? JSONSerialization.data(withJSONObject: jsonSafe(object), options: [.sortedKeys]) else {
    note("error: the result could not be written as JSON")
    Foundation.exit(1)
  }
  print(String(decoding: d, as: UTF8.self))
}

/// Writes a line to stderr (progress, warnings); under mpirun only rank 0 writes progress, the
/// others their warnings and errors, prefixed with their rank.
func note(_ s: String) {
  if quietRank != 0 {
    guard s.hasPrefix("warning") || s.hasPrefix("error") || s.hasPrefix("rank ") else { return }
    FileHandle.standardError.write(((s.hasPrefix("rank ") ? "" : "rank \(quietRank): ") + s + "\n").data(using: .utf8)!)
    return
  }
  FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

/// The process's peak resident set size in bytes: VmHWM, the high-water mark of this program's own
/// address space (getrusage's ru_maxrss also counts the parent's pages when the parent spawned it
/// with vfork semantics, as Foundation's Process does).
func maxRSSBytes() -> Int {
  if let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
     let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
     let kb = line.split(separator: " ").compactMap({ Int($0) }).first
  {
    return kb * 1024
  }
  var u = rusage()
  getrusage(RUSAGE_SELF.rawValue, &u)
  return Int(u.ru_maxrss) * 1024
}

/// CPU seconds this process has spent in user and in kernel (system) mode, all threads.
func cpuSeconds() -> (user: Double, system: Double) {
  var u = rusage()
  getrusage(RUSAGE_SELF.rawValue, &u)
  func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
  return (s(u.ru_utime), s(u.ru_stime))
}

/// "3x1024x768" or "1024x768" (channels default) → [C, H, W].
func parseInput(_ s: String, defaultChannels: Int = 3) throws -> [Int] {
  let parts = s.lowercased().split(separator: "x").map { Int($0) }
  guard parts.allSatisfy({ ($0 ?? 0) > 0 }), parts.count == 2 || parts.count == 3 else {
    throw ValidationError("--input must look like 3x1024x1024 or 1024x768, got '\(s)'")
  }
  let v = parts.map { $0! }
  let shape = v.count == 3 ? v : [defaultChannels] + v
  try checkRange(shape[0], 1...Limits.maxChannels, "--input channels")
  try checkRange(shape[1], 1...Limits.maxSide, "--input height")
  try checkRange(shape[2], 1...Limits.maxSide, "--input width")
  return shape
}

/// A number given on the command line, refused by name when out of range.
func checkRange(_ v: Int, _ r: ClosedRange<Int>, _ name: String) throws {
  guard r.contains(v) else { throw ValidationError("\(name) must be between \(r.lowerBound) and \(r.upperBound), got \(v)") }
}

func mib(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

/// Streamed training flags, shared by plan, step, train and bench train.
struct StreamingOptions: ParsableArguments {
  @Option(help: ArgumentHelp(
    "Streamed training: run the network's first blocks tile by tile, N input pixels of output per tile, or auto.",
    discussion: "N must be a multiple of the streamed part's output stride (the error names it); auto: the planner tries powers of two and takes the fastest that fits. Exact: outputs and every gradient equal the untiled step, BatchNorm included (extra passes), at the cost of recomputation."))
  var tile: String?
  @Option(help: "Leading top-level blocks to stream (default: with --budget, the blocks and split with the lowest estimated time that fit it less \(runtimeReserveBytes >> 20) MiB for the runtime; without, all that can be).")
  var streamBlocks: Int?
  @Option(help: ArgumentHelp(
    "With --stream-blocks K: cut the streamed blocks into segments before block J (or J1,J2,… for more), each in tiles of its own input (0: one segment; default: the planner's choice within --budget, one segment without).",
    discussion: "--stream-split 1: the first block in --tile tiles, the other K − 1 in tiles of its output; each segment's BatchNorm passes recompute only its own layers, at the price of holding each cut's output and gradient whole."))
  var streamSplit: String?
  @Flag(help: "Streamed BatchNorm layers use their running statistics (one pass each way, as StreamingCNN) instead of the whole image's batch statistics.")
  var frozenBn = false
  @Option(help: ArgumentHelp(
    "With --frozen-bn (or streamed blocks without BatchNorm): keep the last N tiles' forward activations for backward instead of recomputing them (default: 1 without --budget; with --budget, as many as fit it).",
    discussion: "Each kept tile saves its forward in backward and holds its activations from the forward to the backward (not its crop of the input: that is read again): with all tiles kept, about the plain step's time in less than its memory."))
  var keptTiles: Int?

  func validate() throws {
    if let t = tile, t != "auto", !(1...Limits.maxSide).contains(Int(t) ?? 0) {
      throw ValidationError("--tile must be a number of pixels from 1 to \(Limits.maxSide) or auto, got '\(t)'")
    }
    if let k = streamBlocks { try checkRange(k, 1...10_000, "--stream-blocks") }
    if let n = keptTiles { try checkRange(n, 0...1_000_000, "--kept-tiles") }
    if tile == nil && (streamBlocks != nil || frozenBn || streamSplit != nil || keptTiles != nil) {
      throw ValidationError("--stream-blocks, --stream-split, --frozen-bn and --kept-tiles need --tile")
    }
    if streamSplit != nil {
      guard let k = streamBlocks, let cuts = splits, cuts == [0] || (cuts.allSatisfy { $0 > 0 && $0 < k } && zip(cuts, cuts.dropFirst()).allSatisfy { $0 < $1 }) else {
        throw ValidationError("--stream-split needs --stream-blocks K and J (0 ≤ J < K) or increasing J1,J2,… between 1 and K − 1, got '\(streamSplit!)'")
      }
    }
  }

  /// --stream-split as block indices (nil: not given or not numbers).
  var splits: [Int]? {
    guard let s = streamSplit else { return nil }
    let v = s.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
    return v.isEmpty || v.contains(nil) ? nil : v.map { $0! }
  }

  func settings(inputResident: Bool = true) -> StreamingSettings? {
    tile.map {
      var s = StreamingSettings(tile: Int($0) ?? 0, blocks: streamBlocks, frozenBatchNorm: frozenBn, inputResident: inputResident)
      s.splits = splits
      s.keptTiles = keptTiles
      return s
    }
  }
}

/// For each streamed segment, the layer whose input each tile keeps across the passes
/// (`Streamed.cacheLevel`), or null.
func cachedInputs(_ c: StreamingChoice) -> [Any] {
  c.model.layers.compactMap { $0.1 as? Streamed }.map { s in s.cacheLevelNow.map { s.paths[$0] as Any } ?? NSNull() }
}

/// One line describing a streaming choice.
func describe(_ c: StreamingChoice, _ s: StreamingSettings) -> String {
  let segments = c.model.layers.compactMap { $0.1 as? Streamed }
  func passes(_ st: Streamed) -> String {
    let n = st.keptTilesNow
    let kept = n == 0 ? "" : n == 1 ? " (the last tile's forward kept for backward)" : " (the last \(n) tiles' forwards kept for backward)"
    if st.batchNorms.isEmpty { return "no BatchNorm: 1 pass each way" + kept }
    if s.frozenBatchNorm { return "frozen BatchNorm, 1 pass each way" + kept }
    let cached = st.cacheLevelNow.map { j in
      let n = st.cacheUses(j)
      return " (each tile's input of \(st.paths[j]) kept: \(n) run\(n == 1 ? "" : "s") start\(n == 1 ? "s" : "") there)"
    } ?? ""
    // --kept-tiles asked where exact BatchNorm's passes recompute every tile anyway.
    let ignored = (s.keptTiles ?? 0) > 0 ? " (--kept-tiles not applied: it needs --frozen-bn)" : ""
    return "exact BatchNorm: \(st.forwardPasses) pass\(st.forwardPasses == 1 ? "" : "es") forward, \(st.passes().count) backward" + cached + ignored
  }
  var text = "streaming \(c.blocks) block\(c.blocks == 1 ? "" : "s") ("
    + segments.map { $0.children.map(\.0).joined(separator: ", ") }.joined(separator: " | ")
    + ") in \(c.tiles) tile\(c.tiles == 1 ? "" : "s") of \(c.tile) px + \(c.halo) px halo; " + passes(segments[0])
  for (i, seg) in segments.enumerated().dropFirst() {
    text += "; then \(seg.tile)-px tiles of the \(i == 1 ? "first" : i == 2 ? "second" : "previous") part's output, " + passes(seg)
  }
  return text + String(format: "; estimated %.1f× a plain step's time", c.relativeTime)
}

/// Resident memory the runtime needs beside the ledger (code, Swift and Foundation, thread stacks,
/// small allocations): measured 25–90 MiB; kept out of the block cache's share of a budget.
let runtimeReserveBytes = 96 << 20

/// Within a budget, freed blocks kept for reuse may take only what the plan leaves free: in use plus
/// cached stays under the planned peak (which the ledger reaches anyway) plus the budget's slack;
/// and whenever the process's resident memory reaches the budget, cached blocks go back to the
/// system first (`BlockCache.residentCeilingBytes`: memory outside the ledger that outgrows the
/// reserve comes out of the cache, not out of the budget).
func limitBlockCache(budget: Int, planned: Int) {
  BlockCache.shared.limitBytes = min(BlockCache.shared.limitBytes, max(0, budget - planned - runtimeReserveBytes))
  BlockCache.shared.floorBytes = planned
  BlockCache.shared.residentCeilingBytes = budget
}

/// The same value with every non-finite number replaced by null (JSON cannot say NaN or inf).
func jsonSafe(_ v: Any) -> Any {
  switch v {
  case let d as Double: return d.isFinite ? d : NSNull()
  case let f as Float: return f.isFinite ? Double(f) : NSNull()
  case let o as [String: Any]: return o.mapValues(jsonSafe)
  case let a as [Any]: return a.map(jsonSafe)
  default: return v
  }
}

/// Prints rows as columns as wide as their widest cell, two spaces apart (numbers never run into
/// each other, however large); `right`: the columns aligned right.
func printColumns(_ rows: [[String]], right: Set<Int> = []) {
  guard let n = rows.map(\.count).max() else { return }
  let widths = (0..<n).map { c in rows.map { c < $0.count ? $0[c].count : 0 }.max() ?? 0 }
  for r in rows {
    let cells = r.enumerated().map { c, s in
      let fill = String(repeating: " ", count: widths[c] - s.count)
      return right.contains(c) ? fill + s : s + (c == r.count - 1 ? "" : fill)
    }
    print(cells.joined(separator: "  "))
  }
}

/// Help text written as wrapped paragraphs in the source, unwrapped so ArgumentParser can wrap it
/// to the terminal: lines of a paragraph are joined; blank lines and indented lines (examples,
/// lists) stay as they are.
func prose(_ text: String) -> String {
  var out = [String]()
  for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
    if let last = out.last, !last.isEmpty, !line.isEmpty, !line.hasPrefix(" "), !last.hasPrefix(" ") {
      out[out.count - 1] = last + " " + line
    } else {
      out.append(line)
    }
  }
  return out.joined(separator: "\n")
}
