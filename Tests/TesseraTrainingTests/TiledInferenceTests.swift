import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraTraining
import TestSupport
import XCTest

/// Tiled inference equals whole-image inference, on an image much larger than the receptive field.
final class TiledInferenceTests: TemporaryDirectoryTestCase {
  func testTiledScoreMapEqualsWholeImage() throws {
    let net = Sequential([
      ("conv1", Conv2D(inputChannels: 3, outputChannels: 8, kernelSize: 5, stride: 2, padding: .same, bias: false)),
      ("bn1", BatchNorm2D(channels: 8, fusedReLU: true)),
      ("pool", Pool2D(.max, kernelSize: 3, stride: 2, padding: .same)),
      ("conv2", Conv2D(inputChannels: 8, outputChannels: 8, kernelSize: 3, stride: 2, padding: .same)),
      ("relu", ReLU()),
      ("head", Conv2D(inputChannels: 8, outputChannels: 3, kernelSize: 1)),
      ("gap", GlobalAvgPool2D()),
    ])
    net.initializeParameters(seed: 5)
    // Non-trivial running statistics.
    for (name, p) in net.namedParameters() where name.hasSuffix("running_mean") || name.hasSuffix("running_var") {
      for i in 0..<p.count { p.value.floats[i] = name.hasSuffix("mean") ? 0.1 * Float(i) : 1 + 0.2 * Float(i) }
    }
    let tiled = try TiledInference(model: net, channels: 3)
    XCTAssertEqual(tiled.stride, 8)
    for (w, h) in [(301, 203), (256, 192)] {
      let url = dir.appendingPathComponent("i\(w).png")
      var g = SeededGenerator(seed: UInt64(w))
      let px = (0..<(w * h * 3)).map { _ in UInt8(g.next() % 256) }
      try writePNG(bytes: px, width: w, height: h, to: url)
      let reader = ImageReader()
      let file = try reader.open(url)
      let whole = try reader.read(file).pixels
      let ref = tiled.body.forward(whole.reshaped([1] + whole.shape), training: false)
      for tile in [16, 40, 64] {
        let map = try tiled.scoreMap(file, reader: reader, tile: tile, channels: 3)
        XCTAssertEqual(map.shape, Array(ref.shape.dropFirst()))
        XCTAssertLessThanOrEqual(maxRelativeError(map.toArray(), ref.toArray()), 1e-5, "\(w)×\(h) tile \(tile)")
      }
      XCTAssertThrowsError(try tiled.scoreMap(file, reader: reader, tile: 12, channels: 3)) { e in
        XCTAssert("\(e)".contains("multiple of the model's output stride 8"), "\(e)")
      }
    }
  }
}

extension TiledInferenceTests {
  /// The benchmark model (output stride 64) on an image several tiles wide.
  func testFcnLargeTiledEqualsWhole() throws {
    let net = Zoo.fcnLarge(classes: 3, bnMomentum: 0.9)
    net.initializeParameters(seed: 1)
    let tiled = try TiledInference(model: net, channels: 3)
    XCTAssertEqual(tiled.stride, 64)
    let (w, h) = (1000, 650)
    var g = SeededGenerator(seed: 3)
    let url = dir.appendingPathComponent("big.png")
    try writePNG(bytes: (0..<(w * h * 3)).map { _ in UInt8(g.next() % 256) }, width: w, height: h, to: url)
    let reader = ImageReader()
    let file = try reader.open(url)
    let whole = try reader.read(file).pixels
    let ref = tiled.body.forward(whole.reshaped([1] + whole.shape), training: false)
    let map = try tiled.scoreMap(file, reader: reader, tile: 128, channels: 3)
    XCTAssertLessThanOrEqual(maxRelativeError(map.toArray(), ref.toArray()), 1e-5)
  }
}
