import Foundation

/// Charts as inline SVG: no script, no network. Every series differs in colour (Okabe–Ito, safe for
/// the common colour-vision deficiencies), in dash pattern and in marker shape, so it reads in grey
/// too; axes carry labels with units; each chart has a <title> and a <desc> for screen readers and is
/// followed in the page by a table of its numbers.
public enum Palette {
  /// Okabe & Ito (2008): blue, orange, bluish green, vermillion, reddish purple, sky blue, yellow, black.
  public static let colours = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
  public static let dashes = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 2 1 2", "3 3"]
  public static func colour(_ i: Int) -> String { colours[i % colours.count] }
  public static func dash(_ i: Int) -> String { dashes[i % dashes.count] }
}

/// Text escaped for HTML and SVG.
public func esc(_ s: String) -> String {
  s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

func fmt(_ v: Double, _ digits: Int = 3) -> String {
  guard v.isFinite else { return "–" }
  if v != 0 && (abs(v) >= 1e6 || abs(v) < 1e-3) { return String(format: "%.\(max(1, digits - 1))e", v) }
  var s = String(format: "%.\(digits)f", v)
  if s.contains(".") {
    while s.hasSuffix("0") { s.removeLast() }
    if s.hasSuffix(".") { s.removeLast() }
  }
  return s
}

/// Round tick positions covering [lo, hi]: steps of 1, 2 or 5 × 10^k.
func niceTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
  guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
  let raw = (hi - lo) / Double(max(1, count))
  let mag = pow(10, floor(log10(raw)))
  let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
  var t = ceil(lo / step - 1e-9) * step, out = [Double]()
  while t <= hi + step * 1e-9 {
    out.append(abs(t) < step * 1e-9 ? 0 : t)
    t += step
  }
  return out
}

/// The opening of a chart: `<svg>` sized and labelled for screen readers by its `<title>` and
/// `<desc>` (`desc` is plain text, escaped here).
func svgOpen(id: String, width: Double, height: Double, title: String, desc: String) -> String {
  "<svg id=\"\(esc(id))\" class=\"chart\" role=\"img\" aria-labelledby=\"\(esc(id))-t \(esc(id))-d\" viewBox=\"0 0 \(fmt(width, 0)) \(fmt(height, 0))\" width=\"\(fmt(width, 0))\" height=\"\(fmt(height, 0))\" xmlns=\"http://www.w3.org/2000/svg\">"
    + "<title id=\"\(esc(id))-t\">\(esc(title))</title><desc id=\"\(esc(id))-d\">\(esc(desc))</desc>"
}

/// A marker shape per series index: circle, square, triangle, diamond, cross, …
func marker(_ i: Int, _ x: Double, _ y: Double, _ colour: String) -> String {
  let s = 3.5, X = fmt(x, 1), Y = fmt(y, 1)
  switch i % 5 {
  case 0: return "<circle cx=\"\(X)\" cy=\"\(Y)\" r=\"\(s)\" fill=\"\(colour)\"/>"
  case 1: return "<rect x=\"\(fmt(x - s, 1))\" y=\"\(fmt(y - s, 1))\" width=\"\(2 * s)\" height=\"\(2 * s)\" fill=\"\(colour)\"/>"
  case 2: return "<path d=\"M\(X) \(fmt(y - s - 1, 1))L\(fmt(x + s + 0.5, 1)) \(fmt(y + s, 1))L\(fmt(x - s - 0.5, 1)) \(fmt(y + s, 1))Z\" fill=\"\(colour)\"/>"
  case 3: return "<path d=\"M\(X) \(fmt(y - s - 1, 1))L\(fmt(x + s + 1, 1)) \(Y)L\(X) \(fmt(y + s + 1, 1))L\(fmt(x - s - 1, 1)) \(Y)Z\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\"/>"
  default: return "<path d=\"M\(fmt(x - s, 1)) \(fmt(y - s, 1))L\(fmt(x + s, 1)) \(fmt(y + s, 1))M\(fmt(x - s, 1)) \(fmt(y + s, 1))L\(fmt(x + s, 1)) \(fmt(y - s, 1))\" stroke=\"\(colour)\" stroke-width=\"1.8\"/>"
  }
}

