import Foundation
import Tessera
import TesseraKernels

/// Streams chunks of row vectors: calls its argument with (rows × dim values, rows) until the data
/// is exhausted. It must give the same vectors in the same order every time it is called.
public typealias VectorSource = ((UnsafePointer<Float>, Int) throws -> Void) throws -> Void

/// Principal components of vectors: the mean, the top-k directions (unit rows), the variance each
/// explains (sample variance, n − 1) and the total variance.
public struct PCAModel {
  public var mean: [Float]
  /// k × dim, row-major.
  public var components: [Float]
  public var explainedVariance: [Double]
  public var totalVariance: Double
  public var whiten: Bool
  /// The shape of one vector as an image, (C, H, W), for pictures of the components.
  public var vectorShape: [Int]
  public var samples: Int

  public var dimension: Int { mean.count }
  public var count: Int { explainedVariance.count }
  public var explainedVarianceRatio: [Double] { explainedVariance.map { $0 / max(totalVariance, .leastNormalMagnitude) } }
  public var cumulativeRatio: [Double] {
    var s = 0.0
    return explainedVarianceRatio.map { s += $0; return s }
  }

  /// Components needed to explain `fraction` of the variance, or nil if the computed ones do not.
  public func componentsNeeded(_ fraction: Double) -> Int? {
    cumulativeRatio.firstIndex { $0 >= fraction - 1e-12 }.map { $0 + 1 }
  }

  /// rows × dim → rows × k: (x − mean)·componentsᵀ, divided by √variance when whitening.
  public func transform(_ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>) {
    let d = dimension, k = count
    let centered = Buffer(floats: rows * d, zeroed: false)
    for r in 0..<rows { for j in 0..<d { centered.floats[r * d + j] = x[r * d + j] - mean[j] } }
    components.withUnsafeBufferPointer { w in
      GEMM.sgemm(transB: true, m: rows, n: k, k: d, a: centered.floats, lda: d, b: w.baseAddress!, ldb: d,
                 c: out, ldc: k)
    }
    if whiten {
      for r in 0..<rows { for j in 0..<k { out[r * k + j] /= Float((explainedVariance[j] + 1e-12).squareRoot()) } }
    }
  }

  /// Saved as safetensors: `mean` [dim], `components` [k, dim], `explained_variance` [k] (F32);
  /// metadata: total_variance, whiten, shape, samples.
  public func save(to url: URL) throws {
    let ev = explainedVariance.map { Float($0) }
    try SafeTensors.write(
      [("mean", Tensor(shape: [dimension], values: mean)), ("components", Tensor(shape: [count, dimension], values: components)),
       ("explained_variance", Tensor(shape: [count], values: ev))],
      metadata: ["format": "tessera-pca", "total_variance": String(totalVariance), "whiten": String(whiten),
                 "shape": vectorShape.map(String.init).joined(separator: "x"), "samples": String(samples)],
      to: url)
  }

  public static func load(_ url: URL) throws -> PCAModel {
    let f = try SafeTensors.read(url)
    guard let m = f.tensors["mean"], let c = f.tensors["components"], let ev = f.tensors["explained_variance"],
          c.rank == 2, c.shape[1] == m.count, ev.count == c.shape[0],
          let total = Double(f.metadata["total_variance"] ?? "")
    else {
      throw SafeTensorsError.badHeader(path: url.path, reason: "not a Tessera PCA file (mean, components, explained_variance, total_variance)")
    }
    let shape = (f.metadata["shape"] ?? "").split(separator: "x").compactMap { Int($0) }
    return PCAModel(mean: m.toArray(), components: c.toArray(), explainedVariance: ev.toArray().map(Double.init),
                    totalVariance: total, whiten: f.metadata["whiten"] == "true",
                    vectorShape: shape.reduce(1, *) == m.count ? shape : [1, 1, m.count],
                    samples: Int(f.metadata["samples"] ?? "") ?? 0)
  }
}

