import TesseraKernels

/// Exact streamed training (after StreamingCNN, Pinckaers et al.): a segment at the start of a
/// network run tile by tile on crops with halos from its receptive field, so the stitched output
/// and every gradient equal the whole-image computation up to float rounding, while no more than
/// one crop's activations live at a time.
///
/// Forward (training): BatchNorm needs the whole image's statistics, so before the output pass one
/// extra pass per BatchNorm layer accumulates its statistics over the cells each tile owns (earlier
/// layers already using the whole image's). Backward recomputes each tile and backpropagates the
/// part of the output gradient it owns; one pass per BatchNorm layer (deepest first) gathers that
/// layer's gradient sums Σdy and Σdy·x̂ over the whole image — by linearity, summed over every
/// tile's whole crop — so the next pass can apply them, each tile adding the batch-statistic terms
/// only to the cells it owns — except the deepest BatchNorm layer when at most a max pooling follows
/// it (`sumsFromOutput`): its sums come from the output gradient and the BatchNorm input recorded at
/// each output cell's arg-max, with no pass; and that layer's statistics pass is the output pass
/// too (the recorded inputs give the output, see `route`). Every weight gradient is gathered in
/// exactly one pass. With
/// `frozenBatchNorm` the segment's BatchNorm layers use their running statistics (γ and β still
/// learn): one pass each way, as StreamingCNN.
///
/// The segment may hold Conv2D, BatchNorm2D, Pool2D and activation layers (nested Sequentials
/// flattened). Asked for, the input gradient is the sum of every tile's crop gradient (the last
/// pass), which is exact for the same reason; so segments can follow one another (a high-resolution
/// segment in large tiles, then a deeper one in tiles of its own input) or follow other layers.
public final class Streamed: Layer {
  public let segment: Sequential
  /// Output tile edge in input pixels (a multiple of the segment's output stride).
  public let tile: Int
  public let frozenBatchNorm: Bool
  /// Whether the deepest BatchNorm's gradient sums may come from the output (`sumsFromOutput`):
  /// one backward pass fewer for one more tensor the size of the output.
  public let outputSums: Bool
  /// The segment's layers as one chain, and their dotted paths.
  public let leaves: [Layer]
  public let paths: [String]
  var saved: (source: TileSource, geometry: StreamGeometry)?
  /// For `sumsFromOutput`: at each output cell, the BatchNorm input its gradient reaches.
  var routed: Tensor?
  /// Tiles the training forward recorded (`keptTiles`): the last one's recordings in the layers,
  /// the others' in `stash`, in tile order — without the tile's crop that a first convolution keeps
  /// for its weight gradient (`Conv2D.InputToRead`): backward reads it again from the source.
  var keptCount = 0, stash: [[Any?]] = []
  /// With one backward pass (frozen BatchNorm, or none): the training forward records its last
  /// `keptTiles` tiles (each one's recordings moved to a stash while the next runs) and backward
  /// starts with them, without their forwards — a tile's recomputation fewer each, for holding
  /// their activations until backward. The planner keeps one without a budget and as many as fit
  /// within one (`Planner.applyStreaming`); 0 by default. `keepsLastTile`: at least one.
  public var keptTiles = 0
  public var keepsLastTile: Bool {
    get { keptTiles > 0 }
    set { keptTiles = newValue ? max(1, keptTiles) : 0 }
  }
  /// `keptTiles` and `keepsLastTile` where they apply: a segment with one backward pass.
  public var keptTilesNow: Int { hasOneBackwardPass ? keptTiles : 0 }
  public var keepsLastTileNow: Bool { keptTilesNow > 0 }
  /// Frozen BatchNorm, or none: one pass over the tiles each way, no statistics to gather.
  public var hasOneBackwardPass: Bool { frozenBatchNorm || batchNorms.isEmpty }
  /// The planner twin's kept tiles (in tile order) and the recordings stashed from all but the last.
  var plannedKeptTiles: [StreamGeometry.Tile] = []
  /// (A first convolution's `kept` is nil there: its input is read again, as `stash`'s.)
  var plannedStash: [[(kept: [SimTensor]?, note: Any?)]] = []
  /// With BatchNorm's passes: each tile's input of leaf `cacheLevel` (what the layers before it
  /// make) is kept from the first run over the tiles that makes it — the statistics of every
  /// BatchNorm before it then fixed — until the last run that can start from it, and those runs
  /// start there: no tile read, no recomputation of the layers before, and the very same tensors,
  /// so the arithmetic is unchanged. Costs one such tensor per tile, all held at once. The planner
  /// picks the level within the budget (`Planner.applyStreaming`); nil by default.
  public var cacheLevel: Int?
  /// `cacheLevel`, where it saves a run (`cacheUses`).
  public var cacheLevelNow: Int? { cacheLevel.flatMap { cacheUses($0) > 0 ? $0 : nil } }
  /// A tile's key in the cache: its owned output's origin (crops may share theirs).
  struct TileKey: Hashable {
    let row: Int, col: Int
    init(_ t: StreamGeometry.Tile) { (row, col) = (t.out.rows.lowerBound, t.out.cols.lowerBound) }
  }
  /// The cached tensors and the level they are at while a step uses them (`filling`: in forward).
  var cache: [TileKey: Tensor] = [:], caching: Int?, filling = false
  /// The planner twin's cache: one tensor per tile shape (the last tile of each runs), the other
  /// tiles' as one allocation per run of them (`planFillingPass`).
  var plannedCache: [[Int]: SimTensor] = [:], plannedCacheRest: [SimTensor] = [], plannedCaching: Int?, plannedFilling = false
  /// Tile-parallel streaming: rank r of N takes tiles r, r + N, r + 2N, …; the BatchNorm sums, the
  /// stitched output, the input gradient and the segment's weight gradients are summed over the
  /// ranks, so every rank ends the step with what one process computes alone.
  public var collective: Collective?

