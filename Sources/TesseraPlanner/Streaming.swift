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
  /// Where the streamed blocks are cut into segments (block indices, increasing; see
  /// `Streamed.apply(…splits:)`); [] or [0]: one segment; nil: chosen with the blocks (one segment
  /// without a budget).
  public var splits: [Int]?
  /// The first cut (the two-segment case).
  public var split: Int? {
    get { splits?.first }
    set { splits = newValue.map { [$0] } }
  }
  /// Whether the deepest BatchNorm's sums come from the output (`Streamed.outputSums`: one pass
  /// fewer, one output-sized tensor more); nil: yes, unless only the pass fits the budget.
  public var outputSums: Bool?
  /// How many tiles segments with one backward pass keep their forward of for backward
  /// (`Streamed.keptTiles`); nil: one without a budget, as many as fit within one.
  public var keptTiles: Int?
  /// `keptTiles` as a yes or no: true asks for one (or keeps the number asked), false for none.
  public var keepsLastTile: Bool? {
    get { keptTiles.map { $0 > 0 } }
    set { keptTiles = newValue.map { $0 ? max(1, keptTiles ?? 1) : 0 } }
  }
  /// Each segment's cached level (`Streamed.cacheLevel`, in segment order; nil in it: none); nil:
  /// chosen where it fits (`Planner.applyStreaming`); []: none.
  public var cacheLevels: [Int?]?

  public init(tile: Int, blocks: Int? = nil, frozenBatchNorm: Bool = false, inputResident: Bool = true, split: Int? = nil,
              splits: [Int]? = nil, outputSums: Bool? = nil, keepsLastTile: Bool? = nil, keptTiles: Int? = nil,
              cacheLevels: [Int?]? = nil) {
    self.tile = tile
    self.splits = splits ?? split.map { [$0] }
    self.outputSums = outputSums
    self.keptTiles = keptTiles ?? keepsLastTile.map { $0 ? 1 : 0 }
    self.cacheLevels = cacheLevels
    self.blocks = blocks
    self.frozenBatchNorm = frozenBatchNorm
    self.inputResident = inputResident
  }
}

/// A model with its leading blocks streamed, its plan and the estimated cost.
public struct StreamingChoice {
  public var model: Sequential
  public var blocks: Int
  /// Where the blocks are cut into segments ([]: one segment).
  public var splits: [Int]
  /// Blocks in the first segment when there are several (nil: one segment).
  public var split: Int? { splits.first }
  /// Output tile edge in input pixels.
  public var tile: Int
  public var plan: Plan
  /// Estimated time of a step relative to the plain step (from MACs, see `Planner.streamingCost`).
  public var relativeTime: Double
  /// Tiles per image and the halo around each (input pixels).
  public var tiles: Int, halo: Int
  /// See `StreamingSettings.outputSums`.
  public var outputSums: Bool
  /// Whether the one-backward-pass segments keep their last tile (`StreamingSettings.keepsLastTile`).
  public var keepsLastTile: Bool { keptTiles > 0 }
  /// How many tiles they keep (`StreamingSettings.keptTiles`).
  public var keptTiles: Int
  /// Each segment's cached level (`StreamingSettings.cacheLevels`).
  public var cacheLevels: [Int?]
}

public struct StreamingPlanError: Error, CustomStringConvertible {
  public let description: String
}