public enum PCA {
  /// Exact PCA from the streamed covariance (dim × dim, Double): one pass over the data, then a
  /// Jacobi eigendecomposition. Memory O(dim²) whatever the number of vectors; for dim up to ~1000.
  public static func exact(dimension d: Int, components k: Int, whiten: Bool = false, vectorShape: [Int]? = nil,
                           chunk: Int = 256, source: VectorSource) throws -> PCAModel {
    precondition(d >= 1 && k >= 1 && k <= d, "need 1 ≤ components ≤ dimension")
    var n = 0
    var sum = [Double](repeating: 0, count: d)
    var scatter = [Double](repeating: 0, count: d * d)
    let part = Buffer(floats: d * d, zeroed: false)
    try source { x, rows in
      n += rows
      for r in 0..<rows { for j in 0..<d { sum[j] += Double(x[r * d + j]) } }
      GEMM.sgemm(transA: true, m: d, n: d, k: rows, a: x, lda: d, b: x, ldb: d, c: part.floats, ldc: d)
      for i in 0..<(d * d) { scatter[i] += Double(part.floats[i]) }
    }
    guard n >= 2 else { throw PCAError.tooFewSamples(n) }
    let mean = sum.map { $0 / Double(n) }
    var cov = [Double](repeating: 0, count: d * d)
    for i in 0..<d { for j in 0..<d { cov[i * d + j] = (scatter[i * d + j] - Double(n) * mean[i] * mean[j]) / Double(n - 1) } }
    let total = (0..<d).reduce(0.0) { $0 + cov[$1 * d + $1] }
    let (values, vectors) = SymmetricEigen.decompose(cov, d)
    var comps = [Float](repeating: 0, count: k * d)
    for c in 0..<k { for j in 0..<d { comps[c * d + j] = Float(vectors[j * d + c]) } }
    normalizeSigns(&comps, k, d)
    return PCAModel(mean: mean.map { Float($0) }, components: comps, explainedVariance: Array(values.prefix(k)).map { max($0, 0) },
                    totalVariance: total, whiten: whiten, vectorShape: vectorShape ?? [1, 1, d], samples: n)
  }

  /// Randomized PCA (Halko, Martinsson & Tropp 2011, subspace iteration) on the Gram matrix AᵀA of
  /// the centred data, without forming it: each pass streams the data once and keeps only dim × l
  /// numbers (l = k + oversampling), so memory is O(dim·l) whatever the number of vectors. The first
  /// pass also finds the mean and the total variance; `powerIterations` more passes sharpen the
  /// subspace; the last Rayleigh–Ritz step needs no extra pass. Deterministic from `seed`.
  public static func randomized(dimension d: Int, components k: Int, whiten: Bool = false, oversampling: Int = 10,
                                powerIterations: Int = 2, seed: UInt64 = 0, vectorShape: [Int]? = nil,
                                source: VectorSource) throws -> PCAModel {
    precondition(d >= 1 && k >= 1 && k <= d, "need 1 ≤ components ≤ dimension")
    let l = min(d, k + oversampling)
    var g = SeededGenerator(seed: seed)
    var q = [Double]((0..<(d * l)).map { _ in Double(g.nextNormal()) })
    orthonormalizeColumns(&q, d, l)
    var mean = [Double](repeating: 0, count: d)
    var total = 0.0, n = 0
    var t = [Double](repeating: 0, count: l * l)
    for it in 0...powerIterations {
      // Z = Xᵀ X Q (streamed), then centred: Z − n·μ(μᵀQ).
      var z = [Double](repeating: 0, count: d * l)
      var sum = [Double](repeating: 0, count: d), sumSq = 0.0, count = 0
      let qf = q.map { Float($0) }
      try source { x, rows in
        count += rows
        if it == 0 {
          for r in 0..<rows {
            for j in 0..<d {
              let v = Double(x[r * d + j])
              sum[j] += v
              sumSq += v * v
            }
          }
        }
        let p = Buffer(floats: rows * l, zeroed: false), zc = Buffer(floats: d * l, zeroed: false)
        qf.withUnsafeBufferPointer { qb in
          GEMM.sgemm(m: rows, n: l, k: d, a: x, lda: d, b: qb.baseAddress!, ldb: l, c: p.floats, ldc: l)
        }
        GEMM.sgemm(transA: true, m: d, n: l, k: rows, a: x, lda: d, b: p.floats, ldb: l, c: zc.floats, ldc: l)
        for i in 0..<(d * l) { z[i] += Double(zc.floats[i]) }
      }
      if it == 0 {
        n = count
        guard n >= 2 else { throw PCAError.tooFewSamples(n) }
        mean = sum.map { $0 / Double(n) }
        total = (sumSq - Double(n) * mean.reduce(0) { $0 + $1 * $1 }) / Double(n - 1)
      }
      var muQ = [Double](repeating: 0, count: l)
      for j in 0..<d { for c in 0..<l { muQ[c] += mean[j] * q[j * l + c] } }
      for j in 0..<d { for c in 0..<l { z[j * l + c] -= Double(n) * mean[j] * muQ[c] } }
      // T = QᵀZ = Qᵀ AᵀA Q (Rayleigh–Ritz on the current subspace).
      for a in 0..<l { for b in 0..<l { var s = 0.0; for j in 0..<d { s += q[j * l + a] * z[j * l + b] }; t[a * l + b] = s } }
      if it < powerIterations {
        q = z
        orthonormalizeColumns(&q, d, l)
      }
    }
    for a in 0..<l { for b in 0..<a { let m = (t[a * l + b] + t[b * l + a]) / 2; t[a * l + b] = m; t[b * l + a] = m } }
    let (values, u) = SymmetricEigen.decompose(t, l)
    var comps = [Float](repeating: 0, count: k * d)
    for c in 0..<k {
      for j in 0..<d {
        var s = 0.0
        for a in 0..<l { s += q[j * l + a] * u[a * l + c] }
        comps[c * d + j] = Float(s)
      }
    }
    normalizeSigns(&comps, k, d)
    return PCAModel(mean: mean.map { Float($0) }, components: comps,
                    explainedVariance: values.prefix(k).map { max($0, 0) / Double(n - 1) }, totalVariance: total,
                    whiten: whiten, vectorShape: vectorShape ?? [1, 1, d], samples: n)
  }

