import TesseraKernels

/// `Streamed`'s planner twins: the same passes, tiles (one of each crop size) and allocations as
/// the real step, on shapes only, so the plan equals the ledger to the byte.
extension Streamed {
  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let geo = try geometry(for: x.shape)
    let tiles = geo.tiles.distinct()
    reset()
    if training && BackwardRecording.isOn, let j = cacheLevelNow { (plannedCaching, plannedFilling) = (j, true) }
    /// A run through `end` over the tiles: one of each shape, or the pass that fills the cache.
    func eachTile(_ end: Int, _ body: (StreamGeometry.Tile) throws -> Void) throws {
      if plannedFilling, let j = plannedCaching, end >= j, plannedCache.isEmpty {
        try planFillingPass(geo, j, sim, body)
      } else {
        for t in tiles { try body(t) }
      }
    }
    let fused = training ? fusedOutputPass : nil, keep = training && BackwardRecording.isOn ? sumsFromOutput : nil
    var map: SimTensor?, routed: SimTensor?
    if training && !frozenBatchNorm {
      for k in batchNorms {
        if k == fused { map = sim.allocate(geo.output) }
        try eachTile(k) { t in
          let h = try BackwardRecording.without { try planRun(t, geo, through: k, recordFrom: nil, true, sim) }
          if k == fused { withExtendedLifetime(try planRoute(h, k, sim)) {} }
          withExtendedLifetime(h) {}
        }
      }
    }
    let y: SimTensor
    if let k = fused, let map {
      if keep != nil {
        routed = map
        y = try BackwardRecording.without { try leaves[k].planForward(map, training: true, sim) }
      } else {
        y = map  // in place
      }
    } else {
      y = sim.allocate(geo.output)
      try eachTile(leaves.count) { t in
        _ = try BackwardRecording.without { try planRun(t, geo, through: leaves.count, recordFrom: nil, training, sim) }
      }
      // `keptTiles`: the last ones run again, recorded (their recordings live until backward), each
      // but the last one's taken out of the layers while the next runs, as the real forward does.
      if training && BackwardRecording.isOn {
        let kept = Array(geo.tiles.suffix(min(keptTilesNow, geo.tiles.count)))
        for (i, t) in kept.enumerated() {
          _ = try planRun(t, geo, through: leaves.count, recordFrom: 0, training, sim)
          if i < kept.count - 1 {
            var r = leaves.map { stashRecording(of: $0, sim) }
            if leaves.first is Conv2D, r[0].kept?.isEmpty == false { r[0].kept = nil }  // read again
            plannedStash.append(r)
          }
        }
        plannedKeptTiles = kept
      }
    }
    plannedFilling = false
    if training && BackwardRecording.isOn {
      sim.keep(self, [x] + (routed.map { [$0] } ?? []))
      sim.notes[ObjectIdentifier(self)] = geo
    }
    return y
  }

  /// The pass that fills the cache at level j, in the twin: the last tile of each shape runs in full
  /// (`body`), each after every other tile of its shape, so the peak of the pass is the real one's
  /// (the cache only grows); the cached tensors of the tiles between them are allocated as one block.
  private func planFillingPass(_ geo: StreamGeometry, _ j: Int, _ sim: MemorySimulation,
                               _ body: (StreamGeometry.Tile) throws -> Void) throws {
    var shape = geo.input
    for l in 0..<j { shape = try leaves[l].outputShape(for: shape) }
    let perCell = shape[0] * shape[1]
    var next = 0
    for i in geo.tiles.lastOfEachShape() {
      let cells = (next..<i).reduce(0) { $0 + geo.tiles.localCells($1, layer: j - 1) }
      if cells > 0 { plannedCacheRest.append(sim.allocate([perCell * cells])) }
      try body(geo.tiles[i])
      next = i + 1
    }
  }

  /// A layer's planned recording, taken out of the simulation (`RecordingHolder.takeRecording`).
  private func stashRecording(of l: Layer, _ sim: MemorySimulation) -> (kept: [SimTensor]?, note: Any?) {
    let id = ObjectIdentifier(l)
    return (sim.kept.removeValue(forKey: id), sim.notes.removeValue(forKey: id))
  }

  /// A tile's shape, as the twin's cache keys it.
  private func shapeKey(_ t: StreamGeometry.Tile) -> [Int] {
    [t.crop.rows.count, t.crop.cols.count] + t.local.flatMap { [$0.0, $0.1] }
  }

  /// `route`'s allocation: the pooled map, or nothing.
  private func planRoute(_ h: SimTensor, _ k: Int, _ sim: MemorySimulation) throws -> SimTensor {
    guard k + 1 < leaves.count, let pool = leaves[k + 1] as? Pool2D else { return h }
    let g = try pool.geometry(for: h.shape)
    return sim.allocate([h.shape[0], h.shape[1], g.outHeight, g.outWidth])
  }

  private func planRun(_ t: StreamGeometry.Tile, _ geo: StreamGeometry, through end: Int, recordFrom: Int?,
                       _ training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    let key = shapeKey(t)
    var h: SimTensor, start = 0
    if let j = plannedCaching, end >= j, recordFrom ?? end >= j, let c = plannedCache[key] {
      (h, start) = (c, j)
    } else {
      h = sim.allocate([geo.input[0], geo.input[1], t.crop.rows.count, t.crop.cols.count])
    }
    for l in start..<end {
      if let r = recordFrom, l >= r {
        h = try leaves[l].planForward(h, training: training, sim)
      } else {
        h = try BackwardRecording.without { try leaves[l].planForward(h, training: training, sim) }
      }
      if plannedFilling, l + 1 == plannedCaching, plannedCache[key] == nil { plannedCache[key] = h }
    }
    return h
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    guard let geo = sim.notes.removeValue(forKey: ObjectIdentifier(self)) as? StreamGeometry else { return nil }
    var kept = sim.take(self)
    let source = kept.first
    var routed = kept.count > 1 ? kept[1] : nil
    kept = []
    defer { reset() }
    for k in batchNorms {
      bn(k).streamedBackward = StreamedBatchNormBackward(channels: 0)
    }
    let L = leaves.count
    let dx: SimTensor? = needInputGradient ? sim.allocate(geo.input) : nil
    let tiles = geo.tiles.distinct()
    if routed != nil {
      for t in tiles {  // the owned cells' routed inputs and output gradient, copied out
        let shape = [geo.output[0], geo.output[1], t.out.rows.count, t.out.cols.count]
        withExtendedLifetime((sim.allocate(shape), sim.allocate(shape))) {}
      }
      withExtendedLifetime(routed) {}
      routed = nil
    }
    // The tiles the forward recorded first, last first, without their forwards (`keptTiles`); then
    // one of each shape of the others.
    let keptTiles = Array(plannedKeptTiles.reversed())
    plannedKeptTiles = []
    var seen = Set<[Int]>()
    let others = keptTiles.isEmpty ? tiles
      : geo.tiles.dropLast(keptTiles.count).filter { seen.insert(shapeKey($0)).inserted }
    for pass in passes() {
      let last = pass.gather == nil
      if let j = plannedCaching, pass.from < j { (plannedCache, plannedCacheRest, plannedCaching) = ([:], [], nil) }
      for (i, l) in leaves.enumerated() { (l as? Conv2D)?.accumulatesWeightGradient = pass.weights.contains(i) }
      if let k = pass.gather { bn(k).streamedBackward!.inputGradient = false }
      for (i, t) in (keptTiles + others).enumerated() {
        if i > 0 && i < keptTiles.count, var r = plannedStash.popLast() {
          if leaves.first is Conv2D, r[0].kept == nil {
            let crop = sim.allocate([geo.input[0], geo.input[1], t.crop.rows.count, t.crop.cols.count])
            r[0].kept = [ActivationStorage.keep(crop, sim)]
          }
          for (l, rec) in zip(leaves, r) {
            sim.kept[ObjectIdentifier(l)] = rec.kept
            sim.notes[ObjectIdentifier(l)] = rec.note
          }
        } else if i >= keptTiles.count {
          _ = try? planRun(t, geo, through: L, recordFrom: pass.from, true, sim)
        }
        let o = geo.output, lo = t.local[L - 1]
        var g: SimTensor? = sim.allocate([o[0], o[1], lo.0, lo.1])
        for l in (pass.from..<L).reversed() {
          guard let d = g else { break }
          g = leaves[l].planBackward(d, needInputGradient: l > 0 || (last && dx != nil), sim)
        }
      }
      if let k = pass.gather { bn(k).streamedBackward!.inputGradient = true }
    }
    withExtendedLifetime(source) {}
    return dx
  }
}
