import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraTraining
import TesseraKernels
import TesseraPlanner
import TesseraTIFF

/// The model of a run folder (config.json + best/last checkpoint) or of an explicit checkpoint.
struct TrainedModelOptions: ParsableArguments {
  @Option(help: "A run folder from `tessera train` (uses its config and best.safetensors).") var run: String?
  @Option(help: "A checkpoint (safetensors); with --model, --image-size and --classes unless inside a run folder.")
  var checkpoint: String?
  @Option(help: "Model (when not given by a run).") var model: String?
  @Option(help: "Input side (when not given by a run).") var imageSize: Int?
  @Option(help: "Class names, comma-separated (when not given by a run).") var classes: String?
  @Flag(help: "Use the run's last.safetensors instead of best.safetensors.") var last = false

  /// The run's config.json, when --run is given.
  func runConfig() throws -> [String: Any] {
    guard let r = run else { return [:] }
    let url = URL(fileURLWithPath: r).appendingPathComponent("config.json")
    guard let data = try? Data(contentsOf: url) else {
      throw CLIError("\(r): not a run folder (no readable config.json); give the --out of a `tessera train`, or --checkpoint with --model, --image-size and --classes")
    }
    guard let cfg = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
      throw CLIError("\(url.path): damaged (not a JSON object); the run's settings cannot be read")
    }
    // Values a hand-edited or damaged config may hold are checked before they size anything.
    if let p = cfg["policy"], !["fit", "fill", "stretch"].contains(p as? String ?? "") {
      throw CLIError("\(url.path): policy must be fit, fill or stretch, got \(p)")
    }
    if let s = cfg["imageSize"], !(1...Limits.maxSide).contains(s as? Int ?? 0) {
      throw CLIError("\(url.path): imageSize must be a whole number from 1 to \(Limits.maxSide), got \(s)")
    }
    if let b = cfg["batch"], !(1...Limits.maxBatch).contains(b as? Int ?? 0) {
      throw CLIError("\(url.path): batch must be a whole number from 1 to \(Limits.maxBatch), got \(b)")
    }
    if let c = cfg["classes"], ((c as? [String]) ?? []).isEmpty {
      throw CLIError("\(url.path): classes must be a list of class names")
    }
    return cfg
  }

  func load() throws -> (net: Sequential, classes: [String], pipeline: ImagePipeline) {
    var cfg = [String: Any]()
    var ckpt = checkpoint.map { URL(fileURLWithPath: $0) }
    if let r = run {
      let dir = URL(fileURLWithPath: r)
      cfg = try runConfig()
      if ckpt == nil {
        let best = dir.appendingPathComponent("best.safetensors")
        ckpt = !last && FileManager.default.fileExists(atPath: best.path) ? best : dir.appendingPathComponent("last.safetensors")
      }
    }
    guard let ck = ckpt else { throw CLIError("give --run DIR or --checkpoint FILE") }
    let names = (cfg["classes"] as? [String]) ?? classes?.split(separator: ",").map(String.init) ?? []
    guard !names.isEmpty else { throw CLIError("class names unknown: give --run or --classes a,b,c") }
    guard let modelName = (cfg["model"] as? String) ?? model, let size = (cfg["imageSize"] as? Int) ?? imageSize else {
      throw CLIError("model and input size unknown: give --run or --model and --image-size")
    }
    guard (1...Limits.maxSide).contains(size) else { throw CLIError("--image-size must be between 1 and \(Limits.maxSide), got \(size)") }
    let (_, net, channels) = try ModelLoader.load(modelName, classes: names.count)
    try checkHead(net, input: [channels, size, size], classes: names.count, model: modelName)
    try Checkpoint.load(ck, into: net)
    let policy = ResizePolicy(rawValue: (cfg["policy"] as? String) ?? "fit") ?? .fit
    return (net, names, ImagePipeline(size: size, policy: policy, channels: channels))
  }
}

