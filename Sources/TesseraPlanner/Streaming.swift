import Tessera
import TesseraKernels

/// Streamed training as a user asks for it (`--tile`, `--stream-blocks`, `--frozen-bn`).
public struct StreamingSettings: Sendable, Equatable {
  /// Output tile edge in input pixels; 0: chosen by the planner (`Planner.applyStreaming`).
  public var tile: Int
  /// Leading top-level blocks to stream; nil: chosen (see `Planner.applyStreaming`).
  public var blocks: Int?
  public var frozenBatchNorm: Bool
  /// false: the input is read region by region (a `TileSource`) and never held whole.
  public var inputResident: Bool

  public init(tile: Int, blocks: Int? = nil, frozenBatchNorm: Bool = false, inputResident: Bool = true) {
    self.tile = tile
    self.blocks = blocks
    self.frozenBatchNorm = frozenBatchNorm
    self.inputResident = inputResident
  }
}

/// A model with its leading blocks streamed, its plan and the estimated cost.
public struct StreamingChoice {
  public var model: Sequential
  public var blocks: Int
  /// Output tile edge in input pixels.
  public var tile: Int
  public var plan: Plan
  /// Estimated time of a step relative to the plain step (from MACs, see `Planner.streamingCost`).
  public var relativeTime: Double
  /// Tiles per image and the halo around each (input pixels).
  public var tiles: Int, halo: Int
}

public struct StreamingPlanError: Error, CustomStringConvertible {
  public let description: String
}

extension Planner {
  /// Streams the first `settings.blocks` blocks of `model`, or when that is nil: with a `budget`,
  /// the fewest blocks with which the step fits it (fewest BatchNorm passes: fastest), else every
  /// streamable block. Tile 0: each power of two from 4096 down to 64 below the image's edge (the
  /// four largest) is tried and the one with the lowest estimated time that fits is taken. Throws
  /// when nothing can be streamed or the tile does not fit the stride.
  public static func applyStreaming(
    _ model: Sequential, _ settings: StreamingSettings, input: [Int], batch: Int, budget: Int? = nil,
    optimizer: OptimizerKind = .momentum, threads: Int = Parallel.threadCount
  ) throws -> StreamingChoice {
    guard settings.tile == 0 else {
      return try applyStreaming(model, settings, tile: settings.tile, input: input, batch: batch, budget: budget,
                                optimizer: optimizer, threads: threads)
    }
    let edge = max(input[1], input[2])
    var best: StreamingChoice?, firstError: Error?
    for t in [4096, 2048, 1024, 512, 256, 128, 64].filter({ $0 < edge }).prefix(4) {
      do {
        let c = try applyStreaming(model, settings, tile: t, input: input, batch: batch, budget: budget,
                                   optimizer: optimizer, threads: threads)
        let fits = budget.map { c.plan.peakTrainingBytes <= $0 } ?? true
        let bestFits = best.map { b in budget.map { b.plan.peakTrainingBytes <= $0 } ?? true } ?? false
        if best == nil || (fits && !bestFits) || (fits == bestFits && c.relativeTime < best!.relativeTime) { best = c }
      } catch {
        if firstError == nil { firstError = error }
      }
    }
    if let best { return best }
    if let firstError { throw firstError }
    throw StreamingPlanError(description: "the image (\(edge) px) is too small to stream in tiles of 64 px or more")
  }

  static func applyStreaming(
    _ model: Sequential, _ settings: StreamingSettings, tile: Int, input: [Int], batch: Int, budget: Int?,
    optimizer: OptimizerKind, threads: Int
  ) throws -> StreamingChoice {
    let most = Streamed.streamableBlocks(of: model)
    guard most >= 1 else {
      if let first = model.layers.first, model.layers.count > 1 {
        _ = try Streamed(Sequential([first]), tile: max(1, settings.tile))  // throws, naming the layer
      }
      throw StreamingPlanError(description: "this model's first block cannot be streamed: a streamed segment is a chain of Conv2D, BatchNorm2D, pooling and activation layers")
    }
    func choice(_ b: Int) throws -> StreamingChoice {
      let m = try Streamed.apply(to: model, blocks: b, tile: tile, frozenBatchNorm: settings.frozenBatchNorm)
      let p = try plan(m, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                       inputResident: settings.inputResident)
      let s = m.layers[0].1 as! Streamed
      let geo = try s.geometry(for: [batch] + input)
      return StreamingChoice(model: m, blocks: b, tile: tile, plan: p, relativeTime: try streamingCost(m, input: input, batch: batch),
                             tiles: geo.tiles.count, halo: geo.halo)
    }
    if let b = settings.blocks {
      guard b >= 1, b <= most else {
        throw StreamingPlanError(description: "--stream-blocks must be between 1 and \(most) for this model (its first \(most) top-level blocks can be streamed)")
      }
      return try choice(b)
    }
    guard let budget else { return try choice(most) }
    var best: StreamingChoice?
    var firstError: Error?
    for b in 1...most {
      do {
        let c = try choice(b)
        if c.plan.peakTrainingBytes <= budget { return c }
        if best == nil || c.plan.peakTrainingBytes < best!.plan.peakTrainingBytes { best = c }
      } catch {
        if firstError == nil { firstError = error }
      }
    }
    if let best { return best }
    throw firstError!
  }

  /// Estimated time of a training step of a model whose first layer is `Streamed`, relative to
  /// the same model without streaming: convolution MACs of every pass over every crop (halos
  /// included), forward 1×, backward data 1× and weights 1× where gathered, the rest of the network
  /// 3×, against 3× for the plain step. An estimate for choosing, not a measurement.
  public static func streamingCost(_ model: Sequential, input: [Int], batch: Int) throws -> Double {
    guard let s = model.layers.first?.1 as? Streamed else { return 1 }
    let geo = try s.geometry(for: [batch] + input)
    let L = s.leaves.count
    var crop = [Double](repeating: 0, count: L), whole = [Double](repeating: 0, count: L)
    func macs(_ shape: [Int], into m: inout [Double]) throws {
      var sh = shape
      for (i, l) in s.leaves.enumerated() {
        if let c = l as? Conv2D { m[i] += Double(try c.geometry(for: sh).macs) }
        sh = try l.outputShape(for: sh)
      }
    }
    for t in geo.tiles { try macs([batch, input[0], t.crop.rows.count, t.crop.cols.count], into: &crop) }
    try macs([batch] + input, into: &whole)
    let all = crop.reduce(0, +)
    var cost = all  // the output pass
    let exact = !s.frozenBatchNorm
    if exact { for k in s.batchNorms { cost += crop[..<k].reduce(0, +) } }  // statistics passes
    for p in s.passes() {
      cost += all  // recompute
      for l in p.from..<L { cost += crop[l] * ((l > 0 ? 1 : 0) + (p.weights.contains(l) ? 1 : 0)) }
    }
    let plain = try plan(Sequential(s.segment.layers + Array(model.layers.dropFirst())), name: "", input: input,
                         batch: batch, optimizer: .sgd).macs * batch
    let rest = Double(plain) - whole.reduce(0, +)
    return (cost + 3 * rest) / (3 * Double(plain))
  }
}