  public init(_ segment: Sequential, tile: Int, frozenBatchNorm: Bool = false, outputSums: Bool = true) throws {
    precondition(tile > 0, "tile must be positive")
    var leaves = [Layer](), paths = [String]()
    func flatten(_ l: Layer, _ path: String) throws {
      if let s = l as? Sequential {
        for (name, c) in s.layers { try flatten(c, path.isEmpty ? name : path + "." + name) }
      } else if l is Conv2D || l is BatchNorm2D || l is Pool2D || l is OutputActivation {
        leaves.append(l)
        paths.append(path)
      } else {
        throw StreamingError.unsupportedLayer(path: path, kind: l.kind)
      }
    }
    try flatten(segment, "")
    self.segment = segment
    self.tile = tile
    self.frozenBatchNorm = frozenBatchNorm
    self.outputSums = outputSums
    self.leaves = leaves
    self.paths = paths
  }

  public var kind: String { "Streamed" }
  public var transparent: Bool { true }
  public var children: [(String, Layer)] { segment.layers }

  /// Whether `layer` (a top-level block) can be part of a streamed segment.
  public static func canStream(_ layer: Layer) -> Bool {
    (try? Streamed(Sequential([("b", layer)]), tile: 1)) != nil
  }

  /// The segment's output shape; throws when the tile does not fit the segment's stride.
  public func outputShape(for input: [Int]) throws -> [Int] { try geometry(for: input).output }

  /// How many leading top-level blocks of `model` can be streamed (never its last layer).
  public static func streamableBlocks(of model: Sequential) -> Int {
    model.layers.dropLast().prefix { canStream($0.1) }.count
  }

