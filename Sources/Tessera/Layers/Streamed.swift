import TesseraKernels

/// Where a streamed segment reads its input: region by region, so the whole input need never be
/// in memory at once.
public protocol TileSource {
  /// (N, C, H, W)
  var shape: [Int] { get }
  /// `region` of every image as an fp32 (N, C, rows, cols) tensor.
  func read(_ region: MapRegion) throws -> Tensor
}

/// A tensor in memory as a tile source (copies each region out).
public struct TensorTileSource: TileSource {
  public let tensor: Tensor
  public init(_ tensor: Tensor) { self.tensor = tensor }
  public var shape: [Int] { tensor.shape }
  public func read(_ r: MapRegion) -> Tensor { Streamed.copy(tensor, r) }
}

/// Deterministic pseudo-random pixels in [−1, 1) computed from their position: an input of any
/// size that costs no memory (benchmarks of images larger than memory). Same seed, same pixels.
public struct SyntheticTileSource: TileSource {
  public let shape: [Int]
  public let seed: UInt64
  public init(shape: [Int], seed: UInt64 = 0) {
    precondition(shape.count == 4 && shape.allSatisfy { $0 > 0 }, "shape is (N, C, H, W)")
    self.shape = shape
    self.seed = seed
  }

  public func read(_ r: MapRegion) -> Tensor {
    let (n, c) = (shape[0], shape[1])
    let t = Tensor(uninitialized: [n, c, r.rows.count, r.cols.count])
    let p = SendablePointer(t.floats), w = r.cols.count, seed = seed, H = shape[2], W = shape[3]
    Parallel.forRanges(n * c * r.rows.count) { _, range in
      for row in range {
        let plane = row / r.rows.count, y = r.rows.lowerBound + row % r.rows.count
        let base = UInt64(truncatingIfNeeded: (plane * H + y) * W) &+ seed &* 0x9E37_79B9_7F4A_7C15
        let out = p.p + row * w
        for i in 0..<w {
          // splitmix64 of the pixel's index
          var z = base &+ UInt64(r.cols.lowerBound + i) &* 0x9E37_79B9_7F4A_7C15
          z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
          z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
          z ^= z >> 31
          out[i] = Float(z >> 40) * (2.0 / 16_777_216.0) - 1
        }
      }
    }
    return t
  }
}

/// Why a segment cannot be streamed, or a tile does not fit it.
public enum StreamingError: Error, CustomStringConvertible, Equatable {
  case unsupportedLayer(path: String, kind: String)
  case tileNotMultiple(tile: Int, stride: Int)
  case unequalStrides(path: String)

  public var description: String {
    switch self {
    case let .unsupportedLayer(path, kind):
      return "\(path) (\(kind)) cannot be streamed: a streamed segment is a chain of Conv2D, BatchNorm2D, "
        + "pooling and activation layers; stream fewer blocks"
    case let .tileNotMultiple(tile, stride):
      let lo = max(stride, tile / stride * stride)
      return "tile \(tile) is not a multiple of the streamed part's output stride \(stride); use \(lo) or \(lo + stride)"
    case let .unequalStrides(path):
      return "\(path) strides rows and columns differently; streaming needs square strides"
    }
  }
}

/// The tiles of one input size: crops with halos, and for every layer of the segment the part of
/// its map each tile owns.
public struct StreamGeometry {
  /// (N, C, H, W) in, (N, K, H', W') out.
  public let input: [Int], output: [Int]
  /// Input pixels per output cell, and the halo (input pixels, a multiple of the stride) around a tile.
  public let stride: Int, halo: Int
  public let tiles: [Tile]
  /// Elements per channel of each layer's whole output map (N·H·W), for BatchNorm's means.
  let counts: [Int]