  /// Modified Gram–Schmidt on the l columns of a row-major d × l matrix.
  static func orthonormalizeColumns(_ m: inout [Double], _ d: Int, _ l: Int) {
    for c in 0..<l {
      for p in 0..<c {
        var dot = 0.0
        for j in 0..<d { dot += m[j * l + c] * m[j * l + p] }
        for j in 0..<d { m[j * l + c] -= dot * m[j * l + p] }
      }
      var norm = 0.0
      for j in 0..<d { norm += m[j * l + c] * m[j * l + c] }
      norm = norm.squareRoot()
      for j in 0..<d { m[j * l + c] = norm > 1e-300 ? m[j * l + c] / norm : 0 }
    }
  }

  /// A component's sign is arbitrary; make its largest-magnitude entry positive so results compare.
  static func normalizeSigns(_ comps: inout [Float], _ k: Int, _ d: Int) {
    for c in 0..<k {
      let row = (c * d)..<((c + 1) * d)
      guard let big = row.max(by: { abs(comps[$0]) < abs(comps[$1]) }), comps[big] < 0 else { continue }
      for i in row { comps[i] = -comps[i] }
    }
  }
}

public enum PCAError: Error, CustomStringConvertible {
  case tooFewSamples(Int)
  public var description: String {
    switch self { case .tooFewSamples(let n): "PCA needs at least 2 vectors, got \(n)" }
  }
}