  /// `model` with its first `blocks` top-level blocks streamed (same parameters, same names). With
  /// `split` (0 < split < blocks) as two segments: blocks [0, split) in tiles of `tile` input pixels,
  /// then the rest in tiles of the same size measured in the first segment's output (tile / its
  /// stride) — each recomputes only its own layers in its BatchNorm passes, at the price of holding
  /// the first segment's output and its gradient whole.
  public static func apply(to model: Sequential, blocks: Int, tile: Int, frozenBatchNorm: Bool = false,
                           split: Int? = nil, outputSums: Bool = true) throws -> Sequential {
    try apply(to: model, blocks: blocks, tile: tile, frozenBatchNorm: frozenBatchNorm, splits: split.map { [$0] } ?? [],
              outputSums: outputSums)
  }

  /// As `apply(…split:)` with a segment boundary before each block index in `splits` (increasing,
  /// inside 1..<blocks; 0 and [] mean one segment): each segment in tiles of `tile` measured in its
  /// own input, each boundary's output and gradient held whole.
  public static func apply(to model: Sequential, blocks: Int, tile: Int, frozenBatchNorm: Bool = false,
                           splits: [Int], outputSums: Bool = true) throws -> Sequential {
    precondition(blocks >= 1 && blocks < model.layers.count, "stream between 1 and \(model.layers.count - 1) blocks")
    let L = model.layers
    let cuts = [0] + splits.filter { $0 > 0 && $0 < blocks } + [blocks]
    precondition(zip(cuts, cuts.dropFirst()).allSatisfy { $0 < $1 }, "splits must increase: \(splits)")
    var segments = [(String, Layer)](), t = tile
    for (i, (a, b)) in zip(cuts, cuts.dropFirst()).enumerated() {
      if i > 0 {
        let stride = try (segments[i - 1].1 as! Streamed).outputStride()
        guard t % stride == 0 else { throw StreamingError.tileNotMultiple(tile: t, stride: stride) }
        t /= stride
      }
      let s = try Streamed(Sequential(Array(L[a..<b])), tile: t, frozenBatchNorm: frozenBatchNorm, outputSums: outputSums)
      segments.append((i == 0 ? "streamed" : "streamed\(i + 1)", s))
    }
    return Sequential(segments + Array(L.dropFirst(blocks)))
  }

  /// The segment's output stride (input pixels per output cell).
  public func outputStride() throws -> Int {
    var S = 1
    for (l, path) in zip(leaves, paths) {
      let s = (l as? Conv2D).map { ($0.stride.height, $0.stride.width) } ?? (l as? Pool2D).map { $0.stride } ?? (1, 1)
      guard s.0 == s.1 else { throw StreamingError.unequalStrides(path: path) }
      S *= s.0
    }
    return S
  }

  public var batchNorms: [Int] { leaves.indices.filter { leaves[$0] is BatchNorm2D } }

  /// The BatchNorm layer at leaf index k.
  func bn(_ k: Int) -> BatchNorm2D { leaves[k] as! BatchNorm2D }

