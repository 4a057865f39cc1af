import Foundation
import Tessera
import TesseraKernels

/// Why a run folder cannot be used as asked.
public struct RunFolderError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// An exclusive lock on a run folder (`flock` on `<run>/.lock`): held while the process lives, so a
/// second `train` on the same folder is refused, and released by the kernel when the holder dies —
/// a dead holder never blocks a resume.
public final class RunLock {
  let fd: Int32
  public init(_ folder: URL) throws {
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let path = folder.appendingPathComponent(".lock").path
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw RunFolderError("\(path): cannot open the lock file: \(String(cString: strerror(errno)))") }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
      close(fd)
      throw RunFolderError("\(folder.path) is in use by another tessera train\(holder.isEmpty ? "" : " (pid \(holder))"); wait for it or choose another --out")
    }
    ftruncate(fd, 0)
    let pid = "\(getpid())\n"
    _ = pid.withCString { write(fd, $0, strlen($0)) }
  }
  deinit { close(fd) }
}

/// A run's folder: `config.json` (everything needed to reproduce it), `metrics.jsonl` (one JSON line
/// per epoch), `last.safetensors` and `best.safetensors` (checkpoints, atomic) and `state.json`
/// (where the run stands, for people; the checkpoint's own copy is authoritative).
///
/// Order of writes at an epoch's end: the metrics line, then `last`, then `best`, then `state.json`.
/// A kill between any two leaves a folder that resumes to the same result: a metrics line past the
/// checkpoint is recomputed (identically) and replaced, never lost.
public final class RunFolder: TrainingCallback {
  public let url: URL
  public let seed: UInt64
  public var bestAccuracy: Double
  /// Whether accuracies are measured on held-out images (otherwise on the training images).
  public var heldOut = true

  /// Files a run folder holds.
  public static let runFiles = ["config.json", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.json", "classes.json",
                                "plan.json", "report.html"]

  /// Whether `url` already holds a run.
  public static func holdsRun(_ url: URL) -> Bool {
    runFiles.contains { FileManager.default.fileExists(atPath: url.appendingPathComponent($0).path) }
  }

  /// Checks what `train --out` may do with the folder: a new run needs an empty or new folder (or
  /// `overwrite`); a resume needs a checkpoint and a config whose `fixed` keys equal `config`'s.
  /// Returns the previous config (on resume). Nothing is written.
  public static func check(_ url: URL, config: [String: Any], resume: Bool, overwrite: Bool, fixed: [String]) throws -> [String: Any]? {
    let exists = holdsRun(url)
    if !resume {
      if exists && !overwrite {
        throw RunFolderError("\(url.path) already holds a run; --resume to continue it, --overwrite to replace it, or choose another --out")
      }
      return nil
    }
    let last = url.appendingPathComponent("last.safetensors")
    guard FileManager.default.fileExists(atPath: last.path) else {
      throw RunFolderError("\(url.path): nothing to resume (no last.safetensors\(exists ? "; the run never finished an epoch" : "")); \(exists ? "--overwrite starts it again" : "run without --resume to start it")")
    }
    guard let data = try? Data(contentsOf: url.appendingPathComponent("config.json")),
          let old = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    else { throw RunFolderError("\(url.path)/config.json is missing or damaged; cannot check that --resume continues the same run") }
    var changed = [String]()
    for k in fixed {
      let a = old[k].map { "\($0)" } ?? "none", b = config[k].map { "\($0)" } ?? "none"
      if a != b { changed.append("\(k) \(a) → \(b)") }
    }
    guard changed.isEmpty else {
      throw RunFolderError("--resume would change what the checkpoint was trained as: \(changed.joined(separator: "; ")). Resume with the run's settings (see \(url.path)/config.json) or start a new --out")
    }
    return old
  }

  /// Creates or takes over the folder and writes `config.json`. With `overwrite`, the previous run's
  /// files are removed first (only now, when the new run has passed its checks).
  public init(_ url: URL, config: [String: Any], seed: UInt64, bestAccuracy: Double = -1, overwrite: Bool = false) throws {
    self.url = url
    self.seed = seed
    self.bestAccuracy = bestAccuracy
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    if overwrite {
      for f in Self.runFiles { try? FileManager.default.removeItem(at: url.appendingPathComponent(f)) }
    }
    let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
    try AtomicFile.write(data, to: url.appendingPathComponent("config.json"))
  }

  public var last: URL { url.appendingPathComponent("last.safetensors") }
  public var best: URL { url.appendingPathComponent("best.safetensors") }
  var metrics: URL { url.appendingPathComponent("metrics.jsonl") }

  /// Per-step lines (`"kind": "step"`) every this many updates; 0: none.
  public var logEvery = 0
  /// Confusion matrices go into the epoch lines for up to this many classes.
  public static let confusionClasses = 100
  private weak var trainer: Trainer?

