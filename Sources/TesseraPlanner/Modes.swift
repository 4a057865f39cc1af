import Tessera
import TesseraKernels

/// A memory mode: how kept tensors are stored and where checkpoints go.
public struct MemoryMode: Sendable, Equatable, CustomStringConvertible {
  public var precision: StoragePrecision
  public var checkpointing: CheckpointingPolicy
  /// Streamed training of the first `streaming.blocks` blocks (nil: none).
  public var streaming: StreamingSettings? = nil
  /// Rough cost against fp32 without checkpoints, as measured (docs/BENCHMARKS.md): 16-bit storage
  /// ≈ +10 %, checkpointing every block ≈ +50 %, √n segments ≈ +25 %.
  public var relativeTime: Double {
    let p = precision == .fp32 ? 1.0 : 1.1
    switch checkpointing {
    case .none: return p
    case .sqrt: return p * 1.25
    default: return p * 1.5
    }
  }
  public var description: String {
    let c: String
    switch checkpointing {
    case .none: c = "no checkpoints"
    case .all: c = "checkpointing all"
    case .sqrt: c = "checkpointing sqrt"
    case .every(let n): c = "checkpointing every \(n)"
    }
    if let s = streaming {
      let b = s.blocks ?? 0
      let cuts = [0] + (s.splits ?? []).filter { $0 > 0 } + [b]
      let parts = cuts.count > 2 ? " as " + zip(cuts, cuts.dropFirst()).map { String($1 - $0) }.joined(separator: " + ") : ""
      return "\(precision.rawValue), streaming \(b) block\(b == 1 ? "" : "s")\(parts) in \(s.tile)-px tiles"
        + (s.frozenBatchNorm ? " (frozen BN)" : "") + (checkpointing == .none ? "" : ", then \(c)")
    }
    return "\(precision.rawValue), \(c)"
  }

  /// `model` in this mode: streaming applied to its first blocks, checkpoints to the rest.
  public func apply(to model: Sequential) throws -> Sequential {
    var m = model
    if let s = streaming {
      m = try Streamed.apply(to: m, blocks: s.blocks ?? Streamed.streamableBlocks(of: m), tile: s.tile,
                             frozenBatchNorm: s.frozenBatchNorm, splits: s.splits ?? [], outputSums: s.outputSums ?? true)
      let segments = m.layers.compactMap { $0.1 as? Streamed }
      for (i, seg) in segments.enumerated() {
        seg.keptTiles = s.keptTiles ?? 0
        seg.cacheLevel = s.cacheLevels.flatMap { i < $0.count ? $0[i] : nil }
      }
    }
    return checkpointing.apply(to: m)
  }

  public static let all: [MemoryMode] = [StoragePrecision.fp32, .fp16].flatMap { p in
    [CheckpointingPolicy.none, .sqrt, .all].map { MemoryMode(precision: p, checkpointing: $0) }
  }
}

/// A mode with the batch it allows and its predicted peak.
public struct ModeChoice: Sendable {
  public var mode: MemoryMode
  public var batch: Int
  public var peakTrainingBytes: Int
  /// Estimated time per image relative to fp32 without checkpoints at batch 1.
  public var relativeTime: Double
}

extension Planner {
  /// For each memory mode, the largest training batch (up to `maxBatch`) that fits `budget`, and
  /// the fastest mode that fits the requested `batch` (or, when none does, the fastest with any
  /// batch), ranked by the mode's relative time. `extraBytes(batch)` adds what lives beside the
  /// step (the loader's batches in flight).
  public static func chooseMode(
    _ model: Sequential, input: [Int], batch: Int, maxBatch: Int = 1 << 12, optimizer: OptimizerKind = .momentum,
    budget: Int, threads: Int = Parallel.threadCount, extraBytes: (Int) -> Int = { _ in 0 }, runtimeReserve: Int = 0
  ) -> (best: ModeChoice?, all: [ModeChoice]) {
    let saved = ActivationStorage.precision
    defer { ActivationStorage.precision = saved }
    var choices = [ModeChoice]()
    for mode in MemoryMode.all {
      ActivationStorage.precision = mode.precision
      let m = mode.checkpointing.apply(to: model)
      func peak(_ b: Int) -> Int? {
        (try? plan(m, name: "", input: input, batch: b, optimizer: optimizer, threads: threads)).map { $0.peakTrainingBytes + extraBytes(b) }
      }
      guard let b = largest(upTo: maxBatch, { (peak($0) ?? .max) <= budget - runtimeReserve }), let p = peak(b) else { continue }
      choices.append(ModeChoice(mode: mode, batch: b, peakTrainingBytes: p, relativeTime: mode.relativeTime))
    }
    // When no mode fits the batch: streamed training (the planner's tile, blocks and split), in the
    // cheapest storage and checkpointing of the remaining blocks with which it fits.
    if !choices.contains(where: { $0.batch >= batch }) && Streamed.streamableBlocks(of: model) > 0 {
      let budgetLeft = budget - extraBytes(batch) - runtimeReserve
      for (p, ck) in [(StoragePrecision.fp32, CheckpointingPolicy.none), (.fp32, .sqrt), (.fp16, .none), (.fp16, .sqrt)] {
        ActivationStorage.precision = p
        guard let c = try? applyStreaming(model, StreamingSettings(tile: 0), input: input, batch: batch, budget: budgetLeft,
                                          optimizer: optimizer, threads: threads, rest: ck),
              c.plan.peakTrainingBytes <= budgetLeft else { continue }
        func peak(_ b: Int) -> Int? {
          (try? plan(c.model, name: "", input: input, batch: b, optimizer: optimizer, threads: threads)).map { $0.peakTrainingBytes + extraBytes(b) }
        }
        guard let b = largest(upTo: maxBatch, { (peak($0) ?? .max) <= budget - runtimeReserve }), let pk = peak(b) else { continue }
        let settings = StreamingSettings(tile: c.tile, blocks: c.blocks, splits: c.splits, outputSums: c.outputSums,
                                         keptTiles: c.keptTiles, cacheLevels: c.cacheLevels)
        let mode = MemoryMode(precision: p, checkpointing: ck, streaming: settings)
        let factor = MemoryMode(precision: p, checkpointing: ck).relativeTime
        choices.append(ModeChoice(mode: mode, batch: b, peakTrainingBytes: pk, relativeTime: c.relativeTime * factor))
        break
      }
    }
    let fitting = choices.filter { $0.batch >= batch }
    let best = (fitting.isEmpty ? choices : fitting).min { ($0.relativeTime, -$0.batch) < ($1.relativeTime, -$1.batch) }
    return (best, choices)
  }
}
