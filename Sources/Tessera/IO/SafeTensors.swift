import Foundation
import TesseraKernels

/// Why a safetensors file could not be read or applied. Every case names the file.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable {
  case unreadable(path: String, reason: String)
  case truncatedHeader(path: String, size: Int)
  case headerTooLarge(path: String, claimed: UInt64, limit: Int)
  case headerBeyondFile(path: String, claimed: UInt64, fileSize: Int)
  case badHeader(path: String, reason: String)
  case badEntry(path: String, tensor: String, reason: String)
  case truncatedBody(path: String, tensor: String, needed: Int, available: Int)
  case missingTensor(path: String, tensor: String)
  case shapeMismatch(path: String, tensor: String, expected: [Int], found: [Int])
  case unsupportedDType(path: String, tensor: String, dtype: String)
  case writeFailed(path: String, reason: String)

  public var description: String {
    switch self {
    case let .unreadable(p, r): "\(p): cannot read the file: \(r)"
    case let .truncatedHeader(p, s): "\(p): not a safetensors file: \(s) bytes, fewer than the 8-byte header length"
    case let .headerTooLarge(p, c, l):
      "\(p): the header claims \(c) bytes, more than the \(l)-byte limit; the file is damaged or not safetensors"
    case let .headerBeyondFile(p, c, s): "\(p): the header claims \(c) bytes but the file has only \(s)"
    case let .badHeader(p, r): "\(p): invalid safetensors header: \(r)"
    case let .badEntry(p, t, r): "\(p): tensor '\(t)': \(r)"
    case let .truncatedBody(p, t, n, a):
      "\(p): tensor '\(t)' needs bytes up to \(n) but the data section has \(a); the file is truncated"
    case let .missingTensor(p, t): "\(p): no tensor named '\(t)'"
    case let .shapeMismatch(p, t, e, f): "\(p): tensor '\(t)' has shape \(f), the model expects \(e)"
    case let .unsupportedDType(p, t, d): "\(p): tensor '\(t)' has dtype \(d); supported: F32, F16, BF16, I64, I32"
    case let .writeFailed(p, r): "\(p): cannot write: \(r)"
    }
  }
}

/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
/// header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
/// {…}}`, then the raw little-endian tensor bytes, offsets relative to the end of the header.
public enum SafeTensors {
  /// Largest header accepted (100 MB, as the reference implementation).
  public static let maxHeaderBytes = 100_000_000

  public struct File {
    public var tensors: [String: Tensor]
    public var metadata: [String: String]
    /// Names in the order of their data offsets.
    public var names: [String]
  }

