import Tessera
import TesseraKernels
import TesseraPlanner
import TestSupport
import XCTest

/// `--compute bf16` through whole models: the planner still equals the ledger, streamed training
/// matches one tile to bf16's precision, and results stay close to fp32's.
final class ComputeTests: XCTestCase {
  override func setUpWithError() throws {
    try XCTSkipUnless(BF16.supported, "this CPU has no AVX512_BF16 (or the OS keeps AVX-512 off): the bf16 kernels are not run")
  }

  override func tearDown() {
    BF16.enabled = false
    super.tearDown()
  }

  /// Training and inference peaks to the byte, bf16 workspaces included (they differ from fp32's).
  func testPlannerEqualsLedger() throws {
    BF16.enabled = true
    for (name, input, batch) in [("fcn-large", [3, 96, 160], 2), ("resnet18", [3, 64, 64], 2)] {
      let model = try XCTUnwrap(Zoo.model(name, classes: 10))
      let plan = try Planner.plan(model, name: name, input: input, batch: batch, optimizer: .momentum)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(model, input: input, batch: batch)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "\(name) training")
      XCTAssertEqual(plan.peakInferenceBytes, measured.inference, "\(name) inference")
    }
  }

  /// Streamed training under bf16 agrees with one whole-image tile to bf16's own precision, not to
  /// fp32's 1e-5: every output's forward products are the same whichever tile computes it, but a
  /// gradient in a tile's halo is summed from different parts than in the whole image (~1e-7 apart
  /// in fp32), and rounding it to bf16 for the next product can turn that into 2⁻⁸ (measured:
  /// ≤ 0.7 % of a gradient's largest value here, frozen BatchNorm; batch statistics add the same
  /// effect through their sums).
  func testStreamingMatchesOneTileToBF16Precision() throws {
    BF16.enabled = true
    let s = StreamingTests(name: "x", testClosure: { _ in })
    let x = randomTensor([1, 3, 176, 144], seed: 5), labels = [2]
    func frozen(_ tile: Int) throws -> Sequential {
      let m = s.fcn()
      for (n, p) in m.namedParameters() where n.hasSuffix("running_mean") || n.hasSuffix("running_var") {
        for i in 0..<p.count { p.value.floats[i] = n.hasSuffix("mean") ? Float(i % 3) * 0.1 : 1 + Float(i % 5) * 0.2 }
      }
      return try Streamed.apply(to: m, blocks: 3, tile: tile, frozenBatchNorm: true)
    }
    s.assertSame(try s.step(try frozen(32), x, labels), try s.step(try frozen(1024), x, labels),
                 "bf16, frozen BatchNorm, tile 32 vs one tile", tolerance: 0.02)
  }

  /// Gradients of a net without BatchNorm (fresh BatchNorm nets on small batches are chaotic: in
  /// fp32, rounding only the *input* to bf16 already moves fcn-large's gradients by 70 % at 64²)
  /// against fp32's: within 2 % of the gradient's norm, and far enough (> 1e-4) that bf16 ran. And
  /// fcn-large's inference logits (running statistics) within 2 %.
  func testCloseToFP32() throws {
    let net = Sequential([
      ("c1", Conv2D(inputChannels: 3, outputChannels: 16, kernelSize: 7, stride: 2, padding: .same)), ("r1", ReLU()),
      ("c2", Conv2D(inputChannels: 16, outputChannels: 32, kernelSize: 3, stride: 2, padding: .same)), ("r2", ReLU()),
      ("c3", Conv2D(inputChannels: 32, outputChannels: 32, kernelSize: 3, padding: .same)), ("r3", ReLU()),
      ("head", Conv2D(inputChannels: 32, outputChannels: 4, kernelSize: 1)), ("gap", GlobalAvgPool2D()),
    ])
    let x = randomTensor([2, 3, 64, 64], seed: 1)
    func gradients(_ bf16: Bool) throws -> [String: [Float]] {
      BF16.enabled = bf16
      defer { BF16.enabled = false }
      net.initializeParameters(seed: 2)
      try net.trainingStep(input: x, labels: [0, 3])
      return Dictionary(uniqueKeysWithValues: net.namedParameters().filter { $0.1.trainable }.map { ($0.0, $0.1.grad!.toArray()) })
    }
    let ref = try gradients(false), got = try gradients(true)
    var diff = 0.0, norm = 0.0
    for (k, r) in ref {
      let g = try XCTUnwrap(got[k])
      for i in 0..<r.count { diff += Double(g[i] - r[i]) * Double(g[i] - r[i]); norm += Double(r[i]) * Double(r[i]) }
    }
    let relative = (diff / norm).squareRoot()
    print("bf16 compute: gradient error \(relative) of its norm")
    XCTAssertLessThanOrEqual(relative, 0.02)
    XCTAssertGreaterThan(relative, 1e-4)

    let m = Zoo.fcnLarge(classes: 10)
    m.initializeParameters(seed: 3)
    let images = randomTensor([2, 3, 96, 96], seed: 4)
    let fp32 = try m.predict(images).toArray()
    BF16.enabled = true
    let bf16 = try m.predict(images).toArray()
    BF16.enabled = false
    let logitError = maxRelativeError(bf16, fp32)
    print("bf16 compute: fcn-large logits error \(logitError)")
    XCTAssertLessThanOrEqual(logitError, 0.02)
    XCTAssertGreaterThan(logitError, 1e-5)
  }
}