  public struct Tile {
    /// Input pixels read (tile plus halo).
    public let crop: MapRegion
    /// Output cells this tile owns (whole-map coordinates).
    public let out: MapRegion
    /// For each layer, the cells of its output this tile owns, in the crop's own coordinates.
    public let owned: [MapRegion]
    /// For each layer, the crop's output map size (h, w).
    public let local: [(Int, Int)]
  }
}

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
/// only to the cells it owns. Every weight gradient is gathered in exactly one pass. With
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
  /// The segment's layers as one chain, and their dotted paths.
  public let leaves: [Layer]
  public let paths: [String]
  private var saved: (source: TileSource, geometry: StreamGeometry)?

  public init(_ segment: Sequential, tile: Int, frozenBatchNorm: Bool = false) throws {
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
                           split: Int? = nil) throws -> Sequential {
    precondition(blocks >= 1 && blocks < model.layers.count, "stream between 1 and \(model.layers.count - 1) blocks")
    let L = model.layers
    guard let j = split, j > 0, j < blocks else {
      let s = try Streamed(Sequential(Array(L.prefix(blocks))), tile: tile, frozenBatchNorm: frozenBatchNorm)
      return Sequential([("streamed", s)] + Array(L.dropFirst(blocks)))
    }
    let first = try Streamed(Sequential(Array(L.prefix(j))), tile: tile, frozenBatchNorm: frozenBatchNorm)
    let stride = try first.outputStride()
    guard tile % stride == 0 else { throw StreamingError.tileNotMultiple(tile: tile, stride: stride) }
    let second = try Streamed(Sequential(Array(L[j..<blocks])), tile: tile / stride, frozenBatchNorm: frozenBatchNorm)
    return Sequential([("streamed", first), ("streamed2", second)] + Array(L.dropFirst(blocks)))
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

  /// Tiles, halos and owned regions for an (N, C, H, W) input.
  public func geometry(for input: [Int]) throws -> StreamGeometry {
    // Per layer: output size, cumulative stride S, and the input span of an output cell j:
    // [j·S − P, j·S − P + R − 1] (P: padding reach before, R: receptive field size).
    var shape = input, S = 1, P = (0, 0), R = (1, 1), halo = 0  // P and R per axis (rows, columns)
    var sizes = [(Int, Int)](), strides = [Int]()
    for (l, path) in zip(leaves, paths) {
      var k = (1, 1), s = (1, 1), d = (1, 1), pad = (0, 0)
      if let c = l as? Conv2D {
        let g = try c.geometry(for: shape)
        (k, s, d, pad) = ((g.kernelH, g.kernelW), (g.strideH, g.strideW), (g.dilationH, g.dilationW), (g.padTop, g.padLeft))
      } else if let p = l as? Pool2D {
        let (t, lp, _, _) = p.padding.amounts(inHeight: shape[2], inWidth: shape[3], kernel: p.kernelSize,
                                              stride: p.stride, dilation: (1, 1))
        (k, s, pad) = (p.kernelSize, p.stride, (t, lp))
      }
      guard s.0 == s.1 else { throw StreamingError.unequalStrides(path: path) }
      P = (P.0 + pad.0 * S, P.1 + pad.1 * S)
      R = (R.0 + (k.0 - 1) * d.0 * S, R.1 + (k.1 - 1) * d.1 * S)
      S *= s.0
      halo = max(halo, P.0, P.1, R.0 - P.0 - S, R.1 - P.1 - S)
      shape = try l.outputShape(for: shape)
      sizes.append((shape[2], shape[3]))
      strides.append(S)
    }
    guard tile % S == 0 else { throw StreamingError.tileNotMultiple(tile: tile, stride: S) }
    halo = (halo + S - 1) / S * S
    let (H, W) = (input[2], input[3]), (Ho, Wo) = (shape[2], shape[3]), t = tile / S

    /// Input span [start, end) for output cells [c0, c1) along an axis of n pixels: the halo
    /// around, the start on the stride grid, the length ≡ n (mod S) so every layer's padding and
    /// grid match the whole image's.
    func crop(_ c0: Int, _ c1: Int, _ n: Int) -> Range<Int> {
      let start = max(0, c0 * S - halo)
      var end = min(n, c1 * S + halo)
      if end < n { end = min(n, end + ((n - end) % S + S) % S) }
      return start..<end
    }
    var tiles = [StreamGeometry.Tile]()
    for r0 in stride(from: 0, to: Ho, by: t) {
      let r1 = min(Ho, r0 + t), rows = crop(r0, r1, H)
      for c0 in stride(from: 0, to: Wo, by: t) {
        let c1 = min(Wo, c0 + t), cols = crop(c0, c1, W)
        var owned = [MapRegion](), local = [(Int, Int)]()
        var ls = [input[0], input[1], rows.count, cols.count]
        for (i, l) in leaves.enumerated() {
          ls = try l.outputShape(for: ls)
          let f = S / strides[i], oy = rows.lowerBound / strides[i], ox = cols.lowerBound / strides[i]
          let gr = (r0 * f)..<(r1 == Ho ? sizes[i].0 : r1 * f), gc = (c0 * f)..<(c1 == Wo ? sizes[i].1 : c1 * f)
          let o = MapRegion(rows: (gr.lowerBound - oy)..<(gr.upperBound - oy), cols: (gc.lowerBound - ox)..<(gc.upperBound - ox))
          precondition(o.rows.lowerBound >= 0 && o.rows.upperBound <= ls[2] && o.cols.lowerBound >= 0
                       && o.cols.upperBound <= ls[3], "streamed tile geometry: owned cells outside the crop")
          owned.append(o)
          local.append((ls[2], ls[3]))
        }
        tiles.append(.init(crop: MapRegion(rows: rows, cols: cols), out: MapRegion(rows: r0..<r1, cols: c0..<c1),
                           owned: owned, local: local))
      }
    }
    return StreamGeometry(input: input, output: shape, stride: S, halo: halo, tiles: tiles,
                          counts: sizes.map { input[0] * $0.0 * $0.1 })
  }

  public var batchNorms: [Int] { leaves.indices.filter { leaves[$0] is BatchNorm2D } }

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
    if training {
      for k in batchNorms {
        let bn = leaves[k] as! BatchNorm2D
        if frozenBatchNorm {
          bn.fixedStatistics = (bn.runningMean.value.toArray(), bn.runningVariance.value.toArray())
        } else {
          try gatherStatistics(k, geo, source)
        }
      }
    }
    let y = Tensor(zeros: geo.output)
    for t in geo.tiles {
      let h = try BackwardRecording.without { try run(source, t, through: leaves.count, recordFrom: nil, training) }
      Self.copy(h, region: t.owned[leaves.count - 1], into: y, at: t.out)
    }
    if record { saved = (source, geo) } else { reset() }
    return y
  }

  /// Runs the first `end` layers on a tile's crop, recording from layer `recordFrom` on.
  private func run(_ source: TileSource, _ t: StreamGeometry.Tile, through end: Int, recordFrom: Int?,
                   _ training: Bool) throws -> Tensor {
    var h = try Profiler.shared.time("streamed read tile") { try source.read(t.crop) }
    for l in 0..<end {
      let record = recordFrom.map { l >= $0 } ?? false
      h = Profiler.shared.time("streamed \(paths[l]) \(leaves[l].kind) forward\(record ? "" : " (not kept)")") {
        record ? leaves[l].forward(h, training: training)
          : BackwardRecording.without { leaves[l].forward(h, training: training) }
      }
    }
    return h
  }

  /// The whole image's statistics at BatchNorm layer k (earlier ones already fixed), accumulated
  /// over the cells each tile owns; then the running statistics are updated once.
  private func gatherStatistics(_ k: Int, _ geo: StreamGeometry, _ source: TileSource) throws {
    let bn = leaves[k] as! BatchNorm2D, C = bn.channels
    var sum = [Double](repeating: 0, count: C), squares = sum, shift: [Float]?
    for t in geo.tiles {
      let h = try BackwardRecording.without { try run(source, t, through: k, recordFrom: nil, true) }
      let s = h.shape, region = t.owned[k]
      if shift == nil {  // the first tile's mean: keeps the one-pass variance accurate
        var a = [Double](repeating: 0, count: C), b = a
        BatchNormKernels.accumulateStatistics(x: h.floats, batch: s[0], channels: C, height: s[2], width: s[3],
                                              region: region, shift: [Float](repeating: 0, count: C), sum: &a, sumSquares: &b)
        shift = a.map { Float($0 / Double(max(1, s[0] * region.count))) }
      }
      BatchNormKernels.accumulateStatistics(x: h.floats, batch: s[0], channels: C, height: s[2], width: s[3],
                                            region: region, shift: shift!, sum: &sum, sumSquares: &squares)
    }
    let M = Double(geo.counts[k])
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

  /// Clears what the passes set on the segment's layers.
  private func reset() {
    for l in leaves {
      if let bn = l as? BatchNorm2D {
        bn.fixedStatistics = nil
        bn.streamedBackward = nil
      } else if let c = l as? Conv2D {
        c.accumulatesWeightGradient = true
      }
    }
  }

  // MARK: backward

  /// The backward passes: (BatchNorm index whose sums it gathers or nil for the last pass, first
  /// layer recorded, layers whose weight gradient it gathers).
  public func passes() -> [(gather: Int?, from: Int, weights: Range<Int>)] {
    let bns = batchNorms, L = leaves.count
    if frozenBatchNorm || bns.isEmpty { return [(nil, 0, 0..<L)] }
    var out = [(gather: Int?, from: Int, weights: Range<Int>)]()
    var next = L
    for k in bns.reversed() {
      out.append((k, k, (k + 1)..<next))
      next = k
    }
    out.append((nil, 0, 0..<next))
    return out
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    guard let (source, geo) = saved else { preconditionFailure("Streamed.backward without a training forward") }
    saved = nil
    defer { reset() }
    for k in batchNorms {
      (leaves[k] as! BatchNorm2D).streamedBackward = StreamedBatchNormBackward(channels: (leaves[k] as! BatchNorm2D).channels)
    }
    let L = leaves.count
    // The input gradient: each tile's crop gradient comes from the sources it owns only, so the
    // crops' gradients add up to the whole image's (made in the last pass).
    let dx: Tensor? = needInputGradient ? Tensor(zeros: geo.input) : nil
    for pass in passes() {
      let last = pass.gather == nil
      for (i, l) in leaves.enumerated() { (l as? Conv2D)?.accumulatesWeightGradient = pass.weights.contains(i) }
      if let k = pass.gather { (leaves[k] as! BatchNorm2D).streamedBackward!.inputGradient = false }
      for t in geo.tiles {
        for k in batchNorms { (leaves[k] as! BatchNorm2D).streamedBackward!.region = t.owned[k] }
        do {
          _ = try run(source, t, through: L, recordFrom: pass.from, true)
        } catch {
          preconditionFailure("\(error)")  // the same regions were read in forward
        }
        let o = geo.output, lo = t.local[L - 1]
        // (no named binding: the tile's output gradient must go when the last layer's backward is done)
        var g: Tensor? = Tensor(zeros: [o[0], o[1], lo.0, lo.1])
        Self.copy(dy, region: t.out, into: g!, at: t.owned[L - 1])
        for l in (pass.from..<L).reversed() {
          guard let d = g else { break }
          let need = l > 0 || (last && dx != nil)
          g = Profiler.shared.time("streamed \(paths[l]) \(leaves[l].kind) backward") { leaves[l].backward(d, needInputGradient: need) }
        }
        if last, let dx, let g { Self.add(g, into: dx, at: t.crop) }
      }
      if let k = pass.gather {
        let bn = leaves[k] as! BatchNorm2D, s = bn.streamedBackward!, M = Double(geo.counts[k])
        s.meanDy = s.sumDy.map { Float($0 / M) }
        s.meanDyXhat = s.sumDyXhat.map { Float($0 / M) }
        s.inputGradient = true
        addBatchNormGradients(bn)
      }
    }
    if frozenBatchNorm { for k in batchNorms { addBatchNormGradients(leaves[k] as! BatchNorm2D) } }
    return dx
  }

  private func addBatchNormGradients(_ bn: BatchNorm2D) {
    let s = bn.streamedBackward!, dg = bn.weight.gradient, db = bn.bias.gradient
    for c in 0..<bn.channels {
      dg[c] += Float(s.sumDyXhat[c])
      db[c] += Float(s.sumDy[c])
    }
  }

  // MARK: planner twins

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let geo = try geometry(for: x.shape)
    reset()
    if training && !frozenBatchNorm {
      for k in batchNorms {
        for t in geo.tiles { _ = try BackwardRecording.without { try planRun(t, geo, through: k, recordFrom: nil, true, sim) } }
      }
    }
    let y = sim.allocate(geo.output)
    for t in geo.tiles {
      _ = try BackwardRecording.without { try planRun(t, geo, through: leaves.count, recordFrom: nil, training, sim) }
    }
    if training && BackwardRecording.isOn {
      sim.keep(self, [x])
      sim.notes[ObjectIdentifier(self)] = geo
    }
    return y
  }

  private func planRun(_ t: StreamGeometry.Tile, _ geo: StreamGeometry, through end: Int, recordFrom: Int?,
                       _ training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    var h = sim.allocate([geo.input[0], geo.input[1], t.crop.rows.count, t.crop.cols.count])
    for l in 0..<end {
      if let r = recordFrom, l >= r {
        h = try leaves[l].planForward(h, training: training, sim)
      } else {
        h = try BackwardRecording.without { try leaves[l].planForward(h, training: training, sim) }
      }
    }
    return h
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let geo = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? StreamGeometry else { return nil }
    let source = sim.take(self)
    defer { reset() }
    for k in batchNorms {
      (leaves[k] as! BatchNorm2D).streamedBackward = StreamedBatchNormBackward(channels: 0)
    }
    let L = leaves.count
    let dx: SimTensor? = needInputGradient ? sim.allocate(geo.input) : nil
    for pass in passes() {
      let last = pass.gather == nil
      for (i, l) in leaves.enumerated() { (l as? Conv2D)?.accumulatesWeightGradient = pass.weights.contains(i) }
      if let k = pass.gather { (leaves[k] as! BatchNorm2D).streamedBackward!.inputGradient = false }
      for t in geo.tiles {
        _ = try? planRun(t, geo, through: L, recordFrom: pass.from, true, sim)
        let o = geo.output, lo = t.local[L - 1]
        var g: SimTensor? = sim.allocate([o[0], o[1], lo.0, lo.1])
        for l in (pass.from..<L).reversed() {
          guard let d = g else { break }
          g = leaves[l].planBackward(d, needInputGradient: l > 0 || (last && dx != nil), sim)
        }
      }
      if let k = pass.gather { (leaves[k] as! BatchNorm2D).streamedBackward!.inputGradient = true }
    }
    withExtendedLifetime(source) {}
    return dx
  }

  // MARK: copies

  /// `region` of every plane of x as a new (N, C, rows, cols) tensor.
  static func copy(_ x: Tensor, _ r: MapRegion) -> Tensor {
    let s = x.shape
    let t = Tensor(uninitialized: [s[0], s[1], r.rows.count, r.cols.count])
    copy(x, region: r, into: t, at: MapRegion(rows: 0..<r.rows.count, cols: 0..<r.cols.count))
    return t
  }

  /// Copies `region` of every plane of `x` to `at` (same size) of every plane of `y`.
  static func copy(_ x: Tensor, region: MapRegion, into y: Tensor, at: MapRegion) {
    let planes = x.shape[0] * x.shape[1], (xh, xw, yh, yw) = (x.shape[2], x.shape[3], y.shape[2], y.shape[3])
    let w = region.cols.count
    for p in 0..<planes {
      for (i, r) in region.rows.enumerated() {
        (y.floats + (p * yh + at.rows.lowerBound + i) * yw + at.cols.lowerBound)
          .update(from: x.floats + (p * xh + r) * xw + region.cols.lowerBound, count: w)
      }
    }
  }

  /// Adds every plane of `x` (the size of `at`) into `at` of every plane of `y`.
  static func add(_ x: Tensor, into y: Tensor, at: MapRegion) {
    let planes = x.shape[0] * x.shape[1], (yh, yw) = (y.shape[2], y.shape[3]), w = at.cols.count
    precondition(x.shape[2] == at.rows.count && x.shape[3] == w, "crop gradient and crop differ")
    for p in 0..<planes {
      for (i, r) in at.rows.enumerated() {
        let dst = y.floats + (p * yh + r) * yw + at.cols.lowerBound, src = x.floats + (p * at.rows.count + i) * w
        for j in 0..<w { dst[j] += src[j] }
      }
    }
  }
}
