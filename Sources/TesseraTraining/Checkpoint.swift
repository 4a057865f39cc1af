import Foundation
import Tessera

/// Where a run stands: saved inside each checkpoint, so weights, optimizer state and position are
/// written together by one atomic rename and can never disagree.
public struct TrainingState: Codable, Equatable, Sendable {
  /// Epochs completed (1-based count).
  public var epoch: Int
  /// Optimizer updates done.
  public var step: Int
  public var bestAccuracy: Double
  public var seed: UInt64
  /// Set when the run stopped inside epoch `epoch + 1` (Ctrl-C, SIGTERM): the batches of that epoch
  /// already trained and their running metrics, so a resume continues from the next batch.
  public var batchesDone: Int? = nil
  public var partialMetrics: ClassificationMetrics? = nil
  public var partialSkippedFiles: Int? = nil
}

/// One file per checkpoint (safetensors): every model tensor under its documented name (readable as
/// weights by PyTorch/numpy users), the optimizer's state under `optimizer.<name>`, and the
/// `TrainingState` as JSON in the metadata. Written atomically (temporary file, fsync, rename), so
/// a kill at any moment leaves the previous complete checkpoint.
public enum Checkpoint {
  public static func save(_ model: Layer, optimizer: Optimizer?, state: TrainingState, to url: URL) throws {
    var tensors = model.stateTensors()
    if let opt = optimizer {
      for key in opt.state.keys.sorted() { tensors.append(("optimizer." + key, opt.state[key]!)) }
    }
    let json = String(decoding: try JSONEncoder().encode(state), as: UTF8.self)
    try SafeTensors.write(tensors, metadata: ["format": "tessera-checkpoint", "state": json,
                                              "optimizer_steps": String(optimizer?.steps ?? 0)], to: url)
  }

  /// Loads weights (and optimizer state, when given) and returns the saved state. Nothing changes
  /// when a tensor is missing or mis-shaped.
  @discardableResult
  public static func load(_ url: URL, into model: Layer, optimizer: Optimizer? = nil) throws -> TrainingState? {
    let f = try SafeTensors.read(url, category: .parameter)
    try model.load(f.tensors, path: url.path)
    if let opt = optimizer {
      var st = [String: Tensor]()
      for (k, t) in f.tensors where k.hasPrefix("optimizer.") {
        st[String(k.dropFirst("optimizer.".count))] = t.dtype == .float32 ? t : t.converted(to: .float32, category: .optimizerState)
      }
      opt.state = st
      opt.steps = Int(f.metadata["optimizer_steps"] ?? "") ?? 0
    }
    guard let s = f.metadata["state"] else { return nil }
    return try? JSONDecoder().decode(TrainingState.self, from: Data(s.utf8))
  }
}
