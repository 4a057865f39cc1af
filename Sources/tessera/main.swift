import TesseraKernels
import Foundation
func bench(_ g: ConvGeometry) {
  let x = Buffer(floats: g.inputCount), w = Buffer(floats: g.weightCount), y = Buffer(floats: g.outputCount)
  for i in 0..<g.inputCount { x.floats[i] = Float(i % 7) * 0.1 }
  for i in 0..<g.weightCount { w.floats[i] = Float(i % 5) * 0.1 }
  let dw = Buffer(floats: g.weightCount), dx = Buffer(floats: g.inputCount)
  func time(_ f: () -> Void) -> Double { f(); let t0 = Date(); f(); f(); return Date().timeIntervalSince(t0) / 2 }
  let fl = 2.0 * Double(g.macs) / 1e9
  let tf = time { Conv2DKernels.forward(g, x: x.floats, w: w.floats, bias: nil, y: y.floats) }
  let tw = time { Conv2DKernels.backwardWeights(g, x: x.floats, dy: y.floats, dw: dw.floats, dbias: nil) }
  let td = time { Conv2DKernels.backwardData(g, dy: y.floats, w: w.floats, dx: dx.floats) }
  print(String(format: "%@  fwd %.1f  bwdW %.1f  bwdD %.1f GFLOP/s   (ms %.1f %.1f %.1f)", g.description, fl/tf, fl/tw, fl/td, tf*1e3, tw*1e3, td*1e3))
}
let s = 1024, b = 4
bench(ConvGeometry(batch: b, inChannels: 3, inHeight: s, inWidth: s, outChannels: 16, kernelH: 7, kernelW: 7, strideH: 2, strideW: 2, padTop: 2, padLeft: 2, padBottom: 3, padRight: 3))
var hw = s / 8, c = 16
for k in [32, 64, 128, 256] {
  bench(ConvGeometry(batch: b, inChannels: c, inHeight: hw, inWidth: hw, outChannels: k, kernelH: 3, kernelW: 3, strideH: 2, strideW: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1))
  hw /= 2
  bench(ConvGeometry(batch: b, inChannels: k, inHeight: hw, inWidth: hw, outChannels: k, kernelH: 3, kernelW: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1))
  c = k
}
