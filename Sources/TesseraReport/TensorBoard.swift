import Foundation
import TesseraTraining

/// TensorBoard scalar event files, written without TensorFlow: TFRecord framing (length, masked
/// CRC-32C of the length, the bytes, masked CRC-32C of the bytes) around protobuf `Event`s, each a
/// `Summary` of `simple_value` scalars — what `tensorboard --logdir` and its `EventAccumulator` read.
///
/// Field numbers (tensorflow/core/util/event.proto, summary.proto): Event.wall_time = 1 (double),
/// step = 2 (int64), file_version = 3 (string), summary = 5; Summary.value = 1;
/// Summary.Value.tag = 1 (string), simple_value = 2 (float).
public final class TensorBoardWriter {
  public let url: URL
  private let handle: FileHandle

  /// Creates `events.out.tfevents.<seconds>.<host>.tessera` in `directory` (made if missing) and
  /// writes the file-version event.
  public init(directory: URL, now: Date = Date()) throws {
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let host = ProcessInfo.processInfo.hostName.replacingOccurrences(of: "/", with: "_")
    url = directory.appendingPathComponent("events.out.tfevents.\(Int(now.timeIntervalSince1970)).\(host).tessera")
    guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
      throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: url.path])
    }
    handle = try FileHandle(forWritingTo: url)
    var event = Protobuf()
    event.double(1, now.timeIntervalSince1970)
    event.string(3, "brain.Event:2")
    try write(record: event.bytes)
  }

  deinit { try? handle.close() }

  /// One event at `step` holding `scalars` (tag → value), e.g. ["loss/train": 0.4].
  public func add(step: Int, scalars: [(String, Double)], wallTime: Date = Date()) throws {
    var summary = Protobuf()
    for (tag, value) in scalars {
      var v = Protobuf()
      v.string(1, tag)
      v.float(2, Float(value))
      summary.message(1, v)
    }
    var event = Protobuf()
    event.double(1, wallTime.timeIntervalSince1970)
    event.varint(2, UInt64(bitPattern: Int64(step)))
    event.message(5, summary)
    try write(record: event.bytes)
  }

  /// One TFRecord: its bytes reach the file in one write, so a reader never sees half a record
  /// unless the process dies inside the write.
  func write(record data: [UInt8]) throws {
    var out = [UInt8]()
    var length = UInt64(data.count).littleEndian
    let lengthBytes = withUnsafeBytes(of: &length) { Array($0) }
    out += lengthBytes
    out += le32(CRC32C.masked(lengthBytes))
    out += data
    out += le32(CRC32C.masked(data))
    try handle.write(contentsOf: Data(out))
  }

  private func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)] }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
public enum CRC32C {
  static let table: [UInt32] = (0..<256).map { i -> UInt32 in
    var c = UInt32(i)
    for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    return c
  }

  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
    return c ^ 0xFFFF_FFFF
  }

  /// TFRecord's masking: rotate right by 15, add 0xa282ead8.
  public static func masked(_ bytes: [UInt8]) -> UInt32 {
    let c = checksum(bytes)
    return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
  }
}

/// The few protobuf wire types an Event needs.
struct Protobuf {
  var bytes = [UInt8]()

  mutating func key(_ field: Int, _ wire: UInt64) { append(varint: UInt64(field) << 3 | wire) }
  mutating func append(varint v: UInt64) {
    var v = v
    while v >= 0x80 {
      bytes.append(UInt8(v & 0x7F) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }
  mutating func varint(_ field: Int, _ v: UInt64) {
    key(field, 0)
    append(varint: v)
  }
  mutating func double(_ field: Int, _ v: Double) {
    key(field, 1)
    withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 }
  }
  mutating func float(_ field: Int, _ v: Float) {
    key(field, 5)
    withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 }
  }
  mutating func string(_ field: Int, _ s: String) {
    key(field, 2)
    let u = Array(s.utf8)
    append(varint: UInt64(u.count))
    bytes += u
  }
  mutating func message(_ field: Int, _ m: Protobuf) {
    key(field, 2)
    append(varint: UInt64(m.bytes.count))
    bytes += m.bytes
  }
}

/// `train --tensorboard DIR`: the epoch lines of metrics.jsonl as TensorBoard scalars (at the
/// optimizer step the epoch ended on), and with --log-every the step lines' loss and learning rate.
public final class TensorBoardLogger: TrainingCallback {
  let writer: TensorBoardWriter
  public let logEvery: Int
  private weak var trainer: Trainer?
  private var lastStep = 0
  public var onError: (Error) -> Void = { _ in }

  public init(directory: URL, logEvery: Int = 0) throws {
    writer = try TensorBoardWriter(directory: directory)
    self.logEvery = logEvery
  }

  public var file: URL { writer.url }

  public func onTrainBegin(_ trainer: Trainer) { self.trainer = trainer }

  public func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {
    guard logEvery > 0, let t = trainer, t.step > lastStep, t.step % logEvery == 0 else { return }
    lastStep = t.step
    do {
      try writer.add(step: t.step, scalars: [("step/loss", Double(t.lastBatchLoss)), ("step/lr", Double(t.lastLearningRate))])
    } catch { onError(error) }
  }

  public func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws {
    var s: [(String, Double)] = [("epoch/loss", log.train.loss), ("epoch/accuracy", log.train.accuracy),
                                 ("epoch/lr", Double(log.learningRate)), ("epoch/images_per_second", log.imagesPerSecond),
                                 ("epoch/peak_bytes", Double(log.peakBytes)), ("epoch/epoch", Double(log.epoch))]
    if let v = log.validation { s += [("epoch/val_loss", v.loss), ("epoch/val_accuracy", v.accuracy)] }
    try writer.add(step: trainer.step, scalars: s)
  }
}