/// Legend items laid out in rows that fit `width` from `left`: (x, row) per item.
func legendLayout(_ names: [String], left: Double, width: Double, swatch: Double) -> (positions: [(Double, Int)], rows: Int) {
  var x = left, row = 0, out = [(Double, Int)]()
  for n in names {
    let w = swatch + 12 + Double(n.count) * 7.2
    if x + w > width - 8 && x > left {
      x = left
      row += 1
    }
    out.append((x, row))
    x += w + 8
  }
  return (out, row + 1)
}

/// Lines over a shared x axis, with an optional set of horizontal reference lines (a budget).
public struct LineChart {
  public struct Series {
    public var name: String
    public var points: [(x: Double, y: Double)]
    /// Index into the palette, dashes and markers.
    public var style: Int
    /// Markers at the points (off for dense per-step series).
    public var markers = true
    public var width = 2.0
    public init(name: String, points: [(x: Double, y: Double)], style: Int, markers: Bool = true, width: Double = 2) {
      self.name = name
      self.points = points.filter { $0.x.isFinite && $0.y.isFinite }
      self.style = style
      self.markers = markers
      self.width = width
    }
  }

  public var id: String
  public var title: String
  public var xLabel: String
  public var yLabel: String
  public var series: [Series]
  /// Horizontal lines: name, y, style.
  public var references: [(name: String, y: Double, style: Int)] = []
  /// Start the y axis at zero (counts, bytes, rates).
  public var yFromZero = false
  /// A logarithmic y axis (positive values spanning decades, e.g. a loss that starts far off).
  public var logY = false
  public var width = 640.0, height = 300.0

  public init(id: String, title: String, xLabel: String, yLabel: String, series: [Series], yFromZero: Bool = false) {
    self.id = id
    self.title = title
    self.xLabel = xLabel
    self.yLabel = yLabel
    self.series = series
    self.yFromZero = yFromZero
  }

