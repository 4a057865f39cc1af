import Foundation
import Tessera
import TesseraPlanner
import XCTest

final class ModelSpecTests: XCTestCase {
  let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("examples")

  func testJSONSpecOfFcnLargeEqualsTheZooModel() throws {
    let spec = try ModelSpec.load(examples.appendingPathComponent("fcn-large.json"))
    let model = try spec.build()
    let zoo = Zoo.fcnLarge(classes: 10)
    XCTAssertEqual(model.namedParameters().map(\.0), zoo.namedParameters().map(\.0))
    XCTAssertEqual(model.namedParameters().map(\.1.shape), zoo.namedParameters().map(\.1.shape))
    let a = try Planner.plan(model, name: "spec", input: [3, 256, 200], batch: 2)
    let b = try Planner.plan(zoo, name: "zoo", input: [3, 256, 200], batch: 2)
    XCTAssertEqual(a.peakTrainingBytes, b.peakTrainingBytes)
    XCTAssertEqual(a.macs, b.macs)
  }

  func testYAMLResidualSpec() throws {
    let spec = try ModelSpec.load(examples.appendingPathComponent("tiny-resnet.yaml"))
    XCTAssertEqual(spec.inputChannels, 1)
    let model = try spec.build()
    XCTAssertEqual(try model.outputShape(for: [2, 1, 300, 200]), [2, 5])
    XCTAssert(model.namedParameters().map(\.0).contains("block2.downsample.0.weight"))
    // Train one step to show the spec is a real network.
    let x = Tensor(zeros: [2, 1, 64, 48])
    model.initializeParameters(seed: 1)
    XCTAssert(try model.trainingStep(input: x, labels: [0, 4]).loss.isFinite)
  }

  func testShapeMismatchNamesLayerPathAndShapes() throws {
    let model = try ModelSpec.load(examples.appendingPathComponent("mismatch.yaml")).build()
    XCTAssertThrowsError(try Planner.plan(model, name: "m", input: [3, 64, 64], batch: 1)) { e in
      let text = "\(e)"
      XCTAssert(text.contains("too_big") && text.contains("[1, 8, 2, 2]"), text)
    }
  }

  func testBadSpecsAreRejectedWithTheLayerPath() {
    func error(_ yaml: String) -> String {
      do {
        _ = try ModelSpec.parse(yaml: yaml).build()
        return "no error"
      } catch { return "\(error)" }
    }
    XCTAssert(error("layers:\n  - {name: a, conv: {filters: 8, kernel: 3, stide: 2}}").contains("stide"))
    XCTAssert(error("layers:\n  - {name: a, conv: {kernel: 3}}").contains("filters"))
    XCTAssert(error("layers:\n  - {name: a, bogus: {}}").contains("unknown layer type 'bogus'"))
    XCTAssert(error("layers:\n  - {flatten: {}}\n  - {name: fc, linear: {out: 3}}").contains("fc"))
    XCTAssert(error("layers:\n  - {name: r, residual: {layers: [{conv: {filters: 9, kernel: 1}}]}}").contains("shortcut"))
    XCTAssert(error("layers:\n  - {conv: {filters: 8, kernel: 3}, relu: {}}").contains("exactly one"))
  }
}
