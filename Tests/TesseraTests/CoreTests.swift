import Foundation
@testable import Tessera
import TestSupport
import TesseraKernels
import XCTest

final class CoreTests: XCTestCase {
  func testLedgerCountsCurrentPeakAndScopes() {
    let ledger = MemoryLedger.shared
    let base = ledger.currentBytes
    var peakInScope = 0
    do {
      let (_, peak) = ledger.measure { () -> Int in
        let a = Tensor(zeros: [1000])  // 4000 bytes
        let b = Tensor(zeros: [10, 10], dtype: .float16)  // 200 bytes
        XCTAssertEqual(ledger.currentBytes, base + 4200)
        return a.count + b.count
      }
      peakInScope = peak
    }
    XCTAssertEqual(peakInScope, base + 4200)
    XCTAssertEqual(ledger.currentBytes, base)
    XCTAssertGreaterThanOrEqual(ledger.peakBytes, base + 4200)
  }

  func testFloat16AndBFloat16Conversions() {
    let v: [Float] = [0, 1, -2.5, 65504, 1e-8, 3.1415927, .infinity, -0.0, 1.00390625, 1.01171875]
    let t = Tensor(shape: [v.count], values: v)
    let h = t.converted(to: .float16).toArray()
    for (a, b) in zip(h, v) { XCTAssertEqual(a, Float(Float16(b))) }
    let bf = t.converted(to: .bfloat16).toArray()
    // Round to nearest even on the 16 dropped bits: 1 + 2^-8 is a tie → 1; 1 + 3·2^-8... → up.
    XCTAssertEqual(bf[8], 1.0)
    XCTAssertEqual(bf[9], 1.015625)
    XCTAssertEqual(bf[2], -2.5)
    XCTAssertEqual(bf[6], .infinity)
    XCTAssert(Conversions.float(fromBFloat16: Conversions.bfloat16Bits(.nan)).isNaN)
    // Against a double-precision reference of round-to-nearest-even.
    var g = SeededGenerator(seed: 3)
    for _ in 0..<1000 {
      let x = (g.nextUniform() - 0.5) * 1000
      let r = Conversions.float(fromBFloat16: Conversions.bfloat16Bits(x))
      let ulp = Float(bitPattern: (x.bitPattern & 0x7F80_0000)) * Float(1.0 / 128.0)
      XCTAssertLessThanOrEqual(abs(r - x), ulp / 2 + 1e-30)
    }
  }

  func testSGDMomentumNesterovAndWeightDecay() {
    // One parameter, gradient 2w (loss w²), three steps of each form against hand-computed values.
    func run(_ opt: Optimizer, lr: Float) -> [Float] {
      let p = Parameter(Tensor(shape: [1], values: [1]), role: .weight(fanIn: 1))
      var out = [Float]()
      for _ in 0..<3 {
        p.zeroGradient()
        p.gradient[0] = 2 * p.value.floats[0]
        opt.step([("w", p)], lr: lr)
        out.append(p.value.floats[0])
      }
      return out
    }
    // Plain: w ← w − 0.1·2w = 0.8w.
    let plain = run(SGD(), lr: 0.1)
    for (a, b) in zip(plain, [0.8, 0.64, 0.512] as [Float]) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    // Momentum 0.9: v1 = 2 → w = 0.8; v2 = 0.9·2 + 1.6 = 3.4 → 0.46; v3 = 3.06 + 0.92 = 3.98 → 0.062.
    let m = run(SGD(momentum: 0.9), lr: 0.1)
    XCTAssertEqual(m[0], 0.8, accuracy: 1e-6); XCTAssertEqual(m[1], 0.46, accuracy: 1e-6); XCTAssertEqual(m[2], 0.062, accuracy: 1e-6)
    // Nesterov: w ← w − lr·(g + μ·v): step1 v=2, w = 1 − 0.1·(2 + 1.8) = 0.62.
    XCTAssertEqual(run(SGD(momentum: 0.9, nesterov: true), lr: 0.1)[0], 0.62, accuracy: 1e-6)
    // Weight decay 0.5 adds 0.5·w to the gradient: w = 1 − 0.1·2.5 = 0.75.
    XCTAssertEqual(run(SGD(weightDecay: 0.5), lr: 0.1)[0], 0.75, accuracy: 1e-6)
  }

  func testAdamWFirstStepsMatchFormula() {
    let p = Parameter(Tensor(shape: [1], values: [1]), role: .weight(fanIn: 1))
    let opt = AdamW(beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.1)
    var w = 1.0, m = 0.0, v = 0.0
    for t in 1...3 {
      p.zeroGradient()
      p.gradient[0] = Float(2 * w)
      opt.step([("w", p)], lr: 0.01)
      let g = 2 * w
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      let mh = m / (1 - pow(0.9, Double(t))), vh = v / (1 - pow(0.999, Double(t)))
      w -= 0.01 * (mh / (vh.squareRoot() + 1e-8) + 0.1 * w)
      XCTAssertEqual(Double(p.value.floats[0]), w, accuracy: 1e-6)
    }
    XCTAssertEqual(opt.state.keys.sorted(), ["w.m", "w.v"])
  }

