import Tessera
import TesseraKernels
import TesseraPlanner
import TestSupport
import XCTest

/// 16-bit storage of what a step keeps: gradients close to fp32, less memory, planner still exact.
final class PrecisionTests: XCTestCase {
  override func tearDown() {
    ActivationStorage.precision = .fp32
    super.tearDown()
  }

  func gradients(_ precision: StoragePrecision, model name: String, input: [Int]) throws -> [String: [Float]] {
    ActivationStorage.precision = precision
    defer { ActivationStorage.precision = .fp32 }
    let m = try XCTUnwrap(Zoo.model(name, classes: 4))
    m.initializeParameters(seed: 2)
    try m.trainingStep(input: randomTensor(input, seed: 1), labels: (0..<input[0]).map { $0 % 4 })
    return Dictionary(uniqueKeysWithValues: m.namedParameters().filter { $0.1.trainable }.map { ($0.0, $0.1.grad!.toArray()) })
  }

  /// Documented tolerances: largest relative error per tensor ≤ 2 % (fp16) and 10 % (bf16), and the
  /// whole gradient within 0.5 % (fp16) / 3 % (bf16) in norm.
  func testGradientsCloseToFP32() throws {
    for name in ["fcn-large", "resnet18"] {
      let input = [2, 3, 64, 64]
      let ref = try gradients(.fp32, model: name, input: input)
      for (p, tol, normTol) in [(StoragePrecision.fp16, Float(0.02), 0.005), (.bf16, 0.10, 0.03)] {
        let got = try gradients(p, model: name, input: input)
        var diff = 0.0, norm = 0.0
        for (k, r) in ref {
          let g = got[k]!
          XCTAssertLessThanOrEqual(maxRelativeError(g, r), tol, "\(name) \(p) \(k)")
          for i in 0..<r.count { diff += Double(g[i] - r[i]) * Double(g[i] - r[i]); norm += Double(r[i]) * Double(r[i]) }
        }
        XCTAssertLessThanOrEqual((diff / norm).squareRoot(), normTol, "\(name) \(p) overall")
      }
    }
  }

  func testLessMemoryAndPlannerExact() throws {
    var peaks = [StoragePrecision: Int]()
    for p in StoragePrecision.allCases {
      ActivationStorage.precision = p
      let model = Zoo.fcnLarge(classes: 10)
      let plan = try Planner.plan(model, name: "f", input: [3, 192, 160], batch: 2)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(model, input: [3, 192, 160], batch: 2)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "\(p): planner vs ledger")
      XCTAssertEqual(plan.peakInferenceBytes, measured.inference, "\(p): inference")
      peaks[p] = measured.training
    }
    ActivationStorage.precision = .fp32
    XCTAssertLessThan(peaks[.fp16]!, peaks[.fp32]!)
    XCTAssertEqual(peaks[.fp16], peaks[.bf16])
    print("storage precision peaks: \(peaks)")
  }
}