  /// Writes `tensors` atomically: a temporary file beside `url`, fsync, then rename.
  public static func write(_ tensors: [(String, Tensor)], metadata: [String: String] = [:], to url: URL) throws {
    var header = [String: Any]()
    var offset = 0
    for (name, t) in tensors {
      guard header[name] == nil, name != "__metadata__" else {
        throw SafeTensorsError.writeFailed(path: url.path, reason: "duplicate or reserved tensor name '\(name)'")
      }
      header[name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.byteCount]]
      offset += t.byteCount
    }
    if !metadata.isEmpty { header["__metadata__"] = metadata }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while (8 + json.count) % 8 != 0 { json.append(0x20) }
    var out = Data(capacity: 8 + json.count + offset)
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(json)
    for (_, t) in tensors { out.append(contentsOf: UnsafeRawBufferPointer(start: t.storage.raw, count: t.byteCount)) }
    try AtomicFile.write(out, to: url)
  }

  /// Reads and validates a whole file: header size bounded, every entry's dtype, shape and offsets
  /// checked against each other and the file's size before any tensor is allocated.
  public static func read(_ url: URL, category: MemoryCategory = .data) throws -> File {
    let path = url.path
    let handle: FileHandle
    do { handle = try FileHandle(forReadingFrom: url) } catch {
      throw SafeTensorsError.unreadable(path: path, reason: (error as NSError).localizedDescription)
    }
    defer { try? handle.close() }
    let fileSize: Int
    do { fileSize = Int(try handle.seekToEnd()); try handle.seek(toOffset: 0) } catch {
      throw SafeTensorsError.unreadable(path: path, reason: "\(error)")
    }
    guard fileSize >= 8, let lenData = try? handle.read(upToCount: 8), lenData.count == 8 else {
      throw SafeTensorsError.truncatedHeader(path: path, size: fileSize)
    }
    let n = lenData.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
    guard n <= UInt64(maxHeaderBytes) else {
      throw SafeTensorsError.headerTooLarge(path: path, claimed: n, limit: maxHeaderBytes)
    }
    guard Int(n) <= fileSize - 8 else { throw SafeTensorsError.headerBeyondFile(path: path, claimed: n, fileSize: fileSize) }
    guard let headerData = try? handle.read(upToCount: Int(n)), headerData.count == Int(n) else {
      throw SafeTensorsError.headerBeyondFile(path: path, claimed: n, fileSize: fileSize)
    }
    let bodySize = fileSize - 8 - Int(n)
    let entries = try parseHeader(headerData, path: path, bodySize: bodySize)
    var tensors = [String: Tensor]()
    for e in entries.list {
      let t = Tensor(zeros: e.shape, dtype: e.dtype, category: category)
      if t.byteCount > 0 {
        try handle.seek(toOffset: UInt64(8 + Int(n) + e.begin))
        guard let d = try handle.read(upToCount: t.byteCount), d.count == t.byteCount else {
          throw SafeTensorsError.truncatedBody(path: path, tensor: e.name, needed: e.end, available: bodySize)
        }
        d.withUnsafeBytes { t.storage.raw.copyMemory(from: $0.baseAddress!, byteCount: t.byteCount) }
      }
      tensors[e.name] = t
    }
    return File(tensors: tensors, metadata: entries.metadata, names: entries.list.map(\.name))
  }

  struct Entry {
    var name: String, dtype: DType, shape: [Int], begin: Int, end: Int
  }

  /// One header value: a tensor entry, or the string map under `__metadata__`.
  enum HeaderValue: Decodable {
    case entry(dtype: String, shape: [Int], offsets: [Int])
    case metadata([String: String])
    case invalid(String)

    enum Keys: String, CodingKey { case dtype, shape, data_offsets }

    init(from decoder: Decoder) throws {
      if let m = try? decoder.singleValueContainer().decode([String: String].self) {
        self = .metadata(m)
        return
      }
      do {
        let c = try decoder.container(keyedBy: Keys.self)
        self = .entry(dtype: try c.decode(String.self, forKey: .dtype), shape: try c.decode([Int].self, forKey: .shape),
                      offsets: try c.decode([Int].self, forKey: .data_offsets))
      } catch {
        self = .invalid("needs 'dtype' (a string), 'shape' and 'data_offsets' (lists of integers)")
      }
    }
  }

  static func parseHeader(_ data: Data, path: String, bodySize: Int) throws -> (list: [Entry], metadata: [String: String]) {
    let dict: [String: HeaderValue]
    // As the reference reader: a name given twice is an error, not "the last one wins".
    if let dup = duplicateTopLevelKey(data) {
      throw SafeTensorsError.badHeader(path: path, reason: "the name '\(dup)' appears twice")
    }
    do { dict = try JSONDecoder().decode([String: HeaderValue].self, from: data) } catch {
      throw SafeTensorsError.badHeader(path: path, reason: "not a JSON object of tensor entries")
    }
    var metadata = [String: String]()
    var list = [Entry]()
    for (name, value) in dict {
      let ds: String, shape: [Int], offs: [Int]
      switch value {
      case .metadata(let m):
        guard name == "__metadata__" else {
          throw SafeTensorsError.badEntry(path: path, tensor: name, reason: "is a string map, not a tensor entry")
        }
        metadata = m
        continue
      case .invalid(let why):
        if name == "__metadata__" { throw SafeTensorsError.badHeader(path: path, reason: "__metadata__ must map strings to strings") }
        throw SafeTensorsError.badEntry(path: path, tensor: name, reason: why)
      case let .entry(d, s, o):
        (ds, shape, offs) = (d, s, o)
      }
      guard let dtype = DType(rawValue: ds) else { throw SafeTensorsError.unsupportedDType(path: path, tensor: name, dtype: ds) }
      guard offs.count == 2 else {
        throw SafeTensorsError.badEntry(path: path, tensor: name, reason: "data_offsets must hold two integers, got \(offs)")
      }
      var count = 1
      for v in shape {
        guard v >= 0 else { throw SafeTensorsError.badEntry(path: path, tensor: name, reason: "shape \(shape) has a negative size") }
        let (m, o) = count.multipliedReportingOverflow(by: v)
        guard !o, m <= (1 << 40) else {
          throw SafeTensorsError.badEntry(path: path, tensor: name, reason: "shape \(shape) is absurdly large")
        }
        count = m
      }
      let begin = offs[0], end = offs[1]
      guard begin >= 0, end >= begin else {
        throw SafeTensorsError.badEntry(path: path, tensor: name, reason: "data_offsets \(offs) are not 0 ≤ begin ≤ end")
      }
      guard end - begin == count * dtype.byteSize else {
        throw SafeTensorsError.badEntry(
          path: path, tensor: name,
          reason: "data_offsets span \(end - begin) bytes but shape \(shape) of \(ds) needs \(count * dtype.byteSize)")
      }
      guard end <= bodySize else {
        throw SafeTensorsError.truncatedBody(path: path, tensor: name, needed: end, available: bodySize)
      }
      list.append(Entry(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
    }
    list.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
    for i in list.indices.dropFirst() where list[i].begin < list[i - 1].end {
      throw SafeTensorsError.badEntry(path: path, tensor: list[i].name, reason: "overlaps tensor '\(list[i - 1].name)'")
    }
    // The tensors must cover the data section exactly: no gap, nothing after the last one.
    var covered = 0
    for e in list {
      guard e.begin == covered else {
        throw SafeTensorsError.badHeader(path: path, reason: "bytes \(covered)..<\(e.begin) of the data section belong to no tensor (before '\(e.name)')")
      }
      covered = e.end
    }
    guard covered == bodySize else {
      throw SafeTensorsError.badHeader(path: path, reason: "\(bodySize - covered) bytes after the last tensor belong to no tensor; the file is damaged or not safetensors")
    }
    return (list, metadata)
  }

  /// The first key of the top-level JSON object that appears twice, or nil (a small scanner: strings
  /// with escapes, nesting; the JSON decoder validates the rest).
  static func duplicateTopLevelKey(_ data: Data) -> String? {
    let b = [UInt8](data)
    var i = 0, depth = 0, seen = Set<[UInt8]>()
    var expectKey = false
    while i < b.count {
      let c = b[i]
      if c == UInt8(ascii: "\"") {
        var j = i + 1
        var key = [UInt8]()
        while j < b.count && b[j] != UInt8(ascii: "\"") {
          if b[j] == UInt8(ascii: "\\") { key.append(b[j]); j += 1 }
          if j < b.count { key.append(b[j]) }
          j += 1
        }
        if depth == 1 && expectKey {
          if !seen.insert(key).inserted { return String(decoding: key, as: UTF8.self) }
          expectKey = false
        }
        i = j + 1
        continue
      }
      switch c {
      case UInt8(ascii: "{"), UInt8(ascii: "["):
        depth += 1
        if depth == 1 { expectKey = true }
      case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
      case UInt8(ascii: ","): if depth == 1 { expectKey = true }
      default: break
      }
      i += 1
    }
    return nil
  }
}

/// Whole-file writes that leave either the old file or the complete new one, never half of it.
public enum AtomicFile {
  public static func write(_ data: Data, to url: URL) throws {
    let dir = url.deletingLastPathComponent()
    let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    let path = url.path
    do {
      try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
      guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
        throw SafeTensorsError.writeFailed(path: path, reason: "cannot create \(tmp.path)")
      }
      let h = try FileHandle(forWritingTo: tmp)
      do {
        try h.write(contentsOf: data)
        try h.synchronize()
        try h.close()
      } catch {
        try? h.close()
        throw error
      }
      if rename(tmp.path, path) != 0 {
        throw SafeTensorsError.writeFailed(path: path, reason: String(cString: strerror(errno)))
      }
    } catch let e as SafeTensorsError {
      try? FileManager.default.removeItem(at: tmp)
      throw e
    } catch {
      try? FileManager.default.removeItem(at: tmp)
      throw SafeTensorsError.writeFailed(path: path, reason: (error as NSError).localizedDescription)
    }
  }
}