  // MARK: forward

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    do { return try forward(source: TensorTileSource(x), training: training) } catch {
      preconditionFailure("\(error)")
    }
  }

  /// The segment's output for an input read region by region.
  public func forward(source: TileSource, training: Bool) throws -> Tensor {
    let geo = try geometry(for: source.shape)
    let record = training && BackwardRecording.isOn
    saved = nil
    reset()
    if record, let j = cacheLevelNow { (caching, filling) = (j, true) }
    // The deepest BatchNorm's statistics pass is the output pass too (`fusedOutputPass`); with
    // `sumsFromOutput` the map it fills is kept for backward as well.
    let fused = training ? fusedOutputPass : nil, keep = record ? sumsFromOutput : nil
    var map: Tensor?
    if training {
      for k in batchNorms {
        if frozenBatchNorm {
          bn(k).fixedStatistics = (bn(k).runningMean.value.toArray(), bn(k).runningVariance.value.toArray())
        } else {
          if k == fused { map = Tensor(zeros: geo.output) }
          try gatherStatistics(k, geo, source, routing: k == fused ? map : nil)
        }
      }
    }
    let y: Tensor
    if let k = fused, let map {
      // Each cell is owned by one tile, so the sum over ranks is the whole map, exactly.
      collective?.allreduceSum(map.floats, count: map.count)
      // BatchNorm(+ReLU) of the inputs where each output cell's max lies is the output (see `route`):
      // a new tensor when the map is kept for backward, else in place.
      y = Profiler.shared.time("streamed \(paths[k]) \(leaves[k].kind) forward of the routed inputs") {
        if keep != nil {
          routed = map
          return BackwardRecording.without { leaves[k].forward(map, training: true) }
        }
        bn(k).applyFixedStatistics(inPlace: map)
        return map
      }
    } else {
      y = Tensor(zeros: geo.output)
      let tiles = myTiles(geo)
      keptCount = record ? min(keptTilesNow, tiles.count) : 0
      for (i, t) in tiles.enumerated() {
        // The last `keptTiles` tiles recorded for backward, the others not.
        let recorded = i >= tiles.count - keptCount
        let h = try recorded ? run(source, t, through: leaves.count, recordFrom: 0, training)
          : BackwardRecording.without { try run(source, t, through: leaves.count, recordFrom: nil, training) }
        Self.copy(h, region: t.owned[leaves.count - 1], into: y, at: t.out)
        // Each but the last one's recordings out of the layers, so the next tile can record.
        if recorded && i < tiles.count - 1 {
          var r = leaves.map { ($0 as! RecordingHolder).takeRecording() }
          if let c = leaves.first as? Conv2D, let d = c.droppingInput(r[0]) { r[0] = d }
          stash.append(r)
        }
      }
      // Each cell is owned by one tile, so the sum over ranks is the stitched output, exactly.
      collective?.allreduceSum(y.floats, count: y.count)
    }
    filling = false
    if record { saved = (source, geo) } else { reset() }
    return y
  }

  /// The tiles this process runs: all of them, or its share in a tile-parallel run.
  func myTiles(_ geo: StreamGeometry) -> [StreamGeometry.Tile] {
    guard let c = collective, c.size > 1 else { return Array(geo.tiles) }
    return geo.tiles.enumerated().filter { $0.offset % c.size == c.rank }.map(\.element)
  }

  /// Runs the first `end` layers on a tile's crop, recording from layer `recordFrom` on — from the
  /// tile's cached tensor when it has one and nothing before it is recorded (`cacheLevel`).
  func run(_ source: TileSource, _ t: StreamGeometry.Tile, through end: Int, recordFrom: Int?,
                   _ training: Bool) throws -> Tensor {
    let key = TileKey(t)
    var h: Tensor, start = 0
    if let j = caching, end >= j, recordFrom ?? end >= j, let c = cache[key] {
      (h, start) = (c, j)
    } else {
      h = try Profiler.shared.time("streamed read tile") { try source.read(t.crop) }
    }
    for l in start..<end {
      let record = recordFrom.map { l >= $0 } ?? false
      h = Profiler.shared.time("streamed \(paths[l]) \(leaves[l].kind) forward\(record ? "" : " (not kept)")") {
        record ? leaves[l].forward(h, training: training)
          : BackwardRecording.without { leaves[l].forward(h, training: training) }
      }
      if filling, l + 1 == caching, cache[key] == nil { cache[key] = h }
    }
    return h
  }

  /// The runs over the tiles of a training step, in order: layers run, and the first recorded.
  public func runs() -> [(end: Int, recordFrom: Int?)] {
    var r = [(end: Int, recordFrom: Int?)]()
    if !frozenBatchNorm { r += batchNorms.map { ($0, nil) } }
    if fusedOutputPass == nil { r.append((leaves.count, nil)) }
    return r + passes().map { (leaves.count, $0.from) }
  }

  /// Runs that would start from tensors cached at level j (the first run through j makes them).
  public func cacheUses(_ j: Int) -> Int {
    guard j > 0, j < leaves.count else { return 0 }
    return runs().filter { $0.end >= j }.dropFirst().filter { ($0.recordFrom ?? j) >= j }.count
  }

  /// The deepest BatchNorm layer whose gradient sums the segment's output gradient gives directly,
  /// without a backward pass: when nothing follows it but at most one max pooling, the gradient
  /// reaching each of its cells is a sum of output cells' gradients (each output cell's going to
  /// its window's arg-max, or to itself), so Σdy and Σdy·x̂ over its map are sums over output cells
  /// given the BatchNorm input at the cell each one's gradient reaches — recorded in the forward
  /// statistics pass of that layer (`routed`, one tensor the size of the output), which then also
  /// gives the output: no separate output pass. nil with frozen BatchNorm.
  public var sumsFromOutput: Int? { outputSums ? fusedOutputPass : nil }

  /// The deepest BatchNorm layer when at most one max pooling follows it (and BatchNorm is not
  /// frozen): its statistics pass also gives the segment's output (`route`), so a training forward
  /// needs no separate output pass — whether or not `sumsFromOutput` keeps the map for backward.
  public var fusedOutputPass: Int? {
    guard !frozenBatchNorm, let k = batchNorms.last else { return nil }
    let after = leaves[(k + 1)...]
    guard after.count <= 1, after.allSatisfy({ ($0 as? Pool2D)?.mode == .max }) else { return nil }
    return k
  }

  /// For `fusedOutputPass`'s BatchNorm layer k, from its input h on one tile's crop: at each output
  /// cell, the BatchNorm input at the cell the output's value (and gradient) comes from. With no
  /// layer after k that is h itself. With a max pooling after it, BatchNorm(+ReLU) is monotone per
  /// channel — non-decreasing where γ > 0 (its scale γ·invstd has γ's sign), non-increasing where
  /// γ < 0, constant where γ = 0 — so the pooled output is BatchNorm(+ReLU) of each window's max,
  /// min or first cell of h (`Pool2DKernels.extremeForward`), bit for bit (rounding is monotone
  /// too, and `BatchNormKernels.affine` rounds every value alike wherever it sits), found before
  /// the statistics are known. Where f ties between cells of different h, the value taken may be
  /// another tied cell's than the arg-max the pooling's backward picks: the same output, BatchNorm
  /// inputs a rounding apart in the gradient sums.
  private func route(_ h: Tensor, _ k: Int) throws -> Tensor {
    guard k + 1 < leaves.count, let pool = leaves[k + 1] as? Pool2D else { return h }
    let g = try pool.geometry(for: h.shape)
    let r = Tensor(uninitialized: [h.shape[0], h.shape[1], g.outHeight, g.outWidth])
    let direction = UnsafeBufferPointer(start: bn(k).weight.value.floats, count: bn(k).channels).map { γ -> Int8 in
      γ > 0 ? 1 : γ < 0 ? -1 : 0
    }
    Pool2DKernels.extremeForward(g, x: h.floats, y: r.floats, direction: direction)
    return r
  }

  /// The whole image's statistics at BatchNorm layer k (earlier ones already fixed), accumulated
  /// over the cells each tile owns; then the running statistics are updated once. With `routing`
  /// (an output-sized map), each tile's `route` goes into it too: the output pass in the same pass.
  private func gatherStatistics(_ k: Int, _ geo: StreamGeometry, _ source: TileSource, routing: Tensor? = nil) throws {
    let bn = leaves[k] as! BatchNorm2D, C = bn.channels
    var sum = [Double](repeating: 0, count: C), squares = sum, shift: [Float]?, cells = 0
    for t in myTiles(geo) {
      let h = try BackwardRecording.without { try run(source, t, through: k, recordFrom: nil, true) }
      let s = h.shape, region = t.owned[k]
      cells += s[0] * region.count
      if shift == nil {  // the first tile's mean: keeps the one-pass variance accurate
        var a = [Double](repeating: 0, count: C), b = a
        BatchNormKernels.accumulateStatistics(x: h.floats, batch: s[0], channels: C, height: s[2], width: s[3],
                                              region: region, shift: [Float](repeating: 0, count: C), sum: &a, sumSquares: &b)
        shift = a.map { Float($0 / Double(max(1, s[0] * region.count))) }
      }
      BatchNormKernels.accumulateStatistics(x: h.floats, batch: s[0], channels: C, height: s[2], width: s[3],
                                            region: region, shift: shift!, sum: &sum, sumSquares: &squares)
      if let routing {
        let r = try Profiler.shared.time("streamed \(paths[k]) \(leaves[k].kind) routed inputs") { try route(h, k) }
        Self.copy(r, region: t.owned[leaves.count - 1], into: routing, at: t.out)
      }
    }
    let M = Double(geo.counts[k])
    if let coll = collective, coll.size > 1 {
      (sum, squares, shift) = Self.combine(coll, sum: sum, squares: squares, shift: shift, cells: cells, channels: C)
    }
    var mean = [Float](repeating: 0, count: C), variance = mean
    for c in 0..<C {
      let m = sum[c] / M
      mean[c] = Float(Double(shift![c]) + m)
      variance[c] = Float(max(0, squares[c] / M - m * m))
    }
    bn.fixedStatistics = (mean, variance)
    if !bn.freezeRunningStatistics {
      let rm = bn.runningMean.value.floats, rv = bn.runningVariance.value.floats, mo = bn.momentum
      for c in 0..<C {
        rm[c] = mo * rm[c] + (1 - mo) * mean[c]
        rv[c] = mo * rv[c] + (1 - mo) * variance[c]
      }
    }
  }

  /// Every rank's shifted sums over its `n` cells moved to rank 0's shift S (its first tile's
  /// mean, which one process would use) and added in rank order: with d = s − S,
  /// Σ(x − S) = Σ(x − s) + n·d and Σ(x − S)² = Σ(x − s)² + 2d·Σ(x − s) + n·d².
  static func combine(_ coll: Collective, sum: [Double], squares: [Double], shift: [Float]?, cells n: Int,
                      channels C: Int) -> ([Double], [Double], [Float]) {
    let mine = sum + squares + (shift ?? [Float](repeating: 0, count: C)).map(Double.init) + [Double(n)]
    let all = coll.allGather(mine).filter { $0[3 * C] > 0 }
    guard let first = all.first else { return (sum, squares, shift ?? [Float](repeating: 0, count: C)) }
    let S = Array(first[(2 * C)..<(3 * C)])
    var a = [Double](repeating: 0, count: C), b = a
    for r in all {
      let cells = r[3 * C]
      for c in 0..<C {
        let d = r[2 * C + c] - S[c]
        a[c] += r[c] + cells * d
        b[c] += r[C + c] + 2 * d * r[c] + cells * d * d
      }
    }
    return (a, b, S.map(Float.init))
  }

  /// Clears what the passes set on the segment's layers.
  func reset() {
    routed = nil
    (keptCount, stash) = (0, [])
    (cache, caching, filling) = ([:], nil, false)
    (plannedCache, plannedCacheRest, plannedCaching, plannedFilling) = ([:], [], nil, false)
    (plannedKeptTiles, plannedStash) = ([], [])
    for l in leaves {
      if let bn = l as? BatchNorm2D {
        bn.fixedStatistics = nil
        bn.streamedBackward = nil
      } else if let c = l as? Conv2D {
        c.accumulatesWeightGradient = true
      }
    }
  }

  /// Passes over the tiles in a training forward: one per BatchNorm layer (its statistics) and the
  /// output pass — which the deepest BatchNorm's pass also is (`fusedOutputPass`); one when frozen.
  public var forwardPasses: Int {
    hasOneBackwardPass ? 1 : batchNorms.count + (fusedOutputPass == nil ? 1 : 0)
  }
}
