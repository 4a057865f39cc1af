import Foundation
import SwiftProtobuf
import Tessera
import TesseraKernels

/// An ONNX file that cannot be imported, naming the file (and the node, op or tensor).
public struct ONNXError: Error, CustomStringConvertible {
  public let path: String
  public let message: String
  public init(_ path: String, _ message: String) {
    self.path = path
    self.message = message
  }
  public var description: String { "\(path): \(message)" }
}

/// An ONNX graph brought in as Tessera layers: a chain of layers, with residual joins (two branches
/// from one tensor meeting at an `Add`) as `ResidualBlock`s and concatenations of branches as
/// `ConcatBlock`s — what a PyTorch-exported CNN is made of. The weights come from the graph's initializers (or, for `tessera forward`, from constant
/// graph inputs).
public struct ONNXModel {
  public var name: String
  public var model: Sequential
  /// The graph input that takes the image, and its declared shape (nil entries: dynamic).
  public var inputName: String
  public var inputShape: [Int?]
  public var outputName: String
  /// The graph ends with Softmax: `forward` applies it; training works on the logits before it.
  public var outputSoftmax: Bool
  public var opset: Int

  /// Ops this importer turns into layers.
  public static let supportedOps = ["Add (residual joins)", "Concat (of branches, along channels)", "AveragePool", "BatchNormalization", "Clip (ReLU, ReLU6)", "Conv", "Dropout",
                                    "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul (+ Add bias)",
                                    "MaxPool", "Mul (by a constant)", "Pad (constant 0, before Conv)", "Relu", "Reshape (to N×features)", "Sigmoid", "Softmax (last)"]

  /// Files larger than this are refused before they are read.
  public static let maxFileBytes = 2 << 30

  /// Reads and imports `url`. The image is the graph's first input that is not an initializer;
  /// `constants`: tensors for its other inputs (ONNX's own test cases feed a Conv's W as a graph
  /// input); a tensor named as the image is ignored.
  /// `channels`, `side`: the image's channels and side when the graph leaves them dynamic.
  public static func load(_ url: URL, constants: [String: Tensor] = [:], channels: Int? = nil, side: Int? = nil) throws -> ONNXModel {
    let path = url.path
    let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? -1
    guard size >= 0 else { throw ONNXError(path, "no such file") }
    guard size <= maxFileBytes else { throw ONNXError(path, "\(size) bytes is over the \(maxFileBytes)-byte limit for an ONNX file") }
    let data = try Data(contentsOf: url)
    let proto: Onnx_ModelProto
    do {
      var options = BinaryDecodingOptions()
      options.messageDepthLimit = 64
      proto = try Onnx_ModelProto(serializedBytes: data, options: options)
    } catch {
      throw ONNXError(path, "not an ONNX model (the protobuf does not parse: \(error)); a truncated or damaged file?")
    }
    guard proto.hasGraph, !proto.graph.node.isEmpty else { throw ONNXError(path, "the model has no graph (no nodes)") }
    let opset = Int(proto.opsetImport.first { $0.domain.isEmpty || $0.domain == "ai.onnx" }?.version ?? 0)
    guard opset == 0 || (7...23).contains(opset) else {
      throw ONNXError(path, "opset \(opset) of the default domain is outside what this importer reads (7–23)")
    }
    var importer = Importer(path: path, graph: proto.graph, constants: constants)
    importer.imageChannels = channels
    importer.imageSide = side
    return try importer.run(name: proto.graph.name.isEmpty ? url.deletingPathExtension().lastPathComponent : proto.graph.name, opset: opset)
  }
}

extension ONNXModel {
  /// An inference-mode forward (running statistics), with the graph's final Softmax if it has one.
  public func forward(_ x: Tensor) throws -> Tensor {
    _ = try model.outputShape(for: x.shape)
    let y = model.forward(x, training: false)
    if outputSoftmax { Self.softmaxRows(y) }
    return y
  }

  /// Softmax along the last axis of a (N, K) tensor, in place (the graph's final Softmax).
  public static func softmaxRows(_ y: Tensor) {
    guard y.rank == 2 else { return }
    let n = y.shape[0], k = y.shape[1], p = y.floats
    for i in 0..<n {
      let row = p + i * k
      var m = -Float.infinity
      for j in 0..<k { m = max(m, row[j]) }
      var sum = 0.0
      for j in 0..<k {
        row[j] = Foundation.exp(row[j] - m)
        sum += Double(row[j])
      }
      for j in 0..<k { row[j] = Float(Double(row[j]) / sum) }
    }
  }

  /// Features of the model's output (classes), for an input of `shape` (C, H, W).
  public func outputFeatures(for shape: [Int]) throws -> Int { try model.outputShape(for: [1] + shape).dropFirst().reduce(1, *) }
}

/// Tensors of an ONNX TensorProto as Tessera tensors (float32; float64/float16/int64 converted).
enum TensorData {
  static func tensor(_ t: Onnx_TensorProto, path: String) throws -> Tensor {
    if t.dataLocation == .external || !t.externalData.isEmpty {
      throw ONNXError(path, "tensor '\(t.name)' is stored in an external data file; save the model with its weights inside (onnx.save(model, path, save_as_external_data=False))")
    }
    let dims = t.dims.map(Int.init)
    guard dims.allSatisfy({ $0 >= 0 }), let count = Limits.product(dims.isEmpty ? [1] : dims), count <= Limits.maxElements else {
      throw ONNXError(path, "tensor '\(t.name)' has impossible dimensions \(dims)")
    }
    let shape = dims.isEmpty ? [1] : dims
    var values = [Float]()
    switch t.dataType {
    case 1:  // FLOAT
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 4 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) floats") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
      } else {
        guard t.floatData.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.floatData.count) values for \(count)") }
        values = t.floatData
      }
    case 11:  // DOUBLE
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 8 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) doubles") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))) } }
      } else {
        guard t.doubleData.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.doubleData.count) values for \(count)") }
        values = t.doubleData.map(Float.init)
      }
    case 7:  // INT64
      if !t.rawData.isEmpty {
        guard t.rawData.count == count * 8 else { throw ONNXError(path, "tensor '\(t.name)': \(t.rawData.count) bytes for \(count) int64") }
        values = t.rawData.withUnsafeBytes { raw in (0..<count).map { Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } }
      } else {
        guard t.int64Data.count == count else { throw ONNXError(path, "tensor '\(t.name)': \(t.int64Data.count) values for \(count)") }
        values = t.int64Data.map(Float.init)
      }
    default:
      throw ONNXError(path, "tensor '\(t.name)' has data type \(t.dataType); float, double and int64 tensors are read")
    }
    return Tensor(shape: shape, values: values)
  }

  /// Int64 values of a TensorProto (shapes, pads).
  static func ints(_ t: Onnx_TensorProto, path: String) throws -> [Int] {
    if t.dataType == 7 {
      if !t.rawData.isEmpty {
        let n = t.rawData.count / 8
        return t.rawData.withUnsafeBytes { raw in (0..<n).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } }
      }
      return t.int64Data.map(Int.init)
    }
    return try tensor(t, path: path).toArray().map { Int($0) }
  }
}
