import TesseraKernels

/// A dry run of a training step's allocations. Each layer's `planForward`/`planBackward` mirrors,
/// allocation for allocation, what its `forward`/`backward` does with real tensors — outputs,
/// workspaces, what it keeps and when it lets go — against this counter instead of the memory
/// ledger. Simulated tensors are reference-counted like real ones, so shared storage is counted
/// once. Tests prove the simulated peak equals the ledger's measured peak.
public final class MemorySimulation {
  public private(set) var currentBytes = 0
  public private(set) var peakBytes = 0
  /// Worker threads the kernels will use (workspace sizes depend on it).
  public let threads: Int
  /// What each layer keeps between its planned forward and backward.
  var kept: [ObjectIdentifier: [SimTensor]] = [:]
  /// Geometry each layer recorded in its planned forward, for its planned backward.
  public var notes: [ObjectIdentifier: Any] = [:]

  public init(threads: Int = Parallel.threadCount) { self.threads = threads }

  /// A simulated tensor of `shape` (`bytesPerElement` each) that lives while referenced.
  public func allocate(_ shape: [Int], bytesPerElement: Int = 4) -> SimTensor {
    SimTensor(shape: shape, storage: SimStorage(bytes: shape.reduce(1, *) * bytesPerElement, sim: self))
  }

  /// Workspace allocated and released inside one call: raises the peak, not the current count.
  public func transient(_ bytes: Int) {
    peakBytes = max(peakBytes, currentBytes + bytes)
  }

  func add(_ bytes: Int) {
    currentBytes += bytes
    peakBytes = max(peakBytes, currentBytes)
  }

  func release(_ bytes: Int) { currentBytes -= bytes }

  /// Bytes a layer keeps for its backward right now.
  public func keptBytes(of layer: Layer) -> Int {
    (kept[ObjectIdentifier(layer)] ?? []).reduce(0) { $0 + $1.storage.bytes }
  }

  /// The twin of a layer that allocates its output and, for backward, remembers only the input shape
  /// (global and adaptive average pooling): dx is allocated in backward.
  func planShapeOnlyForward(_ layer: Layer, _ x: SimTensor, training: Bool) throws -> SimTensor {
    let y = allocate(try layer.outputShape(for: x.shape))
    if training && BackwardRecording.isOn { notes[ObjectIdentifier(layer)] = x.shape }
    return y
  }

  func planShapeOnlyBackward(_ layer: Layer, needInputGradient: Bool) -> SimTensor? {
    guard let s = notes.removeValue(forKey: ObjectIdentifier(layer)) as? [Int], needInputGradient else { return nil }
    return allocate(s)
  }

  func keep(_ layer: Layer, _ tensors: [SimTensor]) { kept[ObjectIdentifier(layer)] = tensors }
  func take(_ layer: Layer) -> [SimTensor] { kept.removeValue(forKey: ObjectIdentifier(layer)) ?? [] }
}

public final class SimStorage {
  public let bytes: Int
  unowned let sim: MemorySimulation
  init(bytes: Int, sim: MemorySimulation) {
    self.bytes = bytes
    self.sim = sim
    sim.add(bytes)
  }
  deinit { sim.release(bytes) }
}

/// A tensor of the dry run: a shape and reference-counted simulated storage.
public struct SimTensor {
  public let shape: [Int]
  let storage: SimStorage
  public var bytes: Int { storage.bytes }
  public func reshaped(_ s: [Int]) -> SimTensor { SimTensor(shape: s, storage: storage) }
}
