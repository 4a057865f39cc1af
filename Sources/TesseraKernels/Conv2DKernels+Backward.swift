extension Conv2DKernels {
  // MARK: backward-weights

  /// dw (K, C/groups, kh, kw) += Σ over images and pixels of x-window · dy; dbias (K) += Σ dy.
  public static func backwardWeights(
    _ g: ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
    dw: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?
  ) {
    if BF16.applies(g) { return BF16.backwardWeights(g, x: x, dy: dy, dw: dw, dbias: dbias) }
    if Phases.applies(g) { return Phases.backwardWeights(g, x: x, dy: dy, dw: dw, dbias: dbias) }
    if Winograd.appliesToWeights(g) {
      Winograd.backwardWeights(g, x: x, dy: dy, dw: dw)
      if let db = dbias { addBiasGradient(g, dy: dy, dbias: db) }
      return
    }
    let T = g.taps, kg = g.groupOutChannels, KB = (kg + lanes - 1) / lanes, Kpad = KB * lanes
    let P = g.outHeight * g.outWidth, K = g.outChannels, cg = g.groupInChannels, G = g.groups
    let imageMode = imageWorkers(g, threads: Parallel.threadCount)
    let workers = imageMode > 1 ? imageMode : Parallel.workers(for: P)
    let copies = imageMode > 1 ? imageMode : 1  // padded image and transposed dy per image worker
    let partialCount = G * T * Kpad
    let partialBuf = Buffer(floats: workers * partialCount)
    let dytBuf = Buffer(floats: copies * G * P * Kpad)
    let partials = SendablePointer(partialBuf.floats), dyt = SendablePointer(dytBuf.floats)
    let tapTiles = (T + tile - 1) / tile
    // Pixels per chunk: the chunk's rows of dy (chunk × Kpad floats) should stay near L1 while
    // every tap tile sweeps them (measured: 64 beats 128 by 15–30 % at Kpad 128–256, 128 wins below).
    let chunkPixels = max(64, min(128, 8192 / Kpad))
    let imgs = (0..<copies).map { _ in PaddedImage(g) }
    let to = tapOffsets(g, hp: imgs[0].hp, wp: imgs[0].wp), wp = imgs[0].wp
    let plane = imgs[0].hp * imgs[0].wp
    /// dy of image n transposed to [group][pixel][Kpad] (pixels `r`) into copy c.
    func transpose(_ n: Int, _ c: Int, _ r: Range<Int>) {
      let dyn = dy + n * K * P
      for gi in 0..<G {
        let src = dyn + gi * kg * P
        let dst = dyt.p + (c * G + gi) * P * Kpad
        for p in r {
          let d = dst + p * Kpad
          for k in 0..<kg { d[k] = src[k * P + p] }
        }
      }
    }
    to.withUnsafeBufferPointer { tob in
      let top = tob.baseAddress!
      /// Pixels `range` of image n (padded xn, transposed dy in copy c) into worker wi's partials.
      func accumulate(_ xn: UnsafePointer<Float>, _ c: Int, _ wi: Int, _ range: Range<Int>) {
        let mine = partials.p + wi * partialCount
        withUnsafeTemporaryAllocation(of: Int.self, capacity: chunkPixels) { bases in
          var c0 = range.lowerBound
          while c0 < range.upperBound {
            let c1 = min(range.upperBound, c0 + chunkPixels)
            pixelBases(g, wp: wp, c0..<c1, into: bases.baseAddress!)
            let pb = UnsafePointer(bases.baseAddress! - c0)  // pb[p] for p in c0..<c1
            for gi in 0..<G {
              let xg = xn + gi * cg * plane
              let dg = UnsafePointer(dyt.p + (c * G + gi) * P * Kpad)
              for tt in 0..<tapTiles {
                let t0 = tt * tile
                for kb in 0..<KB {
                  weightsTile(t0: t0, T: T, to: top, pb: pb, pixels: c0..<c1, xg: xg, dyt: dg + kb * lanes,
                              Kpad: Kpad, acc: mine + (gi * T) * Kpad + kb * lanes)
                }
              }
            }
            c0 = c1
          }
        }
      }
      if imageMode > 1 {
        // Whole images per worker: one parallel region for the batch.
        Parallel.forRanges(g.batch, maxWorkers: imageMode) { w, r in
          for n in r {
            let xn = imgs[w].load(x, image: n, parallel: false)
            transpose(n, w, 0..<P)
            accumulate(xn, w, w, 0..<P)
          }
        }
      } else {
        for n in 0..<g.batch {
          let xn = imgs[0].load(x, image: n)
          Parallel.forRanges(P) { _, r in transpose(n, 0, r) }
          // A fixed pixel range per worker, each summing into its own partials: the same split every
          // run, so the weight gradient is bit-for-bit reproducible (chunks handed out on demand were
          // not, and measured no faster).
          Parallel.forRanges(P, maxWorkers: workers) { wi, range in accumulate(xn, 0, wi, range) }
        }
      }
    }
    withExtendedLifetime(imgs) {}
    // Sum the workers' partials into dw (K, taps).
    let dwp = SendablePointer(dw)
    // Workers' partials are [group][tap][Kpad]: sum them row by row (contiguous), then scatter
    // each tap's channels into dw (K, taps).
    Parallel.forRanges(G * T) { _, r in
      withUnsafeTemporaryAllocation(of: Float.self, capacity: Kpad) { rowBuf in
        let row = rowBuf.baseAddress!
        for gt in r {
          let gi = gt / T, t = gt % T
          row.update(from: partials.p + gt * Kpad, count: Kpad)
          for wi in 1..<max(workers, 1) {
            let src = partials.p + wi * partialCount + gt * Kpad
            for k in 0..<Kpad { row[k] += src[k] }
          }
          for k in 0..<kg { dwp.p[(gi * kg + k) * T + t] += row[k] }
        }
      }
    }
    if let db = dbias { addBiasGradient(g, dy: dy, dbias: db) }
    withExtendedLifetime(partialBuf) {}
    withExtendedLifetime(dytBuf) {}
  }

  /// dbias (K) += Σ dy over images and pixels.
  static func addBiasGradient(_ g: ConvGeometry, dy: UnsafePointer<Float>, dbias: UnsafeMutablePointer<Float>) {
    let K = g.outChannels, P = g.outHeight * g.outWidth
    for n in 0..<g.batch {
      for k in 0..<K {
        let row = dy + (n * K + k) * P
        var s: Float = 0
        for p in 0..<P { s += row[p] }
        dbias[k] += s
      }
    }
  }

  /// acc[t0 ..< t0+6][0..<16] (row stride Kpad) += Σ_p xpad[pb[p] + to[t]] · dyt[p][0..<16].
  @inline(__always)
  static func weightsTile(
    t0: Int, T: Int, to: UnsafePointer<Int>, pb: UnsafePointer<Int>, pixels: Range<Int>,
    xg: UnsafePointer<Float>, dyt: UnsafePointer<Float>, Kpad: Int, acc: UnsafeMutablePointer<Float>
  ) {
    let o0 = to[min(t0, T - 1)], o1 = to[min(t0 + 1, T - 1)], o2 = to[min(t0 + 2, T - 1)]
    let o3 = to[min(t0 + 3, T - 1)], o4 = to[min(t0 + 4, T - 1)], o5 = to[min(t0 + 5, T - 1)]
    var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
    var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
    var c40 = SIMD8<Float>(), c41 = SIMD8<Float>(), c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
    for p in pixels {
      let d = dyt + p * Kpad
      let d0 = load8(d), d1 = load8(d + 8)
      let xb = xg + pb[p]
      var v = SIMD8<Float>(repeating: xb[o0])
      c00 = c00.addingProduct(v, d0); c01 = c01.addingProduct(v, d1)
      v = SIMD8<Float>(repeating: xb[o1])
      c10 = c10.addingProduct(v, d0); c11 = c11.addingProduct(v, d1)
      v = SIMD8<Float>(repeating: xb[o2])
      c20 = c20.addingProduct(v, d0); c21 = c21.addingProduct(v, d1)
      v = SIMD8<Float>(repeating: xb[o3])
      c30 = c30.addingProduct(v, d0); c31 = c31.addingProduct(v, d1)
      v = SIMD8<Float>(repeating: xb[o4])
      c40 = c40.addingProduct(v, d0); c41 = c41.addingProduct(v, d1)
      v = SIMD8<Float>(repeating: xb[o5])
      c50 = c50.addingProduct(v, d0); c51 = c51.addingProduct(v, d1)
    }
    let rows = min(tile, T - t0)
    @inline(__always) func add(_ i: Int, _ a: SIMD8<Float>, _ b: SIMD8<Float>) {
      guard i < rows else { return }
      let r = acc + (t0 + i) * Kpad
      store8(load8(r) + a, r)
      store8(load8(r + 8) + b, r + 8)
    }
    add(0, c00, c01); add(1, c10, c11); add(2, c20, c21)
    add(3, c30, c31); add(4, c40, c41); add(5, c50, c51)
  }

  // MARK: backward-data

  /// dx (N, C, H, W) = conv-transpose(dy (N, K, Ho, Wo), w). Overwrites dx.
  public static func backwardData(
    _ g: ConvGeometry, dy: UnsafePointer<Float>, w: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>
  ) {
    if let (gt, wf) = transposedForward(g, w) {
      forward(gt, x: dy, w: wf.floats, bias: nil, y: dx, winograd: Winograd.inTraining)
      return
    }
    if PhasedData.applies(g), let phases = PhasedData.phases(g) {
      return PhasedData.backwardData(g, phases, dy: dy, w: w, dx: dx)
    }
    backwardDataScatter(g, dy: dy, w: w, dx: dx)
  }

  /// For stride 1, backward-data is itself a convolution: dy correlated with the kernel rotated by
  /// 180° and its in/out channels swapped, padded by dilation·(k − 1) − pad. Returns that geometry
  /// and weights, or nil when it does not apply (stride > 1, or padding beyond the kernel's reach).
  static func transposedForward(_ g: ConvGeometry, _ w: UnsafePointer<Float>) -> (ConvGeometry, Buffer)? {
    guard let gt = transposedGeometry(g) else { return nil }
    let cg = g.groupInChannels, kg = g.groupOutChannels, kh = g.kernelH, kw = g.kernelW
    let wf = Buffer(floats: g.weightCount)
    // wf[gi·cg + c][k][kh−1−ky][kw−1−kx] = w[gi·kg + k][c][ky][kx]
    for gi in 0..<g.groups {
      for k in 0..<kg {
        for c in 0..<cg {
          let src = w + ((gi * kg + k) * cg + c) * kh * kw
          let dst = wf.floats + ((gi * cg + c) * kg + k) * kh * kw
          for ky in 0..<kh { for kx in 0..<kw { dst[(kh - 1 - ky) * kw + (kw - 1 - kx)] = src[ky * kw + kx] } }
        }
      }
    }
    return (gt, wf)
  }

  /// The stride-1 backward-data convolution's geometry, or nil when it does not apply.
  static func transposedGeometry(_ g: ConvGeometry) -> ConvGeometry? {
    guard g.strideH == 1, g.strideW == 1 else { return nil }
    let reachH = g.dilationH * (g.kernelH - 1), reachW = g.dilationW * (g.kernelW - 1)
    guard g.padTop <= reachH, g.padBottom <= reachH, g.padLeft <= reachW, g.padRight <= reachW else { return nil }
    let gt = ConvGeometry(
      batch: g.batch, inChannels: g.outChannels, inHeight: g.outHeight, inWidth: g.outWidth,
      outChannels: g.inChannels, kernelH: g.kernelH, kernelW: g.kernelW, dilationH: g.dilationH,
      dilationW: g.dilationW, padTop: reachH - g.padTop, padLeft: reachW - g.padLeft,
      padBottom: reachH - g.padBottom, padRight: reachW - g.padRight, groups: g.groups)
    guard gt.outHeight == g.inHeight, gt.outWidth == g.inWidth else { return nil }
    return gt
  }

  /// Backward-data for any stride: tiles of 6 pixels × 16 taps scattered into a padded dx.
  public static func backwardDataScatter(
    _ g: ConvGeometry, dy: UnsafePointer<Float>, w: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>
  ) {
    let T = g.taps, kg = g.groupOutChannels, P = g.outHeight * g.outWidth, K = g.outChannels
    let cg = g.groupInChannels, G = g.groups, khw = g.kernelH * g.kernelW
    let hp = g.paddedHeight, wp = g.paddedWidth
    let plane = hp * wp
    let needsCrop = hp != g.inHeight || wp != g.inWidth
    // Weights per group as [k][taps + 16], zero-padded so a 16-wide load never leaves the row.
    let Tpad = T + lanes
    let wdBuf = Buffer(floats: G * kg * Tpad)
    for kk in 0..<K { (wdBuf.floats + kk * Tpad).update(from: w + kk * T, count: T) }
    let wd = UnsafePointer(wdBuf.floats)
    let imageMode = imageWorkers(g, threads: Parallel.threadCount)
    // Padded dx per image worker (one when the batch is spread by channels).
    let dxpBufs: [Buffer] = needsCrop ? (0..<max(imageMode, 1)).map { _ in Buffer(floats: paddedFloats(g)) } : []
    let to = tapOffsets(g, hp: hp, wp: wp)
    let pTiles = (P + tile - 1) / tile
    // Tap tiles per block so that the block's weights (kg × 16 × tiles) stay in L2.
    let tilesPerBlock = max(1, (256 * 1024) / (kg * lanes * 4))
    to.withUnsafeBufferPointer { tob in
      let top = tob.baseAddress!
      /// Channels ca..<cb of group gi of image n into target (the padded or the real dx image).
      func scatter(_ n: Int, _ gi: Int, _ ca: Int, _ cb: Int, _ target: UnsafeMutablePointer<Float>,
                   _ s: UnsafeMutablePointer<Float>) {
        let tStart = ca * khw, tEnd = cb * khw
        let dxg = target + gi * cg * plane
        let dyg = dy + n * K * P + gi * kg * P
        let wg = wd + gi * kg * Tpad
        withUnsafeTemporaryAllocation(of: Int.self, capacity: tile) { bases in
          let pb = bases.baseAddress!  // the tile's pixel bases
          var blockStart = tStart
          while blockStart < tEnd {
            let blockEnd = min(tEnd, blockStart + tilesPerBlock * lanes)
            for pt in 0..<pTiles {
              let p0 = pt * tile
              let pValid = min(tile, P - p0)
              pixelBases(g, wp: wp, p0..<p0 + pValid, into: pb)
              var t0 = blockStart
              while t0 < blockEnd {
                dataTile(kg: kg, P: P, p0: p0, dyg: dyg, wt: wg + t0, Tpad: Tpad, out: s)
                let tValid = min(lanes, blockEnd - t0)
                for i in 0..<pValid {
                  let base = dxg + pb[i]
                  let si = s + i * lanes
                  for j in 0..<tValid { base[top[t0 + j]] += si[j] }
                }
                t0 += lanes
              }
            }
            blockStart = blockEnd
          }
        }
      }
      /// dx image n from its padded accumulation.
      func crop(_ n: Int, _ src: UnsafePointer<Float>, _ channels: Range<Int>) {
        let dxn = dx + n * g.inChannels * g.inHeight * g.inWidth
        let h = g.inHeight, wdt = g.inWidth, top = g.padTop, left = g.padLeft
        for c in channels {
          for y in 0..<h {
            (dxn + (c * h + y) * wdt).update(from: src + (c * hp + y + top) * wp + left, count: wdt)
          }
        }
      }
      let dxx = SendablePointer(dx)
      let bufs = dxpBufs.map { SendablePointer($0.floats) }
      if imageMode > 1 {
        // Whole images per worker, each into its own padded dx: one parallel region for the batch.
        Parallel.forRanges(g.batch, maxWorkers: imageMode) { w, r in
          withUnsafeTemporaryAllocation(of: Float.self, capacity: tile * lanes) { scratch in
            for n in r {
              let target = needsCrop ? bufs[w].p : dxx.p + n * g.inChannels * g.inHeight * g.inWidth
              target.update(repeating: 0, count: g.inChannels * plane)
              for gi in 0..<G { scatter(n, gi, 0, cg, target, scratch.baseAddress!) }
              if needsCrop { crop(n, target, 0..<g.inChannels) }
            }
          }
        }
      } else {
        // Threads own disjoint input channels, so no two write the same value.
        let parts = Parallel.workers(for: cg)
        for n in 0..<g.batch {
          let target = needsCrop ? bufs[0].p : dxx.p + n * g.inChannels * g.inHeight * g.inWidth
          target.update(repeating: 0, count: g.inChannels * plane)
          let tgt = SendablePointer(target)
          Parallel.forRanges(G * parts) { _, r in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: tile * lanes) { scratch in
              for item in r {
                let gi = item / parts, part = item % parts
                scatter(n, gi, cg * part / parts, cg * (part + 1) / parts, tgt.p, scratch.baseAddress!)
              }
            }
          }
          if needsCrop { Parallel.forRanges(g.inChannels) { _, r in crop(n, tgt.p, r) } }
        }
      }
    }
    withExtendedLifetime(dxpBufs) {}
    withExtendedLifetime(wdBuf) {}
  }

  /// out[i][j] = Σ_k dy[k][p0 + i] · w[k][t0 + j] for 6 pixels × 16 taps.
  @inline(__always)
  static func dataTile(
    kg: Int, P: Int, p0: Int, dyg: UnsafePointer<Float>, wt: UnsafePointer<Float>, Tpad: Int,
    out: UnsafeMutablePointer<Float>
  ) {
    let q0 = min(p0, P - 1), q1 = min(p0 + 1, P - 1), q2 = min(p0 + 2, P - 1)
    let q3 = min(p0 + 3, P - 1), q4 = min(p0 + 4, P - 1), q5 = min(p0 + 5, P - 1)
    var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
    var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
    var c40 = SIMD8<Float>(), c41 = SIMD8<Float>(), c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
    var wp = wt, d = dyg
    for _ in 0..<kg {
      let w0 = load8(wp), w1 = load8(wp + 8)
      var v = SIMD8<Float>(repeating: d[q0])
      c00 = c00.addingProduct(v, w0); c01 = c01.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: d[q1])
      c10 = c10.addingProduct(v, w0); c11 = c11.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: d[q2])
      c20 = c20.addingProduct(v, w0); c21 = c21.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: d[q3])
      c30 = c30.addingProduct(v, w0); c31 = c31.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: d[q4])
      c40 = c40.addingProduct(v, w0); c41 = c41.addingProduct(v, w1)
      v = SIMD8<Float>(repeating: d[q5])
      c50 = c50.addingProduct(v, w0); c51 = c51.addingProduct(v, w1)
      wp += Tpad
      d += P
    }
    store8(c00, out); store8(c01, out + 8); store8(c10, out + 16); store8(c11, out + 24)
    store8(c20, out + 32); store8(c21, out + 40); store8(c30, out + 48); store8(c31, out + 56)
    store8(c40, out + 64); store8(c41, out + 72); store8(c50, out + 80); store8(c51, out + 88)
  }
}