  public var svg: String {
    let legendNames = series.map(\.name) + references.map(\.name)
    let left = 72.0, right = 16.0, bottom = 48.0
    let legend = legendLayout(legendNames, left: left, width: width, swatch: 26)
    let top = 22.0 + Double(legend.rows) * 18
    let height = self.height + Double(legend.rows - 1) * 18
    let pw = width - left - right, ph = height - top - bottom
    let logY = self.logY && !series.flatMap({ $0.points.map(\.y) }).contains { $0 <= 0 }
    func ty(_ v: Double) -> Double { logY ? log10(v) : v }
    let xs = series.flatMap { $0.points.map(\.x) }
    let ys = (series.flatMap { $0.points.map(\.y) } + references.map(\.y)).filter { !logY || $0 > 0 }.map(ty)
    var x0 = xs.min() ?? 0, x1 = xs.max() ?? 1
    var y0 = ys.min() ?? 0, y1 = ys.max() ?? 1
    if yFromZero && !logY { y0 = min(0, y0) }
    if x1 <= x0 { (x0, x1) = (x0 - 0.5, x0 + 0.5) }
    if y1 <= y0 { (y0, y1) = (y0 - max(abs(y0) * 0.1, 0.5), y1 + max(abs(y1) * 0.1, 0.5)) }
    let pad = (y1 - y0) * 0.05
    y1 += pad
    if !yFromZero || y0 < 0 || logY { y0 -= pad }
    let xt = niceTicks(x0, x1)
    // Log axis: ticks at 1, 2, 5 × 10^k within the range (values are log10 of the data).
    let yt: [Double] = logY
      ? (Int(floor(y0))...Int(ceil(y1))).flatMap { k in (y1 - y0 > 3 ? [1.0] : [1.0, 2, 5]).map { log10($0) + Double(k) } }
        .filter { $0 >= y0 && $0 <= y1 }
      : niceTicks(y0, y1)
    func X(_ v: Double) -> Double { left + (v - x0) / (x1 - x0) * pw }
    func Y(_ v: Double) -> Double { top + ph - (ty(v) - y0) / (y1 - y0) * ph }
    func Yt(_ t: Double) -> Double { top + ph - (t - y0) / (y1 - y0) * ph }
    let names = series.map(\.name).joined(separator: ", ")
    var s = svgOpen(id: id, width: width, height: height, title: title, desc: "\(yLabel) against \(xLabel): \(names). The numbers are in the table below the chart.")
    s += "<rect x=\"\(fmt(left, 1))\" y=\"\(fmt(top, 1))\" width=\"\(fmt(pw, 1))\" height=\"\(fmt(ph, 1))\" fill=\"#fff\" stroke=\"#888\"/>"
    for t in yt where t >= y0 && t <= y1 {
      s += "<line x1=\"\(fmt(left, 1))\" x2=\"\(fmt(left + pw, 1))\" y1=\"\(fmt(Yt(t), 1))\" y2=\"\(fmt(Yt(t), 1))\" stroke=\"#e3e3e3\"/>"
      s += "<text x=\"\(fmt(left - 6, 1))\" y=\"\(fmt(Yt(t) + 4, 1))\" text-anchor=\"end\" class=\"tick\">\(fmt(logY ? pow(10, t) : t))</text>"
    }
    for t in xt where t >= x0 && t <= x1 {
      s += "<line x1=\"\(fmt(X(t), 1))\" x2=\"\(fmt(X(t), 1))\" y1=\"\(fmt(top + ph, 1))\" y2=\"\(fmt(top + ph + 5, 1))\" stroke=\"#888\"/>"
      s += "<text x=\"\(fmt(X(t), 1))\" y=\"\(fmt(top + ph + 18, 1))\" text-anchor=\"middle\" class=\"tick\">\(fmt(t))</text>"
    }
    s += "<text x=\"\(fmt(left + pw / 2, 1))\" y=\"\(fmt(height - 8, 1))\" text-anchor=\"middle\" class=\"axis\">\(esc(xLabel))</text>"
    s += "<text transform=\"translate(16 \(fmt(top + ph / 2, 1))) rotate(-90)\" text-anchor=\"middle\" class=\"axis\">\(esc(yLabel + (logY ? ", log scale" : "")))</text>"
    for r in references where !logY || r.y > 0 {
      let c = Palette.colour(r.style)
      s += "<line x1=\"\(fmt(left, 1))\" x2=\"\(fmt(left + pw, 1))\" y1=\"\(fmt(Y(r.y), 1))\" y2=\"\(fmt(Y(r.y), 1))\" stroke=\"\(c)\" stroke-width=\"1.5\" stroke-dasharray=\"\(Palette.dash(r.style).isEmpty ? "5 3" : Palette.dash(r.style))\"/>"
      s += "<text x=\"\(fmt(left + pw - 4, 1))\" y=\"\(fmt(Y(r.y) - 4, 1))\" text-anchor=\"end\" class=\"ref\" fill=\"\(c)\">\(esc(r.name))</text>"
    }
    for ser in series where !ser.points.isEmpty {
      let c = Palette.colour(ser.style)
      let d = ser.points.enumerated().map { "\($0.offset == 0 ? "M" : "L")\(fmt(X($0.element.x), 1)) \(fmt(Y($0.element.y), 1))" }.joined()
      s += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(c)\" stroke-width=\"\(fmt(ser.width, 1))\" stroke-dasharray=\"\(Palette.dash(ser.style))\" stroke-linejoin=\"round\"/>"
      if ser.markers && ser.points.count <= 200 { for p in ser.points { s += marker(ser.style, X(p.x), Y(p.y), c) } }
    }
    // Legend: rows above the plot.
    for (i, ser) in (series + references.map({ Series(name: $0.name, points: [], style: $0.style, markers: false) })).enumerated() {
      let c = Palette.colour(ser.style), (lx, row) = legend.positions[i], ly = 16 + Double(row) * 18
      s += "<line x1=\"\(fmt(lx, 1))\" x2=\"\(fmt(lx + 26, 1))\" y1=\"\(fmt(ly, 1))\" y2=\"\(fmt(ly, 1))\" stroke=\"\(c)\" stroke-width=\"2\" stroke-dasharray=\"\(Palette.dash(ser.style))\"/>"
      if ser.markers { s += marker(ser.style, lx + 13, ly, c) }
      s += "<text x=\"\(fmt(lx + 31, 1))\" y=\"\(fmt(ly + 4, 1))\" class=\"legend\">\(esc(ser.name))</text>"
    }
    return s + "</svg>"
  }
}

