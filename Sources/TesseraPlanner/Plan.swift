import Tessera
import TesseraKernels

/// Optimizers the planner knows the state size of.
public enum OptimizerKind: String, Sendable, CaseIterable, Codable {
  /// Plain SGD: no state.
  case sgd
  /// SGD with momentum (or Nesterov): one tensor per parameter.
  case momentum
  /// AdamW: two tensors per parameter.
  case adamw

  public var stateTensorsPerParameter: Int {
    switch self {
    case .sgd: 0
    case .momentum: 1
    case .adamw: 2
    }
  }
}

/// One leaf layer of a plan.
public struct LayerPlan: Sendable, Codable {
  public var name: String
  public var kind: String
  /// Output shape for the planned batch: (N, C, H, W) or (N, features).
  public var output: [Int]
  /// Trainable parameters of this layer.
  public var parameters: Int
  /// Multiply-accumulates of the forward pass, per image.
  public var macs: Int
  /// Bytes this layer keeps from its forward for its backward, at the planned batch (storage
  /// shared with another layer is counted for each that keeps it).
  public var keptBytes: Int
  /// Largest workspace its forward or backward kernels hold at once.
  public var workspaceBytes: Int
  public var receptiveField: ReceptiveField
  /// Whether this is a fully connected (Linear) layer.
  public var fullyConnected: Bool
}

/// Everything known about a run before it runs: shapes, parameters, MACs, receptive fields, and the
/// bytes it will hold at its peak — the same numbers the memory ledger will measure.
public struct Plan: Sendable, Codable {
  public var model: String
  /// (C, H, W) of one image.
  public var input: [Int]
  public var batch: Int
  public var optimizer: OptimizerKind
  public var threads: Int
  public var layers: [LayerPlan]

  /// Trainable parameters.
  public var parameters: Int
  /// Forward multiply-accumulates per image.
  public var macs: Int
  public var inputBytes: Int
  /// All parameter tensors (running statistics included).
  public var parameterBytes: Int
  public var gradientBytes: Int
  public var optimizerBytes: Int
  /// Peak of activations, kept tensors, gradients in flight and kernel workspaces during a step.
  public var activationBytes: Int
  public var peakTrainingBytes: Int
  public var peakInferenceBytes: Int
  public var receptiveField: ReceptiveField

  /// Parameters in fully connected layers, as a share of all (0 when there are none).
  public var fullyConnectedShare: Double {
    let fc = layers.filter(\.fullyConnected).reduce(0) { $0 + $1.parameters }
    return parameters == 0 ? 0 : Double(fc) / Double(parameters)
  }
}