extension Planner {
  /// Streams the first `settings.blocks` blocks of `model` (nil: chosen). With a `budget`, the
  /// fastest estimate that fits among one segment of the first b blocks and two segments split
  /// inside them (the second recomputes only its own layers in its BatchNorm passes, but the first's
  /// output and gradient are held whole); without one, every streamable block as one segment. Tile 0: each power of two from 4096 down to 64 below the image's edge (the
  /// four largest) is tried and the one with the lowest estimated time that fits is taken. Throws
  /// when nothing can be streamed or the tile does not fit the stride.
  /// `rest`: checkpoints for the blocks after the streamed ones (planned with them).
  public static func applyStreaming(
    _ model: Sequential, _ settings: StreamingSettings, input: [Int], batch: Int, budget: Int? = nil,
    optimizer: OptimizerKind = .momentum, threads: Int = Parallel.threadCount, rest: CheckpointingPolicy = .none
  ) throws -> StreamingChoice {
    guard settings.tile == 0 else {
      return try applyStreaming(model, settings, tile: settings.tile, input: input, batch: batch, budget: budget,
                                optimizer: optimizer, threads: threads, rest: rest)
    }
    let edge = max(input[1], input[2])
    var best: StreamingChoice?, firstError: Error?
    for t in [4096, 2048, 1024, 512, 256, 128, 64].filter({ $0 < edge }).prefix(4) {
      do {
        let c = try applyStreaming(model, settings, tile: t, input: input, batch: batch, budget: budget,
                                   optimizer: optimizer, threads: threads, rest: rest)
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
    optimizer: OptimizerKind, threads: Int, rest: CheckpointingPolicy
  ) throws -> StreamingChoice {
    let most = Streamed.streamableBlocks(of: model)
    guard most >= 1 else {
      if let first = model.layers.first, model.layers.count > 1 {
        _ = try Streamed(Sequential([first]), tile: max(1, tile))  // throws, naming the layer
      }
      throw StreamingPlanError(description: "this model's first block cannot be streamed: a streamed segment is a chain of Conv2D, BatchNorm2D, pooling and activation layers")
    }
    func choice(_ b: Int, _ splits: [Int], outputSums: Bool) throws -> StreamingChoice {
      let m = rest.apply(to: try Streamed.apply(to: model, blocks: b, tile: tile, frozenBatchNorm: settings.frozenBatchNorm,
                                                splits: splits, outputSums: outputSums))
      var p = try plan(m, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                       inputResident: settings.inputResident)
      // Segments with one backward pass keep their last tiles' recordings for backward
      // (`Streamed.keptTiles`: a tile's forward fewer each): as many as asked; else one without a
      // budget, and with one the most whose plan fits it (or the plan without them), found by
      // bisection (the peak grows with each tile kept).
      let single = m.layers.compactMap { $0.1 as? Streamed }.filter(\.hasOneBackwardPass)
      if !single.isEmpty && settings.keptTiles != 0 {
        let most = try single.map { try $0.geometry(for: [batch] + input).tiles.count }.max() ?? 1
        func planKeeping(_ k: Int) throws -> Plan {
          single.forEach { $0.keptTiles = k }
          return try plan(m, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                          inputResident: settings.inputResident)
        }
        let limit = max(p.peakTrainingBytes, budget ?? .max)
        if let k = settings.keptTiles {
          p = try planKeeping(min(k, most))
        } else if budget == nil {
          let q = try planKeeping(1)
          if q.peakTrainingBytes <= limit { p = q } else { single.forEach { $0.keptTiles = 0 } }
        } else {
          var (fits, fitPlan, over) = (0, p, most + 1)
          while over - fits > 1 {
            let k = (fits + over) / 2, q = try planKeeping(k)
            if q.peakTrainingBytes <= limit { (fits, fitPlan) = (k, q) } else { over = k }
          }
          single.forEach { $0.keptTiles = fits }
          p = fitPlan
        }
      }
      // Cache levels as given (`StreamingSettings.cacheLevels`); when not, `cached` chooses them.
      let segments = m.layers.compactMap { $0.1 as? Streamed }
      if let given = settings.cacheLevels {
        for (s, j) in zip(segments, given) { s.cacheLevel = j }
        if given.contains(where: { $0 != nil }) {
          p = try plan(m, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                       inputResident: settings.inputResident)
        }
      }
      let geo = try (m.layers[0].1 as! Streamed).geometry(for: [batch] + input)
      return StreamingChoice(model: m, blocks: b, splits: splits, tile: tile, plan: p,
                             relativeTime: try streamingCost(m, input: input, batch: batch), tiles: geo.tiles.count, halo: geo.halo,
                             outputSums: outputSums, keptTiles: single.map(\.keptTiles).max() ?? 0,
                             cacheLevels: segments.map(\.cacheLevel))
    }
    /// `c` with its segments' tiles cached across the BatchNorm passes (`Streamed.cacheLevel`): in
    /// each segment the level that saves the most first (up to three), where the plan fits the
    /// budget less `cacheHeadroom` — without one, where it does not raise the peak. `c` itself
    /// when the levels were given or none fits.
    func cached(_ c: StreamingChoice) throws -> StreamingChoice {
      guard settings.cacheLevels == nil else { return c }
      var c = c, changed = false
      for s in c.model.layers.compactMap({ $0.1 as? Streamed }) where !s.hasOneBackwardPass {
        for j in try cacheLevels(c.model, s, input: input, batch: batch).prefix(3) {
          s.cacheLevel = j
          let q = try plan(c.model, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                           inputResident: settings.inputResident)
          if q.peakTrainingBytes <= max(c.plan.peakTrainingBytes, (budget ?? 0) - cacheHeadroom) {
            (c.plan, changed) = (q, true)
            break
          }
          s.cacheLevel = nil
        }
      }
      guard changed else { return c }
      c.relativeTime = try streamingCost(c.model, input: input, batch: batch)
      c.cacheLevels = c.model.layers.compactMap { $0.1 as? Streamed }.map(\.cacheLevel)
      return c
    }
    /// `c`'s estimate were each segment to cache its best level (a bound: no plan is made).
    func optimistic(_ c: StreamingChoice) throws -> Double {
      let segments = c.model.layers.compactMap { $0.1 as? Streamed }.filter { !$0.hasOneBackwardPass }
      defer { segments.forEach { $0.cacheLevel = nil } }
      for s in segments { s.cacheLevel = try cacheLevels(c.model, s, input: input, batch: batch).first }
      return try streamingCost(c.model, input: input, batch: batch)
    }
    // The deepest BatchNorm's sums from the output unless told otherwise, or unless only the pass
    // that gathers them fits the budget.
    func choice(_ b: Int, _ splits: [Int]) throws -> StreamingChoice {
      let c = try choice(b, splits, outputSums: settings.outputSums ?? true)
      guard settings.outputSums == nil, let budget, c.plan.peakTrainingBytes > budget else { return c }
      let without = try choice(b, splits, outputSums: false)
      return without.plan.peakTrainingBytes < c.plan.peakTrainingBytes ? without : c
    }
    if let b = settings.blocks {
      guard b >= 1, b <= most else {
        throw StreamingPlanError(description: "--stream-blocks must be between 1 and \(most) for this model (its first \(most) top-level blocks can be streamed)")
      }
      if let j = settings.splits { return try cached(choice(b, j.filter { $0 > 0 })) }
      if budget == nil { return try cached(choice(b, [])) }
    }
    guard let budget else { return try cached(choice(most, [])) }
    // Within the budget: the fastest estimate among one segment of the first b blocks and every way
    // of cutting them into segments (up to 5 blocks; one cut beyond); when nothing fits, the
    // smallest peak.
    var fastest: StreamingChoice?, smallest: StreamingChoice?, firstError: Error?, all = [StreamingChoice]()
    for b in settings.blocks.map({ [$0] }) ?? Array(1...most) {
      let cuts: [[Int]] = b <= 5
        ? (0..<(1 << (b - 1))).map { mask in (1..<b).filter { mask & (1 << ($0 - 1)) != 0 } }
        : [[]] + (1..<b).map { [$0] }
      for splits in cuts {
        do {
          let c = try choice(b, splits)
          all.append(c)
          if c.plan.peakTrainingBytes <= budget, fastest == nil || c.relativeTime < fastest!.relativeTime { fastest = c }
          if smallest == nil || c.plan.peakTrainingBytes < smallest!.plan.peakTrainingBytes { smallest = c }
        } catch {
          if firstError == nil { firstError = error }
        }
      }
    }
    // Then caching, tried where it could beat the fastest (its estimate with every segment's best
    // level, no plan needed, is a bound), most promising first.
    if let first = fastest, settings.cacheLevels == nil {
      var best = first
      for (c, bound) in try all.map({ ($0, try optimistic($0)) }).sorted(by: { $0.1 < $1.1 }) where bound < best.relativeTime {
        let cc = try cached(c)
        if cc.plan.peakTrainingBytes <= budget && cc.relativeTime < best.relativeTime {
          best = cc
        } else {
          cc.model.layers.compactMap { $0.1 as? Streamed }.forEach { $0.cacheLevel = nil }
        }
      }
      return best
    }
    if let c = fastest ?? smallest { return c }
    throw firstError!
  }

  /// What the tile cache leaves of a budget beyond the plan: memory outside the ledger grows with
  /// the run (freed small blocks the heap keeps, huge-page and size-class tails of large blocks) —
  /// measured 110–149 MB on 16384² and gigapixel steps against the 96 MiB the commands reserve for
  /// it; a 16384² step whose cached plan came within 6 MB of the budget less that reserve went 10 MB
  /// over the budget in resident memory (docs/BENCHMARKS.md, session 9).
  static let cacheHeadroom = 64 << 20

  /// Segment `s`'s levels worth caching (`Streamed.cacheLevel`), the one saving the most estimated
  /// time first.
  static func cacheLevels(_ m: Sequential, _ s: Streamed, input: [Int], batch: Int) throws -> [Int] {
    let before = s.cacheLevel
    defer { s.cacheLevel = before }
    s.cacheLevel = nil
    let none = try streamingCost(m, input: input, batch: batch)
    var saved = [(Int, Double)]()
    for j in 1..<s.leaves.count where s.cacheUses(j) > 0 {
      s.cacheLevel = j
      saved.append((j, none - (try streamingCost(m, input: input, batch: batch))))
    }
    return saved.filter { $0.1 > 0 }.sorted { $0.1 > $1.1 }.map(\.0)
  }

  /// Estimated time of a training step of a model whose first layer is `Streamed`, relative to
  /// the same model without streaming. Work is counted in multiply-accumulates plus the memory passes
  /// MACs leave out (`macsPerElement` per element each layer reads or writes: BatchNorm, ReLU,
  /// pooling windows, conv outputs, the copies of each tile's crop): every pass over every crop
  /// (halos included), forward 1×, backward-data and a convolution's weights (where gathered) at
  /// their measured shares of the forward (`backwardShares`), the rest of the network as in the
  /// plain step (`stepWork`). An estimate for choosing.
  public static func streamingCost(_ model: Sequential, input: [Int], batch: Int) throws -> Double {
    var shape = [batch] + input, cost = 0.0, streamedPlain = 0.0, i = 0
    while i < model.layers.count, let s = model.layers[i].1 as? Streamed {
      let (c, w) = try segmentCost(s, input: shape, inputGradient: i > 0)
      cost += c
      streamedPlain += w
      shape = try s.outputShape(for: shape)
      i += 1
    }
    guard i > 0 else { return 1 }
    let plain = try stepWork(model, input: [batch] + input, inputGradient: false)
    return (cost + plain - streamedPlain) / plain
  }

  /// A plain training step's work on `layer`: each leaf's forward, its backward-data (not the first
  /// leaf's without `inputGradient`: nothing asks for the image's gradient) and a convolution's or
  /// linear layer's backward-weights, each its forward work times its measured share
  /// (`backwardShares`).
  static func stepWork(_ layer: Layer, input: [Int], inputGradient: Bool) throws -> Double {
    var work = 0.0, first = !inputGradient
    _ = try walk(layer, path: "", input: input, rf: .identity) { _, leaf, inShape, outShape, _ in
      let w = try leafWork(leaf, inShape, outShape), b = try backwardShares(leaf, inShape)
      work += w * (1 + (first ? 0 : b.data) + b.weights)
      first = false
    }
    return work
  }

  /// A leaf's backward-data and backward-weights time against its forward's, as measured on a plain
  /// fcn-large step (`bench train --model fcn-large --input 3x4096x4096 --batch 1 --profile`, fp32
  /// and bf16, two rounds each, docs/BENCHMARKS.md session 8): a convolution's backward-weights 1.25×
  /// its forward in fp32 and 1.0× in bf16 (the stem, which has no backward-data: 1.24–1.29 and
  /// 0.81–1.15); backward-data 1.0× at stride 1 (the stride-1 layers' whole backward 2.26–2.31 fp32,
  /// 1.88–2.01 bf16) and 1.8× at larger strides (2.74–3.21 and 2.76–3.03: a scatter, or phases);
  /// BatchNorm(+ReLU) 1.2× (1.19–1.52), max pooling with its arg-maxes 0.65× (0.50–0.68); other
  /// leaves 1×, linear layers' weights 1×.
  static func backwardShares(_ leaf: Layer, _ inShape: [Int]) throws -> (data: Double, weights: Double) {
    switch leaf {
    case let c as Conv2D:
      let g = try c.geometry(for: inShape)
      // Under Winograd the forward (and the stride-1 backward-data with it) costs
      // `forwardMACShare` of the direct kernel, and so does the weight gradient where it takes
      // Winograd too (32+ channels each way); below that, and at stride 2, the weight gradient and
      // backward-data stay direct: their shares of the direct forward, over the forward's.
      if BF16.applies(g) { return (g.strideH > 1 || g.strideW > 1 ? 1.8 : 1.0, 1.0) }
      let share = forwardMACShare(g)
      let weights = 1.25 / (trainsWinograd(g) && Winograd.appliesToWeights(g) ? 1 : share)
      return (g.strideH > 1 || g.strideW > 1 ? 1.8 / share : 1.0, weights)
    case let p as Pool2D where p.mode == .max: return (0.65, 0)
    case is BatchNorm2D: return (1.2, 0)
    case is Linear: return (1, 1)
    default: return (1, 0)
    }
  }

  /// MAC-equivalents of one element read or written by a memory-bound pass, against convolution
  /// MACs, on a plain fcn-large step at 4096² batch 1 (`bench train --profile`, fp32, two rounds,
  /// docs/BENCHMARKS.md session 8): the stem's convolution 9.87 G MACs in 132–140 ms (≈ 73 GMAC/s);
  /// its BatchNorm+ReLU forward, 67.1 M elements read and as many written, 29.2–32.0 ms (16–17 per
  /// element); max pooling 33.6–37.0 ms for 16.8 M outputs of ten element-reads each (15–16).
  /// (Session 3 took 30 from a 1024² batch-4 step, convolutions then ≈ 50 GMAC/s.)
  static let macsPerElement = 17.0

  /// A convolution MAC's time under `--compute bf16` against fp32's: the convolutions of a 1024²
  /// batch-4 step took 0.47–0.58 of their fp32 time (`bench train --profile`, docs/BENCHMARKS.md,
  /// "bf16 compute"); the memory-bound passes are unchanged.
  static let bf16MACShare = 0.5

  /// A Winograd F(4×4, 3×3) layer's convolution time against the direct kernel's: `bench conv
  /// --kernel 3 --batch 8` on fcn-large's stride-1 layers (32@64², 64@32², 128@16², 32@128²) gave its
  /// forward 1.5–2.8× the direct kernel's GFLOP/s and the stride-1 backward-data 1.2–2.7× (docs/BENCHMARKS.md,
  /// session 10) — about half the time.
  static let winogradMACShare = 0.5

  /// A stride-2 7×7 layer's forward under `StridedWinograd` against the direct kernel's: the
  /// fcn-large stem (3→16 at 1024², batch 4, `bench conv`, alternating) 1.2–1.5× the direct
  /// kernel's GFLOP/s (docs/BENCHMARKS.md, session 12).
  static let stridedWinogradMACShare = 0.75

  /// Whether a training step runs g's forward (and stride-1 backward-data) as Winograd.
  static func trainsWinograd(_ g: ConvGeometry) -> Bool {
    !BF16.applies(g) && Winograd.inTraining && Winograd.applies(g)
  }

  /// A convolution's forward time per MAC in a training step against the direct fp32 kernel's.
  static func forwardMACShare(_ g: ConvGeometry) -> Double {
    if BF16.applies(g) { return bf16MACShare }
    if trainsWinograd(g) { return winogradMACShare }
    return Winograd.inTraining && StridedWinograd.applies(g) ? stridedWinogradMACShare : 1
  }

  /// A layer's forward work (MAC-equivalents) on `input`, and its output shape (containers: their
  /// leaves, as the planner walks them).
  static func forwardWork(_ layer: Layer, input: [Int]) throws -> (work: Double, output: [Int]) {
    var work = 0.0
    _ = try walk(layer, path: "", input: input, rf: .identity) { _, leaf, inShape, outShape, _ in
      work += try leafWork(leaf, inShape, outShape)
    }
    return (work, try layer.outputShape(for: input))
  }

  /// One leaf's forward work: convolutions and linear layers their MACs (a convolution's at its
  /// `forwardMACShare`: bf16, Winograd) and output, pooling each window it reads, other leaves what they read and write.
  static func leafWork(_ leaf: Layer, _ inShape: [Int], _ outShape: [Int]) throws -> Double {
    let e = macsPerElement, nIn = Double(inShape.reduce(1, *)), nOut = Double(outShape.reduce(1, *))
    switch leaf {
    case let c as Conv2D:
      let g = try c.geometry(for: inShape)
      return Double(g.macs) * forwardMACShare(g) + e * nOut
    case let p as Pool2D: return e * Double(p.kernelSize.0 * p.kernelSize.1 + 1) * nOut
    case let l as Linear: return Double(l.inputFeatures * l.outputFeatures * inShape[0]) + e * nOut
    default: return e * (nIn + nOut)
    }
  }

  /// A streamed segment's cost (work over every pass and crop, backward counted as in
  /// `streamingCost`) and its plain step's work on the whole input (`stepWork`).
  static func segmentCost(_ s: Streamed, input: [Int], inputGradient: Bool) throws -> (Double, Double) {
    let geo = try s.geometry(for: input)
    let L = s.leaves.count
    var crop = [Double](repeating: 0, count: L), cropInput = 0.0
    /// Each leaf's forward work on one crop of `hw` input pixels.
    func leafWorks(_ hw: [Int]) throws -> [Double] {
      var sh = [input[0], input[1]] + hw
      return try s.leaves.map { l in
        let r = try forwardWork(l, input: sh)
        sh = r.output
        return r.work
      }
    }
    // Crops of one size cost alike: each size once, times how many tiles have it.
    for (hw, n) in geo.tiles.cropSizeCounts().mapValues(Double.init) {
      cropInput += Double(input[0] * input[1] * hw[0] * hw[1]) * n
      for (i, w) in try leafWorks(hw).enumerated() { crop[i] += w * n }
    }
    let output = try s.outputShape(for: input)
    let all = crop.reduce(0, +), e = macsPerElement, outputCells = Double(output.reduce(1, *))
    // Backward shares (they depend on strides and channels, not on the crop's size).
    var shares: [(data: Double, weights: Double)] = [], sh = input
    for l in s.leaves {
      shares.append(try backwardShares(l, sh))
      sh = try l.outputShape(for: sh)
    }
    var cost: Double, passes: Double
    if let k = s.fusedOutputPass {
      // No output pass: the deepest BatchNorm's statistics pass pools its input (`Streamed.route`),
      // copies each tile's part out, and BatchNorm of that map is the output.
      cost = crop[(k + 1)...].reduce(0, +) + e * 2 * outputCells
      passes = 0
    } else {
      // The output pass, which also copies each tile's owned output into the segment's output.
      cost = all + e * outputCells
      passes = 1
    }
    if !s.frozenBatchNorm {
      for k in s.batchNorms { cost += crop[..<k].reduce(0, +) }  // statistics passes
      passes += Double(s.batchNorms.count)
    }
    if s.sumsFromOutput != nil {
      // The statistics pass records a BatchNorm input per output cell; backward copies it and dY out
      // tile by tile and sums them (`Streamed.sumsFromOutput`).
      cost += e * 4 * outputCells
    }
    for p in s.passes() {
      cost += all  // recompute
      passes += 1
      let last = p.gather == nil
      for l in p.from..<L {
        cost += crop[l] * ((l > 0 || (last && inputGradient) ? shares[l].data : 0)
          + (s.leaves[l] is Conv2D && p.weights.contains(l) ? shares[l].weights : 0))
      }
    }
    if let j = s.cacheLevelNow {
      // Runs that start from the tiles' cached tensors: no read, no layers before the level.
      let n = Double(s.cacheUses(j))
      cost -= n * crop[..<j].reduce(0, +)
      passes -= n
    }
    let kept = Array(geo.tiles.suffix(min(s.keptTilesNow, geo.tiles.count)))
    for (i, t) in kept.enumerated() {
      // Backward does not run the forward of the tiles the forward recorded, nor read their crops
      // again — but for the last one's, a first convolution's kept crop (`Conv2D.InputToRead`).
      let hw = [t.crop.rows.count, t.crop.cols.count]
      let reread = i < kept.count - 1 && s.leaves.first is Conv2D
      cost -= (reread ? 0 : e * Double(input[0] * input[1] * hw[0] * hw[1])) + (try leafWorks(hw)).reduce(0, +)
    }
    // Each pass reads every tile's crop of the input.
    return (cost + e * cropInput * passes, try stepWork(s.segment, input: input, inputGradient: inputGradient))
  }
}