/// A run's own held-out images, rebuilt exactly as `tessera train` split them (nil indices: all).
func heldOutSet(of cfg: [String: Any]) throws -> (ImageDataset, [Int]?) {
  if let p = cfg["patches"] as? String {
    let ds = try ImageDataset.patches(URL(fileURLWithPath: p), root: (cfg["data"] as? String).map { URL(fileURLWithPath: $0) })
    let splits = ds.samples.contains { $0.split != nil } ? ds.samples.map { $0.split ?? "train" }
      : DatasetSplit.assignByFile(ds.samples, test: cfg["test"] as? Double ?? 0.3, seed: UInt64(cfg["seed"] as? Int ?? 0))
    return (ds, splits.indices.filter { splits[$0] != "train" })
  } else if let m = cfg["manifest"] as? String {
    let ds = try ImageDataset.manifest(URL(fileURLWithPath: m))
    let hasVal = ds.samples.contains { $0.split == "val" }
    return (ds, ds.samples.indices.filter { ds.samples[$0].split == (hasVal ? "val" : "test") })
  } else if let d = cfg["data"] as? String {
    let ds = try ImageDataset.folder(URL(fileURLWithPath: d))
    let splits = DatasetSplit.assign(ds.samples, test: cfg["test"] as? Double ?? 0.3, seed: UInt64(cfg["seed"] as? Int ?? 0))
    return (ds, splits.indices.filter { splits[$0] != "train" })
  }
  throw CLIError("give --data DIR (or --run of a run whose config names its data)")
}

struct EvalCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "eval", abstract: "Loss, accuracy and confusion matrix of a trained model on a folder of images.")

  @OptionGroup var trained: TrainedModelOptions
  @Option(help: "Image folder DIR/<class>/<images> (class names as in training); default with --run: the run's held-out split.")
  var data: String?
  @Option(help: "Images per batch.") var batch = 16
  @Option(help: "Run the network's streamable first blocks tile by tile, N input pixels of output per tile, or auto (the planner's tile within --budget); exact, for images whose activations do not fit.")
  var tile: String?
  @Option(help: "Memory budget, e.g. 2GiB (default: what this machine has available); refused before anything runs when the evaluation does not fit.")
  var budget: String?
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    try checkRange(batch, 1...Limits.maxBatch, "--batch")
    if let t = tile, t != "auto", !(1...Limits.maxSide).contains(Int(t) ?? 0) {
      throw ValidationError("--tile must be a number of pixels from 1 to \(Limits.maxSide) or auto, got '\(t)'")
    }
  }

  func run() throws {
    try global.apply()
    compute.apply()
    var (net, names, pipeline) = try trained.load()
    let cfg0 = try trained.runConfig()
    // A run trained at native resolution is evaluated so: one image per batch, read crop by crop
    // from its file when it was streamed (its --tile, unless another is given).
    let native = cfg0["native"] as? Bool ?? false
    if native { pipeline = ImagePipeline(size: pipeline.height, policy: .none, channels: pipeline.channels) }
    let tile = self.tile ?? (native ? (cfg0["tile"] as? String) : nil)
    var input = [pipeline.channels, pipeline.height, pipeline.width]
    let ceiling = try budget.map { try ByteSize.parse($0) } ?? MachineMemory.availableBytes()
    // Images read from their files crop by crop are never held whole: the reader's tile cache
    // counts instead of the loader's batches (as in train).
    let streamed = native && tile != nil
    var cacheBytes = 0
    func needs(_ m: Sequential, _ b: Int) throws -> Int {
      try Planner.plan(m, name: "", input: input, batch: b, optimizer: .sgd, inputResident: !streamed).peakInferenceBytes
        + (streamed ? cacheBytes : BatchLoader.bytesInFlight(batch: b, imageShape: input, prefetch: 2)) + runtimeReserveBytes
    }
    var ds: ImageDataset
    var indices: [Int]? = nil
    if let d = data {
      ds = try ImageDataset.folder(URL(fileURLWithPath: d))
    } else {
      (ds, indices) = try heldOutSet(of: cfg0)
    }
    if native {
      var (h, w) = (1, 1)
      for i in indices ?? Array(ds.samples.indices) {
        let img = try RegionImages.open(ds.samples[i].url, reader: ImageReader(maxPixels: 1 << 40, maxFileBytes: 1 << 40))
        (h, w) = (max(h, img.levelSizes[0].height), max(w, img.levelSizes[0].width))
        cacheBytes = max(cacheBytes, img.cacheLimitBytes)
      }
      input = [pipeline.channels, h, w]
      try Limits.check([1] + input, "the largest held-out image")
    }
    if let t = tile {
      if t == "auto" && (try? needs(net, 1)).map({ $0 <= ceiling }) == true {
        note("--tile auto: the images fit without tiles")
      } else if t == "auto" {
        let c = try Planner.applyStreaming(net, StreamingSettings(tile: 0, inputResident: !streamed), input: input, batch: 1,
                                           budget: ceiling - runtimeReserveBytes - (streamed ? cacheBytes : 0), optimizer: .sgd)
        net = c.model
        note(describe(c, StreamingSettings(tile: c.tile, inputResident: !streamed)))
      } else {
        net = try Streamed.apply(to: net, blocks: max(1, Streamed.streamableBlocks(of: net)), tile: Int(t)!)
        _ = try net.outputShape(for: [1] + input)  // a tile off the stride fails here
      }
    }
    let label = data ?? "held-out split"
    // Map this folder's labels onto the model's classes by name.
    var remapped = ds
    for (i, s) in ds.samples.enumerated() {
      guard let idx = names.firstIndex(of: ds.classes[s.label]) else {
        throw CLIError("\(label): class '\(ds.classes[s.label])' is not one of the model's classes \(names)")
      }
      remapped.samples[i].label = idx
    }
    remapped.classes = names
    let cfgBatch = cfg0["batch"] as? Int
    let b = native ? 1 : data == nil ? (cfgBatch ?? batch) : batch
    // The evaluation's plan: inference at this batch, the loader's batches, the runtime.
    let needed = try needs(net, b)
    guard needed <= ceiling else {
      throw CLIError("evaluating \(b) images of \(input.map(String.init).joined(separator: "×")) at a time needs \(ByteSize.format(needed)), more than \(budget == nil ? "this machine has available" : "--budget") (\(ByteSize.format(ceiling))); use a smaller --batch or --tile auto")
    }
    limitBlockCache(budget: ceiling, planned: needed - runtimeReserveBytes)
    let loader = BatchLoader(dataset: remapped, indices: indices, pipeline: pipeline, batchSize: b)
    loader.streamFromFiles = native && tile != nil
    loader.shuffle = false
    loader.onWarning = { note("warning: " + $0) }
    let trainer = Trainer(model: net, optimizer: SGD(), schedule: .constant(0), classes: names.count)
    let m = try trainer.evaluate(loader)
    if json {
      var o = m.json
      o["classes"] = names
      o["plannedPeakBytes"] = needed
      o["peakBytes"] = MemoryLedger.shared.peakBytes
      o["maxRSSBytes"] = maxRSSBytes()
      printJSON(o)
      return
    }
    print(String(format: "%d images: loss %.4f, accuracy %.3f, top-%d %.3f", m.samples, m.loss, m.accuracy, m.topK, m.topKAccuracy))
    print("confusion (rows: true, columns: predicted): " + names.joined(separator: ", "))
    for (i, row) in m.confusion.enumerated() { print(pad(names[i], 16) + row.map { pad(String($0), 7, right: true) }.joined()) }
  }
}

