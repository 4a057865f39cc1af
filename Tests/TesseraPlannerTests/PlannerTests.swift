import Tessera
import TesseraKernels
import TesseraPlanner
import TestSupport
import XCTest

final class PlannerTests: XCTestCase {
  func plan(_ name: String, _ input: [Int] = [3, 224, 224], batch: Int = 1, classes: Int = 1000) throws -> Plan {
    try Planner.plan(try XCTUnwrap(Zoo.model(name, classes: classes)), name: name, input: input, batch: batch)
  }

  /// torchvision's published parameter counts, exactly.
  func testParameterCountsEqualTorchvision() throws {
    let expected = [
      "alexnet": 61_100_840, "vgg11": 132_863_336, "vgg16": 138_357_544, "resnet18": 11_689_512,
      "resnet34": 21_797_672, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872,
    ]
    for (name, count) in expected { XCTAssertEqual(try plan(name).parameters, count, name) }
    XCTAssertEqual(try plan("fcn-large", classes: 10).parameters, 1_181_914)  // peers/keras_bench.py
  }

  /// Published MACs at 224² (convolutions and linear layers), within 1 %.
  func testMACsMatchPublishedWithinOnePercent() throws {
    let expected = ["vgg16": 15.47e9, "resnet18": 1.81e9, "resnet50": 4.09e9, "mobilenet_v2": 0.30e9]
    for (name, macs) in expected {
      let got = Double(try plan(name).macs)
      XCTAssertEqual(got / macs, 1, accuracy: 0.01, "\(name): \(got)")
    }
    // fcn-large forward at 1024²: peers/keras_bench.py reports 3.0464 GFLOP per image.
    XCTAssertEqual(Double(try plan("fcn-large", [3, 1024, 1024], classes: 10).macs) * 2 / 1e9, 3.0464, accuracy: 1e-4)
  }

  func testVGG16ReceptiveFieldLayerByLayer() throws {
    let p = try plan("vgg16")
    let rows = p.layers.filter { $0.kind == "Conv2D" || $0.kind == "MaxPool2D" }
    XCTAssertEqual(rows.map { $0.receptiveField.size[0] },
                   [3, 5, 6, 10, 14, 16, 24, 32, 40, 44, 60, 76, 92, 100, 132, 164, 196, 212])
    XCTAssertEqual(rows.last?.name, "features.30")
    XCTAssertEqual(rows.last?.receptiveField.stride, [32, 32])
    XCTAssertTrue(p.layers.last!.receptiveField.global)
    XCTAssertGreaterThan(p.fullyConnectedShare, 0.85)  // the seed: "FC normally takes most of the parameters"
    XCTAssertEqual(try plan("vgg16-fcn").fullyConnectedShare, 0)
  }

  func testSeedArithmetic() throws {
    // A 3×2400×2400 fp32 image is 69,120,000 bytes.
    XCTAssertEqual(try plan("fcn-large", [3, 2400, 2400], classes: 10).inputBytes, 69_120_000)
    // Activations of 32 × 64 × 112 × 112 fp32: resnet18's first conv output at batch 32.
    let r = try plan("resnet18", batch: 32)
    XCTAssertEqual(r.layers[0].name, "conv1")
    XCTAssertEqual(r.layers[0].output, [32, 64, 112, 112])
    XCTAssertEqual(r.layers[0].output.reduce(1, *) * 4, 102_760_448)
    // What the first conv keeps for backward is its input: 32 × 3 × 224² × 4 bytes.
    XCTAssertEqual(r.layers[0].keptBytes, 32 * 3 * 224 * 224 * 4)
  }

  func testNonSquareAndShapeErrors() throws {
    let p = try plan("resnet18", [3, 300, 171])
    XCTAssertEqual(p.layers[0].output, [1, 64, 150, 86])
    XCTAssertEqual(p.layers.last?.output, [1, 1000])
    XCTAssertThrowsError(try plan("vgg16", [3, 16, 16])) { e in
      XCTAssert("\(e)".contains("features."), "\(e)")
    }
  }

  func testTotalsAddUp() throws {
    let p = try plan("resnet18", [3, 128, 96], batch: 2)
    XCTAssertEqual(p.gradientBytes, p.parameters * 4)
    XCTAssertEqual(p.optimizerBytes, p.parameters * 4)  // momentum
    XCTAssertEqual(p.peakTrainingBytes, p.parameterBytes + p.gradientBytes + p.optimizerBytes + p.inputBytes + p.activationBytes)
    XCTAssertLessThan(p.peakInferenceBytes, p.peakTrainingBytes)
    let adam = try Planner.plan(Zoo.model("resnet18", classes: 1000)!, name: "r", input: [3, 128, 96], batch: 2,
                                optimizer: .adamw)
    XCTAssertEqual(adam.peakTrainingBytes - p.peakTrainingBytes, p.parameters * 4)
  }

  func testByteSizes() throws {
    XCTAssertEqual(try ByteSize.parse("8GiB"), 8 << 30)
    XCTAssertEqual(try ByteSize.parse("16GB"), 16_000_000_000)
    XCTAssertEqual(try ByteSize.parse("1.5 MiB"), 1_572_864)
    XCTAssertEqual(try ByteSize.parse("512kb"), 512_000)
    XCTAssertEqual(try ByteSize.parse("1234"), 1234)
    XCTAssertThrowsError(try ByteSize.parse("lots"))
    XCTAssertThrowsError(try ByteSize.parse("-1GB"))
  }

  /// At the batch the planner says fits, a real step stays under the budget; one more does not fit.
  func testBudgetBatchIsRealAndTight() throws {
    let input = [3, 96, 96]
    let model = Zoo.fcnLarge(classes: 10)
    let one = try Planner.plan(model, name: "fcn", input: input, batch: 1).peakTrainingBytes
    let budget = one + 3 * (try Planner.plan(model, name: "fcn", input: input, batch: 2).peakTrainingBytes - one) + 1000
    let advice = try Planner.advise(model, input: input, batch: 64, budget: budget)
    let b = try XCTUnwrap(advice.maxTrainingBatch)
    XCTAssertFalse(advice.fits)
    XCTAssertEqual(advice.suggestions.first?.change, "batch")
    XCTAssertGreaterThan(try Planner.plan(model, name: "fcn", input: input, batch: b + 1).peakTrainingBytes, budget)
    // A real run at that batch, measured by the ledger, stays within the budget.
    let before = MemoryLedger.shared.currentBytes
    model.initializeParameters(seed: 3)
    let x = randomTensor([b] + input, seed: 4)
    let opt = SGD(momentum: 0.9)
    let labels = (0..<b).map { $0 % 10 }
    try model.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.01)
    let peak = try MemoryLedger.shared.measure { _ = try model.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.01) }
    // x here is an activation-category tensor made by the test; the step's peak counts it like the batch.
    XCTAssertLessThanOrEqual(peak.peakBytes - before, budget)
  }

  func testBudgetSuggestsSmallerInputWhenNothingFits() throws {
    let model = Zoo.model("resnet50", classes: 1000)!
    let advice = try Planner.advise(model, input: [3, 2400, 2400], batch: 1, budget: 1 << 30)
    XCTAssertNil(advice.maxTrainingBatch)
    let s = try XCTUnwrap(advice.suggestions.first { $0.change == "input" })
    XCTAssertLessThanOrEqual(s.peakTrainingBytes, 1 << 30)
    XCTAssertEqual(s.input[1], s.input[2])  // aspect ratio kept
    XCTAssertLessThan(s.input[1], 2400)
  }
}
