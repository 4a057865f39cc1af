import Foundation
#if canImport(FoundationXML)
  import FoundationXML
#endif
import Tessera
import TesseraData
import TesseraPlanner
import TesseraReport
import TestSupport
import XCTest

/// Counts the elements of an XML document (an SVG chart), failing on a parse error.
final class ElementCounter: NSObject, XMLParserDelegate {
  var counts = [String: Int]()
  var texts = [String]()
  func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
    counts[name, default: 0] += 1
  }
  func parser(_ parser: XMLParser, foundCharacters string: String) { texts.append(string) }

  static func parse(_ xml: String) throws -> ElementCounter {
    let c = ElementCounter()
    let p = XMLParser(data: Data(xml.utf8))
    p.delegate = c
    guard p.parse() else { throw NSError(domain: "xml", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(p.parserError.map { "\($0)" } ?? "parse error") in \(xml.prefix(300))"]) }
    return c
  }
}

/// Reads TFRecords back, checking both CRCs, and decodes Event / Summary / Value by hand: an
/// independent reader of what TensorBoardWriter wrote (TensorBoard's own reader is run by the CLI
/// test through scripts/read_tensorboard.py).
enum EventReader {
  struct Event { var wallTime = 0.0, step = 0, version = "", scalars = [(String, Float)]() }

  static func records(_ d: [UInt8]) throws -> [[UInt8]] {
    var i = 0, out = [[UInt8]]()
    func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(d[at + $1]) << (8 * UInt32($1)) } }
    while i < d.count {
      let lenBytes = Array(d[i..<(i + 8)])
      let len = (0..<8).reduce(0) { $0 | Int(lenBytes[$1]) << (8 * $1) }
      guard u32(i + 8) == CRC32C.masked(lenBytes) else { throw NSError(domain: "crc", code: 1) }
      let data = Array(d[(i + 12)..<(i + 12 + len)])
      guard u32(i + 12 + len) == CRC32C.masked(data) else { throw NSError(domain: "crc", code: 2) }
      out.append(data)
      i += 16 + len
    }
    return out
  }

  /// (field, wire type, varint or fixed value, bytes) of a protobuf message.
  static func fields(_ b: [UInt8]) -> [(Int, Int, UInt64, [UInt8])] {
    var i = 0, out = [(Int, Int, UInt64, [UInt8])]()
    func varint() -> UInt64 {
      var v: UInt64 = 0, shift: UInt64 = 0
      while true {
        let x = b[i]
        i += 1
        v |= UInt64(x & 0x7F) << shift
        if x < 0x80 { return v }
        shift += 7
      }
    }
    while i < b.count {
      let key = varint(), field = Int(key >> 3), wire = Int(key & 7)
      switch wire {
      case 0: out.append((field, 0, varint(), []))
      case 1: out.append((field, 1, (0..<8).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }, [])); i += 8
      case 5: out.append((field, 5, (0..<4).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }, [])); i += 4
      default:
        let n = Int(varint())
        out.append((field, 2, 0, Array(b[i..<(i + n)])))
        i += n
      }
    }
    return out
  }

  static func events(_ url: URL) throws -> [Event] {
    try records([UInt8](try Data(contentsOf: url))).map { r in
      var e = Event()
      for (f, _, v, bytes) in fields(r) {
        switch f {
        case 1: e.wallTime = Double(bitPattern: v)
        case 2: e.step = Int(Int64(bitPattern: v))
        case 3: e.version = String(decoding: bytes, as: UTF8.self)
        case 5:
          for (_, _, _, value) in fields(bytes) {
            var tag = "", x: Float = .nan
            for (g, _, w, vb) in fields(value) {
              if g == 1 { tag = String(decoding: vb, as: UTF8.self) }
              if g == 2 { x = Float(bitPattern: UInt32(w)) }
            }
            e.scalars.append((tag, x))
          }
        default: break
        }
      }
      return e
    }
  }
}

final class ReportTests: TemporaryDirectoryTestCase {
  func testCRC32CAndEventFilesReadBack() throws {
    // The CRC-32C check value (RFC 3720, B.4) and TFRecord's masking of it.
    XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    let w = try TensorBoardWriter(directory: dir.appendingPathComponent("tb"), now: Date(timeIntervalSince1970: 1_700_000_000))
    try w.add(step: 3, scalars: [("epoch/loss", 0.693), ("epoch/accuracy", 0.5)])
    try w.add(step: 7_000_000_000, scalars: [("step/lr", 1e-3)])
    let events = try EventReader.events(w.url)
    XCTAssertEqual(events.count, 3)
    XCTAssertEqual(events[0].version, "brain.Event:2")
    XCTAssertEqual(events[0].wallTime, 1_700_000_000)
    XCTAssertEqual(events[1].step, 3)
    XCTAssertEqual(events[1].scalars.map(\.0), ["epoch/loss", "epoch/accuracy"])
    XCTAssertEqual(events[1].scalars.map(\.1), [Float(0.693), 0.5])
    XCTAssertEqual(events[2].step, 7_000_000_000)
    XCTAssertEqual(events[2].scalars.first?.1, Float(1e-3))
    XCTAssert(w.url.lastPathComponent.hasPrefix("events.out.tfevents.1700000000."), w.url.lastPathComponent)
  }

