import TesseraKernels

/// Named layers run one after another. Names become the parameter-name prefixes
/// (`stage1.conv1.weight`).
public final class Sequential: Layer {
  public private(set) var layers: [(String, Layer)]
  /// Called after child i's backward, when its parameters' gradients for this step are complete
  /// (data-parallel training starts their allreduce there, overlapped with the rest of backward).
  public var onChildBackward: ((Int) -> Void)?

  public init(_ layers: [(String, Layer)]) {
    precondition(Set(layers.map(\.0)).count == layers.count, "layer names must be unique")
    self.layers = layers
  }

  /// Layers named by their index ("0", "1", …), as torch.nn.Sequential.
  public convenience init(indexed layers: [Layer]) {
    self.init(layers.enumerated().map { (String($0.offset), $0.element) })
  }

  public var children: [(String, Layer)] { layers }

  public func outputShape(for input: [Int]) throws -> [Int] {
    var s = input
    for (name, l) in layers {
      do { s = try l.outputShape(for: s) } catch let e as ShapeError {
        throw ShapeError(layer: e.layer.isEmpty || e.layer == l.kind ? name : "\(name).\(e.layer)", e.message)
      }
    }
    return s
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    var h = x, i = 0
    while i < layers.count {
      let (name, l) = layers[i]
      if !training, let f = fold(at: i) {
        h = Profiler.shared.time("\(f.name) forward") { f.conv.forward(h, folding: f.bn, relu: f.relu, maxPool: f.pool) }
        i += f.span
        continue
      }
      h = l is Sequential ? Profiler.shared.within(name) { l.forward(h, training: training) }
        : Profiler.shared.time("\(name) \(l.kind) forward") { l.forward(h, training: training) }
      i += 1
    }
    return h
  }

  /// Inference folds a convolution and what follows it of a BatchNorm, a ReLU and a max pooling
  /// (in that order, each optional, at least one) into one pass (`Conv2D.forward(_:folding:…)`):
  /// `span` layers from i, named "conv+bn+…".
  func fold(at i: Int) -> (conv: Conv2D, bn: BatchNorm2D?, relu: Bool, pool: Pool2D?, span: Int, name: String)? {
    guard let conv = layers[i].1 as? Conv2D else { return nil }
    var j = i + 1, bn: BatchNorm2D? = nil, relu = false, pool: Pool2D? = nil
    if j < layers.count, let b = layers[j].1 as? BatchNorm2D, b.channels == conv.outputChannels {
      bn = b
      relu = b.fusedReLU
      j += 1
    }
    if !relu, j < layers.count, type(of: layers[j].1) == ReLU.self {
      relu = true
      j += 1
    }
    if j < layers.count, let p = layers[j].1 as? Pool2D, p.mode == .max {
      pool = p
      j += 1
    }
    guard j - i >= 2 else { return nil }
    let names = layers[i..<j].map(\.0).joined(separator: "+"), kinds = layers[i..<j].map(\.1.kind).joined(separator: "+")
    return (conv, bn, relu, pool, j - i, "\(names) \(kinds)")
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    var g: Tensor? = dy
    for (i, (_, l)) in layers.enumerated().reversed() {
      guard let d = g else { break }
      let need = i > 0 || needInputGradient
      g = l is Sequential ? Profiler.shared.within(layers[i].0) { l.backward(d, needInputGradient: need) }
        : Profiler.shared.time("\(layers[i].0) \(l.kind) backward") { l.backward(d, needInputGradient: need) }
      onChildBackward?(i)
    }
    return g
  }
}

extension Sequential {
  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    var h = x, i = 0
    while i < layers.count {
      let (name, l) = layers[i]
      do {
        if !training, let f = fold(at: i) {
          // One output tensor and the convolution's workspace: BN and ReLU add nothing (`fold`
          // matched BN's channels; the conv and pool geometries are checked by `planFolded`).
          h = try f.conv.planFolded(h, maxPool: f.pool, sim)
          i += f.span
          continue
        }
        h = try l.planForward(h, training: training, sim)
      } catch let e as ShapeError {
        throw ShapeError(layer: e.layer.isEmpty || e.layer == l.kind ? name : "\(name).\(e.layer)", e.message)
      }
      i += 1
    }
    return h
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    var g: SimTensor? = dy
    for (i, (_, l)) in layers.enumerated().reversed() {
      guard let d = g else { break }
      g = l.planBackward(d, needInputGradient: i > 0 || needInputGradient, sim)
    }
    return g
  }
}

/// A residual block: out = ReLU(main(x) + shortcut(x)), the shortcut being the identity or a
/// projection (1×1 conv + BatchNorm). Names follow torchvision (`conv1`, `bn1`, …, `downsample.0`).
/// `finalReLU: false` gives MobileNetV2's linear bottleneck: out = main(x) + x.
public final class ResidualBlock: Layer {
  public let main: Sequential
  public let shortcut: Sequential?
  public let finalReLU: Bool
  private var savedOutput: Tensor?

  public init(main: Sequential, shortcut: Sequential?, finalReLU: Bool = true) {
    self.main = main
    self.shortcut = shortcut
    self.finalReLU = finalReLU
  }

  public var kind: String { "ResidualBlock" }

  public var children: [(String, Layer)] {
    main.layers + (shortcut.map { [("downsample", $0 as Layer)] } ?? [])
  }

