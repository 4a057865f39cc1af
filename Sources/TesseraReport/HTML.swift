import Foundation
import TesseraPlanner

/// One self-contained HTML page: inline CSS and SVG, images as data URIs, no script, no network.
public struct HTMLPage {
  public var title: String
  public var subtitle: String
  /// Seconds after which the browser reloads the page (a live run), or nil.
  public var refreshSeconds: Int?
  public var sections: [(id: String, heading: String, body: String)] = []

  public init(title: String, subtitle: String, refreshSeconds: Int? = nil) {
    self.title = title
    self.subtitle = subtitle
    self.refreshSeconds = refreshSeconds
  }

  public mutating func add(_ id: String, _ heading: String, _ body: String) { sections.append((id, heading, body)) }

  static let style = """
    body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111;background:#fafafa;margin:0 auto;max-width:1100px;padding:16px 24px}
    h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc;padding-bottom:.2em}
    nav a{margin-right:1em}p.note{color:#444}figure{margin:.6em 0}figcaption{font-size:.9em;color:#333}
    table{border-collapse:collapse;font-size:.88em;margin:.4em 0;background:#fff}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
    th:first-child,td:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:2px 0}
    details{margin:.3em 0 1em}summary{cursor:pointer;color:#0b4f8a}
    .chart text{font-family:system-ui,sans-serif}.tick{font-size:11px;fill:#333}.axis{font-size:12.5px;fill:#111}
    .legend{font-size:12px;fill:#111}.ref{font-size:11.5px;font-weight:600}.rowlabel{font-size:11px;fill:#222}.cell{font-size:11px}
    .kv td{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{width:140px;margin:0;background:#fff;border:1px solid #ccc;padding:4px}
    .grid img{width:128px;height:128px;object-fit:contain;image-rendering:auto;display:block;margin:auto}
    .right{border:3px solid #009E73}.wrong{border:3px dashed #D55E00}
    .maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{background:#fff;border:1px solid #ccc;padding:4px;margin:0}
    .maps img{max-width:340px;display:block}
    """

  public var html: String {
    var s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    if let r = refreshSeconds { s += "<meta http-equiv=\"refresh\" content=\"\(r)\">" }
    s += "<title>\(esc(title))</title><style>\(Self.style)</style></head><body>"
    s += "<header><h1>\(esc(title))</h1><p class=\"note\">\(subtitle)</p>"
    s += "<nav>" + sections.map { "<a href=\"#\(esc($0.id))\">\(esc($0.heading))</a>" }.joined() + "</nav></header><main>"
    for sec in sections { s += "<section id=\"\(esc(sec.id))\"><h2>\(esc(sec.heading))</h2>\(sec.body)</section>" }
    return s + "</main></body></html>\n"
  }
}

/// A table of numbers (text, for people and screen readers, beside every chart).
func table(id: String, caption: String? = nil, headers: [String], rows: [[String]], collapsed: Bool = true) -> String {
  var t = "<table id=\"\(esc(id))\">"
  if let c = caption { t += "<caption>\(esc(c))</caption>" }
  t += "<thead><tr>" + headers.map { "<th scope=\"col\">\(esc($0))</th>" }.joined() + "</tr></thead><tbody>"
  for r in rows { t += "<tr>" + r.enumerated().map { $0.offset == 0 ? "<th scope=\"row\">\(esc($0.element))</th>" : "<td>\(esc($0.element))</td>" }.joined() + "</tr>" }
  t += "</tbody></table>"
  return collapsed ? "<details><summary>Table: \(esc(caption ?? "the numbers"))</summary>\(t)</details>" : t
}

func mib(_ b: Double) -> Double { b / 1_048_576 }

