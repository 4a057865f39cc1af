import Foundation
import Tessera
import TesseraData
import TesseraTIFF
import TestSupport
import XCTest

/// A slide-like image: a white background with a saturated "tissue" disc.
final class SlideRows: RowStream {
  let width: Int, height: Int, channels = 3
  let cx: Int, cy: Int, radius: Int, tint: (UInt8, UInt8, UInt8)
  var y = 0
  init(width: Int, height: Int, cx: Int, cy: Int, radius: Int, tint: (UInt8, UInt8, UInt8)) {
    self.width = width
    self.height = height
    self.cx = cx
    self.cy = cy
    self.radius = radius
    self.tint = tint
  }
  func inside(_ x: Int, _ y: Int) -> Bool { (x - cx) * (x - cx) + (y - cy) * (y - cy) <= radius * radius }
  func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    for r in 0..<rows {
      for x in 0..<width {
        let o = out + (r * width + x) * 3, t = inside(x, y + r)
        let n = UInt8((x * 7 + (y + r) * 13) % 17)
        o[0] = t ? tint.0 &+ n : 245 - n
        o[1] = t ? tint.1 &+ n : 244 - n
        o[2] = t ? tint.2 &+ n : 246 - n
      }
    }
    y += rows
  }
}

final class PatchesCLITests: TemporaryDirectoryTestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    if let why = TIFFFile.available() { throw XCTSkip("TIFF: \(why)") }
  }

  func testPatchesOnTheForegroundThenTrainAndEvaluateFromThem() throws {
    let data = dir.appendingPathComponent("slides")
    for (c, tint) in [("pink", (UInt8(200), UInt8(60), UInt8(140))), ("blue", (UInt8(60), UInt8(80), UInt8(200)))] {
      try FileManager.default.createDirectory(at: data.appendingPathComponent(c), withIntermediateDirectories: true)
      for i in 0..<2 {
        let rows = SlideRows(width: 1024, height: 768, cx: 400 + 100 * i, cy: 380, radius: 260, tint: tint)
        _ = try TIFFConverter.convert(rows, to: data.appendingPathComponent("\(c)/s\(i).tif"), tile: 128, compression: 8)
      }
    }
    let list = dir.appendingPathComponent("patches.csv"), mask = dir.appendingPathComponent("mask.png")
    var r = try CLI.run(["patches", "--data", data.path, "--size", "64", "--level", "1", "--out", list.path,
                         "--mask-preview", mask.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    let n = try XCTUnwrap(o["patches"] as? Int)
    // Level 1 is 512×384: a 8×6 grid of 64-px patches; the disc (radius 130 at level 1) covers
    // about a third of the image, so some patches are kept, not all.
    XCTAssert(n > 8 && n < 4 * 48, "\(n) patches")
    let text = try String(contentsOf: list, encoding: .utf8)
    XCTAssert(text.hasPrefix("# root: slides\npath,x,y,w,h,level,label\n"), text)
    // Every kept patch's centre lies on the disc.
    let ds = try ImageDataset.patches(list)
    XCTAssertEqual(ds.samples.count, n)
    XCTAssertEqual(ds.classes, ["blue", "pink"])
    for s in ds.samples {
      let r = try XCTUnwrap(s.region)
      XCTAssertEqual(r.width, 128)  // 64 px at level 1 = 128 level-0 pixels
      let i = s.relativePath.hasSuffix("s1.tif") ? 1 : 0
      let dx = r.x + 64 - (400 + 100 * i), dy = r.y + 64 - 380
      XCTAssertLessThanOrEqual(dx * dx + dy * dy, 300 * 300, "\(s.relativePath) \(r)")
    }
    XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent("mask.s0.png").path))
    // Train from the list (whole files split), then evaluate the held-out files' patches.
    let run = dir.appendingPathComponent("run")
    r = try CLI.run(["train", "--patches", list.path, "--image-size", "64", "--epochs", "1", "--batch", "4", "--test", "0.5",
                     "--out", run.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let t = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertEqual(t["heldOut"] as? Bool, true)
    let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: run.appendingPathComponent("config.json"))) as? [String: Any])
    let trainImages = try XCTUnwrap(cfg["trainImages"] as? Int), held = try XCTUnwrap(cfg["heldOutImages"] as? Int)
    XCTAssertEqual(trainImages + held, n)
    r = try CLI.run(["eval", "--run", run.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let e = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertEqual(e["samples"] as? Int, held)
    // No file in both: the split is by file.
    let splits = DatasetSplit.assignByFile(ds.samples, test: 0.5, seed: 0)
    var where_ = [String: Set<String>]()
    for (s, sp) in zip(ds.samples, splits) { where_[s.relativePath, default: []].insert(sp) }
    XCTAssert(where_.values.allSatisfy { $0.count == 1 })
  }

  /// train --native --tile: each slide read from its file crop by crop (never decoded whole) gives the
  /// same losses as decoding each slide whole (lr 0, so both see the same weights), and eval of the
  /// run reads the held-out slides the same way.
  func testNativeStreamedTrainingFromFilesEqualsWholeImages() throws {
    let data = dir.appendingPathComponent("slides")
    for (c, tint) in [("pink", (UInt8(200), UInt8(60), UInt8(140))), ("blue", (UInt8(60), UInt8(80), UInt8(200)))] {
      try FileManager.default.createDirectory(at: data.appendingPathComponent(c), withIntermediateDirectories: true)
      for i in 0..<3 {
        let rows = SlideRows(width: 192 + 16 * i, height: 160, cx: 90, cy: 80, radius: 50 + 5 * i, tint: tint)
        _ = try TIFFConverter.convert(rows, to: data.appendingPathComponent("\(c)/s\(i).tif"), tile: 64, compression: 8)
      }
    }
    func losses(_ out: URL, _ extra: [String]) throws -> [Double] {
      let r = try CLI.run(["train", "--data", data.path, "--native", "--epochs", "2", "--lr", "0", "--test", "0.34", "--seed", "2",
                           "--out", out.path] + extra)
      XCTAssertEqual(r.status, 0, r.stderr)
      if !extra.isEmpty { XCTAssert(r.stderr.contains("read from its file crop by crop"), r.stderr) }
      return try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").flatMap { l -> [Double] in
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any])
        return [o["loss"] as? Double ?? .nan, o["val_loss"] as? Double ?? .nan]
      }
    }
    let whole = try losses(dir.appendingPathComponent("whole"), [])
    let streamed = try losses(dir.appendingPathComponent("streamed"), ["--tile", "64", "--stream-blocks", "2"])
    XCTAssertEqual(whole.count, 4)
    for (a, b) in zip(streamed, whole) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b)), "\(streamed) vs \(whole)") }
    let r = try CLI.run(["eval", "--run", dir.appendingPathComponent("streamed").path, "--last", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last!.utf8)) as? [String: Any])
    XCTAssertEqual(o["loss"] as? Double ?? .nan, whole[3], accuracy: 1e-5 * max(1, abs(whole[3])))
  }
}
