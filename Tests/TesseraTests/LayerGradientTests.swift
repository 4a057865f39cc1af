import Tessera
import TestSupport
import TesseraKernels
import XCTest

final class LayerGradientTests: XCTestCase {
  func initialized<L: Layer>(_ l: L, seed: UInt64 = 3) -> L {
    l.initializeParameters(seed: seed)
    // Non-trivial BN affine parameters and conv biases so their gradients matter.
    for (_, p) in l.namedParameters() where p.role == .bias || p.role == .scale || p.role == .shift {
      var g = SeededGenerator(seed: seed &+ 1)
      for i in 0..<p.value.count { p.value.floats[i] += g.nextUniform() - 0.5 }
    }
    return l
  }

  func testConv2D() {
    let cases: [(Conv2D, [Int])] = [
      (Conv2D(inputChannels: 3, outputChannels: 5, kernelSize: 7, stride: 2, padding: .same), [1, 3, 11, 9]),
      (Conv2D(inputChannels: 4, outputChannels: 6, kernelSize: 3, padding: .symmetric(2), dilation: 2, groups: 2), [3, 4, 6, 7]),
      (Conv2D(inputChannels: 3, outputChannels: 3, kernelSize: 3, stride: 2, padding: .same, groups: 3, bias: false), [2, 3, 5, 5]),
      (Conv2D(inputChannels: 2, outputChannels: 17, kernelSize: 1), [1, 2, 3, 4]),
    ]
    for (i, (conv, shape)) in cases.enumerated() {
      checkGradients(initialized(conv), input: randomTensor(shape, seed: UInt64(i)))
    }
  }

  func testBatchNormTrainingMode() {
    checkGradients(initialized(BatchNorm2D(channels: 3)), input: randomTensor([3, 3, 4, 5], seed: 9), h: 5e-3)
    checkGradients(initialized(BatchNorm2D(channels: 2)), input: randomTensor([1, 2, 3, 3], seed: 10), h: 5e-3)
  }

  func testActivationsPoolingLinear() {
    checkGradients(ReLU(), input: randomTensor([2, 3, 4, 5], seed: 1, awayFromZero: 0.05))
    checkGradients(LeakyReLU(slope: 0.1), input: randomTensor([2, 3, 4, 5], seed: 2, awayFromZero: 0.05))
    checkGradients(Pool2D(.max, kernelSize: 3, stride: 2, padding: .same), input: randomTensor([2, 2, 7, 6], seed: 3), h: 1e-3)
    checkGradients(Pool2D(.average(countIncludePad: false), kernelSize: 3, stride: 2, padding: .same),
                   input: randomTensor([1, 2, 6, 7], seed: 4))
    checkGradients(Pool2D(.average(countIncludePad: true), kernelSize: 2, stride: 1, padding: .symmetric(1)),
                   input: randomTensor([1, 1, 4, 3], seed: 5))
    checkGradients(GlobalAvgPool2D(), input: randomTensor([3, 4, 5, 2], seed: 6))
    checkGradients(initialized(Linear(inputFeatures: 7, outputFeatures: 5)), input: randomTensor([3, 7], seed: 7))
    checkGradients(Flatten(), input: randomTensor([2, 3, 2, 2], seed: 8))
  }

  func testResidualBlocks() {
    // A small step keeps ReLU kinks from being crossed inside the composite blocks.
    checkGradients(initialized(ResidualBlock.basic(inputChannels: 3, channels: 4, stride: 2)),
                   input: randomTensor([2, 3, 6, 6], seed: 11), h: 1e-3)
    checkGradients(initialized(ResidualBlock.basic(inputChannels: 4, channels: 4)),
                   input: randomTensor([2, 4, 5, 5], seed: 12), h: 5e-4)
    checkGradients(initialized(ResidualBlock.bottleneck(inputChannels: 4, channels: 2, stride: 2)),
                   input: randomTensor([2, 4, 5, 5], seed: 13), h: 2.5e-4)
  }

