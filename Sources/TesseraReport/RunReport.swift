import Foundation
import TesseraPlanner

/// Everything a run's report shows; the CLI gathers it from the run folder (config.json,
/// metrics.jsonl, the plan, held-out predictions, heatmaps) and `html` draws it.
public struct RunReport {
  public struct Prediction {
    public var name: String
    /// A small JPEG of the image as the model saw it.
    public var jpeg: Data
    public var truth: String, predicted: String
    public var probability: Double
    public init(name: String, jpeg: Data, truth: String, predicted: String, probability: Double) {
      self.name = name
      self.jpeg = jpeg
      self.truth = truth
      self.predicted = predicted
      self.probability = probability
    }
  }

  public struct Heatmap {
    public var image: String
    /// A thumbnail of the image, and per class the heatmap laid over it (JPEG).
    public var thumbnail: Data
    public var overlays: [(className: String, jpeg: Data)]
    public var note: String
    public init(image: String, thumbnail: Data, overlays: [(className: String, jpeg: Data)], note: String) {
      self.image = image
      self.thumbnail = thumbnail
      self.overlays = overlays
      self.note = note
    }
  }

  public var name: String
  /// Settings shown at the top (key, value).
  public var settings: [(String, String)] = []
  /// metrics.jsonl lines: one per epoch, and per-step lines (`"kind": "step"`) with --log-every.
  public var epochs: [[String: Any]] = []
  public var steps: [[String: Any]] = []
  public var budgetBytes: Int?
  /// What the ledger was planned to peak at: the step and the loader's batches in flight.
  public var plannedLedgerBytes: Int?
  public var plan: Plan?
  public var planNote = ""
  public var classNames: [String] = []
  public var confusion: [[Int]]?
  public var confusionNote = ""
  public var predictions: [Prediction] = []
  public var predictionsNote = ""
  public var heatmaps: [Heatmap] = []
  /// Reload every N seconds (a run still training).
  public var refreshSeconds: Int?

  public init(name: String) { self.name = name }

  static func number(_ o: [String: Any], _ k: String) -> Double? { (o[k] as? NSNumber)?.doubleValue }

  /// Splits metrics.jsonl text into epoch lines and step lines.
  public static func parseMetrics(_ text: String) -> (epochs: [[String: Any]], steps: [[String: Any]]) {
    var e = [[String: Any]](), s = [[String: Any]]()
    for line in text.split(separator: "\n") {
      guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { continue }
      if o["kind"] as? String == "step" { s.append(o) } else { e.append(o) }
    }
    return (e, s)
  }

  func series(_ name: String, _ key: String, style: Int, from lines: [[String: Any]], scale: Double = 1) -> LineChart.Series {
    LineChart.Series(name: name, points: lines.compactMap { o in
      guard let x = Self.number(o, "epoch"), let y = Self.number(o, key) else { return nil }
      return (x, y * scale)
    }, style: style)
  }

  /// Steps placed on the epoch axis: epoch − 1 + batch / batches.
  func stepSeries(_ name: String, _ key: String, style: Int) -> LineChart.Series? {
    let pts = steps.compactMap { o -> (x: Double, y: Double)? in
      guard let e = Self.number(o, "epoch"), let b = Self.number(o, "batch"), let n = Self.number(o, "batches"), n > 0,
            let y = Self.number(o, key) else { return nil }
      return (e - 1 + b / n, y)
    }
    return pts.isEmpty ? nil : LineChart.Series(name: name, points: pts, style: style, markers: false, width: 1)
  }

  func epochTable(id: String, caption: String, columns: [(String, String, Double)]) -> String {
    table(id: id, caption: caption, headers: ["epoch"] + columns.map(\.0), rows: epochs.map { o in
      [Self.number(o, "epoch").map { fmt($0, 0) } ?? "–"] + columns.map { c in Self.number(o, c.1).map { fmt($0 * c.2, 4) } ?? "–" }
    })
  }

