import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner
import TesseraReport
import TesseraTraining

struct ReportCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "report",
    abstract: "One self-contained HTML page of a run: curves, confusion, the memory plan, held-out predictions, heatmaps.",
    discussion: prose("""
      Reads the run folder (config.json, metrics.jsonl, plan.json, the best checkpoint) and writes one
      HTML file with everything inline (SVG charts, JPEG thumbnails as data URIs; no script, no
      network), so it can be mailed or archived: loss and accuracy per epoch (training beside held-out,
      and per step with train --log-every), the learning rate, images per second and the peak memory
      against the budget and the plan, the confusion matrix with precision and recall per class, the
      plan's bytes per layer with the planned and measured peak, a grid of held-out predictions, and
      the heatmaps of `tessera predict --tile --heatmaps RUN/heatmaps` over thumbnails of their
      images. Every chart is followed by a table of its numbers. `train --report` keeps the report up
      to date while a run trains.
      """))

  @Argument(help: "A run folder from `tessera train`.") var folder: String
  @Option(help: "The HTML file to write (default RUN/report.html).") var out: String?
  @Option(help: "Held-out images shown with their predictions (0: none).") var predictions = 24
  @Option(help: "A folder of `predict --heatmaps` output (default RUN/heatmaps when it has heatmaps.json).") var heatmaps: String?
  @Flag(help: "Print one JSON object (out, bytes, sections).") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws { try checkRange(predictions, 0...1000, "--predictions") }

  func run() throws {
    try global.apply()
    let runURL = URL(fileURLWithPath: folder)
    let report = try RunReportBuilder.build(run: runURL, predictions: predictions, heatmaps: heatmaps.map { URL(fileURLWithPath: $0) },
                                            warn: { note("warning: " + $0) })
    let outURL = out.map { URL(fileURLWithPath: $0) } ?? runURL.appendingPathComponent("report.html")
    let html = report.html
    do {
      try AtomicFile.write(Data(html.utf8), to: outURL)
    } catch {
      throw CLIError("\(outURL.path): cannot write the report (\(error.localizedDescription))")
    }
    let ids = html.components(separatedBy: "<section id=\"").dropFirst().map { String($0.prefix { $0 != "\"" }) }
    if json {
      printJSON(["out": outURL.path, "bytes": html.utf8.count, "sections": ids])
    } else {
      print("\(outURL.path): \(ByteSize.format(html.utf8.count)), sections: \(ids.joined(separator: ", "))")
    }
  }
}

/// Gathers a run folder's numbers and pictures for `RunReport`.
enum RunReportBuilder {
  static func build(run: URL, predictions: Int, heatmaps: URL?, refreshSeconds: Int? = nil,
                    warn: (String) -> Void) throws -> RunReport {
    let cfgURL = run.appendingPathComponent("config.json")
    guard let data = try? Data(contentsOf: cfgURL) else {
      throw CLIError("\(run.path): not a run folder (no readable config.json); give the --out of a `tessera train`")
    }
    guard let cfg = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
      throw CLIError("\(cfgURL.path): damaged (not a JSON object)")
    }
    var r = RunReport(name: run.lastPathComponent)
    r.refreshSeconds = refreshSeconds
    r.classNames = cfg["classes"] as? [String] ?? []
    r.budgetBytes = cfg["budget"] as? Int
    r.plannedLedgerBytes = cfg["plannedLedgerBytes"] as? Int
    func show(_ k: String, _ label: String, _ f: (Any) -> String = { "\($0)" }) {
      if let v = cfg[k], !(v is NSNull) { r.settings.append((label, f(v))) }
    }
    show("model", "model")
    show("data", "data")
    show("manifest", "manifest")
    show("patches", "patch list")
    r.settings.append(("classes", "\(r.classNames.count): " + r.classNames.prefix(12).joined(separator: ", ") + (r.classNames.count > 12 ? ", …" : "")))
    if cfg["native"] as? Bool == true { r.settings.append(("input", "native resolution, one image per batch")) } else { show("imageSize", "image side (px)") }
    show("policy", "resize policy")
    show("batch", "batch")
    show("epochs", "epochs")
    show("optimizer", "optimizer")
    show("lr", "learning rate")
    show("schedule", "schedule")
    show("precision", "kept tensors stored in")
    show("compute", "convolutions computed in")
    show("checkpointing", "checkpointing")
    show("tile", "streaming tile")
    show("budget", "budget") { ByteSize.format(($0 as? Int) ?? 0) }
    show("predictedPeakBytes", "planned peak (step + loader + runtime)") { ByteSize.format(($0 as? Int) ?? 0) }
    show("trainImages", "training images")
    show("heldOutImages", "held-out images")
    show("threads", "threads")
    show("seed", "seed")

    let text = (try? String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
    (r.epochs, r.steps) = RunReport.parseMetrics(text)

    if let d = try? Data(contentsOf: run.appendingPathComponent("plan.json")), let p = try? JSONDecoder().decode(Plan.self, from: d) {
      r.plan = p
      r.planNote = "The plan of the step this run trained with (plan.json): \(p.model) on batches of \(p.batch) × \(p.input.map(String.init).joined(separator: "×")). The measured peak is the memory ledger's largest over the epochs."
    }

    if let last = r.epochs.last, let e = last["epoch"] as? Int {
      if let c = last["val_confusion"] as? [[Int]] {
        r.confusion = c
        r.confusionNote = "held-out images after epoch \(e)"
      } else if let c = last["confusion"] as? [[Int]] {
        r.confusion = c
        r.confusionNote = "training images during epoch \(e) (the run has no held-out images)"
      }
    }

    if predictions > 0 {
      do {
        (r.predictions, r.predictionsNote) = try heldOutPredictions(run: run, cfg: cfg, count: predictions)
      } catch {
        r.predictionsNote = "Held-out predictions could not be drawn: \(error)"
        warn(r.predictionsNote)
      }
    }

    let hm = heatmaps ?? run.appendingPathComponent("heatmaps")
    if FileManager.default.fileExists(atPath: hm.appendingPathComponent("heatmaps.json").path) {
      r.heatmaps = heatmapFigures(hm, warn: warn)
    } else if heatmaps != nil {
      warn("\(hm.path) has no heatmaps.json (write heatmaps there with tessera predict --tile … --heatmaps \(hm.path))")
    }
    return r
  }

