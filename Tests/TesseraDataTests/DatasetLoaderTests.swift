import Foundation
import Tessera
@testable import TesseraData
import TesseraKernels
import TestSupport
import XCTest

final class DatasetLoaderTests: TemporaryDirectoryTestCase {

  /// root/<class>/<n>.png, small images of distinct shades.
  func makeFolder(_ counts: [String: Int], size: Int = 24) throws -> URL {
    let root = dir.appendingPathComponent("data")
    for (c, n) in counts {
      let d = root.appendingPathComponent(c)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for i in 0..<n {
        let v = UInt8((i * 37 + c.count * 11) % 256)
        _ = Fixtures.png([UInt8](repeating: v, count: size * size * 3), width: size, height: size, channels: 3, dir: d,
                         name: String(format: "%03d.png", i))
      }
    }
    return root
  }

  func testFolderManifestAndEscapes() throws {
    let root = try makeFolder(["cat": 3, "dog": 2])
    FileManager.default.createFile(atPath: root.appendingPathComponent("dog/notes.txt").path, contents: Data("x".utf8))
    FileManager.default.createFile(atPath: root.appendingPathComponent("dog/.hidden.png").path, contents: Data())
    let ds = try ImageDataset.folder(root)
    XCTAssertEqual(ds.classes, ["cat", "dog"])
    XCTAssertEqual(ds.samples.map(\.relativePath), ["cat/000.png", "cat/001.png", "cat/002.png", "dog/000.png", "dog/001.png"])
    try ds.saveClassMap(to: dir.appendingPathComponent("classes.json"))
    let map = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("classes.json"))) as? [String: [String]]
    XCTAssertEqual(map?["classes"], ["cat", "dog"])

    let csv = root.appendingPathComponent("m.csv")
    try "path,label,split\ncat/000.png,cat,train\n\"dog/001.png\",dog,test\n".write(to: csv, atomically: true, encoding: .utf8)
    let m = try ImageDataset.manifest(csv)
    XCTAssertEqual(m.samples.map(\.split), ["train", "test"])
    XCTAssertEqual(m.samples.map(\.label), [0, 1])
    for bad in ["../outside.png,cat\n", "/etc/passwd,cat\n", "cat/../../x.png,cat\n", "cat/000.png,cat,holdout\n"] {
      try bad.write(to: csv, atomically: true, encoding: .utf8)
      XCTAssertThrowsError(try ImageDataset.manifest(csv), bad) { e in XCTAssert("\(e)".contains(csv.path), "\(e)") }
    }
  }

  func testSplitIsDeterministicAndStratified() throws {
    let root = try makeFolder(["a": 10, "b": 7, "c": 3, "d": 1], size: 4)
    let ds = try ImageDataset.folder(root)
    let s1 = DatasetSplit.assign(ds.samples, test: 0.3, seed: 42)
    XCTAssertEqual(s1, DatasetSplit.assign(ds.samples, test: 0.3, seed: 42))
    XCTAssertNotEqual(s1, DatasetSplit.assign(ds.samples, test: 0.3, seed: 7))
    for (label, n) in [(0, 10), (1, 7), (2, 3), (3, 1)] {
      let test = ds.samples.indices.filter { ds.samples[$0].label == label && s1[$0] == "test" }.count
      XCTAssertLessThanOrEqual(abs(Double(test) - 0.3 * Double(n)), 1, "class \(label)")
    }
    // Fixed values: the same on any machine (the shuffle is our own Fisher–Yates on xoshiro256**).
    XCTAssertEqual(s1.filter { $0 == "test" }.count, 3 + 2 + 1 + 0)
    let v = DatasetSplit.assign(ds.samples, test: 0.2, val: 0.2, seed: 1)
    XCTAssertEqual(v.filter { $0 == "val" }.count, 2 + 1 + 1 + 0)
  }

  func testLoaderOrderPrefetchAugmentAndMemory() throws {
    let root = try makeFolder(["a": 9, "b": 8], size: 40)
    let ds = try ImageDataset.folder(root)
    let loader = BatchLoader(dataset: ds, pipeline: ImagePipeline(size: 32, policy: .fill), batchSize: 4)
    loader.seed = 5
    loader.prefetch = 2
    loader.workers = 2
    XCTAssertEqual(loader.order(epoch: 0), loader.order(epoch: 0))
    XCTAssertNotEqual(loader.order(epoch: 0), loader.order(epoch: 1))
    XCTAssertEqual(Set(loader.order(epoch: 3)), Set(0..<17))
    // Memory: at most `prefetch` batches in flight plus the one being used, plus decode buffers.
    let batchBytes = 4 * 3 * 32 * 32 * 4
    let decodeBytes = 2 * (3 * 40 * 40 * 4 + 3 * 40 * 40 * 4 + 3 * 32 * 40 * 4)  // per worker: decoded, resized, cropped
    let before = MemoryLedger.shared.currentBytes
    let (seen, peak) = try MemoryLedger.shared.measure { () -> [Int] in
      let it = loader.epoch(0)
      var labels = [Int]()
      while let b = try it.next() {
        XCTAssertEqual(b.images.shape.suffix(3), [3, 32, 32])
        labels += b.labels
        Thread.sleep(forTimeInterval: 0.01)  // a slow consumer: workers must wait, not run ahead
      }
      return labels
    }
    XCTAssertEqual(seen.count, 17)
    XCTAssertEqual(seen, loader.order(epoch: 0).map { ds.samples[$0].label })
    XCTAssertEqual(BatchLoader.bytesInFlight(batch: 4, imageShape: [3, 32, 32], prefetch: loader.prefetch),
                   (loader.prefetch + 1) * batchBytes)
    XCTAssertLessThanOrEqual(peak - before,
                             BatchLoader.bytesInFlight(batch: 4, imageShape: [3, 32, 32], prefetch: loader.prefetch) + decodeBytes)
    // drop-last
    loader.dropLast = true
    var n = 0
    let it = loader.epoch(0)
    while let b = try it.next() { n += b.labels.count }
    XCTAssertEqual(n, 16)
    // Augmentation is a function of (seed, epoch, sample), whichever worker runs it.
    loader.augmentation = Augmentation(horizontalFlip: true, verticalFlip: true, rotate90: true, brightness: 0.1, contrast: 0.2)
    let a = try loader.load(3, epoch: 2).toArray(), b = try loader.load(3, epoch: 2).toArray()
    XCTAssertEqual(a, b)
    XCTAssertNotEqual(a, try loader.load(3, epoch: 4).toArray())
  }

  func testAugmentationFlipsAndRotatesExactly() {
    let t = Tensor(shape: [1, 2, 2], values: [1, 2, 3, 4])
    var g = SeededGenerator(seed: 0)
    var seen = Set<[Float]>()
    for _ in 0..<64 {
      seen.insert(Augmentation(horizontalFlip: true, verticalFlip: true, rotate90: true).apply(t, &g).toArray())
    }
    // The 8 symmetries of a square, and nothing else.
    XCTAssertEqual(seen.count, 8)
    XCTAssert(seen.allSatisfy { Set($0) == [1, 2, 3, 4] })
  }

  /// The hostile set through the loader: skipped with a warning naming each file, or the epoch
  /// stops with that file's error under `.fail`; never a crash.
  func testBadFilesSkipOrFail() throws {
    let root = try makeFolder(["ok": 3], size: 16)
    let bad = root.appendingPathComponent("bad")
    try FileManager.default.createDirectory(at: bad, withIntermediateDirectories: true)
    let good = Fixtures.jpeg(Fixtures.pattern(width: 64, height: 48), width: 64, height: 48)
    let files: [(String, Data)] = [
      ("empty.jpg", Data()), ("text.jpg", Data("hello".utf8)), ("truncated.jpg", good.prefix(good.count / 2)),
      ("bomb.png", Fixtures.pngHeader(width: 100_000, height: 100_000)), ("unsupported.ppm", Data("P4 1 1\n\u{0}".utf8)),
    ]
    for (n, d) in files { FileManager.default.createFile(atPath: bad.appendingPathComponent(n).path, contents: d) }
    let ds = try ImageDataset.folder(root)
    XCTAssertEqual(ds.samples.count, 8)
    let loader = BatchLoader(dataset: ds, pipeline: ImagePipeline(size: 16), batchSize: 3)
    final class Lines: @unchecked Sendable { var lines = [String](); let lock = NSLock() }
    let warnings = Lines()
    loader.onWarning = { l in warnings.lock.withLock { warnings.lines.append(l) } }
    let it = loader.epoch(0)
    var count = 0
    while let b = try it.next() { count += b.labels.count }
    XCTAssertEqual(count, 3)
    XCTAssertEqual(it.skipped.count, 5)
    for (n, _) in files {
      XCTAssert(warnings.lines.contains { $0.contains(bad.appendingPathComponent(n).path) }, "no warning for \(n)")
    }
    loader.badFilePolicy = .fail
    let it2 = loader.epoch(0)
    XCTAssertThrowsError(try { while try it2.next() != nil {} }()) { e in XCTAssertNotNil(e as? ImageError) }
  }
}
