import Foundation
import Tessera
import TesseraData
import TesseraTIFF
import TestSupport
import XCTest

/// info, convert, preview --region --level and predict --tile on a TIFF, as a user runs them.
final class TIFFCLITests: TemporaryDirectoryTestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    if let why = TIFFFile.available() { throw XCTSkip("TIFF: \(why)") }
  }

  func json(_ r: CLIResult) throws -> [String: Any] {
    try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last.map(String.init)!.utf8)) as? [String: Any], r.stdout)
  }

  func testConvertInfoPreviewAndPredictFromAPyramid() throws {
    // A 600×420 PPM with a pattern; converted losslessly (deflate).
    let (w, h) = (600, 420)
    var px = [UInt8]()
    for y in 0..<h { for x in 0..<w { px += [UInt8(x % 256), UInt8(y % 256), UInt8((x * y) % 251)] } }
    let ppm = dir.appendingPathComponent("big.ppm"), tif = dir.appendingPathComponent("big.tif")
    try (Data("P6 \(w) \(h) 255\n".utf8) + Data(px)).write(to: ppm)
    var r = try CLI.run(["convert", ppm.path, "--out", tif.path, "--tile", "128", "--compression", "deflate", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual((try json(r)["levels"] as? [[Int]])?.first, [600, 420])
    r = try CLI.run(["info", tif.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let info = try json(r)
    for key in ["format", "width", "height", "channels", "bitsPerSample", "compression", "bigTIFF", "levels"] {
      XCTAssertNotNil(info[key], key)
    }
    XCTAssertEqual(info["compression"] as? String, "deflate")
    let levels = try XCTUnwrap(info["levels"] as? [[String: Any]])
    XCTAssertEqual(levels.map { $0["width"] as? Int }, [600, 300, 150, 75])  // down to one tile
    for key in ["index", "width", "height", "downsample", "tileWidth", "tileHeight"] { XCTAssertNotNil(levels[0][key], key) }
    r = try CLI.run(["info", ppm.path, "--json"])
    XCTAssertEqual((try json(r)["levels"] as? [[String: Any]])?.count, 1)

    // preview --region --policy none: exactly that region's pixels (level 0 equals the PPM's).
    let out = dir.appendingPathComponent("r.png"), outP = dir.appendingPathComponent("rp.png")
    r = try CLI.run(["preview", tif.path, "--region", "100,50,200,150", "--policy", "none", "--out", out.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    r = try CLI.run(["preview", ppm.path, "--region", "100,50,200,150", "--policy", "none", "--out", outP.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let reader = ImageReader()
    XCTAssertEqual(try reader.read(out).pixels.toArray(), try reader.read(outP).pixels.toArray())
    r = try CLI.run(["preview", tif.path, "--region", "10,10,40,30", "--level", "1", "--policy", "none", "--out", out.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try json(r)["output"] as? [Int], [40, 30])
    r = try CLI.run(["preview", tif.path, "--region", "590,0,20,20", "--policy", "none", "--out", out.path])
    XCTAssertEqual(r.status, 1)
    XCTAssert(r.stderr.contains("big.tif") && r.stderr.contains("not inside level 0"), r.stderr)
    r = try CLI.run(["preview", tif.path, "--region", "0,0,10,10", "--level", "7", "--policy", "none", "--out", out.path])
    XCTAssert(r.stderr.contains("level 7 does not exist"), r.stderr)

    // predict --tile on the TIFF equals predict --tile on the PPM; large maps go to TIFF.
    let data = dir.appendingPathComponent("data")
    for c in ["a", "b"] {
      try FileManager.default.createDirectory(at: data.appendingPathComponent(c), withIntermediateDirectories: true)
      for i in 0..<2 { try FileManager.default.copyItem(at: ppm, to: data.appendingPathComponent("\(c)/\(i).ppm")) }
    }
    let run = dir.appendingPathComponent("run")
    r = try CLI.run(["train", "--data", data.path, "--image-size", "64", "--epochs", "1", "--batch", "2", "--out", run.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let hm = dir.appendingPathComponent("hm")
    r = try CLI.run(["predict", "--run", run.path, tif.path, "--tile", "128", "--heatmaps", hm.path, "--json"],
                    environment: ["TESSERA_PNG_HEATMAP_CELLS": "10"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let a = try XCTUnwrap((try json(r)["predictions"] as? [[String: Any]])?.first)
    r = try CLI.run(["predict", "--run", run.path, ppm.path, "--tile", "128", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let b = try XCTUnwrap((try json(r)["predictions"] as? [[String: Any]])?.first)
    let pa = (a["top"] as? [[String: Any]])?.map { $0["probability"] as? Double ?? -1 } ?? []
    let pb = (b["top"] as? [[String: Any]])?.map { $0["probability"] as? Double ?? -2 } ?? []
    XCTAssertEqual(pa.count, 2)
    for (x, y) in zip(pa, pb) { XCTAssertEqual(x, y, accuracy: 1e-9) }
    let maps = try XCTUnwrap(a["heatmaps"] as? [String])
    XCTAssertEqual(maps.map { URL(fileURLWithPath: $0).lastPathComponent }, ["big.a.tif", "big.b.tif"])
    let heat = try TIFFFile(URL(fileURLWithPath: maps[0]))
    let shape = try XCTUnwrap(a["scoreMap"] as? [Int])
    XCTAssertEqual([heat.levels[0].height, heat.levels[0].width], Array(shape.suffix(2)))
    // tifffile opens the heatmap TIFF and reads the same probabilities.
    let py = ReportCLITests.root.appendingPathComponent(".venv-peers/bin/python").path
    if FileManager.default.isExecutableFile(atPath: py) {
      let t = try ReportCLITests.run(py, ["-c", "import sys, tifffile; a = tifffile.imread(sys.argv[1]); print(a.shape[0], a.shape[1], int(a.sum()))", maps[0]])
      XCTAssertEqual(t.status, 0, t.stderr)
      let ours = try heat.read(level: 0, channels: 1).toArray()
      let sum = ours.reduce(0) { $0 + Int(($1 * 255).rounded()) }
      XCTAssertEqual(t.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "\(shape[1]) \(shape[2]) \(sum)")
    }
  }

  /// convert from a JPEG (decoded row by row, never whole) writes exactly the JPEG's decoded pixels.
  func testConvertFromAJPEGStreamsRowsExactly() throws {
    let (w, h) = (333, 210)
    var px = [UInt8]()
    for y in 0..<h { for x in 0..<w { px += [UInt8((x * 3) % 256), UInt8((y * 5) % 256), UInt8((x ^ y) % 256)] } }
    let jpg = dir.appendingPathComponent("p.jpg"), tif = dir.appendingPathComponent("p.tif")
    try JPEGEncoder.encode(px, width: w, height: h, quality: 92).write(to: jpg)
    let r = try CLI.run(["convert", jpg.path, "--out", tif.path, "--tile", "64", "--compression", "lzw"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let ours = try TIFFFile(tif).read(level: 0).toArray()
    let reference = try ImageReader().read(jpg).pixels.toArray()
    XCTAssertEqual(ours.count, reference.count)
    XCTAssertLessThanOrEqual(zip(ours, reference).map { abs($0 - $1) }.max() ?? 1, 1e-6)
    let bad = dir.appendingPathComponent("bad.jpg")
    try Data([0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2]).write(to: bad)
    let rb = try CLI.run(["convert", bad.path, "--out", dir.appendingPathComponent("bad.tif").path])
    XCTAssertEqual(rb.status, 1)
    XCTAssert(rb.stderr.contains("bad.jpg"), rb.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("bad.tif").path))
  }
}