/// Horizontal stacked bars: one row per item, one segment per category.
public struct StackedBarChart {
  public var id: String
  public var title: String
  public var valueLabel: String
  public var categories: [String]
  /// Rows: label and one value per category.
  public var rows: [(label: String, values: [Double])]
  /// Vertical reference lines (e.g. the budget), with their style.
  public var references: [(name: String, x: Double, style: Int)] = []
  public var width = 760.0
  public var rowHeight = 14.0

  public init(id: String, title: String, valueLabel: String, categories: [String], rows: [(label: String, values: [Double])]) {
    self.id = id
    self.title = title
    self.valueLabel = valueLabel
    self.categories = categories
    self.rows = rows
  }

  public var svg: String {
    let left = 190.0, right = 24.0, bottom = 44.0
    let legend = legendLayout(categories, left: left, width: width, swatch: 14)
    let top = 30.0 + Double(legend.rows) * 18
    let pw = width - left - right
    let height = top + bottom + Double(rows.count) * rowHeight
    let maxTotal = max(rows.map { $0.values.reduce(0, +) }.max() ?? 1, references.map(\.x).max() ?? 0, 1e-12)
    let ticks = niceTicks(0, maxTotal)
    let x1 = max(maxTotal, ticks.last ?? maxTotal)
    func X(_ v: Double) -> Double { left + v / x1 * pw }
    var s = svgOpen(id: id, width: width, height: height, title: title, desc: "\(valueLabel) per row, stacked by \(categories.joined(separator: ", ")). The numbers are in the table below the chart.")
    // Patterns: each category also differs in texture, so the stack reads without colour.
    s += "<defs>"
    for (i, _) in categories.enumerated() {
      let c = Palette.colour(i)
      let texture: String
      switch i % 5 {
      case 0: texture = ""
      case 1: texture = "<path d=\"M0 6L6 0\" stroke=\"#fff\" stroke-width=\"1.2\"/>"
      case 2: texture = "<circle cx=\"3\" cy=\"3\" r=\"1.1\" fill=\"#fff\"/>"
      case 3: texture = "<path d=\"M0 3H6\" stroke=\"#fff\" stroke-width=\"1.2\"/>"
      default: texture = "<path d=\"M3 0V6\" stroke=\"#fff\" stroke-width=\"1.2\"/>"
      }
      s += "<pattern id=\"\(esc(id))-p\(i)\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\"><rect width=\"6\" height=\"6\" fill=\"\(c)\"/>\(texture)</pattern>"
    }
    s += "</defs>"
    for t in ticks {
      s += "<line x1=\"\(fmt(X(t), 1))\" x2=\"\(fmt(X(t), 1))\" y1=\"\(fmt(top, 1))\" y2=\"\(fmt(height - bottom + 4, 1))\" stroke=\"#e3e3e3\"/>"
      s += "<text x=\"\(fmt(X(t), 1))\" y=\"\(fmt(height - bottom + 18, 1))\" text-anchor=\"middle\" class=\"tick\">\(fmt(t))</text>"
    }
    s += "<text x=\"\(fmt(left + pw / 2, 1))\" y=\"\(fmt(height - 8, 1))\" text-anchor=\"middle\" class=\"axis\">\(esc(valueLabel))</text>"
    for (r, row) in rows.enumerated() {
      let y = top + Double(r) * rowHeight
      let label = row.label.count > 30 ? String(row.label.prefix(29)) + "…" : row.label
      s += "<text x=\"\(fmt(left - 6, 1))\" y=\"\(fmt(y + rowHeight - 3, 1))\" text-anchor=\"end\" class=\"rowlabel\">\(esc(label))</text>"
      var x = 0.0
      for (i, v) in row.values.enumerated() where v > 0 {
        s += "<rect x=\"\(fmt(X(x), 2))\" y=\"\(fmt(y + 1, 1))\" width=\"\(fmt(max(X(x + v) - X(x), 0.5), 2))\" height=\"\(fmt(rowHeight - 2, 1))\" fill=\"url(#\(esc(id))-p\(i))\"><title>\(esc(row.label)) — \(esc(categories[i])): \(fmt(v)) \(esc(valueLabel))</title></rect>"
        x += v
      }
    }
    for r in references {
      let c = Palette.colour(r.style)
      s += "<line x1=\"\(fmt(X(r.x), 1))\" x2=\"\(fmt(X(r.x), 1))\" y1=\"\(fmt(top - 4, 1))\" y2=\"\(fmt(height - bottom, 1))\" stroke=\"\(c)\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/>"
      s += "<text x=\"\(fmt(X(r.x) - 4, 1))\" y=\"\(fmt(top - 8, 1))\" text-anchor=\"end\" class=\"ref\" fill=\"\(c)\">\(esc(r.name))</text>"
    }
    for (i, c) in categories.enumerated() {
      let (lx, row) = legend.positions[i], ly = 6 + Double(row) * 18
      s += "<rect x=\"\(fmt(lx, 1))\" y=\"\(fmt(ly, 1))\" width=\"14\" height=\"14\" fill=\"url(#\(esc(id))-p\(i))\"/>"
      s += "<text x=\"\(fmt(lx + 19, 1))\" y=\"\(fmt(ly + 12, 1))\" class=\"legend\">\(esc(c))</text>"
    }
    return s + "</svg>"
  }
}