/// Pure arithmetic from a model and settings to a `Plan`; builds nothing, allocates nothing.
public enum Planner {
  /// Plans `model` on `batch` images of `input` (C, H, W). `inputGradient`: backward also makes the
  /// gradient of the input (a pipeline stage that passes it on); `logits: false` plans a part of a
  /// network whose output is not (batch, classes); `holdOutput: false`: the output is let go before
  /// backward.
  public static func plan(
    _ model: Layer, name: String, input: [Int], batch: Int, optimizer: OptimizerKind = .momentum,
    threads: Int = Parallel.threadCount, inputResident: Bool = true, inputGradient: Bool = false, logits: Bool = true,
    holdOutput: Bool = true
  ) throws -> Plan {
    guard input.count == 3 else { throw SizeError("input must be (C, H, W), got \(input)") }
    try Limits.check(batch, in: 1...Limits.maxBatch, "batch")
    try Limits.check(input[0], in: 1...Limits.maxChannels, "input channels")
    let shape = [batch] + input
    try Limits.check(shape, "input (N, C, H, W)")
    // (logits: false — a part of a network, such as a pipeline stage, may end anywhere.)
    _ = try logits ? model.checkInput(shape) : model.outputShape(for: shape)

    // Per-layer table: shapes, parameters, MACs, receptive fields (walk), kept bytes (simulation).
    var rows = [LayerPlan]()
    var leaves = [(String, Layer)]()
    let rf = try walk(model, path: "", input: shape, rf: .identity) { path, layer, inShape, outShape, rfOut in
      leaves.append((path, layer))
      let params = layer.ownParameters.filter { $0.1.trainable }.reduce(0) { $0 + $1.1.count }
      var macs = 0, ws = 0
      if let c = layer as? Conv2D, let g = try? c.geometry(for: inShape) {
        guard let m = Limits.product([g.outChannels, g.outHeight, g.outWidth, g.taps]) else {
          throw SizeError("\(path): more multiply-accumulates than can be counted")
        }
        macs = m
        ws = max(Conv2DKernels.forwardWorkspaceBytes(g, threads: threads), Conv2DKernels.backwardWeightsWorkspaceBytes(g, threads: threads),
                 Conv2DKernels.backwardDataWorkspaceBytes(g, threads: threads))
      } else if let l = layer as? Linear {
        macs = l.inputFeatures * l.outputFeatures  // both bounded by the parameter count
        ws = max(GEMM.workspaceBytes(m: batch, n: l.outputFeatures, k: l.inputFeatures, threads: threads),
                 GEMM.workspaceBytes(m: l.outputFeatures, n: l.inputFeatures, k: batch, threads: threads),
                 GEMM.workspaceBytes(m: batch, n: l.inputFeatures, k: l.outputFeatures, threads: threads))
      }
      rows.append(LayerPlan(name: path, kind: layer.kind, output: outShape, parameters: params, macs: macs,
                            keptBytes: 0, workspaceBytes: ws, receptiveField: rfOut, fullyConnected: layer is Linear))
    }

    let all = model.namedParameters()
    let trainable = all.filter { $0.1.trainable }.reduce(0) { $0 + $1.1.count }
    let parameterBytes = all.reduce(0) { $0 + $1.1.count * 4 }
    let gradientBytes = trainable * 4
    let optimizerBytes = trainable * 4 * optimizer.stateTensorsPerParameter

    // Training step: the batch, forward keeping what backward needs, loss gradient, backward.
    let train = MemorySimulation(threads: threads)
    // (withExtendedLifetime: a simulated tensor must live exactly as long as the real one, which
    // the caller of a training step holds to the end, even where the dry run no longer reads it.)
    do {
      // An input read region by region (a TileSource for a Streamed model) is never held whole.
      let x = train.allocate(shape, bytesPerElement: inputResident ? 4 : 0)
      var logits: SimTensor? = try model.planForward(x, training: true, train)
      for (i, (_, leaf)) in leaves.enumerated() { rows[i].keptBytes = train.keptBytes(of: leaf) }
      let outShape = logits!.shape
      if !holdOutput { logits = nil }  // a pipeline stage sends its output on and lets it go
      let dLogits = train.allocate(outShape)
      // (inputGradient: a pipeline stage after the first sends its input's gradient back.)
      let dx = model.planBackward(dLogits, needInputGradient: inputGradient, train)
      withExtendedLifetime((x, logits, dLogits, dx)) {}
    }
    let infer = MemorySimulation(threads: threads)
    do {
      let x = infer.allocate(shape, bytesPerElement: inputResident ? 4 : 0)
      let y = try model.planForward(x, training: false, infer)
      withExtendedLifetime((x, y)) {}
    }
    let inputBytes = inputResident ? shape.reduce(1, *) * 4 : 0
    let resident = parameterBytes + gradientBytes + optimizerBytes
    return Plan(
      model: name, input: input, batch: batch, optimizer: optimizer, threads: threads, layers: rows,
      parameters: trainable, macs: try rows.reduce(0) {
        let (s, o) = $0.addingReportingOverflow($1.macs)
        if o { throw SizeError("more multiply-accumulates than can be counted") }
        return s
      }, inputBytes: inputBytes,
      parameterBytes: parameterBytes, gradientBytes: gradientBytes, optimizerBytes: optimizerBytes,
      activationBytes: train.peakBytes - inputBytes, peakTrainingBytes: resident + train.peakBytes,
      peakInferenceBytes: parameterBytes + infer.peakBytes, receptiveField: rf)
  }

  /// Visits every leaf layer in execution order with its dotted path, input and output shapes and
  /// receptive field; returns the model's output receptive field.
  static func walk(
    _ layer: Layer, path: String, input: [Int], rf: ReceptiveField,
    _ visit: (String, Layer, [Int], [Int], ReceptiveField) throws -> Void
  ) throws -> ReceptiveField {
    func child(_ name: String) -> String { path.isEmpty ? name : path + "." + name }
    switch layer {
    case let s as Sequential:
      var shape = input, r = rf
      for (name, l) in s.layers {
        r = try walk(l, path: l.transparent ? path : child(name), input: shape, rf: r, visit)
        shape = try l.outputShape(for: shape)
      }
      return r
    case let c as Checkpointed:
      return try walk(c.segment, path: path, input: input, rf: rf, visit)
    case let s as Streamed:
      return try walk(s.segment, path: path, input: input, rf: rf, visit)
    case let b as ResidualBlock:
      let main = try walk(b.main, path: path, input: input, rf: rf, visit)
      guard let s = b.shortcut else { return main }
      return main.union(try walk(s, path: child("downsample"), input: input, rf: rf, visit))
    default:
      let out = try layer.outputShape(for: input)
      try Limits.check(out, "output of \(path.isEmpty ? layer.kind : path)", maxDimension: Limits.maxElements)
      let r = receptiveField(of: layer, input: input, rf: rf)
      try visit(path, layer, input, out, r)
      return r
    }
  }

  static func receptiveField(of layer: Layer, input: [Int], rf: ReceptiveField) -> ReceptiveField {
    switch layer {
    case let c as Conv2D:
      let (t, l, _, _) = c.padding.amounts(inHeight: input[2], inWidth: input[3], kernel: c.kernelSize,
                                           stride: c.stride, dilation: c.dilation)
      return rf.through(kernel: [c.kernelSize.height, c.kernelSize.width], stride: [c.stride.height, c.stride.width],
                        dilation: [c.dilation.height, c.dilation.width], padBefore: [t, l])
    case let p as Pool2D:
      let (t, l, _, _) = p.padding.amounts(inHeight: input[2], inWidth: input[3], kernel: p.kernelSize,
                                           stride: p.stride, dilation: (1, 1))
      return rf.through(kernel: [p.kernelSize.0, p.kernelSize.1], stride: [p.stride.0, p.stride.1], padBefore: [t, l])
    case is GlobalAvgPool2D, is Linear:
      return rf.asGlobal
    default:
      return rf
    }
  }
}
