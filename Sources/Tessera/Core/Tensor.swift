import TesseraKernels

/// Element types a tensor can be stored in. Raw values are safetensors' dtype names.
public enum DType: String, Sendable, Codable, CaseIterable {
  case float32 = "F32", float16 = "F16", bfloat16 = "BF16", int64 = "I64", int32 = "I32"

  public var byteSize: Int {
    switch self {
    case .float32, .int32: 4
    case .float16, .bfloat16: 2
    case .int64: 8
    }
  }
}

/// A dense, contiguous, row-major tensor: images are (N, C, H, W). Storage is a ledger-counted
/// `Buffer` shared by reference: `reshaped` views share it, `copy()` does not.
public struct Tensor: @unchecked Sendable {
  public let shape: [Int]
  public let dtype: DType
  public let storage: Buffer

  /// A zero-filled tensor.
  public init(zeros shape: [Int], dtype: DType = .float32, category: MemoryCategory = .activation) {
    precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
    self.shape = shape
    self.dtype = dtype
    storage = Buffer(byteCount: shape.reduce(1, *) * dtype.byteSize, category: category)
  }

  /// A tensor whose contents the caller overwrites completely (no zero fill).
  public init(uninitialized shape: [Int], dtype: DType = .float32, category: MemoryCategory = .activation) {
    self.shape = shape
    self.dtype = dtype
    storage = Buffer(byteCount: shape.reduce(1, *) * dtype.byteSize, category: category, zeroed: false)
  }

  public init(shape: [Int], values: [Float], category: MemoryCategory = .activation) {
    precondition(shape.reduce(1, *) == values.count, "\(values.count) values do not fill shape \(shape)")
    self.init(uninitialized: shape, category: category)
    values.withUnsafeBufferPointer { storage.floats.update(from: $0.baseAddress!, count: values.count) }
  }

  init(shape: [Int], dtype: DType, storage: Buffer) {
    self.shape = shape
    self.dtype = dtype
    self.storage = storage
  }

  public var count: Int { shape.reduce(1, *) }
  public var byteCount: Int { count * dtype.byteSize }
  public var rank: Int { shape.count }

  /// Float32 contents. Traps on other dtypes (a programming error, not an input error).
  public var floats: UnsafeMutablePointer<Float> {
    precondition(dtype == .float32, "tensor is \(dtype.rawValue), not F32")
    return storage.floats
  }

  /// The same storage seen with another shape of the same element count.
  public func reshaped(_ newShape: [Int]) -> Tensor {
    precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
    return Tensor(shape: newShape, dtype: dtype, storage: storage)
  }

  /// A copy of images `range` of an (N, …) F32 tensor (a rank's share of a batch).
  public func slice(images range: Range<Int>) -> Tensor {
    let per = count / max(shape[0], 1)
    let t = Tensor(uninitialized: [range.count] + shape.dropFirst(), category: storage.category)
    t.floats.update(from: floats + range.lowerBound * per, count: range.count * per)
    return t
  }

  public func copy(category: MemoryCategory? = nil) -> Tensor {
    let t = Tensor(zeros: shape, dtype: dtype, category: category ?? storage.category)
    t.storage.raw.copyMemory(from: storage.raw, byteCount: byteCount)
    return t
  }

  /// Contents as Float32 values, converting from 16-bit and integer storage.
  public func toArray() -> [Float] {
    let n = count
    switch dtype {
    case .float32: return Array(UnsafeBufferPointer(start: storage.floats, count: n))
    case .float16:
      return [Float](unsafeUninitializedCapacity: n) { b, c in
        Conversions.fromFloat16(storage.raw.assumingMemoryBound(to: Float16.self), b.baseAddress!, count: n)
        c = n
      }
    case .bfloat16:
      return [Float](unsafeUninitializedCapacity: n) { b, c in
        Conversions.fromBFloat16(storage.raw.assumingMemoryBound(to: UInt16.self), b.baseAddress!, count: n)
        c = n
      }
    case .int32: return (0..<n).map { Float(storage.raw.assumingMemoryBound(to: Int32.self)[$0]) }
    case .int64: return (0..<n).map { Float(storage.raw.assumingMemoryBound(to: Int64.self)[$0]) }
    }
  }

  /// Integer contents (labels); floats are truncated.
  public func toIntArray() -> [Int] {
    switch dtype {
    case .int32: return (0..<count).map { Int(storage.raw.assumingMemoryBound(to: Int32.self)[$0]) }
    case .int64: return (0..<count).map { Int(storage.raw.assumingMemoryBound(to: Int64.self)[$0]) }
    default: return toArray().map { Int($0) }
    }
  }

  /// A copy stored as `target` (F32, F16 or BF16).
  public func converted(to target: DType, category: MemoryCategory? = nil) -> Tensor {
    if target == dtype { return copy(category: category) }
    let out = Tensor(zeros: shape, dtype: target, category: category ?? storage.category)
    let n = count
    switch (dtype, target) {
    case (.float32, .float16):
      Conversions.toFloat16(storage.floats, out.storage.raw.assumingMemoryBound(to: Float16.self), count: n)
    case (.float32, .bfloat16):
      Conversions.toBFloat16(storage.floats, out.storage.raw.assumingMemoryBound(to: UInt16.self), count: n)
    case (.float16, .float32):
      Conversions.fromFloat16(storage.raw.assumingMemoryBound(to: Float16.self), out.storage.floats, count: n)
    case (.bfloat16, .float32):
      Conversions.fromBFloat16(storage.raw.assumingMemoryBound(to: UInt16.self), out.storage.floats, count: n)
    case (_, .float32):
      let v = toArray()
      v.withUnsafeBufferPointer { out.storage.floats.update(from: $0.baseAddress!, count: n) }
    default:
      let v = Tensor(shape: shape, values: toArray())
      return v.converted(to: target, category: category)
    }
    return out
  }

  /// A tensor of integer labels.
  public static func labels(_ values: [Int], dtype: DType = .int64) -> Tensor {
    let t = Tensor(zeros: [values.count], dtype: dtype, category: .data)
    for (i, v) in values.enumerated() {
      if dtype == .int64 {
        t.storage.raw.assumingMemoryBound(to: Int64.self)[i] = Int64(v)
      } else {
        t.storage.raw.assumingMemoryBound(to: Int32.self)[i] = Int32(v)
      }
    }
    return t
  }
}
