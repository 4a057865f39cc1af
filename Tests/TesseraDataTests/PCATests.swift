import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TestSupport
import XCTest

final class PCATests: TemporaryDirectoryTestCase {
  /// n vectors of dimension d: a mean, 6 directions with decreasing scales, and small noise.
  func data(n: Int, d: Int, seed: UInt64 = 1) -> [Float] {
    var g = SeededGenerator(seed: seed)
    let dirs = (0..<6).map { _ in (0..<d).map { _ in g.nextNormal() } }
    let scales: [Float] = [3, 2, 1.5, 1, 0.6, 0.3]
    var x = [Float](repeating: 0, count: n * d)
    for i in 0..<n {
      for j in 0..<d { x[i * d + j] = 0.5 + 0.02 * Float(j) + 0.05 * g.nextNormal() }
      for (k, dir) in dirs.enumerated() {
        let c = scales[k] * g.nextNormal()
        for j in 0..<d { x[i * d + j] += c * dir[j] / Float(d).squareRoot() }
      }
    }
    return x
  }

  func source(_ x: [Float], d: Int, chunk: Int = 100) -> VectorSource {
    return { body in
      try x.withUnsafeBufferPointer { b in
        var r = 0
        let n = x.count / d
        while r < n {
          let rows = min(chunk, n - r)
          try body(b.baseAddress! + r * d, rows)
          r += rows
        }
      }
    }
  }

  /// Independent reference in test code: the exact covariance in Double, its top eigenvalues by
  /// power iteration with deflation, and the trace.
  func referenceRatios(_ x: [Float], d: Int, top: Int) -> [Double] {
    let n = x.count / d
    var mean = [Double](repeating: 0, count: d)
    for i in 0..<n { for j in 0..<d { mean[j] += Double(x[i * d + j]) / Double(n) } }
    var c = [[Double]](repeating: [Double](repeating: 0, count: d), count: d)
    for i in 0..<n {
      for a in 0..<d {
        let da = Double(x[i * d + a]) - mean[a]
        for b in 0..<d { c[a][b] += da * (Double(x[i * d + b]) - mean[b]) / Double(n - 1) }
      }
    }
    let trace = (0..<d).reduce(0.0) { $0 + c[$1][$1] }
    var out = [Double]()
    for _ in 0..<top {
      var v = (0..<d).map { Double($0 % 7) + 1 }
      var lambda = 0.0
      for _ in 0..<3000 {
        var w = [Double](repeating: 0, count: d)
        for a in 0..<d { for b in 0..<d { w[a] += c[a][b] * v[b] } }
        lambda = sqrt(w.reduce(0) { $0 + $1 * $1 })
        v = w.map { $0 / lambda }
      }
      out.append(lambda / trace)
      for a in 0..<d { for b in 0..<d { c[a][b] -= lambda * v[a] * v[b] } }
    }
    return out
  }

  func testExactMatchesFloat64ReferenceAndRandomizedMatchesExact() throws {
    let d = 24, x = data(n: 3000, d: d)
    let exact = try PCA.exact(dimension: d, components: 8, source: source(x, d: d))
    let ref = referenceRatios(x, d: d, top: 6)
    for i in 0..<6 { XCTAssertEqual(exact.explainedVarianceRatio[i], ref[i], accuracy: 1e-4, "component \(i)") }
    let rnd = try PCA.randomized(dimension: d, components: 6, seed: 3, source: source(x, d: d))
    for i in 0..<6 {
      XCTAssertEqual(rnd.explainedVarianceRatio[i], exact.explainedVarianceRatio[i], accuracy: 1e-3, "ratio \(i)")
      var dot: Float = 0
      for j in 0..<d { dot += rnd.components[i * d + j] * exact.components[i * d + j] }
      XCTAssertEqual(abs(dot), 1, accuracy: 1e-3, "direction \(i)")
    }
    XCTAssertEqual(exact.totalVariance, rnd.totalVariance, accuracy: 1e-6 * exact.totalVariance)
    // Deterministic from the seed.
    let again = try PCA.randomized(dimension: d, components: 6, seed: 3, source: source(x, d: d))
    XCTAssertEqual(again.components, rnd.components)
    XCTAssertEqual(exact.componentsNeeded(0.5), 1)
  }

