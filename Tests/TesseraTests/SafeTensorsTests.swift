import Foundation
import Tessera
import TestSupport
import TesseraKernels
import XCTest

final class SafeTensorsTests: TemporaryDirectoryTestCase {

  func testRoundTripAllDTypes() throws {
    let f = Tensor(shape: [2, 3], values: [1, -2, 3.5, 0, 0.0009765625, 65504])
    let tensors: [(String, Tensor)] = [
      ("f32", f), ("f16", f.converted(to: .float16)), ("bf16", f.converted(to: .bfloat16)),
      ("i64", Tensor.labels([3, -1, 7], dtype: .int64)), ("i32", Tensor.labels([5, 6], dtype: .int32)),
      ("empty", Tensor(zeros: [0, 4])),
    ]
    let url = dir.appendingPathComponent("a.safetensors")
    try SafeTensors.write(tensors, metadata: ["k": "v"], to: url)
    // Header layout by hand: 8-byte little-endian length, JSON, data 8-byte aligned.
    let raw = try Data(contentsOf: url)
    let n = raw.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    XCTAssertEqual((8 + Int(n)) % 8, 0)
    XCTAssertEqual(raw[8], UInt8(ascii: "{"))
    let file = try SafeTensors.read(url)
    XCTAssertEqual(file.metadata, ["k": "v"])
    XCTAssertEqual(file.tensors["f32"]!.toArray(), f.toArray())
    XCTAssertEqual(file.tensors["f16"]!.dtype, .float16)
    XCTAssertEqual(file.tensors["f16"]!.toArray(), f.toArray())  // all exactly representable in F16
    XCTAssertEqual(file.tensors["i64"]!.toIntArray(), [3, -1, 7])
    XCTAssertEqual(file.tensors["i32"]!.toIntArray(), [5, 6])
    XCTAssertEqual(file.tensors["empty"]!.shape, [0, 4])
    XCTAssertEqual(file.tensors["bf16"]!.toArray()[2], 3.5)
  }

  func testModelSaveLoadRoundTrip() throws {
    let a = Zoo.fcnLarge(classes: 5), b = Zoo.fcnLarge(classes: 5)
    a.initializeParameters(seed: 1)
    b.initializeParameters(seed: 2)
    let url = dir.appendingPathComponent("m.safetensors")
    try a.save(to: url)
    try b.load(from: url)
    for ((na, pa), (nb, pb)) in zip(a.namedParameters(), b.namedParameters()) {
      XCTAssertEqual(na, nb)
      XCTAssertEqual(pa.value.toArray(), pb.value.toArray(), na)
    }
    let names = a.namedParameters().map(\.0)
    XCTAssertEqual(names.first, "stem.conv.weight")
    XCTAssert(names.contains("stem.bn.running_var"))
    XCTAssert(names.contains("stage4.bn2.running_mean"))
    XCTAssertEqual(names.suffix(2), ["head.weight", "head.bias"])
    XCTAssertEqual(names.count, 1 + 4 + 4 * (2 + 8) + 2)
  }

  /// Writes a file with a hand-made header (and body) for the hostile-input cases.
  func file(_ header: String, body: Data = Data(), claimedLength: UInt64? = nil) -> URL {
    var d = Data()
    let h = header.data(using: .utf8)!
    withUnsafeBytes(of: (claimedLength ?? UInt64(h.count)).littleEndian) { d.append(contentsOf: $0) }
    d.append(h)
    d.append(body)
    let url = dir.appendingPathComponent(UUID().uuidString + ".safetensors")
    FileManager.default.createFile(atPath: url.path, contents: d)
    return url
  }

  func expectError(_ url: URL, _ check: (SafeTensorsError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
    do {
      _ = try SafeTensors.read(url)
      XCTFail("no error", file: file, line: line)
    } catch let e as SafeTensorsError {
      XCTAssert(check(e), "unexpected error \(e)", file: file, line: line)
      XCTAssert(e.description.contains(url.path), "error does not name the file: \(e)", file: file, line: line)
    } catch {
      XCTFail("untyped error \(error)", file: file, line: line)
    }
  }

  func testHostileFiles() {
    let body = Data(count: 24)
    // A header that claims 10 GB.
    expectError(file("{}", claimedLength: 10_000_000_000)) { if case .headerTooLarge = $0 { true } else { false } }
    // A header longer than the file.
    expectError(file("{}", claimedLength: 5000)) { if case .headerBeyondFile = $0 { true } else { false } }
    // Zero bytes and too short.
    let empty = dir.appendingPathComponent("empty.safetensors")
    FileManager.default.createFile(atPath: empty.path, contents: Data())
    expectError(empty) { if case .truncatedHeader = $0 { true } else { false } }
    // Not JSON.
    expectError(file("this is not json")) { if case .badHeader = $0 { true } else { false } }
    // Truncated body: needs 24 bytes, has 8.
    expectError(file(#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#, body: Data(count: 8))) {
      if case .truncatedBody(_, "w", 24, 8) = $0 { true } else { false }
    }
    // Offsets that disagree with the shape.
    expectError(file(#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}}"#, body: body)) {
      if case .badEntry(_, "w", _) = $0 { true } else { false }
    }
    // Overlapping tensors.
    expectError(file(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, body: body)) {
      if case .badEntry = $0 { true } else { false }
    }
    // Absurd shape (overflow), negative size, fractional offsets, unknown dtype.
    expectError(file(#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#, body: body)) {
      if case .badEntry = $0 { true } else { false }
    }
    expectError(file(#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, body: body)) {
      if case .badEntry = $0 { true } else { false }
    }
    expectError(file(#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0.5,4]}}"#, body: body)) {
      if case .badEntry = $0 { true } else { false }
    }
    expectError(file(#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#, body: body)) {
      if case .unsupportedDType(_, "w", "Q4") = $0 { true } else { false }
    }
  }

  func testLoadChecksNamesAndShapesBeforeChanging() throws {
    let model = Zoo.fcnLarge(classes: 3)
    model.initializeParameters(seed: 1)
    let before = model.namedParameters().map { $0.1.value.toArray() }
    var state = model.stateTensors()
    // Wrong shape for the head.
    state[state.count - 2] = ("head.weight", Tensor(zeros: [4, 256, 1, 1]))
    let wrong = dir.appendingPathComponent("wrong.safetensors")
    try SafeTensors.write(state, to: wrong)
    XCTAssertThrowsError(try model.load(from: wrong)) { e in
      XCTAssertEqual(e as? SafeTensorsError,
                     .shapeMismatch(path: wrong.path, tensor: "head.weight", expected: [3, 256, 1, 1], found: [4, 256, 1, 1]))
    }
    // Missing tensor.
    let missing = dir.appendingPathComponent("missing.safetensors")
    try SafeTensors.write(Array(model.stateTensors().dropFirst()), to: missing)
    XCTAssertThrowsError(try model.load(from: missing)) { e in
      XCTAssertEqual(e as? SafeTensorsError, .missingTensor(path: missing.path, tensor: "stem.conv.weight"))
    }
    XCTAssertEqual(model.namedParameters().map { $0.1.value.toArray() }, before, "a failed load changed the model")
  }
}