  /// Up to `count` held-out images, evenly spread over the held-out set, with the best checkpoint's
  /// top class.
  static func heldOutPredictions(run: URL, cfg: [String: Any], count: Int) throws -> ([RunReport.Prediction], String) {
    if cfg["native"] as? Bool == true {
      return ([], "Not drawn for a run at native resolution (each image is a whole slide); see the heatmaps instead.")
    }
    let best = run.appendingPathComponent("best.safetensors"), last = run.appendingPathComponent("last.safetensors")
    guard FileManager.default.fileExists(atPath: best.path) || FileManager.default.fileExists(atPath: last.path) else {
      return ([], "No checkpoint yet: predictions are drawn once an epoch has finished.")
    }
    let (net, names, pipeline) = try TrainedModelOptions.parse(["--run", run.path]).load()
    let (ds, idx) = try heldOutSet(of: cfg)
    let pool = idx ?? Array(ds.samples.indices)
    guard !pool.isEmpty else { return ([], "The run has no held-out images.") }
    let n = min(count, pool.count)
    let chosen = (0..<n).map { pool[$0 * pool.count / n] }
    var remapped = ds
    for (i, s) in ds.samples.enumerated() { remapped.samples[i].label = names.firstIndex(of: ds.classes[s.label]) ?? 0 }
    let loader = BatchLoader(dataset: remapped, indices: chosen, pipeline: pipeline, batchSize: 1)
    loader.shuffle = false
    loader.workers = 1
    var out = [RunReport.Prediction]()
    let it = loader.epoch(0)
    while let b = try it.next() {
      let logits = try net.predict(b.images).toArray()
      let m = logits.max() ?? 0, e = logits.map { Foundation.exp(Double($0 - m)) }, s = e.reduce(0, +)
      let top = e.indices.max { e[$0] < e[$1] } ?? 0
      let img = b.images.reshaped([b.images.shape[1], b.images.shape[2], b.images.shape[3]])
      let side = 128
      let scale = min(1, Double(side) / Double(max(img.shape[1], img.shape[2])))
      let thumb = Resample.resize(img, height: max(1, Int(Double(img.shape[1]) * scale)), width: max(1, Int(Double(img.shape[2]) * scale)), filter: .area)
      out.append(RunReport.Prediction(name: b.urls.first?.lastPathComponent ?? "?", jpeg: try Thumbnails.jpeg(thumb.channelsForDisplay()),
                                      truth: names[b.labels[0]], predicted: names[top], probability: e[top] / s))
    }
    return (out, "\(out.count) of the \(pool.count) held-out images, as the model sees them (resized), scored by \(FileManager.default.fileExists(atPath: best.path) ? "best" : "last").safetensors.")
  }

  /// The heatmaps `predict --heatmaps DIR` listed in DIR/heatmaps.json, over thumbnails.
  static func heatmapFigures(_ dir: URL, warn: (String) -> Void) -> [RunReport.Heatmap] {
    guard let d = try? Data(contentsOf: dir.appendingPathComponent("heatmaps.json")),
          let entries = (try? JSONSerialization.jsonObject(with: d)) as? [[String: Any]] else {
      warn("\(dir.path)/heatmaps.json is damaged; heatmaps not shown")
      return []
    }
    var out = [RunReport.Heatmap]()
    for e in entries.prefix(12) {
      guard let image = e["image"] as? String, let maps = e["maps"] as? [String: String] else { continue }
      do {
        let thumb = try Thumbnails.tensor(URL(fileURLWithPath: image), side: 340)
        var overlays = [(className: String, jpeg: Data)]()
        for cls in maps.keys.sorted() {
          let heat = try Thumbnails.tensor(URL(fileURLWithPath: maps[cls]!), side: 340, channels: 1)
          overlays.append((cls, try Thumbnails.jpeg(Thumbnails.overlay(image: thumb, heat: heat))))
        }
        let size = (e["size"] as? [Int]).map { "\($0[0])×\($0[1]) px" } ?? ""
        let grid = (e["scoreMap"] as? [Int]).map { "score map \($0[2])×\($0[1]) cells" } ?? ""
        out.append(RunReport.Heatmap(image: URL(fileURLWithPath: image).lastPathComponent, thumbnail: try Thumbnails.jpeg(thumb),
                                     overlays: overlays, note: [size, grid].filter { !$0.isEmpty }.joined(separator: ", ")))
      } catch {
        warn("heatmap of \(image) not shown: \(error)")
      }
    }
    return out
  }
}

extension Tensor {
  /// (C, H, W) with 1 or 3 channels for a picture: beyond 3 the first 3, with 2 the first (grey).
  func channelsForDisplay() -> Tensor {
    let c = shape[0]
    if c == 1 || c == 3 { return self }
    let h = shape[1], w = shape[2]
    let out = Tensor(uninitialized: [c > 3 ? 3 : 1, h, w], category: .data)
    out.floats.update(from: floats, count: out.count)
    return out
  }
}
