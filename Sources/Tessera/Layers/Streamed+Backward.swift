import TesseraKernels

/// `Streamed`'s backward: one pass over the tiles per BatchNorm layer whose gradient sums are
/// gathered (deepest first), then the last pass, which gathers the remaining weight gradients and
/// the input gradient (see the type's documentation).
extension Streamed {
  /// The backward passes: (BatchNorm index whose sums it gathers or nil for the last pass, first
  /// layer recorded, layers whose weight gradient it gathers).
  public func passes() -> [(gather: Int?, from: Int, weights: Range<Int>)] {
    let bns = batchNorms, L = leaves.count
    if hasOneBackwardPass { return [(nil, 0, 0..<L)] }
    var out = [(gather: Int?, from: Int, weights: Range<Int>)]()
    var next = L
    for k in bns.reversed() {
      // Gathered from the output gradient instead (the layers after it have no weights).
      if k != sumsFromOutput { out.append((k, k, (k + 1)..<next)) }
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
      bn(k).streamedBackward = StreamedBatchNormBackward(channels: bn(k).channels)
    }
    let L = leaves.count
    // The input gradient: each tile's crop gradient comes from the sources it owns only, so the
    // crops' gradients add up to the whole image's (made in the last pass).
    let dx: Tensor? = needInputGradient ? Tensor(zeros: geo.input) : nil
    // Tile-parallel: this step's weight gradients start from zero here and are summed over the
    // ranks at the end; what was accumulated before (earlier micro-batches) is added back after.
    let parallel = collective.map { $0.size > 1 } ?? false
    let weights = parallel ? segment.namedParameters().map(\.1).filter(\.trainable) : []
    let earlier = weights.map { p in p.grad.map { Array(UnsafeBufferPointer(start: $0.floats, count: $0.count)) } }
    weights.forEach { $0.zeroGradient() }
    var tiles = myTiles(geo)
    // The tiles the forward recorded go first, last first (its recordings are in the layers, the
    // others' in the stash, the latest at its end), their forwards not run again.
    let kept = keptCount
    keptCount = 0
    tiles = Array(tiles.suffix(kept).reversed()) + Array(tiles.dropLast(kept))
    if let k = sumsFromOutput, let r = routed {
      // Tile by tile over the cells each owns, as the pass it replaces summed them (tile-parallel:
      // this rank's tiles, summed over the ranks in `finishGathering`), so N ranks add in one
      // process's order.
      Profiler.shared.time("streamed \(paths[k]) \(leaves[k].kind) sums from the output") {
        for t in tiles { bn(k).addStreamedSums(x: Self.copy(r, t.out), dy: Self.copy(dy, t.out)) }
      }
      routed = nil
      finishGathering(k, geo, parallel: parallel)
    }
    for pass in passes() {
      let last = pass.gather == nil
      // Passes record from ever shallower layers: once one records below the cache, none uses it.
      if let j = caching, pass.from < j { (cache, caching) = ([:], nil) }
      for (i, l) in leaves.enumerated() { (l as? Conv2D)?.accumulatesWeightGradient = pass.weights.contains(i) }
      if let k = pass.gather { bn(k).streamedBackward!.inputGradient = false }
      for (i, t) in tiles.enumerated() {
        for k in batchNorms { bn(k).streamedBackward!.region = t.owned[k] }
        if i > 0 && i < kept, var r = stash.popLast() {
          if let c = leaves.first as? Conv2D, let d = r.first as? Conv2D.InputToRead {
            do {
              let crop = try Profiler.shared.time("streamed read tile") { try source.read(t.crop) }
              r[0] = c.recording(d, input: crop)
            } catch {
              preconditionFailure("\(error)")  // the same region was read in forward
            }
          }
          for (l, rec) in zip(leaves, r) { (l as! RecordingHolder).restoreRecording(rec) }
        } else if i >= kept {
          do {
            _ = try run(source, t, through: L, recordFrom: pass.from, true)
          } catch {
            preconditionFailure("\(error)")  // the same regions were read in forward
          }
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
      if let k = pass.gather { finishGathering(k, geo, parallel: parallel) }
    }
    if frozenBatchNorm { for k in batchNorms { addBatchNormGradients(bn(k)) } }
    if let c = collective, parallel {
      for (p, before) in zip(weights, earlier) {
        let g = p.gradient
        c.allreduceSum(g, count: p.count)
        if let before { for i in 0..<p.count { g[i] += before[i] } }
      }
      if let dx { c.allreduceSum(dx.floats, count: dx.count) }
    }
    return dx
  }

  /// BatchNorm layer k's sums are gathered: its γ and β gradients, then the means the next passes
  /// apply (tile-parallel: the sums over every rank first).
  private func finishGathering(_ k: Int, _ geo: StreamGeometry, parallel: Bool) {
    let s = bn(k).streamedBackward!, M = Double(geo.counts[k])
    addBatchNormGradients(bn(k))  // this rank's part (summed with the other weights at the end)
    if let c = collective, parallel {
      var both = s.sumDy + s.sumDyXhat
      c.allreduceSum(&both)
      s.sumDy = Array(both[0..<bn(k).channels])
      s.sumDyXhat = Array(both[bn(k).channels...])
    }
    s.meanDy = s.sumDy.map { Float($0 / M) }
    s.meanDyXhat = s.sumDyXhat.map { Float($0 / M) }
    s.inputGradient = true
  }

  private func addBatchNormGradients(_ bn: BatchNorm2D) {
    let s = bn.streamedBackward!, dg = bn.weight.gradient, db = bn.bias.gradient
    for c in 0..<bn.channels {
      dg[c] += Float(s.sumDyXhat[c])
      db[c] += Float(s.sumDy[c])
    }
  }
}