extension Layer {
  /// Every parameter and running statistic as F32, under the model's dotted names.
  public func stateTensors() -> [(String, Tensor)] { namedParameters().map { ($0.0, $0.1.value) } }

  /// Saves the parameters and running statistics (atomically).
  public func save(to url: URL, metadata: [String: String] = [:]) throws {
    try SafeTensors.write(stateTensors(), metadata: metadata, to: url)
  }

  /// Loads every parameter and running statistic by name from a file (F32, F16 or BF16),
  /// checking that all are present with the right shapes before changing anything.
  public func load(from url: URL) throws {
    let file = try SafeTensors.read(url)
    try load(file.tensors, path: url.path)
  }

  public func load(_ tensors: [String: Tensor], path: String) throws {
    let params = namedParameters()
    for (name, p) in params {
      guard let t = tensors[name] else { throw SafeTensorsError.missingTensor(path: path, tensor: name) }
      guard t.shape == p.shape else {
        throw SafeTensorsError.shapeMismatch(path: path, tensor: name, expected: p.shape, found: t.shape)
      }
      guard [.float32, .float16, .bfloat16].contains(t.dtype) else {
        throw SafeTensorsError.unsupportedDType(path: path, tensor: name, dtype: t.dtype.rawValue)
      }
    }
    for (name, p) in params {
      let v = tensors[name]!.toArray()
      v.withUnsafeBufferPointer { p.value.floats.update(from: $0.baseAddress!, count: v.count) }
    }
  }
}