  /// conv3×3(stride)–BN–ReLU–conv3×3–BN, + identity or projection. Expansion 1.
  public static func basic(inputChannels: Int, channels: Int, stride: Int = 1, epsilon: Float = 1e-5,
                           momentum: Float = 0.9) -> ResidualBlock {
    let main = Sequential([
      ("conv1", Conv2D(inputChannels: inputChannels, outputChannels: channels, kernelSize: 3, stride: stride,
                       padding: .symmetric(1), bias: false)),
      ("bn1", BatchNorm2D(channels: channels, epsilon: epsilon, momentum: momentum)),
      ("relu", ReLU()),
      ("conv2", Conv2D(inputChannels: channels, outputChannels: channels, kernelSize: 3, padding: .symmetric(1),
                       bias: false)),
      ("bn2", BatchNorm2D(channels: channels, epsilon: epsilon, momentum: momentum)),
    ])
    return ResidualBlock(main: main, shortcut: projection(inputChannels, channels, stride, epsilon, momentum))
  }

  /// 1×1 reduce – 3×3(stride) – 1×1 expand (×4), stride in the 3×3 as torchvision (ResNet v1.5).
  public static func bottleneck(inputChannels: Int, channels: Int, stride: Int = 1, epsilon: Float = 1e-5,
                                momentum: Float = 0.9) -> ResidualBlock {
    let out = channels * 4
    let main = Sequential([
      ("conv1", Conv2D(inputChannels: inputChannels, outputChannels: channels, kernelSize: 1, bias: false)),
      ("bn1", BatchNorm2D(channels: channels, epsilon: epsilon, momentum: momentum)),
      ("relu1", ReLU()),
      ("conv2", Conv2D(inputChannels: channels, outputChannels: channels, kernelSize: 3, stride: stride,
                       padding: .symmetric(1), bias: false)),
      ("bn2", BatchNorm2D(channels: channels, epsilon: epsilon, momentum: momentum)),
      ("relu2", ReLU()),
      ("conv3", Conv2D(inputChannels: channels, outputChannels: out, kernelSize: 1, bias: false)),
      ("bn3", BatchNorm2D(channels: out, epsilon: epsilon, momentum: momentum)),
    ])
    return ResidualBlock(main: main, shortcut: projection(inputChannels, out, stride, epsilon, momentum))
  }

  static func projection(_ cin: Int, _ cout: Int, _ stride: Int, _ eps: Float, _ mom: Float) -> Sequential? {
    guard cin != cout || stride != 1 else { return nil }
    return Sequential([
      ("0", Conv2D(inputChannels: cin, outputChannels: cout, kernelSize: 1, stride: stride, bias: false)),
      ("1", BatchNorm2D(channels: cout, epsilon: eps, momentum: mom)),
    ])
  }

  public func outputShape(for input: [Int]) throws -> [Int] {
    let a = try main.outputShape(for: input)
    let b = try shortcut?.outputShape(for: input) ?? input
    guard a == b else {
      throw ShapeError(layer: "ResidualBlock", "main path gives \(a) but the shortcut gives \(b)")
    }
    return a
  }

  public func forward(_ x: Tensor, training: Bool) -> Tensor {
    let a = main.forward(x, training: training)
    let b = shortcut?.forward(x, training: training) ?? x
    let y = Tensor(uninitialized: a.shape)
    ElementwiseKernels.add(a.floats, b.floats, y.floats, count: y.count)
    guard finalReLU else { return y }
    ElementwiseKernels.leakyRelu(y.floats, y.floats, count: y.count)
    if training && BackwardRecording.isOn { savedOutput = ActivationStorage.keep(y) }
    return y
  }

  public func backward(_ dy: Tensor, needInputGradient: Bool) -> Tensor? {
    let d = outputGradient(dy)
    let dMain = main.backward(d, needInputGradient: needInputGradient)
    if let s = shortcut {
      let dShort = s.backward(d, needInputGradient: needInputGradient)
      if let a = dMain, let b = dShort { ElementwiseKernels.axpy(1, b.floats, a.floats, count: a.count) }
      return dMain
    }
    guard needInputGradient, let a = dMain else { return nil }
    ElementwiseKernels.axpy(1, d.floats, a.floats, count: a.count)
    return a
  }

  /// The gradient through the final ReLU; the kept output is let go once it is computed.
  private func outputGradient(_ dy: Tensor) -> Tensor {
    guard finalReLU else { return dy }
    guard let kept = savedOutput else { preconditionFailure("ResidualBlock.backward without a training forward") }
    savedOutput = nil
    let y = ActivationStorage.restore(kept)
    let d = Tensor(uninitialized: y.shape)
    ElementwiseKernels.leakyReluBackward(y: y.floats, dy: dy.floats, dx: d.floats, count: y.count)
    return d
  }

  public func planForward(_ x: SimTensor, training: Bool, _ sim: MemorySimulation) throws -> SimTensor {
    _ = try outputShape(for: x.shape)
    let a = try main.planForward(x, training: training, sim)
    let b = try shortcut?.planForward(x, training: training, sim) ?? x
    let y = sim.allocate(a.shape)
    if training && finalReLU && BackwardRecording.isOn { sim.keep(self, [ActivationStorage.keep(y, sim)]) }
    withExtendedLifetime(b) {}  // held until here, as the real pass holds it
    return y
  }

  public func planBackward(_ dy: SimTensor, needInputGradient: Bool, _ sim: MemorySimulation) -> SimTensor? {
    // The kept output (and its fp32 copy) live until the gradient through the ReLU is made.
    let d: SimTensor
    if finalReLU {
      let kept = sim.take(self)
      let restored = kept.first.flatMap { ActivationStorage.restore($0, sim) }
      d = sim.allocate(dy.shape)
      withExtendedLifetime((kept, restored)) {}
    } else {
      d = dy
    }
    let dMain = main.planBackward(d, needInputGradient: needInputGradient, sim)
    let dShort = shortcut?.planBackward(d, needInputGradient: needInputGradient, sim)
    withExtendedLifetime((d, dShort)) {}  // held until here, as the real pass holds them
    return dMain
  }
}
