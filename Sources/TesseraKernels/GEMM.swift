/// Single-precision matrix multiply on row-major buffers, packed and cache-blocked (BLIS layout:
/// a 6×16 register tile of 8-lane FMA accumulators, A blocks of 96×256 in L2, B slivers of 256×16
/// in L1), parallel over column panels (wide products) or row blocks (narrow ones).
public enum GEMM {
  static let mr = 6, nr = 16
  static let kc = 256, mc = 96, nc = 4096

  /// `C = alpha · op(A) · op(B) + beta · C`, where op(A) is m×k and op(B) is k×n.
  /// `beta == 0` ignores what C held (NaNs included).
  public static func sgemm(
    transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    guard m > 0, n > 0 else { return }
    scale(c, m: m, n: n, ldc: ldc, beta: beta)
    guard k > 0, alpha != 0 else { return }

    // Wide products split C by columns: each worker packs its own B panel and runs the whole
    // blocked loop on its columns, with no synchronisation (A blocks are packed by each, ≈ 4 % of the
    // work at n = 1024). Narrow ones (few column slivers) split the rows instead.
    let colSlivers = (n + nr - 1) / nr
    let workers = Parallel.workers(for: colSlivers)
    if workers > 1 && colSlivers >= 4 * workers {
      // All workers' workspaces in one allocation made here, so the peak does not depend on timing.
      let ranges = columnRanges(colSlivers, workers: workers, n: n)
      let offsets = ranges.reduce(into: [0]) { $0.append($0.last! + workspaceFloats(n: $1.count, rowWorkers: 1)) }
      let workspace = Buffer(floats: offsets.last!, zeroed: false)
      let cc = SendablePointer(c), ws = SendablePointer(workspace.floats)
      Parallel.forRanges(workers) { _, r in
        for w in r {
          let j0 = ranges[w].lowerBound
          let bView = transB ? b + j0 * ldb : b + j0
          blocked(transA: transA, transB: transB, m: m, n: ranges[w].count, k: k, alpha: alpha, a: a, lda: lda,
                  b: bView, ldb: ldb, c: cc.p + j0, ldc: ldc, rowWorkers: 1, workspace: ws.p + offsets[w])
        }
      }
      withExtendedLifetime(workspace) {}
    } else {
      let rowWorkers = Parallel.workers(for: (m + mr - 1) / mr)
      let workspace = Buffer(floats: workspaceFloats(n: n, rowWorkers: rowWorkers), zeroed: false)
      blocked(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
              c: c, ldc: ldc, rowWorkers: rowWorkers, workspace: workspace.floats)
      withExtendedLifetime(workspace) {}
    }
  }

  /// Column ranges (whole 16-wide slivers) of the column split.
  static func columnRanges(_ slivers: Int, workers: Int, n: Int) -> [Range<Int>] {
    (0..<workers).map { i in (slivers * i / workers * nr)..<min(n, slivers * (i + 1) / workers * nr) }
  }