  func testFcnLargeEndToEnd() {
    let model = Zoo.fcnLarge(classes: 3)
    model.initializeParameters(seed: 1)
    // Whole-model check through the loss on a small input: a few parameters of each kind.
    // 128×96 leaves stage4 2×2 per image, so its BatchNorm sees 8 values per channel.
    let x = randomTensor([2, 3, 128, 96], seed: 4)
    let labels = [0, 2]
    func loss() -> Double {
      let y = model.forward(x, training: true)
      return Double(try! SoftmaxCrossEntropy.compute(logits: y, labels: labels).loss)
    }
    let y = model.forward(x, training: true)
    let res = try! SoftmaxCrossEntropy.compute(logits: y, labels: labels)
    model.zeroGradients()
    _ = model.backward(res.gradient, needInputGradient: false)
    let params = Dictionary(uniqueKeysWithValues: model.namedParameters())
    for name in ["stem.conv.weight", "stage1.conv2.weight", "stage3.bn1.weight", "stage4.bn2.bias", "head.weight", "head.bias"] {
      let p = params[name]!
      let grad = p.grad!.toArray()
      let scale = max(grad.map { abs($0) }.max()!, 1e-4)
      // Largest-gradient element plus two others.
      let top = grad.indices.max { abs(grad[$0]) < abs(grad[$1]) }!
      for i in [top, 0, p.value.count / 2] {
        let old = p.value.floats[i], h: Float = 1e-3
        p.value.floats[i] = old + h
        let fp = loss()
        p.value.floats[i] = old - h
        let fm = loss()
        p.value.floats[i] = old
        let num = Float((fp - fm) / Double(2 * h))
        XCTAssertEqual(num, grad[i], accuracy: 5e-2 * scale, "\(name)[\(i)]")
      }
    }
  }

  func testDropoutMaskIsConsistentAndInferenceIsIdentity() {
    let d = Dropout(rate: 0.5, seed: 3)
    let x = randomTensor([4, 100], seed: 1)
    let y = d.forward(x, training: true).toArray()
    let ones = Tensor(shape: [4, 100], values: [Float](repeating: 1, count: 400))
    let dx = d.backward(ones, needInputGradient: true)!.toArray()
    let xv = x.toArray()
    var dropped = 0
    for i in 0..<400 {
      if dx[i] == 0 { dropped += 1; XCTAssertEqual(y[i], 0) } else {
        XCTAssertEqual(dx[i], 2)
        XCTAssertEqual(y[i], xv[i] * 2, accuracy: 1e-6)
      }
    }
    XCTAssert(dropped > 150 && dropped < 250, "dropped \(dropped) of 400 at rate 0.5")
    XCTAssertEqual(d.forward(x, training: false).toArray(), xv)
  }

  func testSoftmaxCrossEntropy() throws {
    let logits = Tensor(shape: [2, 3], values: [1, 2, 3, 0, 0, 0])
    let r = try SoftmaxCrossEntropy.compute(logits: logits, labels: [2, 1])
    // -log softmax: row0 label2 = log(e1+e2+e3) - 3; row1 = log 3
    let l0 = Foundation.log(exp(1.0) + exp(2.0) + exp(3.0)) - 3, l1 = Foundation.log(3.0)
    XCTAssertEqual(Double(r.loss), (l0 + l1) / 2, accuracy: 1e-6)
    let s = try SoftmaxCrossEntropy.compute(logits: logits, labels: [2, 1], labelSmoothing: 0.3)
    // finite differences of the smoothed loss
    let g = s.gradient.toArray()
    for i in 0..<6 {
      var v = logits.toArray()
      v[i] += 1e-3
      let fp = try SoftmaxCrossEntropy.compute(logits: Tensor(shape: [2, 3], values: v), labels: [2, 1], labelSmoothing: 0.3).loss
      v[i] -= 2e-3
      let fm = try SoftmaxCrossEntropy.compute(logits: Tensor(shape: [2, 3], values: v), labels: [2, 1], labelSmoothing: 0.3).loss
      XCTAssertEqual((fp - fm) / 2e-3, g[i], accuracy: 2e-3)
    }
    XCTAssertThrowsError(try SoftmaxCrossEntropy.compute(logits: logits, labels: [3, 0]))
    XCTAssertThrowsError(try SoftmaxCrossEntropy.compute(logits: logits, labels: [1]))
  }
}

