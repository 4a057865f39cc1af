import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels

struct DataBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "data",
    abstract: "Images/s of decode + resize to the model's input, with and without JPEG DCT scaling.",
    discussion: prose("""
      Runs the streaming loader (fit policy, area filter, batches of 8) over --data, or over
      --generate N synthetic 4000×3000 JPEGs written to a temporary folder. With --pillow PYTHON, runs
      benchmarks/pillow_pipeline.py (the same pipeline in Pillow) on the same files in the same run.
      """))

  @Option(help: "Image folder (DIR/<class>/<images>).") var data: String?
  @Option(help: "Generate this many 4000×3000 JPEGs instead of --data.") var generate: Int?
  @Option(help: "Target side.") var size = 512
  @Option(help: "Loader worker threads.") var workers = 2
  @Option(help: "Passes over the data (best reported).") var passes = 2
  @Option(help: "A Python with Pillow, to run the same pipeline in Pillow in this run.") var pillow: String?
  @Flag(help: "Print one JSON object.") var json = false

  func run() throws {
    var cleanup: URL? = nil
    defer { if let c = cleanup { try? FileManager.default.removeItem(at: c) } }
    let root: URL
    if let n = generate {
      guard n >= 1 else { throw ValidationError("--generate must be at least 1") }
      root = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench-data-\(getpid())")
      cleanup = root
      try Self.generateJPEGs(n, into: root.appendingPathComponent("synthetic"))
    } else if let d = data {
      root = URL(fileURLWithPath: d)
    } else {
      throw ValidationError("give --data DIR or --generate N")
    }
    let ds = try ImageDataset.folder(root)
    func measure(dct: Bool) throws -> Double {
      var best = 0.0
      for _ in 0..<max(passes, 1) {
        var p = ImagePipeline(size: size, policy: .fit, filter: .area)
        p.useDCTScaling = dct
        let loader = BatchLoader(dataset: ds, pipeline: p, batchSize: 8)
        loader.workers = workers
        loader.shuffle = false
        let t0 = DispatchTime.now().uptimeNanoseconds
        let it = loader.epoch(0)
        var n = 0
        while let b = try it.next() { n += b.labels.count }
        best = max(best, Double(n) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9))
      }
      return best
    }
    let withDCT = try measure(dct: true), without = try measure(dct: false)
    // One thread, stage by stage: decode only, then decode + resize + letterbox.
    let pipeline = ImagePipeline(size: size, policy: .fit, filter: .area)
    func perImageMs(_ body: (URL) throws -> Void) rethrows -> Double {
      let t0 = DispatchTime.now().uptimeNanoseconds
      for s in ds.samples { try body(s.url) }
      return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6 / Double(ds.samples.count)
    }
    let decodeMs = try perImageMs { url in
      let info = try pipeline.reader.info(url)
      let (rw, rh) = pipeline.resizedSize(width: info.width, height: info.height)
      _ = try pipeline.reader.read(url, minimumSize: (rw, rh))
    }
    let prepareMs = try perImageMs { _ = try pipeline.prepare($0) }
    var out: [String: Any] = ["bench": "data", "images": ds.samples.count, "size": size, "workers": workers,
                              "images_per_second": (withDCT * 100).rounded() / 100,
                              "images_per_second_no_dct_scaling": (without * 100).rounded() / 100,
                              "decode_ms_one_thread": (decodeMs * 10).rounded() / 10,
                              "prepare_ms_one_thread": (prepareMs * 10).rounded() / 10]
    if let py = pillow {
      let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("benchmarks/pillow_pipeline.py")
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
      p.arguments = [py, script.path, root.path, "--size", String(size), "--threads", String(workers), "--passes", String(passes)]
      let pipe = Pipe()
      p.standardOutput = pipe
      try p.run()
      let d = pipe.fileHandleForReading.readDataToEndOfFile()
      p.waitUntilExit()
      if p.terminationStatus == 0, let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any] {
        out["pillow"] = obj
        if let best = obj["images_per_second"] as? Double, best > 0 { out["ratio_to_pillow"] = (withDCT / best * 100).rounded() / 100 }
      } else {
        note("warning: the Pillow run failed (is Pillow installed for \(py)?)")
      }
    }
    if json { printJSON(out) } else {
      print(String(format: "%d images → %d: %.1f images/s with DCT scaling, %.1f without (%d workers)",
                   ds.samples.count, size, withDCT, without, workers))
      if let r = out["ratio_to_pillow"] as? Double { print("Pillow, same files, same run: ratio \(r)") }
    }
  }

  /// Smooth colour fields with edges and noise, 4000×3000, quality 90.
  static func generateJPEGs(_ n: Int, into dir: URL) throws {
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let (w, h) = (4000, 3000)
    var px = [UInt8](repeating: 0, count: w * h * 3)
    var g = SeededGenerator(seed: 1)
    for i in 0..<n {
      for y in 0..<h {
        for x in 0..<w {
          let o = (y * w + x) * 3
          let noise = UInt8(g.next() & 15)
          px[o] = UInt8((x * 255 / w + i * 40) & 255) &+ noise
          px[o + 1] = UInt8((y * 255 / h) & 255) &+ noise
          px[o + 2] = ((x / 97 + y / 61) % 2 == 0 ? 200 : 40) &+ noise
        }
      }
      let data = try JPEGEncoder.encode(px, width: w, height: h, quality: 90)
      try data.write(to: dir.appendingPathComponent(String(format: "%03d.jpg", i)))
    }
  }
}
