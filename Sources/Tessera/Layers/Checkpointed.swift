import TesseraKernels

/// Gradient checkpointing (Chen et al. 2016): in training, runs its segment forward keeping nothing
/// but the segment's input; backward runs the segment forward again — this time keeping what its
/// layers need — then its backward. Memory for one extra forward. BatchNorm running statistics are
/// frozen during the recomputation (updated once per step), and Dropout generators are rewound so
/// the recomputed masks equal the first ones. Parameter names are the segment's own (`transparent`).
public final class Checkpointed: Layer {
  public let segment: Sequential
  private var savedInput: Tensor?
  private var dropoutStates: [SeededGenerator] = []

  public init(_ segment: Sequential) { self.segment = segment }

  public var kind: String { "Checkpointed" }
  public var transparent: Bool { true }
  public var children: [(String, Layer)] { segment.layers }

  /// Every leaf of the segment of type T.
  func leaves<T>(_ t: T.Type) -> [T] {
    func walk(_ l: Layer) -> [T] { (l as? T).map { [$0] } ?? l.children.flatMap { walk($0.1) } }
    return walk(segment)
  }

  public func outputShape(for input: [Int]) throws -> [Int] { try segment.outputShape(for: input) }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    guard training && BackwardRecording.isOn else { return segment.forward(x, training: training) }
    dropoutStates = leaves(Dropout.self).map(\.generatorState)
    let y = BackwardRecording.without { segment.forward(x, training: true) }
    savedInput = x
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    recompute()
    return segment.backward(dy, needInputGradient: needInputGradient)
  }

  /// The segment's forward again, recording, with the same masks and without touching running statistics.
  private func recompute() {
    guard let x = savedInput else { preconditionFailure("Checkpointed.backward without a training forward") }
    savedInput = nil
    for (d, s) in zip(leaves(Dropout.self), dropoutStates) { d.generatorState = s }
    let bns = leaves(BatchNorm2D.self)
    let frozen = bns.map(\.freezeRunningStatistics)
    bns.forEach { $0.freezeRunningStatistics = true }
    defer { for (b, f) in zip(bns, frozen) { b.freezeRunningStatistics = f } }
    _ = segment.forward(x, training: true)
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    guard training && BackwardRecording.isOn else { return try segment.planForward(x, training: training, sim) }
    let y = try BackwardRecording.without { try segment.planForward(x, training: true, sim) }
    sim.keep(self, [x])
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    planRecompute(sim)
    return segment.planBackward(dy, needInputGradient: needInputGradient, sim)
  }

  private func planRecompute(_ sim: MemorySimulation) {
    guard let x = sim.take(self).first else { return }
    _ = try? segment.planForward(x, training: true, sim)
  }
}

/// Where to put checkpoints: `none`, `all` (every top-level block its own segment), `sqrt` (√n
/// segments of consecutive top-level blocks) or a number N (segments of N blocks).
public enum CheckpointingPolicy: Equatable, Sendable {
  case none, all, sqrt, every(Int)

  public init?(_ text: String) {
    switch text.lowercased() {
    case "none": self = .none
    case "all": self = .all
    case "sqrt": self = .sqrt
    default:
      guard let n = Int(text), n >= 1 else { return nil }
      self = .every(n)
    }
  }

  /// The model with its top-level layers grouped into checkpointed segments (same parameters, same
  /// names); the last layer (the head, whose output is the loss's input) is never checkpointed.
  /// A leading `Streamed` segment stays as it is (it recomputes its tiles anyway).
  public func apply(to model: Sequential) -> Sequential {
    if let first = model.layers.first, first.1 is Streamed {
      let rest = apply(to: Sequential(Array(model.layers.dropFirst())))
      return Sequential([first] + rest.layers)
    }
    let layers = model.layers
    guard layers.count > 1 else { return model }
    let body = Array(layers.dropLast())
    let size: Int
    switch self {
    case .none: return model
    case .all: size = 1
    case .sqrt: size = max(1, Int(Double(body.count).squareRoot().rounded(.up)))
    case .every(let n): size = n
    }
    var out = [(String, Layer)]()
    for (i, start) in stride(from: 0, to: body.count, by: size).enumerated() {
      let seg = Array(body[start..<min(body.count, start + size)])
      out.append(("checkpoint\(i)", Checkpointed(Sequential(seg))))
    }
    out.append(layers.last!)
    return Sequential(out)
  }
}