/// The bytes of a plan per layer, its receptive field growth, and (with a budget) every memory mode.
public enum PlanFigures {
  /// Bytes per layer as stacked bars (kept for backward, workspace, parameters, gradients, optimizer
  /// state) with the planned — and, when known, the measured — peak beside it.
  /// `extra`: what the measured peak holds beside the step (the loader's batches in flight).
  public static func bytesPerLayer(_ p: Plan, measuredPeak: Int? = nil, budget: Int? = nil, extra: [(String, Int)] = [],
                                   id: String = "chart-plan-layers") -> String {
    let state = p.optimizer.stateTensorsPerParameter
    let categories = ["kept for backward", "workspace", "parameters", "gradients", "optimizer state"]
    let rows = p.layers.map { l -> (label: String, values: [Double]) in
      let params = Double(l.parameters) * 4
      return (l.name, [mib(Double(l.keptBytes)), mib(Double(l.workspaceBytes)), mib(params), mib(params), mib(params * Double(state))])
    }
    var chart = StackedBarChart(id: id, title: "Bytes per layer (\(p.model), batch \(p.batch))", valueLabel: "MiB",
                                categories: categories, rows: rows)
    var s = chart.svg
    // The whole step: what the peak is made of, against the measured peak and the budget.
    let totals: [(String, Int)] = [("input batch", p.inputBytes), ("parameters", p.parameterBytes), ("gradients", p.gradientBytes),
                                   ("optimizer state", p.optimizerBytes), ("activations + workspace at the peak", p.activationBytes)]
      + extra
    chart = StackedBarChart(id: id + "-total", title: "Planned peak of a training step\(extra.isEmpty ? "" : " and what the run holds beside it"), by part",
                            valueLabel: "MiB", categories: totals.map(\.0), rows: [("planned peak", totals.map { mib(Double($0.1)) })])
    if let m = measuredPeak { chart.references.append(("measured peak \(fmt(mib(Double(m)), 1)) MiB", mib(Double(m)), 3)) }
    if let b = budget { chart.references.append(("budget \(fmt(mib(Double(b)), 1)) MiB", mib(Double(b)), 7)) }
    chart.rowHeight = 30
    s += chart.svg
    let all = p.peakTrainingBytes + extra.reduce(0) { $0 + $1.1 }
    var summary = [["planned peak (training step)", "\(fmt(mib(Double(p.peakTrainingBytes)), 1)) MiB", "\(p.peakTrainingBytes)"]]
    if !extra.isEmpty { summary.append(["planned peak (step + " + extra.map(\.0).joined(separator: " + ") + ")", "\(fmt(mib(Double(all)), 1)) MiB", "\(all)"]) }
    summary += [
                   ["planned peak (inference)", "\(fmt(mib(Double(p.peakInferenceBytes)), 1)) MiB", "\(p.peakInferenceBytes)"]]
    summary += totals.map { [$0.0, "\(fmt(mib(Double($0.1)), 1)) MiB", "\($0.1)"] }
    if let m = measuredPeak { summary.append(["measured peak (ledger)", "\(fmt(mib(Double(m)), 1)) MiB", "\(m)"]) }
    if let b = budget { summary.append(["budget", "\(fmt(mib(Double(b)), 1)) MiB", "\(b)"]) }
    s += table(id: id + "-summary", caption: "Peak and its parts", headers: ["", "MiB", "bytes"], rows: summary, collapsed: false)
    s += table(id: id + "-table", caption: "Bytes per layer", headers: ["layer", "kind", "output", "parameters", "kept (MiB)", "workspace (MiB)", "MACs per image"],
               rows: p.layers.map { l in
                 [l.name, l.kind, l.output.map(String.init).joined(separator: "×"), "\(l.parameters)", fmt(mib(Double(l.keptBytes)), 2),
                  fmt(mib(Double(l.workspaceBytes)), 2), "\(l.macs)"]
               })
    return s
  }

  /// Receptive field size per layer (input pixels).
  public static func receptiveField(_ p: Plan, id: String = "chart-rf") -> String {
    let local = p.layers.enumerated().filter { !$0.element.receptiveField.global }
    let series = LineChart.Series(name: "receptive field (height)", points: local.map { (Double($0.offset), Double($0.element.receptiveField.size[0])) }, style: 0)
    var chart = LineChart(id: id, title: "Receptive field growth through \(p.model)", xLabel: "layer (index in the plan)",
                          yLabel: "receptive field (input pixels)", series: [series], yFromZero: true)
    chart.references = [("input height \(p.input[1]) px", Double(p.input[1]), 3)]
    var s = chart.svg
    if let g = p.layers.firstIndex(where: { $0.receptiveField.global }) {
      s += "<p class=\"note\">From layer \(g) (\(esc(p.layers[g].name))) on, every output sees the whole input (global pooling or a fully connected layer).</p>"
    }
    s += table(id: id + "-table", caption: "Receptive field per layer", headers: ["layer", "kind", "size (px)", "stride (px)"],
               rows: p.layers.map { l in
                 [l.name, l.kind, l.receptiveField.global ? "global" : l.receptiveField.size.map(String.init).joined(separator: "×"),
                  l.receptiveField.stride.map(String.init).joined(separator: "×")]
               })
    return s
  }

  /// Every memory mode within a budget with its largest batch (what fits, in one look).
  public static func modes(_ choices: [ModeChoice], best: ModeChoice?, budget: Int, id: String = "chart-modes") -> String {
    guard !choices.isEmpty else { return "<p>No memory mode fits one image in \(fmt(mib(Double(budget)), 1)) MiB.</p>" }
    var chart = StackedBarChart(id: id, title: "Largest batch per memory mode within \(fmt(mib(Double(budget)), 1)) MiB",
                                valueLabel: "largest batch (images)", categories: ["largest batch"],
                                rows: choices.map { ($0.mode.description, [Double($0.batch)]) })
    chart.rowHeight = 22
    var s = chart.svg
    s += table(id: id + "-table", caption: "Memory modes", headers: ["mode", "largest batch", "peak at that batch (MiB)", "estimated relative time"],
               rows: choices.map { [$0.mode.description, "\($0.batch)", fmt(mib(Double($0.peakTrainingBytes)), 1), "×" + fmt($0.relativeTime, 2)] },
               collapsed: false)
    if let b = best { s += "<p>Fastest mode that fits the requested batch: <strong>\(esc(b.mode.description))</strong>.</p>" }
    return s
  }
}