  public var html: String {
    let heldOut = epochs.contains { $0["val_loss"] != nil }
    var page = HTMLPage(title: "Tessera run: \(name)",
                        subtitle: "\(epochs.count) epoch\(epochs.count == 1 ? "" : "s") logged\(steps.isEmpty ? "" : ", \(steps.count) step lines")"
                          + (refreshSeconds.map { " — training; this page reloads every \($0) s" } ?? "")
                          + " · made \(ISO8601DateFormatter().string(from: Date()))",
                        refreshSeconds: refreshSeconds)
    if !settings.isEmpty {
      page.add("settings", "Settings", "<table class=\"kv\" id=\"table-settings\"><tbody>"
               + settings.map { "<tr><th scope=\"row\">\(esc($0.0))</th><td>\(esc($0.1))</td></tr>" }.joined() + "</tbody></table>")
    }
    if epochs.isEmpty && steps.isEmpty {
      page.add("curves", "Curves", "<p>No epoch has finished yet: metrics.jsonl holds no line.</p>")
    } else {
      // Loss.
      var loss = LineChart(id: "chart-loss", title: "Loss per epoch", xLabel: "epoch", yLabel: "loss (cross-entropy)",
                           series: [series("training", "loss", style: 0, from: epochs)], yFromZero: true)
      if heldOut { loss.series.append(series("held-out", "val_loss", style: 1, from: epochs)) }
      if let s = stepSeries("training, per step", "loss", style: 5) { loss.series.append(s) }
      // A loss spanning decades (a held-out loss that starts far off) is drawn on a log axis.
      let ys = loss.series.flatMap { $0.points.map(\.y) }
      if let lo = ys.min(), let hi = ys.max(), lo > 0, hi / lo > 100 { loss.logY = true }
      var body = loss.svg + epochTable(id: "table-loss", caption: "Loss per epoch",
                                       columns: [("training loss", "loss", 1)] + (heldOut ? [("held-out loss", "val_loss", 1)] : []))
      if !steps.isEmpty {
        body += table(id: "table-steps", caption: "Per-step lines", headers: ["step", "epoch", "batch", "loss", "learning rate"],
                      rows: steps.map { o in
                        [Self.number(o, "step").map { fmt($0, 0) } ?? "–", Self.number(o, "epoch").map { fmt($0, 0) } ?? "–",
                         Self.number(o, "batch").map { fmt($0, 0) } ?? "–", Self.number(o, "loss").map { fmt($0, 4) } ?? "–",
                         Self.number(o, "lr").map { fmt($0, 5) } ?? "–"]
                      })
      }
      // Accuracy.
      var acc = LineChart(id: "chart-accuracy", title: "Accuracy per epoch", xLabel: "epoch", yLabel: "accuracy (%)",
                          series: [series("training", "accuracy", style: 0, from: epochs, scale: 100)], yFromZero: true)
      if heldOut { acc.series.append(series("held-out", "val_accuracy", style: 1, from: epochs, scale: 100)) }
      body += acc.svg + epochTable(id: "table-accuracy", caption: "Accuracy per epoch (%)",
                                   columns: [("training", "accuracy", 100)] + (heldOut ? [("held-out", "val_accuracy", 100)] : []))
      if !heldOut { body += "<p class=\"note\">This run has no held-out images: accuracy is measured on the training images.</p>" }
      page.add("curves", "Loss and accuracy", body)

      // Learning rate.
      var lr = LineChart(id: "chart-lr", title: "Learning rate", xLabel: "epoch", yLabel: "learning rate",
                         series: [series("at the epoch's last update", "lr", style: 2, from: epochs)], yFromZero: true)
      if let s = stepSeries("per step", "lr", style: 4) { lr.series.append(s) }
      page.add("lr", "Learning rate", lr.svg + epochTable(id: "table-lr", caption: "Learning rate per epoch", columns: [("learning rate", "lr", 1)]))

      // Speed and memory.
      let speed = LineChart(id: "chart-speed", title: "Training speed per epoch", xLabel: "epoch", yLabel: "images per second",
                            series: [series("images per second", "images_per_second", style: 0, from: epochs)], yFromZero: true)
      var memory = LineChart(id: "chart-memory", title: "Peak memory per epoch (ledger)", xLabel: "epoch", yLabel: "peak memory (MiB)",
                             series: [series("measured peak", "peak_bytes", style: 3, from: epochs, scale: 1 / 1_048_576)], yFromZero: true)
      if let b = budgetBytes { memory.references.append(("budget \(fmt(mib(Double(b)), 1)) MiB", mib(Double(b)), 7)) }
      if let planned = plannedLedgerBytes ?? plan?.peakTrainingBytes {
        memory.references.append(("planned peak \(fmt(mib(Double(planned)), 1)) MiB", mib(Double(planned)), 2))
      }
      page.add("speed", "Speed and memory", speed.svg + memory.svg
               + epochTable(id: "table-speed", caption: "Speed and memory per epoch",
                            columns: [("images/s", "images_per_second", 1), ("seconds", "seconds", 1), ("peak (MiB)", "peak_bytes", 1 / 1_048_576)]))
    }

    // Confusion matrix.
    if let c = confusion, !classNames.isEmpty, c.count == classNames.count {
      let n = classNames.count
      let rowsum = c.map { max(1, $0.reduce(0, +)) }
      let shares = (0..<n).map { i in (0..<n).map { j in Double(c[i][j]) / Double(rowsum[i]) } }
      let chart = HeatmapChart(id: "chart-confusion", title: "Confusion matrix (\(confusionNote))", rowLabels: classNames, columnLabels: classNames,
                               rowAxis: "true class", columnAxis: "predicted class", values: shares,
                               text: c.map { $0.map(String.init) })
      let predicted = (0..<n).map { j in (0..<n).reduce(0) { $0 + c[$1][j] } }
      let rows = (0..<n).map { i -> [String] in
        let p = predicted[i] == 0 ? 0 : Double(c[i][i]) / Double(predicted[i])
        let r = Double(c[i][i]) / Double(rowsum[i])
        return [classNames[i], "\(c[i].reduce(0, +))", fmt(p * 100, 1), fmt(r * 100, 1)]
      }
      page.add("confusion", "Confusion matrix", "<p class=\"note\">Rows are the true class, columns the predicted class; each cell counts images, its shade is the share of its row. \(esc(confusionNote)).</p>"
               + chart.svg + table(id: "table-precision-recall", caption: "Precision and recall per class",
                                   headers: ["class", "images", "precision (%)", "recall (%)"], rows: rows, collapsed: false)
               + table(id: "table-confusion", caption: "Confusion matrix (counts)", headers: ["true \\ predicted"] + classNames,
                       rows: (0..<n).map { [classNames[$0]] + c[$0].map(String.init) }))
    }

    // The plan.
    if let p = plan {
      let measured = epochs.compactMap { Self.number($0, "peak_bytes") }.max().map { Int($0) }
      page.add("plan", "Memory plan", (planNote.isEmpty ? "" : "<p class=\"note\">\(esc(planNote))</p>")
               + PlanFigures.bytesPerLayer(p, measuredPeak: measured, budget: budgetBytes,
                                           extra: plannedLedgerBytes.map { [("loader batches in flight", $0 - p.peakTrainingBytes)] } ?? []))
    }

    // Held-out predictions.
    if !predictions.isEmpty || !predictionsNote.isEmpty {
      var body = predictionsNote.isEmpty ? "" : "<p class=\"note\">\(esc(predictionsNote))</p>"
      let right = predictions.filter { $0.truth == $0.predicted }.count
      if !predictions.isEmpty {
        body += "<p>\(right) of \(predictions.count) shown are right. Right: solid green frame and “✓ right”; wrong: dashed orange frame and “✗ wrong”.</p><div class=\"grid\" id=\"grid-predictions\">"
        for p in predictions {
          let ok = p.truth == p.predicted
          body += "<figure class=\"\(ok ? "right" : "wrong")\"><img alt=\"\(esc(p.name)): true \(esc(p.truth)), predicted \(esc(p.predicted))\" src=\"data:image/jpeg;base64,\(p.jpeg.base64EncodedString())\">"
          body += "<figcaption>\(ok ? "✓ right" : "✗ wrong")<br>true: \(esc(p.truth))<br>predicted: \(esc(p.predicted)) (\(fmt(p.probability * 100, 1)) %)</figcaption></figure>"
        }
        body += "</div>"
        body += table(id: "table-predictions", caption: "Held-out predictions", headers: ["image", "true", "predicted", "probability (%)", "right"],
                      rows: predictions.map { [$0.name, $0.truth, $0.predicted, fmt($0.probability * 100, 1), $0.truth == $0.predicted ? "yes" : "no"] })
      }
      page.add("predictions", "Held-out predictions", body)
    }

    // Heatmaps.
    if !heatmaps.isEmpty {
      var body = "<p class=\"note\">Tiled-inference heatmaps (probability of each class per score-map cell) laid over a thumbnail of their image: brighter, yellower cells are more probable (a perceptually ordered scale that reads in grey).</p>"
      for h in heatmaps {
        body += "<h3>\(esc(h.image))</h3><p class=\"note\">\(esc(h.note))</p><div class=\"maps\">"
        body += "<figure><img alt=\"thumbnail of \(esc(h.image))\" src=\"data:image/jpeg;base64,\(h.thumbnail.base64EncodedString())\"><figcaption>the image</figcaption></figure>"
        for o in h.overlays {
          body += "<figure><img alt=\"heatmap of class \(esc(o.className)) over \(esc(h.image))\" src=\"data:image/jpeg;base64,\(o.jpeg.base64EncodedString())\"><figcaption>class \(esc(o.className))</figcaption></figure>"
        }
        body += "</div>"
      }
      page.add("heatmaps", "Heatmaps", body)
    }
    return page.html
  }
}
