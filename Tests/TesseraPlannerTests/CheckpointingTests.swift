import Tessera
import TesseraKernels
import TesseraPlanner
import TestSupport
import XCTest

/// Gradient checkpointing: same gradients and running statistics as the plain run, less memory,
/// and the planner still equal to the ledger.
final class CheckpointingTests: XCTestCase {
  func gradients(_ model: Sequential, _ x: Tensor, _ labels: [Int]) throws -> [String: [Float]] {
    try model.trainingStep(input: x, labels: labels)
    var out = [String: [Float]]()
    for (n, p) in model.namedParameters() { out[n] = p.trainable ? p.grad!.toArray() : p.value.toArray() }
    return out
  }

  func testSameGradientsAndStatisticsAsPlain() throws {
    let x = randomTensor([2, 3, 96, 80], seed: 1), labels = [1, 3]
    let plain = Zoo.fcnLarge(classes: 4)
    plain.initializeParameters(seed: 2)
    let reference = try gradients(plain, x, labels)
    for policy in [CheckpointingPolicy.all, .sqrt, .every(2)] {
      let m = Zoo.fcnLarge(classes: 4)
      m.initializeParameters(seed: 2)
      let c = policy.apply(to: m)
      XCTAssertEqual(c.namedParameters().map(\.0), m.namedParameters().map(\.0), "names unchanged")
      let got = try gradients(c, x, labels)
      for (name, ref) in reference {
        // Parameters' gradients, and BatchNorm running statistics (updated exactly once).
        XCTAssertLessThanOrEqual(maxRelativeError(got[name]!, ref), 1e-5, "\(policy) \(name)")
      }
    }
  }

  func testDropoutMasksRecomputeIdentically() throws {
    func net() -> Sequential {
      let s = Sequential([
        ("conv", Conv2D(inputChannels: 2, outputChannels: 4, kernelSize: 3, padding: .same)), ("drop", Dropout(rate: 0.5, seed: 9)),
        ("relu", ReLU()), ("pool", GlobalAvgPool2D()), ("fc", Linear(inputFeatures: 4, outputFeatures: 3)),
      ])
      s.initializeParameters(seed: 3)
      return s
    }
    let x = randomTensor([3, 2, 8, 8], seed: 4)
    let a = try gradients(net(), x, [0, 1, 2])
    let b = try gradients(CheckpointingPolicy.all.apply(to: net()), x, [0, 1, 2])
    for (n, g) in a { XCTAssertEqual(b[n]!, g, n) }
  }

  func testLessMemoryAndPlannerStillExact() throws {
    let input = [3, 256, 256], batch = 2
    var peaks = [String: Int]()
    for (name, policy) in [("none", CheckpointingPolicy.none), ("all", .all), ("sqrt", .sqrt)] {
      let model = policy.apply(to: Zoo.fcnLarge(classes: 10))
      let plan = try Planner.plan(model, name: name, input: input, batch: batch)
      let measured = try PlannerTruthTests(name: "x", testClosure: { _ in }).measure(model, input: input, batch: batch)
      XCTAssertEqual(plan.peakTrainingBytes, measured.training, "\(name): planner vs ledger")
      peaks[name] = measured.training
    }
    XCTAssertLessThan(peaks["all"]!, peaks["none"]!)
    XCTAssertLessThan(peaks["sqrt"]!, peaks["none"]!)
    print("checkpointing peaks at 256², batch 2: \(peaks)")
  }
}