  func testSchedules() {
    XCTAssertEqual(LRSchedule.step(base: 1, every: 10, gamma: 0.1).learningRate(at: 25), 0.01, accuracy: 1e-7)
    let c = LRSchedule.cosine(base: 1, total: 100, minimum: 0.1)
    XCTAssertEqual(c.learningRate(at: 0), 1, accuracy: 1e-6)
    XCTAssertEqual(c.learningRate(at: 50), 0.55, accuracy: 1e-6)
    XCTAssertEqual(c.learningRate(at: 100), 0.1, accuracy: 1e-6)
    let w = LRSchedule.warmup(steps: 4, then: .constant(0.8))
    XCTAssertEqual((0..<6).map { w.learningRate(at: $0) }, [0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
  }

  /// A small conv net must drive its loss down ≥ 10× on a tiny synthetic set within a few dozen steps.
  func testSmallNetOverfitsTinySet() throws {
    let net = Sequential([
      ("conv1", Conv2D(inputChannels: 3, outputChannels: 8, kernelSize: 3, stride: 2, padding: .same, bias: false)),
      ("bn1", BatchNorm2D(channels: 8, fusedReLU: true)),
      ("conv2", Conv2D(inputChannels: 8, outputChannels: 16, kernelSize: 3, stride: 2, padding: .same, bias: false)),
      ("bn2", BatchNorm2D(channels: 16)), ("relu2", ReLU()),
      ("pool", Pool2D(.average(countIncludePad: false), kernelSize: 2)),
      ("flatten", Flatten()),
      ("fc", Linear(inputFeatures: 16 * 4 * 4, outputFeatures: 4)),
    ])
    net.initializeParameters(seed: 7)
    let (x, labels) = SyntheticMarks(size: 32, markSize: 5).batch(count: 8, seed: 3)
    let opt = SGD(momentum: 0.9)
    let first = try net.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.05).loss
    var last = first
    for _ in 0..<40 { last = try net.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.05).loss }
    XCTAssertLessThan(last, first / 10, "loss went from \(first) to \(last)")
  }

  /// Inference folds conv → BatchNorm (→ ReLU) into one pass: the same numbers as the three layers
  /// run one by one, with non-trivial running statistics, a conv bias, BN's own ReLU or a ReLU layer.
  func testInferenceFoldsBatchNormAndReLUIntoTheConvolution() {
    for (i, (bnReLU, reluLayer)) in [(false, false), (true, false), (false, true)].enumerated() {
      let conv = Conv2D(inputChannels: 3, outputChannels: 5, kernelSize: 3, stride: 2, padding: .same, bias: true)
      let bn = BatchNorm2D(channels: 5, fusedReLU: bnReLU)
      var layers: [(String, Layer)] = [("conv", conv), ("bn", bn)]
      if reluLayer { layers.append(("relu", ReLU())) }
      layers.append(("pool", GlobalAvgPool2D()))
      let net = Sequential(layers)
      net.initializeParameters(seed: UInt64(i))
      for (p, seed) in [(bn.runningMean, 1), (bn.runningVariance, 2), (bn.weight, 3), (bn.bias, 4), (conv.bias!, 5)] {
        let v = randomFloats(5, seed: UInt64(seed))
        p.value = Tensor(shape: [5], values: p === bn.runningVariance ? v.map { $0 + 1.5 } : v)
      }
      let x = Tensor(shape: [2, 3, 9, 8], values: randomFloats(2 * 3 * 9 * 8, seed: 9))
      // Layer by layer, the way a training-mode graph would run them.
      var h = conv.forward(x, training: false)
      h = bn.forward(h, training: false)
      if reluLayer { h = ReLU().forward(h, training: false) }
      let unfolded = h.toArray()
      let folded = Sequential(Array(layers.dropLast())).forward(x, training: false).toArray()
      assertClose(folded, unfolded, rtol: 1e-5, atol: 1e-6, "bnReLU \(bnReLU) reluLayer \(reluLayer)")
      XCTAssertEqual(net.forward(x, training: false).shape, [2, 5])
    }
    // conv + ReLU + max pooling (VGG's pattern) and conv + BN+ReLU + max pooling (the stems): one pass
    // in bands, the same numbers as the layers one by one; a 3×3 stride-1 conv takes Winograd, then pools.
    for (i, (bn, k, stride)) in [(false, 3, 2), (true, 7, 2), (true, 3, 1)].enumerated() {
      let conv = Conv2D(inputChannels: 3, outputChannels: 16, kernelSize: k, stride: stride, padding: .same, bias: !bn)
      let norm = BatchNorm2D(channels: 16, fusedReLU: true)
      let pool = Pool2D(.max, kernelSize: 3, stride: 2, padding: .same)
      let layers: [(String, Layer)] = bn ? [("conv", conv), ("bn", norm), ("pool", pool)]
        : [("conv", conv), ("relu", ReLU()), ("pool", pool)]
      let net = Sequential(layers)
      net.initializeParameters(seed: 7 + UInt64(i))
      norm.runningMean.value = Tensor(shape: [16], values: randomFloats(16, seed: 5))
      let x = Tensor(shape: [2, 3, 37, 30], values: randomFloats(2 * 3 * 37 * 30, seed: 6))
      var h = conv.forward(x, training: false)
      h = bn ? norm.forward(h, training: false) : ReLU().forward(h, training: false)
      let want = pool.forward(h, training: false).toArray()
      // The 7×7/2 and 3×3 stride-1 convolutions take Winograd (F(3×3, 4×4) on the phases, F(4×4,
      // 3×3)): the BN scale folded into the weights before the transform rounds apart by ~1e-6 of
      // the map's largest values.
      assertClose(net.forward(x, training: false).toArray(), want, rtol: 1e-5, atol: 1e-5, "conv k\(k) bn \(bn) + max pool")
      XCTAssertNotNil(net.fold(at: 0).flatMap { $0.pool })
    }
  }

  func testShapeErrorsNameTheLayer() {
    let net = Zoo.fcnLarge(classes: 10)
    XCTAssertThrowsError(try net.outputShape(for: [1, 1, 64, 64])) { e in
      XCTAssertEqual("\(e)", "stem.conv: expects 3 input channels, got 1 (input [1, 1, 64, 64])")
    }
    XCTAssertEqual(try net.outputShape(for: [2, 3, 100, 70]), [2, 10])
  }
}
