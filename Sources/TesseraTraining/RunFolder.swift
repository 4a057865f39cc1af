import Foundation
import Tessera
import TesseraKernels

/// A run's folder: `config.json` (everything needed to reproduce it), `metrics.jsonl` (one JSON line
/// per epoch), `last.safetensors` and `best.safetensors` (checkpoints, atomic) and `state.json`
/// (where the run stands, for people; the checkpoint's own copy is authoritative).
public final class RunFolder: TrainingCallback {
  public let url: URL
  public let seed: UInt64
  public var bestAccuracy: Double

  public init(_ url: URL, config: [String: Any], seed: UInt64, bestAccuracy: Double = -1) throws {
    self.url = url
    self.seed = seed
    self.bestAccuracy = bestAccuracy
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
    try AtomicFile.write(data, to: url.appendingPathComponent("config.json"))
  }

  public var last: URL { url.appendingPathComponent("last.safetensors") }
  public var best: URL { url.appendingPathComponent("best.safetensors") }

  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {
    let acc = log.validation?.accuracy ?? log.train.accuracy
    let improved = acc > bestAccuracy
    if improved { bestAccuracy = acc }
    let state = TrainingState(epoch: log.epoch, step: trainer.step, bestAccuracy: bestAccuracy, seed: seed)
    try Checkpoint.save(trainer.model, optimizer: trainer.optimizer, state: state, to: last)
    if improved { try Checkpoint.save(trainer.model, optimizer: nil, state: state, to: best) }
    var line: [String: Any] = [
      "epoch": log.epoch, "loss": log.train.loss, "accuracy": log.train.accuracy, "seconds": log.seconds,
      "images_per_second": log.imagesPerSecond, "lr": Double(log.learningRate), "step": trainer.step,
      "skipped_files": log.skippedFiles, "peak_bytes": log.peakBytes, "skipped_steps": log.skippedSteps,
    ]
    if let v = log.validation {
      line["val_loss"] = v.loss
      line["val_accuracy"] = v.accuracy
      line["val_top\(v.topK)_accuracy"] = v.topKAccuracy
    }
    let text = String(decoding: try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]), as: UTF8.self)
    let metrics = url.appendingPathComponent("metrics.jsonl")
    // Rewritten whole (atomically) so a kill never leaves half a line; lines past this epoch (from a
    // run that was killed after its checkpoint) are dropped.
    let previous = (try? String(contentsOf: metrics, encoding: .utf8)) ?? ""
    let kept = previous.split(separator: "\n").filter { l in
      guard let d = l.data(using: .utf8), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
            let e = o["epoch"] as? Int else { return false }
      return e < log.epoch
    }
    try AtomicFile.write(Data((kept.map(String.init) + [text]).joined(separator: "\n").utf8 + [10]), to: metrics)
    try AtomicFile.write(try JSONEncoder().encode(state), to: url.appendingPathComponent("state.json"))
  }
}

/// Progress on stderr: a bar redrawn in place on a terminal; one line per epoch otherwise.
public final class ProgressPrinter: TrainingCallback {
  let epochs: Int
  let interactive = isatty(2) != 0
  var start = DispatchTime.now().uptimeNanoseconds
  public init(epochs: Int) { self.epochs = epochs }

  func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

  public func onEpochBegin(_ epoch: Int, batches: Int) { start = DispatchTime.now().uptimeNanoseconds }

  public func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {
    guard interactive else { return }
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let eta = batch > 0 ? elapsed / Double(batch) * Double(batches - batch) : 0
    let width = 24, filled = batches > 0 ? width * batch / batches : 0
    let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
    write(String(format: "\r\u{1B}[2Kepoch %d/%d [%@] %d/%d  loss %.4f  acc %.3f  %.1f img/s  ETA %.0f s  mem %@ (peak %@)",
                 epoch + 1, epochs, bar, batch, batches, running.loss, running.accuracy, imagesPerSecond, eta,
                 mib(MemoryLedger.shared.currentBytes), mib(MemoryLedger.shared.peakBytes)))
  }

  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {
    var s = String(format: "epoch %d/%d  loss %.4f  acc %.3f", log.epoch, epochs, log.train.loss, log.train.accuracy)
    if let v = log.validation { s += String(format: "  val_loss %.4f  val_acc %.3f", v.loss, v.accuracy) }
    s += String(format: "  %.1f s  %.1f img/s  peak %@", log.seconds, log.imagesPerSecond, mib(log.peakBytes))
    if log.skippedFiles > 0 { s += "  (\(log.skippedFiles) files skipped)" }
    if log.skippedSteps > 0 { s += "  (\(log.skippedSteps) updates skipped: non-finite gradients)" }
    write((interactive ? "\r\u{1B}[2K" : "") + s + "\n")
  }

  func mib(_ b: Int) -> String { String(format: "%.0f MiB", Double(b) / 1_048_576) }
}
