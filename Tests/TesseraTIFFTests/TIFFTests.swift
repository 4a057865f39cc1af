import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraTIFF
import TestSupport
import XCTest

/// A synthetic image delivered row by row (what `convert` reads from a huge JPEG).
final class PatternRows: RowStream {
  let width: Int, height: Int, channels: Int
  var y = 0
  init(width: Int, height: Int, channels: Int = 3) {
    self.width = width
    self.height = height
    self.channels = channels
  }
  static func value(_ x: Int, _ y: Int, _ c: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: c == 0 ? x * 3 + y : c == 1 ? y * 5 &+ (x ^ y) : (x * y) >> 3)
  }
  func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    for r in 0..<rows { for x in 0..<width { for c in 0..<channels { out[(r * width + x) * channels + c] = Self.value(x, y + r, c) } } }
    y += rows
  }
}

final class TIFFTests: TemporaryDirectoryTestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    if let why = TIFFFile.available() { throw XCTSkip("TIFF: \(why)") }
  }

  /// The Python with tifffile (TESSERA_PYTHON, .venv-peers, or python3), or nil.
  static let python: String? = {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var candidates = [root.appendingPathComponent(".venv-peers/bin/python").path, "/usr/bin/python3"]
    if let p = ProcessInfo.processInfo.environment["TESSERA_PYTHON"] { candidates.insert(p, at: 0) }
    for p in candidates where FileManager.default.isExecutableFile(atPath: p) {
      let r = try? run(p, ["-c", "import tifffile, numpy"])
      if r?.0 == 0 { return p }
    }
    return nil
  }()
  static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("scripts/tiff_reference.py").path

  static func run(_ exe: String, _ args: [String]) throws -> (Int32, String) { try runProgram(exe, args) }

  func requirePython() throws -> String {
    guard let p = Self.python else {
      throw XCTSkip("tifffile is not installed: scripts/setup_peers.sh installs it (or set TESSERA_PYTHON)")
    }
    return p
  }

  /// tifffile's pixels of regions (level, x, y, w, h): (H, W, C) arrays, as floats in [0, 1].
  func reference(_ url: URL, _ regions: [(Int, Int, Int, Int, Int)], bits: Int) throws -> [[Float]] {
    let py = try requirePython()
    let out = dir.appendingPathComponent("ref.bin")
    let args = [Self.script, "regions", url.path, out.path] + regions.flatMap { [$0.0, $0.1, $0.2, $0.3, $0.4].map(String.init) }
    let (status, text) = try Self.run(py, args)
    XCTAssertEqual(status, 0, text)
    let d = try Data(contentsOf: out)
    var result = [[Float]](), offset = 0
    let channels = d.count / regions.reduce(0) { $0 + $1.3 * $1.4 } / (bits / 8)
    for r in regions {
      let n = r.3 * r.4 * channels
      if bits == 16 {
        result.append((0..<n).map { i in Float(UInt16(d[offset + 2 * i]) | UInt16(d[offset + 2 * i + 1]) << 8) / 65535 })
        offset += 2 * n
      } else {
        result.append((0..<n).map { Float(d[offset + $0]) / 255 })
        offset += n
      }
    }
    return result
  }

  /// Our (C, H, W) floats as (H, W, C) with `channels` samples.
  func hwc(_ t: Tensor) -> [Float] {
    let c = t.shape[0], h = t.shape[1], w = t.shape[2], p = t.toArray()
    var out = [Float](repeating: 0, count: c * h * w)
    for ch in 0..<c { for i in 0..<(h * w) { out[i * c + ch] = p[ch * h * w + i] } }
    return out
  }

  func testConvertWritesAPyramidThatReadsBackExactly() throws {
    let (w, h) = (700, 450)
    for (name, code) in [("none", 1), ("deflate", 8), ("lzw", 5)] {
      let url = dir.appendingPathComponent("\(name).tif")
      let r = try TIFFConverter.convert(PatternRows(width: w, height: h), to: url, tile: 128, compression: code)
      XCTAssertEqual(r.levels.map { [$0.width, $0.height] }, [[700, 450], [350, 225], [175, 113], [88, 57]])
      let f = try TIFFFile(url)
      XCTAssertEqual(f.levels.map(\.width), [700, 350, 175, 88])
      XCTAssertEqual(f.levels.map(\.tileWidth), [128, 128, 128, 128])
      XCTAssertEqual(f.levels[1].downsample, 2, accuracy: 1e-9)
      // Regions across tile borders and at the edges equal the pattern exactly.
      for region in [PixelRect(x: 100, y: 90, width: 200, height: 100), PixelRect(x: 640, y: 400, width: 60, height: 50),
                     PixelRect(x: 0, y: 0, width: 1, height: 1), PixelRect(x: 127, y: 127, width: 2, height: 2)] {
        let t = try f.read(level: 0, region: region)
        let p = t.toArray(), plane = region.width * region.height
        var bad = 0
        for y in 0..<region.height {
          for x in 0..<region.width {
            for c in 0..<3 where UInt8((p[c * plane + y * region.width + x] * 255).rounded()) != PatternRows.value(region.x + x, region.y + y, c) {
              bad += 1
            }
          }
        }
        XCTAssertEqual(bad, 0, "\(name) \(region)")
      }
      // Level 1 is the 2×2 mean of level 0 (rounded), at the odd edge too.
      let l1 = try f.read(level: 1, region: PixelRect(x: 340, y: 220, width: 10, height: 5)).toArray()
      for y in 0..<5 {
        for x in 0..<10 {
          let X = 2 * (340 + x), Y = 2 * (220 + y)
          let s = [(X, Y), (min(X + 1, w - 1), Y), (X, min(Y + 1, h - 1)), (min(X + 1, w - 1), min(Y + 1, h - 1))]
            .reduce(0) { $0 + Int(PatternRows.value($1.0, $1.1, 0)) }
          XCTAssertEqual(Int((l1[y * 10 + x] * 255).rounded()), (s + 2) / 4, "\(name) level 1 (\(x), \(y))")
        }
      }
      XCTAssertThrowsError(try f.read(level: 4)) { XCTAssert("\($0)".contains("level 4 does not exist"), "\($0)") }
      XCTAssertThrowsError(try f.read(level: 0, region: PixelRect(x: 690, y: 0, width: 20, height: 5))) {
        XCTAssert("\($0)".contains("not inside level 0"), "\($0)")
      }
    }
    // The smallest level at least as fine as a downsample.
    let f = try TIFFFile(dir.appendingPathComponent("none.tif"))
    XCTAssertEqual(f.level(forDownsample: 3).level, 1)
    XCTAssertEqual(f.level(forDownsample: 3).remaining, 1.5, accuracy: 1e-9)
    XCTAssertEqual(f.level(forDownsample: 1).level, 0)
  }

  func testJPEGTilesAndTifffileAgree() throws {
    let url = dir.appendingPathComponent("jpeg.tif")
    _ = try TIFFConverter.convert(PatternRows(width: 300, height: 200), to: url, tile: 64, compression: 7, quality: 95)
    let f = try TIFFFile(url)
    XCTAssertEqual(f.compression, 7)
    let regions = [(0, 10, 20, 150, 100), (0, 250, 150, 50, 50), (1, 0, 0, 150, 100), (2, 30, 10, 45, 40)]
    let ref = try reference(url, regions, bits: 8)
    for (i, r) in regions.enumerated() {
      let ours = hwc(try f.read(level: r.0, region: PixelRect(x: r.1, y: r.2, width: r.3, height: r.4)))
      let worst = zip(ours, ref[i]).map { abs($0 - $1) * 255 }.max() ?? 0
      XCTAssertLessThanOrEqual(worst, 1.001, "region \(r): within one grey level of tifffile")
    }
  }

  /// Files in the layouts tifffile writes (SubIFD pyramid, separate planes, 16-bit strips, BigTIFF
  /// RGBA, JPEG YCbCr, MinIsWhite): info and pixels equal tifffile's.
  func testTifffileFixturesReadAsTifffileReadsThem() throws {
    let py = try requirePython()
    let fx = dir.appendingPathComponent("fx")
    try FileManager.default.createDirectory(at: fx, withIntermediateDirectories: true)
    let (status, text) = try Self.run(py, [Self.script, "fixtures", fx.path])
    XCTAssertEqual(status, 0, text)
    // Lossless: equal (to float rounding, 1e-6); JPEG: within one grey level.
    let cases: [(String, Int, Int, Float)] = [("subifds", 3, 8, 1e-6), ("planar", 3, 8, 1e-6), ("gray16", 1, 16, 1e-6),
                                              ("bigrgba", 3, 8, 1e-6), ("miniswhite", 1, 8, 1e-6), ("jpeg", 3, 8, 1.001 / 255),
                                              ("jpegrgb", 3, 8, 1.001 / 255), ("jpeggray", 1, 8, 1.001 / 255)]
    for (name, channels, bits, tolerance) in cases {
      let url = fx.appendingPathComponent("\(name).tif")
      guard FileManager.default.fileExists(atPath: url.path) else { continue }  // no JPEG without imagecodecs
      let f = try TIFFFile(url)
      let (s, infoText) = try Self.run(py, [Self.script, "info", url.path])
      XCTAssertEqual(s, 0, infoText)
      let info = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(infoText.utf8)) as? [String: Any])
      let levels = try XCTUnwrap(info["levels"] as? [[String: Any]])
      XCTAssertEqual(f.levels.count, levels.count, name)
      for (l, ref) in zip(f.levels, levels) {
        let shape = try XCTUnwrap(ref["shape"] as? [Int])
        XCTAssertEqual([l.height, l.width], Array(shape.prefix(2)), name)
      }
      XCTAssertEqual(f.bigTIFF, info["bigTIFF"] as? Bool, name)
      XCTAssertEqual(f.bitsPerSample, bits, name)
      var regions = [(0, 0, 0, 420, 300), (0, 33, 61, 100, 90), (0, 400, 290, 20, 10)]
      if f.levels.count > 1 { regions += [(1, 5, 7, 200, 140), (2, 0, 0, 105, 75)] }
      let ref = try reference(url, regions, bits: bits)
      for (i, r) in regions.enumerated() {
        let t = try f.read(level: r.0, region: PixelRect(x: r.1, y: r.2, width: r.3, height: r.4), channels: channels)
        var theirs = ref[i]
        let refChannels = theirs.count / (r.3 * r.4)
        if name == "miniswhite" { theirs = theirs.map { 1 - $0 } }  // tifffile returns stored values
        if refChannels == 4 { theirs = stride(from: 0, to: theirs.count, by: 4).flatMap { Array(theirs[$0..<($0 + 3)]) } }
        let worst = zip(hwc(t), theirs).map { abs($0 - $1) }.max() ?? 1
        XCTAssertLessThanOrEqual(worst, tolerance, "\(name) region \(r)")
      }
    }
    XCTAssertThrowsError(try TIFFFile(fx.appendingPathComponent("float.tif"))) {
      XCTAssert("\($0)".contains("float.tif") && "\($0)".contains("sample format float"), "\($0)")
    }
  }

  /// JPEG tiles a region only touches are decoded in part, straight with libjpeg-turbo (rows below
  /// cut, columns beside cropped): the pixels equal the whole tiles' decoding by libtiff exactly, for
  /// YCbCr 2×2 (what `convert` writes), gray, and tifffile's YCbCr, RGB and gray JPEG tiles.
  func testJPEGTilesDecodedInPartEqualWholeTiles() throws {
    var files = [URL]()
    for channels in [3, 1] {
      let url = dir.appendingPathComponent("part\(channels).tif")
      _ = try TIFFConverter.convert(PatternRows(width: 333, height: 270, channels: channels), to: url, tile: 64, compression: 7, quality: 80)
      files.append(url)
    }
    if let py = Self.python {
      let fx = dir.appendingPathComponent("fx")
      try FileManager.default.createDirectory(at: fx, withIntermediateDirectories: true)
      _ = try Self.run(py, [Self.script, "fixtures", fx.path])
      files += ["jpeg", "jpegrgb", "jpeggray"].map { fx.appendingPathComponent("\($0).tif") }
        .filter { FileManager.default.fileExists(atPath: $0.path) }
    }
    var rng = SeededGenerator(seed: 5)
    for url in files {
      let part = try TIFFFile(url, cacheBytes: 0), whole = try TIFFFile(url, cacheBytes: 0)
      whole.partialJPEG = false
      for level in part.levels.indices {
        let L = part.levels[level]
        for _ in 0..<40 {
          let w = Int.random(in: 1...min(L.width, 90), using: &rng), h = Int.random(in: 1...min(L.height, 90), using: &rng)
          let r = PixelRect(x: Int.random(in: 0...(L.width - w), using: &rng), y: Int.random(in: 0...(L.height - h), using: &rng),
                            width: w, height: h)
          let channels = part.channels
          let a = try part.read(level: level, region: r, channels: channels).toArray()
          let b = try whole.read(level: level, region: r, channels: channels).toArray()
          let worst = zip(a, b).map { abs($0 - $1) * 255 }.max() ?? 0
          XCTAssertEqual(worst, 0, "\(url.lastPathComponent) level \(level) \(r): grey levels apart")
        }
      }
    }
  }

  /// Concurrent reads from several threads (libtiff handles are per read) give the same pixels.
  func testConcurrentReadsAreSafe() throws {
    let url = dir.appendingPathComponent("c.tif")
    _ = try TIFFConverter.convert(PatternRows(width: 512, height: 512), to: url, tile: 64, compression: 8)
    let f = try TIFFFile(url, cacheBytes: 64 * 64 * 3 * 4)  // a small cache: most reads decode
    let expected = try (0..<8).map { try f.read(level: 0, region: PixelRect(x: $0 * 50, y: $0 * 40, width: 100, height: 100)).toArray() }
    let errors = Locked(0)
    DispatchQueue.concurrentPerform(iterations: 32) { i in
      let k = i % 8
      if let t = try? f.read(level: 0, region: PixelRect(x: k * 50, y: k * 40, width: 100, height: 100)), t.toArray() == expected[k] { return }
      errors.withLock { $0 += 1 }
    }
    XCTAssertEqual(errors.withLock { $0 }, 0)
    XCTAssertLessThanOrEqual(f.cache.bytes, f.cache.limitBytes)
  }

  /// A streamed step whose input is read from a TIFF crop by crop (never held) equals the step on
  /// the whole image as one tensor: logits and every gradient to 1e-5.
  func testStreamedStepFromATIFFEqualsTheWholeImageStep() throws {
    // Both steps on the direct kernel: Winograd's rounding depends on where its 4×4 tiles fall in
    // each crop (StreamingTests.testWinogradTrainingStreamsWithinItsRounding).
    let winograd = Winograd.inTraining
    Winograd.inTraining = false
    defer { Winograd.inTraining = winograd }
    let url = dir.appendingPathComponent("step.tif")
    _ = try TIFFConverter.convert(PatternRows(width: 144, height: 160), to: url, tile: 32, compression: 8)
    TIFFFile.registerWithTesseraData()
    let source = try RegionTileSource(url, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
    XCTAssertEqual(source.shape, [1, 3, 160, 144])
    let whole = try source.read(MapRegion(rows: 0..<160, cols: 0..<144))
    func model() -> Sequential {
      let m = Zoo.fcnLarge(classes: 4)
      m.initializeParameters(seed: 3)
      return m
    }
    let plain = model()
    let ref = try plain.trainingStep(input: whole, labels: [1])
    let streamed = try Streamed.apply(to: model(), blocks: 3, tile: 32, split: 1)
    let r = try streamed.trainingStep(source: source, labels: [1])
    XCTAssertLessThanOrEqual(maxRelativeError(r.logits.toArray(), ref.logits.toArray()), 1e-5)
    let grads = Dictionary(uniqueKeysWithValues: plain.namedParameters().map { ($0.0, $0.1.grad?.toArray() ?? []) })
    var checked = 0
    for (n, p) in streamed.namedParameters() where p.trainable {
      XCTAssertLessThanOrEqual(maxRelativeError(p.grad!.toArray(), grads[n]!), 1e-5, n)
      checked += 1
    }
    XCTAssertGreaterThan(checked, 10)
  }

  // MARK: damaged files

  /// A little-endian classic TIFF: one directory of the given (tag, type, count, value) entries
  /// (values that fit inline), then `body`.
  /// The IFD is at offset 8; the header may claim another (`headerOffset`); the data starts at 200.
  func tiff(_ entries: [(UInt16, UInt16, UInt32, UInt32)], body: Data = Data(), headerOffset: UInt32 = 8, next: UInt32 = 0) -> Data {
    var d = Data([0x49, 0x49, 0x2A, 0])
    func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
    func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
    u32(headerOffset)
    u16(UInt16(entries.count))
    for e in entries.sorted(by: { $0.0 < $1.0 }) {
      u16(e.0); u16(e.1); u32(e.2)
      if e.1 == 3 { u16(UInt16(e.3)); u16(0) } else { u32(e.3) }
    }
    u32(next)
    while d.count < 200 { d.append(0) }
    d.append(body)
    return d
  }

  func base(width: UInt32 = 64, height: UInt32 = 64, compression: UInt32 = 1, dataOffset: UInt32 = 200, byteCount: UInt32 = 64 * 64) -> [(UInt16, UInt16, UInt32, UInt32)] {
    [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, compression), (262, 3, 1, 1),
     (273, 4, 1, dataOffset), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, byteCount)]
  }

  func testDamagedFilesGiveErrorsNamingTheFile() throws {
    func write(_ d: Data, _ name: String) throws -> URL {
      let u = dir.appendingPathComponent(name)
      try d.write(to: u)
      return u
    }
    func refused(_ url: URL, _ expected: String, read: Bool = false, file: StaticString = #filePath, line: UInt = #line) {
      do {
        let f = try TIFFFile(url)
        if read { _ = try f.read(level: 0) }
        XCTFail("\(url.lastPathComponent) was accepted", file: file, line: line)
      } catch {
        XCTAssert("\(error)".contains(url.lastPathComponent), "\(error)", file: file, line: line)
        XCTAssert(expected.isEmpty || "\(error)".lowercased().contains(expected.lowercased()), "\(error)", file: file, line: line)
      }
    }
    // A good one first, so the damaged ones are damaged in one way each.
    let good = try write(tiff(base(), body: Data(count: 64 * 64)), "good.tif")
    XCTAssertEqual(try TIFFFile(good).read(level: 0, channels: 1).shape, [1, 64, 64])
    let full = try Data(contentsOf: good)
    refused(try write(full.prefix(6), "truncated-header.tif"), "")
    refused(try write(full.prefix(300), "truncated-data.tif"), "", read: true)
    refused(try write(tiff(base(), body: Data(count: 64 * 64), headerOffset: 1_000_000), "ifd-past-end.tif"), "")
    refused(try write(tiff(base(), body: Data(count: 64 * 64), next: 8), "ifd-loop.tif"), "")
    refused(try write(tiff(base(dataOffset: 9_000_000), body: Data(count: 4200)), "strip-past-end.tif"), "", read: true)
    refused(try write(tiff(base(compression: 33003), body: Data(count: 4200)), "jp2k.tif"), "jpeg2000")
    refused(try write(tiff(base(compression: 12345), body: Data(count: 4200)), "unknown-codec.tif"), "compression")
    // A 10⁶ × 10⁶ header: opened (info), but a whole read is refused before allocating.
    let huge = try write(tiff(base(width: 1_000_000, height: 1_000_000), body: Data(count: 4200)), "huge.tif")
    let f = try TIFFFile(huge)
    XCTAssertEqual(f.levels[0].width, 1_000_000)
    XCTAssertThrowsError(try f.read(level: 0)) { XCTAssert("\($0)".contains("huge.tif"), "\($0)") }
  }
}