struct PredictCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "predict", abstract: "Top classes of images with a trained model.")

  @OptionGroup var trained: TrainedModelOptions
  @Argument(help: "Images.") var images: [String]
  @Option(help: "Classes to show per image.") var top = 3
  @Flag(help: "Print one JSON object.") var json = false
  @Flag(help: "Print CSV: path,rank,class,probability, one row per class shown.") var csv = false
  @Option(help: "Exact tiled inference at native resolution (fully convolutional models): N input pixels of output per tile, or auto (the largest that fits --budget).")
  var tile: String?
  @Option(help: "With --tile: memory budget, e.g. 2GiB (default: what this machine has available).") var budget: String?
  @Option(help: "With --tile: folder for one heatmap PNG per class (probability per score-map cell), named <image>.<class>.png.") var heatmaps: String?
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    try checkRange(top, 1...(1 << 20), "--top")
    guard !(json && csv) else { throw ValidationError("--json and --csv: choose one") }
    if let t = tile, t != "auto", !(1...Limits.maxSide).contains(Int(t) ?? 0) {
      throw ValidationError("--tile must be a number of pixels from 1 to \(Limits.maxSide) or auto, got '\(t)'")
    }
    if tile == nil && (heatmaps != nil || budget != nil) { throw ValidationError("--heatmaps and --budget go with --tile") }
  }

  func run() throws {
    try global.apply()
    compute.apply()
    let (net, names, pipeline) = try trained.load()
    if let t = tile { return try runTiled(net, names: names, tile: t, channels: pipeline.channels, trainedSize: pipeline.height) }
    var results = [[String: Any]]()
    var failed = 0
    if csv { print("path,rank,class,probability") }
    for path in images {
      do {
        let img = try pipeline.prepare(URL(fileURLWithPath: path)).pixels
        let logits = try net.predict(img.reshaped([1] + img.shape))
        let z = logits.toArray(), m = z.max() ?? 0
        let e = z.map { Foundation.exp(Double($0 - m)) }, s = e.reduce(0, +)
        let ranked = e.indices.sorted { e[$0] > e[$1] }.prefix(top).map { (names[$0], e[$0] / s) }
        if csv {
          for (r, (c, p)) in ranked.enumerated() { print("\(path),\(r + 1),\(c),\(p)") }
        } else if !json {
          print("\(path): " + ranked.map { String(format: "%@ %.3f", $0.0, $0.1) }.joined(separator: ", "))
        }
        results.append(["path": path, "top": ranked.map { ["class": $0.0, "probability": $0.1] }])
      } catch {
        failed += 1
        note("error: \(error)")
        results.append(["path": path, "error": "\(error)"])
      }
    }
    if json { printJSON(["predictions": results, "peakBytes": MemoryLedger.shared.peakBytes, "maxRSSBytes": maxRSSBytes()]) }
    if failed > 0 { throw ExitCode(1) }
  }

  /// Heatmaps with more cells than this are written as tiled pyramidal TIFF
  /// (TESSERA_PNG_HEATMAP_CELLS overrides it, for tests).
  static let pngCells = ProcessInfo.processInfo.environment["TESSERA_PNG_HEATMAP_CELLS"].flatMap(Int.init) ?? 4096 * 4096

  /// Whole images at native resolution, read region by region: the score map tile by tile (exact),
  /// its mean as the class scores, and per-class probability heatmaps.
  func runTiled(_ net: Sequential, names: [String], tile tileText: String, channels: Int, trainedSize: Int) throws {
    let tiled = try TiledInference(model: net, channels: channels)
    // Tiled paths read regions, so the whole-image pixel limit does not apply; the score map and
    // each tile's pass are checked against the budget instead.
    let reader = ImageReader(maxPixels: 1 << 40)
    let ceiling = try budget.map { try ByteSize.parse($0) } ?? MachineMemory.availableBytes()
    var results = [[String: Any]]()
    if csv { print("path,rank,class,probability") }
    // Heatmaps of images with the same file name go to distinct files.
    let stems = images.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
    var seen = [String: Int]()
    let unique = stems.map { s -> String in
      seen[s, default: 0] += 1
      return stems.filter({ $0 == s }).count > 1 ? "\(s)-\(seen[s]!)" : s
    }
    for (index, path) in images.enumerated() {
      // TIFF (level 0) reads only the tiles a region touches; other formats read by region.
      let url = URL(fileURLWithPath: path)
      let file: (info: (width: Int, height: Int), read: (PixelRect) throws -> Tensor)
      var readerCache = 0
      if TIFFFile.isTIFF(url) {
        let t = try TIFFFile(url)
        readerCache = t.cache.limitBytes
        file = ((t.levels[0].width, t.levels[0].height), { try t.read(level: 0, region: $0, channels: channels) })
      } else {
        let f = try reader.open(url)
        file = ((f.info.width, f.info.height), { try reader.read(f, region: $0, channels: channels).pixels })
      }
      // The pass's plan (parameters, the whole score map, the largest crop's forward) and the reader's
      // tile cache, checked before anything is allocated.
      let tile: Int, planned: Int
      if tileText == "auto" {
        guard let t = tiled.largestTile(fitting: ceiling - runtimeReserveBytes - readerCache, height: file.info.height, width: file.info.width, channels: channels) else {
          throw CLIError("\(path): no tile fits \(budget == nil ? "this machine's available memory" : "--budget") (\(ByteSize.format(ceiling))); the score map alone needs more")
        }
        (tile, planned) = (t.tile, t.bytes + readerCache)
      } else {
        tile = Int(tileText)!
        planned = try tiled.plannedPeakBytes(tile: tile, height: file.info.height, width: file.info.width, channels: channels) + readerCache
        let need = planned + runtimeReserveBytes
        guard need <= ceiling else {
          throw CLIError("\(path): tiles of \(tile) px need \(ByteSize.format(need)), more than \(budget == nil ? "this machine has available" : "--budget") (\(ByteSize.format(ceiling))); use a smaller --tile or --tile auto")
        }
      }
      if max(file.info.width, file.info.height) > 2 * trainedSize {
        note("note: \(path) is scored at its native \(file.info.width)×\(file.info.height) pixels; the model was trained on images brought to \(trainedSize) px. If objects appear at another size in pixels than in training, resize the image first (tessera preview --size) or train at native resolution.")
      }
      // Freed blocks kept for reuse may take only what the plan leaves of the budget.
      limitBlockCache(budget: ceiling, planned: planned)
      let map = try tiled.scoreMap(height: file.info.height, width: file.info.width, tile: tile, channels: channels, read: file.read)
      let (k, h, w) = (map.shape[0], map.shape[1], map.shape[2])
      let p = map.floats
      let logits = (0..<k).map { c in (0..<(h * w)).reduce(0.0) { $0 + Double(p[c * h * w + $1]) } / Double(h * w) }
      let m = logits.max() ?? 0, e = logits.map { Foundation.exp($0 - m) }, s = e.reduce(0, +)
      let probs = e.map { $0 / s }
      let ranked = probs.indices.sorted { probs[$0] > probs[$1] }.prefix(top)
      var maps = [String]()
      var mapsByClass = [String: String]()
      if let dir = heatmaps {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Per cell: softmax over the classes of that cell's scores.
        var cellProb = [[UInt8]](repeating: [UInt8](repeating: 0, count: h * w), count: k)
        for i in 0..<(h * w) {
          let z = (0..<k).map { Double(p[$0 * h * w + i]) }, zm = z.max() ?? 0
          let ez = z.map { Foundation.exp($0 - zm) }, sz = ez.reduce(0, +)
          for c in 0..<k { cellProb[c][i] = UInt8((255 * ez[c] / sz).rounded()) }
        }
        let stem = unique[index]
        for c in 0..<k {
          // Large maps as tiled pyramidal TIFF (tifffile, OpenSlide and QuPath open them), PNG when small.
          if h * w > Self.pngCells {
            let u = URL(fileURLWithPath: dir).appendingPathComponent("\(stem).\(names[c]).tif")
            _ = try TIFFConverter.convert(BytesRowStream(cellProb[c], width: w, height: h), to: u, tile: 256, compression: 8)
            maps.append(u.path)
            mapsByClass[names[c]] = u.path
          } else {
            let u = URL(fileURLWithPath: dir).appendingPathComponent("\(stem).\(names[c]).png")
            try writePNG(bytes: cellProb[c], width: w, height: h, to: u)
            maps.append(u.path)
            mapsByClass[names[c]] = u.path
          }
        }
      }
      if let dir = heatmaps {
        // The folder's index (what `tessera report` draws): this image's entry replaces an older one.
        try recordHeatmaps(dir: URL(fileURLWithPath: dir), entry: [
          "image": url.standardizedFileURL.path, "size": [file.info.width, file.info.height], "scoreMap": [k, h, w],
          "maps": mapsByClass, "stride": tiled.stride,
        ])
      }
      results.append(["path": path, "size": [file.info.width, file.info.height], "scoreMap": [k, h, w],
                      "stride": tiled.stride, "halo": tiled.halo, "tile": tile, "trainedImageSize": trainedSize,
                      "top": ranked.map { ["class": names[$0], "probability": probs[$0]] }, "heatmaps": maps])
      if csv {
        for (r, c) in ranked.enumerated() { print("\(path),\(r + 1),\(names[c]),\(probs[c])") }
      } else if !json {
        print("\(path) (\(file.info.width)×\(file.info.height), \(h)×\(w) score map, tiles of \(tile) px + \(tiled.halo) px halo): "
              + ranked.map { String(format: "%@ %.3f", names[$0], probs[$0]) }.joined(separator: ", "))
      }
    }
    if json { printJSON(["predictions": results, "peakBytes": MemoryLedger.shared.peakBytes, "maxRSSBytes": maxRSSBytes()]) }
  }
}

/// Adds (or replaces, by image path) one entry of DIR/heatmaps.json, written atomically.
func recordHeatmaps(dir: URL, entry: [String: Any]) throws {
  let index = dir.appendingPathComponent("heatmaps.json")
  var entries = (try? Data(contentsOf: index)).flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [[String: Any]] } ?? []
  entries.removeAll { ($0["image"] as? String) == (entry["image"] as? String) }
  entries.append(entry)
  try AtomicFile.write(try JSONSerialization.data(withJSONObject: entries, options: [.prettyPrinted, .sortedKeys]), to: index)
}

/// Gray bytes in memory, row by row (a heatmap going to TIFF).
final class BytesRowStream: RowStream {
  let bytes: [UInt8], width: Int, height: Int, channels = 1
  var y = 0
  init(_ bytes: [UInt8], width: Int, height: Int) {
    self.bytes = bytes
    self.width = width
    self.height = height
  }
  func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    bytes.withUnsafeBufferPointer { (out).update(from: $0.baseAddress! + y * width, count: rows * width) }
    y += rows
  }
}