  /// Keeps the metrics lines of epochs up to `epoch` (1-based) and the step lines up to `step`
  /// (those of the next epoch included), in order, and appends `line`; later lines (from a run
  /// killed after writing them) are dropped. One atomic write.
  public func keepMetrics(through epoch: Int, steps step: Int = .max, appending line: String? = nil) throws {
    let previous = (try? String(contentsOf: metrics, encoding: .utf8)) ?? ""
    let kept = previous.split(separator: "\n").filter { l in
      guard let d = l.data(using: .utf8), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
            let e = o["epoch"] as? Int else { return false }
      if o["kind"] as? String == "step" { return e <= epoch + 1 && (o["step"] as? Int ?? .max) <= step }
      return e <= epoch
    }.map(String.init) + (line.map { [$0] } ?? [])
    try AtomicFile.write(Data(kept.map { $0 + "\n" }.joined().utf8), to: metrics)
  }

  static func jsonLine(_ line: [String: Any]) throws -> String {
    var line = line
    // JSON has no NaN: a value that is not finite is written as null.
    for (k, v) in line { if let d = v as? Double, !d.isFinite { line[k] = NSNull() } }
    return String(decoding: try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]), as: UTF8.self)
  }

  public func onTrainBegin(_ trainer: Trainer) {
    self.trainer = trainer
  }

  /// With `logEvery`: after every N-th update, one step line appended (a single write of one short
  /// line; a reader skips a line a kill cut short, and the epoch's end rewrites the file whole).
  public func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {
    guard logEvery > 0, let t = trainer, t.step > lastLoggedStep, t.step % logEvery == 0 else { return }
    lastLoggedStep = t.step
    let line: [String: Any] = [
      "kind": "step", "epoch": epoch + 1, "step": t.step, "batch": batch, "batches": batches, "loss": Double(t.lastBatchLoss),
      "running_loss": running.loss, "running_accuracy": running.accuracy, "lr": Double(t.lastLearningRate),
      "images_per_second": imagesPerSecond,
    ]
    if !FileManager.default.fileExists(atPath: metrics.path) { FileManager.default.createFile(atPath: metrics.path, contents: nil) }
    guard let text = try? Self.jsonLine(line), let h = FileHandle(forWritingAtPath: metrics.path) else { return }
    defer { try? h.close() }
    _ = try? h.seekToEnd()
    try? h.write(contentsOf: Data((text + "\n").utf8))
  }
  private var lastLoggedStep = 0

  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {
    let acc = log.validation?.accuracy ?? log.train.accuracy
    let improved = acc > bestAccuracy
    if improved { bestAccuracy = acc }
    let state = TrainingState(epoch: log.epoch, step: trainer.step, bestAccuracy: bestAccuracy, seed: seed)
    var line: [String: Any] = [
      "epoch": log.epoch, "loss": log.train.loss, "accuracy": log.train.accuracy, "seconds": log.seconds,
      "images_per_second": log.imagesPerSecond, "lr": Double(log.learningRate), "step": trainer.step,
      "skipped_files": log.skippedFiles, "peak_bytes": log.peakBytes, "skipped_steps": log.skippedSteps,
    ]
    if log.train.classes <= Self.confusionClasses { line["confusion"] = log.train.confusion }
    if let v = log.validation {
      line["val_loss"] = v.loss
      line["val_accuracy"] = v.accuracy
      line["val_top\(v.topK)_accuracy"] = v.topKAccuracy
      if v.classes <= Self.confusionClasses { line["val_confusion"] = v.confusion }
    }
    let text = try Self.jsonLine(line)
    // Rewritten whole (atomically) so a kill never leaves half a line; lines of this epoch or later
    // (from a run killed after writing them) are replaced; this epoch's step lines stay.
    try keepMetrics(through: log.epoch - 1, steps: trainer.step, appending: text)
    try Checkpoint.save(trainer.model, optimizer: trainer.optimizer, state: state, to: last)
    if improved { try Checkpoint.save(trainer.model, optimizer: nil, state: state, to: best) }
    try AtomicFile.write(try JSONEncoder().encode(state), to: url.appendingPathComponent("state.json"))
  }

  /// Ctrl-C or SIGTERM: `last` gets the weights after the last complete update and the position in
  /// the epoch, so `--resume` continues with the next batch.
  public func onInterrupt(epoch: Int, batchesDone: Int, metrics m: ClassificationMetrics, skippedFiles: Int, trainer: Trainer) throws {
    var state = TrainingState(epoch: epoch, step: trainer.step, bestAccuracy: bestAccuracy, seed: seed)
    state.batchesDone = batchesDone
    state.partialMetrics = m
    state.partialSkippedFiles = skippedFiles
    try keepMetrics(through: epoch, steps: trainer.step)
    try Checkpoint.save(trainer.model, optimizer: trainer.optimizer, state: state, to: last)
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