/// Eigen-decomposition of a symmetric matrix in Double: Householder reduction to tridiagonal form,
/// then the implicit QL algorithm (tred2/tql2, as EISPACK and JAMA). O(n³), a second or so at n = 1000.
public enum SymmetricEigen {
  /// Eigenvalues in decreasing order and the eigenvectors as the columns of an n × n row-major matrix.
  public static func decompose(_ a: [Double], _ n: Int) -> (values: [Double], vectors: [Double]) {
    precondition(a.count == n * n && n >= 1, "need an n × n matrix")
    // V is kept transposed (vt[j][k] = V[k][j]) so that the column operations of both phases walk
    // contiguous memory.
    var vt = [Double](repeating: 0, count: n * n)
    for i in 0..<n { for j in 0..<n { vt[j * n + i] = a[i * n + j] } }
    var d = [Double](repeating: 0, count: n), e = [Double](repeating: 0, count: n)
    @inline(__always) func V(_ r: Int, _ c: Int) -> Double { vt[c * n + r] }
    @inline(__always) func setV(_ r: Int, _ c: Int, _ v: Double) { vt[c * n + r] = v }
    // tred2
    for j in 0..<n { d[j] = V(n - 1, j) }
    var i = n - 1
    while i > 0 {
      var scale = 0.0, h = 0.0
      for k in 0..<i { scale += abs(d[k]) }
      if scale == 0 {
        e[i] = d[i - 1]
        for j in 0..<i {
          d[j] = V(i - 1, j)
          setV(i, j, 0)
          setV(j, i, 0)
        }
      } else {
        for k in 0..<i {
          d[k] /= scale
          h += d[k] * d[k]
        }
        var f = d[i - 1]
        var g = h.squareRoot()
        if f > 0 { g = -g }
        e[i] = scale * g
        h -= f * g
        d[i - 1] = f - g
        for j in 0..<i { e[j] = 0 }
        for j in 0..<i {
          f = d[j]
          setV(j, i, f)
          g = e[j] + V(j, j) * f
          if j + 1 <= i - 1 {
            let col = j * n  // V(k, j) = vt[j * n + k]: contiguous in k
            for k in (j + 1)...(i - 1) {
              g += vt[col + k] * d[k]
              e[k] += vt[col + k] * f
            }
          }
          e[j] = g
        }
        f = 0
        for j in 0..<i {
          e[j] /= h
          f += e[j] * d[j]
        }
        let hh = f / (h + h)
        for j in 0..<i { e[j] -= hh * d[j] }
        for j in 0..<i {
          f = d[j]
          g = e[j]
          let col = j * n
          for k in j...(i - 1) { vt[col + k] -= f * e[k] + g * d[k] }
          d[j] = V(i - 1, j)
          setV(i, j, 0)
        }
      }
      d[i] = h
      i -= 1
    }
    for i in 0..<(n - 1) {
      setV(n - 1, i, V(i, i))
      setV(i, i, 1)
      let h = d[i + 1]
      if h != 0 {
        let ci = (i + 1) * n
        for k in 0...i { d[k] = vt[ci + k] / h }
        for j in 0...i {
          var g = 0.0
          let cj = j * n
          for k in 0...i { g += vt[ci + k] * vt[cj + k] }
          for k in 0...i { vt[cj + k] -= g * d[k] }
        }
      }
      for k in 0...i { setV(k, i + 1, 0) }
    }
    for j in 0..<n {
      d[j] = V(n - 1, j)
      setV(n - 1, j, 0)
    }
    setV(n - 1, n - 1, 1)
    e[0] = 0
    // tql2
    for i in 1..<max(n, 1) { e[i - 1] = e[i] }
    e[n - 1] = 0
    var f = 0.0, tst1 = 0.0
    let eps = Double.ulpOfOne
    for l in 0..<n {
      tst1 = max(tst1, abs(d[l]) + abs(e[l]))
      var m = l
      while m < n - 1 && abs(e[m]) > eps * tst1 { m += 1 }
      if m > l {
        var iterations = 0
        repeat {
          iterations += 1
          var g = d[l]
          var p = (d[l + 1] - g) / (2 * e[l])
          var r = (p * p + 1).squareRoot()
          if p < 0 { r = -r }
          d[l] = e[l] / (p + r)
          d[l + 1] = e[l] * (p + r)
          let dl1 = d[l + 1]
          var h = g - d[l]
          if l + 2 < n { for i in (l + 2)..<n { d[i] -= h } }
          f += h
          p = d[m]
          var c = 1.0, c2 = 1.0, c3 = 1.0
          let el1 = e[l + 1]
          var s = 0.0, s2 = 0.0
          var i = m - 1
          while i >= l {
            c3 = c2
            c2 = c
            s2 = s
            g = c * e[i]
            h = c * p
            r = (p * p + e[i] * e[i]).squareRoot()
            e[i + 1] = s * r
            s = e[i] / r
            c = p / r
            p = c * d[i] - s * g
            d[i + 1] = h + s * (c * g + s * d[i])
            let ci = i * n, ci1 = (i + 1) * n
            for k in 0..<n {
              let hk = vt[ci1 + k]
              vt[ci1 + k] = s * vt[ci + k] + c * hk
              vt[ci + k] = c * vt[ci + k] - s * hk
            }
            i -= 1
          }
          p = -s * s2 * c3 * el1 * e[l] / dl1
          e[l] = s * p
          d[l] = c * p
        } while abs(e[l]) > eps * tst1 && iterations < 60
      }
      d[l] += f
      e[l] = 0
    }
    let order = (0..<n).sorted { d[$0] > d[$1] }
    var vectors = [Double](repeating: 0, count: n * n)
    for (newCol, old) in order.enumerated() { for r in 0..<n { vectors[r * n + newCol] = vt[old * n + r] } }
    return (order.map { d[$0] }, vectors)
  }
}