  func testTransformWhitenSaveLoad() throws {
    let d = 10, x = data(n: 400, d: d)
    let m = try PCA.exact(dimension: d, components: 3, whiten: true, vectorShape: [1, 2, 5], source: source(x, d: d))
    var out = [Float](repeating: 0, count: 400 * 3)
    m.transform(x, rows: 400, into: &out)
    // Whitened features have (sample) variance 1 and are uncorrelated.
    for c in 0..<3 {
      let col = (0..<400).map { Double(out[$0 * 3 + c]) }
      let mu = col.reduce(0, +) / 400
      let v = col.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / 399
      XCTAssertEqual(mu, 0, accuracy: 1e-4)
      XCTAssertEqual(v, 1, accuracy: 1e-3)
    }
    let url = dir.appendingPathComponent("p.safetensors")
    try m.save(to: url)
    let back = try PCAModel.load(url)
    XCTAssertEqual(back.components, m.components)
    XCTAssertEqual(back.vectorShape, [1, 2, 5])
    XCTAssertTrue(back.whiten)
  }

  /// Memory does not grow with the number of vectors: ten times the data, the same ledger peak.
  func testMemoryIsBoundedInTheNumberOfVectors() throws {
    let d = 32
    var peaks = [Int]()
    for n in [300, 3000] {
      let x = data(n: n, d: d, seed: 9)
      let before = MemoryLedger.shared.currentBytes
      let p1 = try MemoryLedger.shared.measure { _ = try PCA.exact(dimension: d, components: 4, source: source(x, d: d)) }
      let p2 = try MemoryLedger.shared.measure { _ = try PCA.randomized(dimension: d, components: 4, source: source(x, d: d)) }
      peaks.append(max(p1.peakBytes, p2.peakBytes) - before)
    }
    XCTAssertEqual(peaks[0], peaks[1])
  }
}

extension PCATests {
  /// A model trains on PCA features: the projection is fixed, its gradient is right, and the planner
  /// still matches the ledger with it in front.
  func testPCAInputLayer() throws {
    let d = 2 * 4 * 4
    let x = data(n: 64, d: d)
    let m = try PCA.exact(dimension: d, components: 5, whiten: true, vectorShape: [2, 4, 4], source: source(x, d: d))
    let pca = PCAProjection(m)
    checkGradients(pca, input: Tensor(shape: [3, 2, 4, 4], values: Array(x.prefix(3 * d))))
    let net = Sequential([("pca", pca), ("fc", Linear(inputFeatures: 5, outputFeatures: 3))])
    net.initializeParameters(seed: 1)
    XCTAssertEqual(pca.mean.value.toArray(), m.mean, "initialisation must not touch the constants")
    XCTAssertEqual(net.parameterCount, 5 * 3 + 3)
    let input = Tensor(shape: [8, 2, 4, 4], values: Array(x.prefix(8 * d)))
    let labels = (0..<8).map { $0 % 3 }
    let opt = SGD(momentum: 0.9)
    let first = try net.trainingStep(input: input, labels: labels, optimizer: opt, lr: 0.1).loss
    var last = first
    for _ in 0..<30 { last = try net.trainingStep(input: input, labels: labels, optimizer: opt, lr: 0.1).loss }
    XCTAssertLessThan(last, first)
    XCTAssertEqual(pca.basis.value.toArray(), m.components, "the projection is fixed")
  }
}

extension PCATests {
  /// The eigensolver on random symmetric matrices: A·v = λ·v, V orthonormal, λ descending.
  func testSymmetricEigenResiduals() {
    var g = SeededGenerator(seed: 11)
    for n in [1, 2, 7, 60] {
      var a = [Double](repeating: 0, count: n * n)
      for i in 0..<n { for j in 0...i { let v = Double(g.nextNormal()); a[i * n + j] = v; a[j * n + i] = v } }
      let (values, vectors) = SymmetricEigen.decompose(a, n)
      XCTAssertEqual(values, values.sorted(by: >))
      for c in 0..<n {
        for i in 0..<n {
          var av = 0.0
          for j in 0..<n { av += a[i * n + j] * vectors[j * n + c] }
          XCTAssertEqual(av, values[c] * vectors[i * n + c], accuracy: 1e-9, "n \(n) column \(c)")
        }
        for c2 in 0..<n {
          var dot = 0.0
          for i in 0..<n { dot += vectors[i * n + c] * vectors[i * n + c2] }
          XCTAssertEqual(dot, c == c2 ? 1 : 0, accuracy: 1e-9)
        }
      }
    }
  }
}