  /// C += alpha · op(A) · op(B), blocked; `rowWorkers` > 1 splits each panel's rows between threads.
  static func blocked(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int, rowWorkers: Int, workspace: UnsafeMutablePointer<Float>
  ) {
    // `workspace` (workspaceFloats) holds the packed B panel, then each row worker's packed A block.
    let bFloats = kc * min(roundUp(n, nr), nc)
    let pB = SendablePointer(workspace), pA = SendablePointer(workspace + bFloats)
    let cc = SendablePointer(c)

    for jc in stride(from: 0, to: n, by: nc) {
      let nb = min(nc, n - jc)
      let slivers = (nb + nr - 1) / nr
      for pc in stride(from: 0, to: k, by: kc) {
        let kb = min(kc, k - pc)
        Parallel.forRanges(slivers, maxWorkers: rowWorkers) { _, r in
          for s in r {
            packBSliver(b, ldb: ldb, transB: transB, k0: pc, kb: kb, j0: jc + s * nr,
                        cols: min(nr, nb - s * nr), into: pB.p + s * kb * nr)
          }
        }
        let rowSlivers = (m + mr - 1) / mr
        // Blocks of rows handed out on demand (a slowed core takes fewer).
        Parallel.forChunks(rowSlivers, chunk: mc / mr, maxWorkers: rowWorkers) { w, r in
          let myA = pA.p + w * mc * kc
          var s0 = r.lowerBound
          while s0 < r.upperBound {
            let s1 = min(r.upperBound, s0 + mc / mr)
            let i0 = s0 * mr, rows = min(m, s1 * mr) - i0
            packABlock(a, lda: lda, transA: transA, alpha: alpha, i0: i0, rows: rows, k0: pc, kb: kb, into: myA)
            for js in 0..<slivers {
              let j = jc + js * nr, cols = min(nr, nb - js * nr)
              let bp = UnsafePointer(pB.p + js * kb * nr)
              var ir = 0
              while ir < rows {
                let rr = min(mr, rows - ir)
                let ap = UnsafePointer(myA + (ir / mr) * kb * mr)
                let cp = cc.p + (i0 + ir) * ldc + j
                if rr == mr && cols == nr {
                  micro6x16(kb, ap, bp, cp, ldc)
                } else {
                  microEdge(kb, ap, bp, cp, ldc, rows: rr, cols: cols)
                }
                ir += mr
              }
            }
            s0 = s1
          }
        }
      }
    }
  }

  /// Floats of one blocked call's workspace: the packed B panel and each row worker's A block.
  /// Past 1 MiB it is made at least 4 MiB, so that it comes 2 MiB-aligned on huge pages
  /// (Buffer.systemAllocate) and is reused from the block cache: a fresh, differently placed buffer
  /// per call made the speed vary by up to 30 %.
  static func workspaceFloats(n: Int, rowWorkers: Int) -> Int {
    let needed = kc * min(roundUp(n, nr), nc) + rowWorkers * mc * kc
    return needed < (1 << 18) ? needed : max(needed, 1 << 20)
  }

  /// Bytes of workspace `sgemm` holds at its peak with `threads` workers (for the planner).
  public static func workspaceBytes(m: Int, n: Int, k: Int, threads: Int) -> Int {
    guard m > 0, n > 0, k > 0 else { return 0 }
    let colSlivers = (n + nr - 1) / nr
    let workers = max(1, min(colSlivers, threads))
    if workers > 1 && colSlivers >= 4 * workers {
      return 4 * columnRanges(colSlivers, workers: workers, n: n).reduce(0) { $0 + workspaceFloats(n: $1.count, rowWorkers: 1) }
    }
    return 4 * workspaceFloats(n: n, rowWorkers: max(1, min((m + mr - 1) / mr, threads)))
  }

  @inline(__always) static func roundUp(_ x: Int, _ m: Int) -> Int { (x + m - 1) / m * m }

  static func scale(_ c: UnsafeMutablePointer<Float>, m: Int, n: Int, ldc: Int, beta: Float) {
    if beta == 1 { return }
    for i in 0..<m {
      let row = c + i * ldc
      if beta == 0 { row.update(repeating: 0, count: n) } else { for j in 0..<n { row[j] *= beta } }
    }
  }

  /// Packs rows i0..<i0+rows, columns k0..<k0+kb of op(A) into 6-row slivers: [sliver][k][6].
  static func packABlock(
    _ a: UnsafePointer<Float>, lda: Int, transA: Bool, alpha: Float, i0: Int, rows: Int, k0: Int, kb: Int,
    into out: UnsafeMutablePointer<Float>
  ) {
    let slivers = (rows + mr - 1) / mr
    for s in 0..<slivers {
      let dst = out + s * kb * mr
      for r in 0..<mr {
        let i = s * mr + r
        if i >= rows {
          for p in 0..<kb { dst[p * mr + r] = 0 }
          continue
        }
        if transA {
          let src = a + k0 * lda + (i0 + i)
          for p in 0..<kb { dst[p * mr + r] = alpha * src[p * lda] }
        } else {
          let src = a + (i0 + i) * lda + k0
          for p in 0..<kb { dst[p * mr + r] = alpha * src[p] }
        }
      }
    }
  }