  func testChartsAreWellFormedSVGWithTheirParts() throws {
    let line = LineChart(id: "c1", title: "Loss & <things>", xLabel: "epoch", yLabel: "loss",
                         series: [.init(name: "training", points: [(1, 2), (2, 1), (3, 0.5)], style: 0),
                                  .init(name: "held-out", points: [(1, 2.2), (2, 1.4), (3, .nan)], style: 1)])
    var c = try ElementCounter.parse(line.svg)
    XCTAssertEqual(c.counts["title"], 1)
    XCTAssertEqual(c.counts["desc"], 1)
    XCTAssertEqual(c.counts["circle"], 3 + 1, "three markers and the legend's")  // series 0: circles
    XCTAssert(c.texts.contains("training") && c.texts.contains("held-out") && c.texts.contains("epoch") && c.texts.contains("loss"))
    let bars = StackedBarChart(id: "c2", title: "bytes", valueLabel: "MiB", categories: ["a", "b", "c"],
                               rows: [("conv1", [1, 2, 0]), ("fc", [0.5, 0, 3])])
    c = try ElementCounter.parse(bars.svg)
    XCTAssertEqual(c.counts["pattern"], 3)
    XCTAssertEqual(c.counts["rect"], 3 * 1 + 4 + 3, "pattern fills, non-zero segments and legend swatches")
    let heat = HeatmapChart(id: "c3", title: "confusion", rowLabels: ["cat", "dog"], columnLabels: ["cat", "dog"], rowAxis: "true",
                            columnAxis: "predicted", values: [[0.9, 0.1], [0.2, 0.8]], text: [["9", "1"], ["2", "8"]])
    c = try ElementCounter.parse(heat.svg)
    XCTAssertEqual(c.counts["rect"], 4)
    XCTAssert(["9", "1", "2", "8"].allSatisfy { c.texts.contains($0) })
    // Ticks are round numbers covering the range.
    let t = niceTicksForTest(0.13, 0.87)
    XCTAssertEqual(t, [0.2, 0.4, 0.6, 0.8])
  }

  func niceTicksForTest(_ a: Double, _ b: Double) -> [Double] {
    // The chart's y axis for a series spanning [a, b] (with its 5 % padding), read back from the SVG.
    let chart = LineChart(id: "t", title: "t", xLabel: "x", yLabel: "y", series: [.init(name: "s", points: [(0, a), (1, b)], style: 0)])
    let c = try? ElementCounter.parse(chart.svg)
    let numbers = (c?.texts ?? []).compactMap(Double.init)
    return Array(Set(numbers.filter { $0 > 0.1 && $0 < 0.95 && $0 != 1 })).sorted()
  }

  /// A 100-epoch run with per-step lines, a 10-class confusion matrix, a plan and 24 thumbnails
  /// stays under 2 MB and holds every section and table.
  func testReportOfAHundredEpochsIsSmallAndComplete() throws {
    var r = RunReport(name: "run")
    r.classNames = (0..<10).map { "class \($0)" }
    r.budgetBytes = 2 << 30
    for e in 1...100 {
      r.epochs.append(["epoch": e, "loss": 2.3 / Double(e), "val_loss": 2.4 / Double(e), "accuracy": 1 - 1 / Double(e + 1),
                       "val_accuracy": 1 - 1.2 / Double(e + 2), "lr": 0.01, "images_per_second": 100.0 + Double(e % 7),
                       "peak_bytes": 1 << 30, "seconds": 10.0, "step": e * 50])
      for s in 0..<5 { r.steps.append(["kind": "step", "epoch": e, "step": (e - 1) * 50 + 10 * (s + 1), "batch": 10 * (s + 1), "batches": 50, "loss": 2.0, "lr": 0.01]) }
    }
    r.confusion = (0..<10).map { i in (0..<10).map { j in i == j ? 40 : (i + j) % 3 } }
    r.confusionNote = "held-out images after epoch 100"
    let model = Sequential([("conv", Conv2D(inputChannels: 3, outputChannels: 8, kernelSize: 3, padding: .same)), ("relu", ReLU()),
                            ("pool", GlobalAvgPool2D()), ("fc", Linear(inputFeatures: 8, outputFeatures: 10))])
    r.plan = try Planner.plan(model, name: "tiny", input: [3, 64, 64], batch: 4)
    let jpeg = try JPEGEncoder.encode([UInt8](repeating: 128, count: 128 * 128 * 3), width: 128, height: 128)
    r.predictions = (0..<24).map { RunReport.Prediction(name: "\($0).jpg", jpeg: jpeg, truth: "class \($0 % 10)", predicted: "class \($0 % 7)", probability: 0.8) }
    let html = r.html
    XCTAssertLessThan(html.utf8.count, 2_000_000)
    for id in ["chart-loss", "chart-accuracy", "chart-lr", "chart-speed", "chart-memory", "chart-confusion", "chart-plan-layers",
               "table-loss", "table-steps", "table-precision-recall", "table-confusion", "grid-predictions", "table-predictions"] {
      XCTAssert(html.contains("id=\"\(id)\""), id)
    }
    // Every SVG in the page parses as XML.
    let svgs = html.components(separatedBy: "<svg ").dropFirst().map { "<svg " + $0.components(separatedBy: "</svg>")[0] + "</svg>" }
    XCTAssertEqual(svgs.count, 8)
    for s in svgs { _ = try ElementCounter.parse(s) }
    XCTAssertFalse(html.contains("<script"), "no script")
    XCTAssertFalse(html.contains("http://") && html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").contains("http://"), "no network")
  }
}