extension LayerGradientTests {
  func testFusedBatchNormReLUEqualsSeparateLayers() {
    let x = randomTensor([2, 3, 5, 4], seed: 21)
    let fused = initialized(BatchNorm2D(channels: 3, fusedReLU: true))
    let plainBN = initialized(BatchNorm2D(channels: 3))
    let separate = Sequential([("bn", plainBN), ("relu", ReLU())])
    let yf = fused.forward(x, training: true), ys = separate.forward(x, training: true)
    XCTAssertEqual(yf.toArray(), ys.toArray())
    let dy = randomTensor(yf.shape, seed: 22)
    let dxf = fused.backward(dy, needInputGradient: true)!.toArray()
    let dxs = separate.backward(dy, needInputGradient: true)!.toArray()
    assertClose(dxf, dxs, rtol: 1e-5, atol: 1e-6, "dx")
    assertClose(fused.weight.grad!.toArray(), plainBN.weight.grad!.toArray(), rtol: 1e-5, atol: 1e-6, "dgamma")
    assertClose(fused.bias.grad!.toArray(), plainBN.bias.grad!.toArray(), rtol: 1e-5, atol: 1e-6, "dbeta")
    checkGradients(initialized(BatchNorm2D(channels: 3, fusedReLU: true)), input: randomTensor([3, 3, 4, 5], seed: 9),
                   h: 1e-3)
  }
}

extension LayerGradientTests {
  func testReLU6AdaptivePoolAndLinearBottleneck() {
    // Values spread past 6 so both ends of ReLU6 are exercised.
    let x = randomTensor([2, 3, 4, 4], seed: 31, awayFromZero: 0.05)
    for i in 0..<x.count { x.floats[i] *= 8 }
    for i in 0..<x.count where abs(x.floats[i] - 6) < 0.05 { x.floats[i] += 0.1 }
    checkGradients(ReLU6(), input: x)
    checkGradients(Sigmoid(), input: randomTensor([2, 3, 4, 5], seed: 34))
    checkGradients(ConstantScale(factors: [0.5, -2, 3]), input: randomTensor([2, 3, 4, 4], seed: 37))
    checkGradients(ConstantScale(factors: [1.5]), input: randomTensor([2, 5], seed: 38))
    // Concatenated branches (identity, conv, pool–conv): input and every weight.
    let cat = ConcatBlock(branches: [
      Sequential([]),
      Sequential([("c", Conv2D(inputChannels: 3, outputChannels: 4, kernelSize: 3, padding: .same))]),
      Sequential([("p", Pool2D(.average(countIncludePad: false), kernelSize: 3, stride: 1, padding: .same)),
                  ("c", Conv2D(inputChannels: 3, outputChannels: 2, kernelSize: 1))]),
    ])
    cat.initializeParameters(seed: 35)
    checkGradients(cat, input: randomTensor([2, 3, 5, 4], seed: 36))
    checkGradients(AdaptiveAvgPool2D(outputSize: (3, 2)), input: randomTensor([2, 2, 7, 5], seed: 32))
    checkGradients(AdaptiveAvgPool2D(outputSize: (4, 4)), input: randomTensor([1, 1, 4, 4], seed: 33))
    let block = ResidualBlock(main: Sequential([
      ("conv", Conv2D(inputChannels: 3, outputChannels: 3, kernelSize: 3, padding: .same, bias: false)),
      ("bn", BatchNorm2D(channels: 3)),
    ]), shortcut: nil, finalReLU: false)
    checkGradients(initialized(block), input: randomTensor([2, 3, 5, 5], seed: 34), h: 1e-3)
  }
}
