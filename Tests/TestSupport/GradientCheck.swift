import Foundation
import Tessera
import TesseraKernels
import XCTest

/// A tensor of seeded values in [-1, 1), kept at least `awayFromZero` from 0 (to stay clear of
/// ReLU kinks and max-pool ties under a finite-difference step).
public func randomTensor(_ shape: [Int], seed: UInt64, awayFromZero: Float = 0) -> Tensor {
  var g = SeededGenerator(seed: seed)
  let n = shape.reduce(1, *)
  let v: [Float] = (0..<n).map { _ in
    let u = g.nextUniform() * 2 - 1
    return u < 0 ? u - awayFromZero : u + awayFromZero
  }
  return Tensor(shape: shape, values: v)
}

/// Checks a layer's backward against central finite differences of L = Σ y·r (r random), for the
/// input and every trainable parameter, at up to `samples` positions each. Differences are taken
/// in Float32 with step `h`, so the tolerance is relative to the largest gradient.
public func checkGradients(
  _ layer: Layer, input: Tensor, seed: UInt64 = 1, h: Float = 1e-2, samples: Int = 24, tolerance: Float = 2e-2,
  checkInput: Bool = true, file: StaticString = #filePath, line: UInt = #line
) {
  let y0 = layer.forward(input, training: true)
  let r = randomTensor(y0.shape, seed: seed &+ 77)
  layer.zeroGradients()
  let dx = layer.backward(r, needInputGradient: checkInput)
  let rv = r.toArray()

  func loss() -> Double {
    let y = layer.forward(input, training: true)
    let yv = y.toArray()
    var s = 0.0
    for i in 0..<yv.count { s += Double(yv[i]) * Double(rv[i]) }
    return s
  }

  func compare(_ name: String, values: UnsafeMutablePointer<Float>, count: Int, analytic: [Float]) {
    var g = SeededGenerator(seed: seed &+ 5)
    let idx = count <= samples ? Array(0..<count) : (0..<samples).map { _ in Int(g.next() % UInt64(count)) }
    let scale = max(analytic.map { abs($0) }.max() ?? 0, 1e-2)
    for i in idx {
      let old = values[i]
      values[i] = old + h
      let fp = loss()
      values[i] = old - h
      let fm = loss()
      values[i] = old
      let num = Float((fp - fm) / Double(2 * h))
      if abs(num - analytic[i]) > tolerance * scale {
        XCTFail("\(layer.kind) \(name)[\(i)]: backward \(analytic[i]), finite difference \(num) (scale \(scale))",
                file: file, line: line)
        return
      }
    }
  }

  if checkInput, let dx = dx {
    compare("input", values: input.floats, count: input.count, analytic: dx.toArray())
  }
  for (name, p) in layer.namedParameters() where p.trainable {
    guard let grad = p.grad else {
      XCTFail("\(layer.kind) \(name): no gradient after backward", file: file, line: line)
      continue
    }
    compare(name, values: p.value.floats, count: p.value.count, analytic: grad.toArray())
  }
}