  /// Packs rows k0..<k0+kb, columns j0..<j0+cols of op(B) into one sliver [k][16], zero-filled.
  @inline(__always)
  static func packBSliver(
    _ b: UnsafePointer<Float>, ldb: Int, transB: Bool, k0: Int, kb: Int, j0: Int, cols: Int,
    into dst: UnsafeMutablePointer<Float>
  ) {
    if !transB && cols == nr {
      for p in 0..<kb {
        let src = b + (k0 + p) * ldb + j0
        store8(load8(src), dst + p * nr)
        store8(load8(src + 8), dst + p * nr + 8)
      }
      return
    }
    for p in 0..<kb {
      let d = dst + p * nr
      for j in 0..<nr {
        if j >= cols { d[j] = 0; continue }
        d[j] = transB ? b[(j0 + j) * ldb + k0 + p] : b[(k0 + p) * ldb + j0 + j]
      }
    }
  }

  /// C[6×16] += A-sliver · B-sliver.
  @inline(__always)
  static func micro6x16(
    _ kb: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
  ) {
    var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
    var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
    var c40 = SIMD8<Float>(), c41 = SIMD8<Float>(), c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
    var pa = a, pb = b
    for _ in 0..<kb {
      let b0 = load8(pb), b1 = load8(pb + 8)
      var x = SIMD8<Float>(repeating: pa[0])
      c00 = c00.addingProduct(x, b0); c01 = c01.addingProduct(x, b1)
      x = SIMD8<Float>(repeating: pa[1])
      c10 = c10.addingProduct(x, b0); c11 = c11.addingProduct(x, b1)
      x = SIMD8<Float>(repeating: pa[2])
      c20 = c20.addingProduct(x, b0); c21 = c21.addingProduct(x, b1)
      x = SIMD8<Float>(repeating: pa[3])
      c30 = c30.addingProduct(x, b0); c31 = c31.addingProduct(x, b1)
      x = SIMD8<Float>(repeating: pa[4])
      c40 = c40.addingProduct(x, b0); c41 = c41.addingProduct(x, b1)
      x = SIMD8<Float>(repeating: pa[5])
      c50 = c50.addingProduct(x, b0); c51 = c51.addingProduct(x, b1)
      pa += mr
      pb += nr
    }
    var r = c
    store8(load8(r) + c00, r); store8(load8(r + 8) + c01, r + 8); r += ldc
    store8(load8(r) + c10, r); store8(load8(r + 8) + c11, r + 8); r += ldc
    store8(load8(r) + c20, r); store8(load8(r + 8) + c21, r + 8); r += ldc
    store8(load8(r) + c30, r); store8(load8(r + 8) + c31, r + 8); r += ldc
    store8(load8(r) + c40, r); store8(load8(r + 8) + c41, r + 8); r += ldc
    store8(load8(r) + c50, r); store8(load8(r + 8) + c51, r + 8)
  }

  /// A partial tile: computed into a scratch 6×16 block, then the valid part added to C.
  static func microEdge(
    _ kb: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
    rows: Int, cols: Int
  ) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: mr * nr) { t in
      let tp = t.baseAddress!
      tp.update(repeating: 0, count: mr * nr)
      micro6x16(kb, a, b, tp, nr)
      for i in 0..<rows { for j in 0..<cols { c[i * ldc + j] += tp[i * nr + j] } }
    }
  }

  /// Plain triple loop with Double accumulation: the reference the fast path is tested against.
  public static func reference(
    transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    for i in 0..<m {
      for j in 0..<n {
        var s = 0.0
        for p in 0..<k {
          let av = transA ? a[p * lda + i] : a[i * lda + p]
          let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
          s += Double(av) * Double(bv)
        }
        let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
        c[i * ldc + j] = Float(Double(alpha) * s + old)
      }
    }
  }
}