/// A matrix as a grid of cells shaded by value (one hue, lightness carries the value, so it reads in
/// grey), each cell also holding its number.
public struct HeatmapChart {
  public var id: String
  public var title: String
  public var rowLabels: [String], columnLabels: [String]
  public var rowAxis: String, columnAxis: String
  public var values: [[Double]]
  /// Numbers written in the cells.
  public var text: [[String]]

  public init(id: String, title: String, rowLabels: [String], columnLabels: [String], rowAxis: String, columnAxis: String,
              values: [[Double]], text: [[String]]) {
    self.id = id
    self.title = title
    self.rowLabels = rowLabels
    self.columnLabels = columnLabels
    self.rowAxis = rowAxis
    self.columnAxis = columnAxis
    self.values = values
    self.text = text
  }

  public var svg: String {
    let n = rowLabels.count, m = columnLabels.count
    let cell = max(14.0, min(48.0, 560.0 / Double(max(n, m, 1))))
    let left = 150.0, top = 120.0
    let width = left + Double(m) * cell + 20, height = top + Double(n) * cell + 20
    let maxV = max(values.flatMap { $0 }.max() ?? 1, 1e-12)
    var s = svgOpen(id: id, width: width, height: height, title: title, desc: "Rows: \(rowAxis); columns: \(columnAxis). Darker cells hold larger shares; every cell shows its number, and the table below repeats them.")
    s += "<text x=\"\(fmt(left + Double(m) * cell / 2, 1))\" y=\"14\" text-anchor=\"middle\" class=\"axis\">\(esc(columnAxis)) →</text>"
    s += "<text transform=\"translate(14 \(fmt(top + Double(n) * cell / 2, 1))) rotate(-90)\" text-anchor=\"middle\" class=\"axis\">\(esc(rowAxis)) →</text>"
    for (j, c) in columnLabels.enumerated() {
      let x = left + (Double(j) + 0.5) * cell
      s += "<text transform=\"translate(\(fmt(x + 4, 1)) \(fmt(top - 6, 1))) rotate(-60)\" class=\"rowlabel\">\(esc(String(c.prefix(18))))</text>"
    }
    for (i, r) in rowLabels.enumerated() {
      let y = top + Double(i) * cell
      s += "<text x=\"\(fmt(left - 6, 1))\" y=\"\(fmt(y + cell / 2 + 4, 1))\" text-anchor=\"end\" class=\"rowlabel\">\(esc(String(r.prefix(22))))</text>"
      for j in 0..<m {
        let v = values[i][j] / maxV
        // Lightness from 97 % (none) to 22 % (all), one blue hue.
        let l = 97 - 75 * v
        let x = left + Double(j) * cell
        s += "<rect x=\"\(fmt(x, 1))\" y=\"\(fmt(y, 1))\" width=\"\(fmt(cell, 1))\" height=\"\(fmt(cell, 1))\" fill=\"hsl(212,70%,\(fmt(l, 1))%)\" stroke=\"#fff\"><title>\(esc(r)) → \(esc(columnLabels[j])): \(esc(text[i][j]))</title></rect>"
        if cell >= 22 {
          s += "<text x=\"\(fmt(x + cell / 2, 1))\" y=\"\(fmt(y + cell / 2 + 4, 1))\" text-anchor=\"middle\" class=\"cell\" fill=\"\(l < 55 ? "#fff" : "#111")\">\(esc(text[i][j]))</text>"
        }
      }
    }
    return s + "</svg>"
  }
}
