import Foundation
import TesseraKernels
import Yams

/// A user's own network, written as YAML or JSON (docs/MODEL_SPEC.md):
///
/// ```yaml
/// name: tiny-fcn
/// input_channels: 3
/// layers:
///   - conv: {filters: 16, kernel: 7, stride: 2, padding: same, bias: false}
///     name: stem
///   - batchnorm: {relu: true}
///   - maxpool: {kernel: 3, stride: 2, padding: same}
///   - conv: {filters: 10, kernel: 1}
///   - gap: {}
/// ```
public struct ModelSpec {
  public var name: String?
  public var inputChannels: Int
  public var layers: [LayerSpec]
  /// The file it was read from (named in build errors).
  public var source: String?

  /// Nesting deeper than this (layers in layers, or lists in lists) is refused before parsing.
  public static let maxDepth = 64
  /// Values (with YAML aliases expanded) a spec may hold: a bomb of aliases stops here.
  public static let maxValues = 200_000

  init(_ top: SpecValue) throws {
    guard case .object(let o, _) = top else { throw SpecError(path: "", layer: "", "a model spec is a mapping with 'layers'") }
    let unknown = Set(o.keys).subtracting(["name", "input_channels", "inputChannels", "layers"])
    guard unknown.isEmpty else {
      throw SpecError(path: "", layer: "", "unknown top-level keys \(unknown.sorted()); a spec takes name, input_channels and layers")
    }
    switch o["name"] {
    case nil, .null?: name = nil
    case .string(let n)?: name = n
    default: throw SpecError(path: "", layer: "", "'name' must be a string")
    }
    switch o["input_channels"] ?? o["inputChannels"] {
    case nil: inputChannels = 3
    case .number(let c)? where c == c.rounded() && c >= 1 && c <= 65536: inputChannels = Int(c)
    default: throw SpecError(path: "", layer: "", "'input_channels' must be a whole number from 1 to 65536")
    }
    guard case .array(let a)? = o["layers"] else { throw SpecError(path: "", layer: "", "missing 'layers': a list of layers") }
    layers = try a.enumerated().map { try $1.decodeLayer(String($0)) }
  }

  /// Reads a .json, .yaml or .yml file (JSON is read as YAML's flow style).
  public static func load(_ url: URL) throws -> ModelSpec {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw SpecError(path: url.path, layer: "", "cannot read the file: \((error as NSError).localizedDescription)")
    }
    guard data.count <= 10_000_000 else { throw SpecError(path: url.path, layer: "", "larger than 10 MB; not a model spec") }
    guard let text = String(data: data, encoding: .utf8) else { throw SpecError(path: url.path, layer: "", "not UTF-8 text") }
    do {
      var spec = try parse(yaml: text)
      spec.source = url.path
      return spec
    } catch var e as SpecError {
      e.path = url.path
      throw e
    }
  }

  /// Parses a spec's text: nesting and alias expansion are bounded before anything is built, and
  /// every error names the line.
  public static func parse(yaml: String) throws -> ModelSpec {
    if let line = tooDeep(yaml) {
      var e = SpecError(path: "", layer: "", "nested more than \(maxDepth) levels deep")
      e.line = line
      throw e
    }
    let node: Node?
    do { node = try Yams.compose(yaml: yaml) } catch let e as YamlError {
      var err = SpecError(path: "", layer: "", "not YAML or JSON: \(describe(e))")
      err.line = line(of: e)
      throw err
    } catch {
      throw SpecError(path: "", layer: "", "not YAML or JSON: \(error)")
    }
    guard let root = node else { throw SpecError(path: "", layer: "", "empty; a model spec is a mapping with 'layers'") }
    var budget = maxValues
    return try ModelSpec(SpecValue(root, budget: &budget, depth: 0))
  }

  /// The first line whose nesting (indentation, block-sequence dashes and open brackets together)
  /// could exceed `maxDepth`, or nil. A conservative bound on what the YAML parser, which recurses
  /// per level, will be asked to do.
  static func tooDeep(_ text: String) -> Int? {
    var open = 0
    for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      var indent = 0, dashes = 0, inQuote: Character? = nil, leading = true
      for ch in line {
        if let q = inQuote { if ch == q { inQuote = nil }; continue }
        if leading && ch == " " { indent += 1; continue }
        if ch == "#" { break }
        if leading && ch == "-" { dashes += 1; continue }
        if ch != " " { leading = false }
        switch ch {
        case "\"", "'": inQuote = ch
        case "[", "{":
          open += 1
          if open > maxDepth { return n + 1 }
        case "]", "}": open = max(0, open - 1)
        default: break
        }
      }
      // Block nesting needs at least one column of indentation per level.
      if open > maxDepth || dashes > maxDepth || indent / 2 + dashes + open > 4 * maxDepth { return n + 1 }
    }
    return nil
  }

  static func describe(_ error: YamlError) -> String {
    switch error {
    case let .scanner(context, problem, _, _), let .parser(context, problem, _, _), let .composer(context, problem, _, _):
      return [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
    default: return "\(error)"
    }
  }

  static func line(of error: YamlError) -> Int? {
    switch error {
    case let .scanner(_, _, mark, _), let .parser(_, _, mark, _), let .composer(_, _, mark, _): mark.line
    default: nil
    }
  }

  /// Builds the network, inferring each layer's input channels from the one before it.
  public func build() throws -> Sequential {
    var channels = inputChannels
    var features: Int? = nil
    do { return try Self.build(layers, path: "", channels: &channels, features: &features) } catch var e as SpecError {
      if e.path.isEmpty { e.path = source ?? "" }
      throw e
    }
  }

  static func build(_ specs: [LayerSpec], path: String, channels: inout Int, features: inout Int?) throws -> Sequential {
    var out = [(String, Layer)]()
    for (i, s) in specs.enumerated() {
      let name = s.name ?? String(i)
      let p = path.isEmpty ? name : path + "." + name
      guard !out.contains(where: { $0.0 == name }) else {
        var e = SpecError(path: "", layer: p, "duplicate layer name")
        e.line = s.line
        throw e
      }
      do { out.append((name, try s.build(path: p, channels: &channels, features: &features))) } catch var e as SpecError {
        e.line = e.line ?? s.line
        throw e
      }
    }
    return Sequential(out)
  }
}

/// A spec that cannot be built, naming the layer path.
public struct SpecError: Error, CustomStringConvertible {
  public var path: String, layer: String, message: String
  /// 1-based line of the spec text, when known.
  public var line: Int?
  public init(path: String, layer: String, _ message: String) {
    self.path = path
    self.layer = layer
    self.message = message
  }
  public var description: String {
    let place = path.isEmpty ? (line.map { "line \($0)" }) : path + (line.map { ":\($0)" } ?? "")
    let parts = [place, layer.isEmpty ? nil : "layer \(layer)"].compactMap { $0 }
    return parts.joined(separator: ": ") + (parts.isEmpty ? "" : ": ") + message
  }
}

/// One entry of `layers`: exactly one type key (conv, batchnorm, relu, relu6, leaky_relu, maxpool,
/// avgpool, adaptive_avgpool, gap, flatten, dropout, linear, residual, sequential) with its
/// options, and an optional `name`.
public struct LayerSpec {
  public var name: String?
  public var type: String
  public var options: [String: SpecValue]
  /// 1-based line of the layer's mapping in the spec text.
  public var line: Int?

  func int(_ k: String, _ path: String, default d: Int? = nil) throws -> Int {
    guard let v = options[k] else {
      if let d { return d }
      throw SpecError(path: "", layer: path, "\(type) needs '\(k)'")
    }
    let limit = Self.limits[k] ?? 65536
    guard case .number(let x) = v, x == x.rounded(), x >= 0, x <= Double(limit) else {
      throw SpecError(path: "", layer: path, "'\(k)' must be a whole number from 0 to \(limit)")
    }
    return Int(x)
  }

  /// The largest value each whole-number option takes (others: 65536).
  static let limits: [String: Int] = ["filters": 1 << 20, "out": 1 << 24, "in": 1 << 30, "kernel": 4096, "stride": 4096,
                                      "dilation": 4096, "groups": 1 << 20]

  func number(_ k: String, _ path: String, default d: Double) throws -> Double {
    guard let v = options[k] else { return d }
    guard case .number(let x) = v, x.isFinite, abs(x) <= 1e6 else {
      throw SpecError(path: "", layer: path, "'\(k)' must be a finite number")
    }
    return x
  }

  func bool(_ k: String, _ path: String, default d: Bool) throws -> Bool {
    guard let v = options[k] else { return d }
    guard case .bool(let b) = v else { throw SpecError(path: "", layer: path, "'\(k)' must be true or false") }
    return b
  }

  func padding(_ path: String) throws -> Padding {
    switch options["padding"] {
    case nil: return .valid
    case .string("same")?: return .same
    case .string("valid")?: return .valid
    case .number(let p)? where p >= 0 && p == p.rounded() && p <= 65536: return .symmetric(Int(p))
    case .array(let a)? where a.count == 4:
      let v = try a.map { x -> Int in
        guard case .number(let n) = x, n >= 0, n == n.rounded(), n <= 65536 else {
          throw SpecError(path: "", layer: path, "padding [top, left, bottom, right] takes whole numbers from 0 to 65536")
        }
        return Int(n)
      }
      return .explicit(top: v[0], left: v[1], bottom: v[2], right: v[3])
    default: throw SpecError(path: "", layer: path, "padding must be same, valid, a number (0–65536) or [top, left, bottom, right]")
    }
  }

  func children(_ k: String, _ path: String) throws -> [LayerSpec]? {
    guard let v = options[k] else { return nil }
    guard case .array(let a) = v else { throw SpecError(path: "", layer: path, "'\(k)' must be a list of layers") }
    return try a.map { try $0.decodeLayer(path) }
  }

  func build(path: String, channels: inout Int, features: inout Int?) throws -> Layer {
    switch type {
    case "conv":
      try checkKeys(["filters", "kernel", "stride", "padding", "dilation", "groups", "bias"], path)
      let filters = try int("filters", path), groups = try int("groups", path, default: 1)
      guard filters >= 1, try int("kernel", path) >= 1, try int("stride", path, default: 1) >= 1, groups >= 1,
            channels % groups == 0, filters % groups == 0
      else {
        throw SpecError(path: "", layer: path, "conv needs filters, kernel, stride ≥ 1 and groups dividing \(channels) input and \(filters) output channels")
      }
      let k = try int("kernel", path)
      guard let weights = Limits.product([filters, channels / groups, k, k]), weights <= 1 << 31 else {
        throw SpecError(path: "", layer: path, "conv of \(filters) filters of \(k)×\(k)×\(channels / groups) holds more than 2^31 weights")
      }
      let c = Conv2D(inputChannels: channels, outputChannels: filters, kernelSize: k,
                     stride: try int("stride", path, default: 1), padding: try padding(path),
                     dilation: max(1, try int("dilation", path, default: 1)), groups: groups,
                     bias: try bool("bias", path, default: true))
      channels = filters
      features = nil
      return c
    case "batchnorm":
      try checkKeys(["epsilon", "momentum", "relu"], path)
      return BatchNorm2D(channels: channels, epsilon: Float(try number("epsilon", path, default: 1e-3)),
                         momentum: Float(try number("momentum", path, default: 0.99)),
                         fusedReLU: try bool("relu", path, default: false))
    case "relu": try checkKeys([], path); return ReLU()
    case "relu6": try checkKeys([], path); return ReLU6()
    case "sigmoid": try checkKeys([], path); return Sigmoid()
    case "leaky_relu":
      try checkKeys(["slope"], path)
      return LeakyReLU(slope: Float(try number("slope", path, default: 0.01)))
    case "maxpool", "avgpool":
      try checkKeys(["kernel", "stride", "padding", "count_include_pad"], path)
      let k = try int("kernel", path)
      guard k >= 1 else { throw SpecError(path: "", layer: path, "kernel must be ≥ 1") }
      let mode: Pool2D.Mode = type == "maxpool" ? .max : .average(countIncludePad: try bool("count_include_pad", path, default: false))
      return Pool2D(mode, kernelSize: k, stride: max(1, try int("stride", path, default: k)), padding: try padding(path))
    case "adaptive_avgpool":
      try checkKeys(["size"], path)
      guard case .array(let a)? = options["size"], a.count == 2, case .number(let h) = a[0], case .number(let w) = a[1],
            h >= 1, w >= 1, h <= 65536, w <= 65536, h == h.rounded(), w == w.rounded()
      else { throw SpecError(path: "", layer: path, "adaptive_avgpool needs size: [height, width]") }
      return AdaptiveAvgPool2D(outputSize: (Int(h), Int(w)))
    case "gap":
      try checkKeys([], path)
      features = channels
      return GlobalAvgPool2D()
    case "flatten":
      try checkKeys([], path)
      features = nil
      return Flatten()
    case "dropout":
      try checkKeys(["rate"], path)
      let r = try number("rate", path, default: 0.5)
      guard r >= 0 && r < 1 else { throw SpecError(path: "", layer: path, "dropout rate must be in [0, 1)") }
      return Dropout(rate: Float(r))
    case "linear":
      try checkKeys(["out", "in", "bias"], path)
      guard let inFeatures = options["in"] != nil ? try int("in", path) : features else {
        throw SpecError(path: "", layer: path, "linear after a flatten needs 'in' (the flattened size); after gap it is inferred")
      }
      let out = try int("out", path)
      guard inFeatures >= 1, out >= 1 else { throw SpecError(path: "", layer: path, "linear needs in and out ≥ 1") }
      guard let weights = Limits.product([inFeatures, out]), weights <= 1 << 31 else {
        throw SpecError(path: "", layer: path, "linear of \(inFeatures) → \(out) holds more than 2^31 weights")
      }
      features = out
      return Linear(inputFeatures: inFeatures, outputFeatures: out, bias: try bool("bias", path, default: true))
    case "sequential":
      try checkKeys(["layers"], path)
      return try ModelSpec.build(children("layers", path) ?? [], path: path, channels: &channels, features: &features)
    case "residual":
      try checkKeys(["layers", "shortcut", "relu"], path)
      let inChannels = channels
      let main = try ModelSpec.build(children("layers", path) ?? [], path: path, channels: &channels, features: &features)
      var shortcutChannels = inChannels
      let shortcut = try children("shortcut", path).map {
        try ModelSpec.build($0, path: path + ".downsample", channels: &shortcutChannels, features: &features)
      }
      guard shortcutChannels == channels else {
        throw SpecError(path: "", layer: path, "the main path ends with \(channels) channels but the shortcut with \(shortcutChannels); add a projection shortcut")
      }
      return ResidualBlock(main: main, shortcut: shortcut, finalReLU: try bool("relu", path, default: true))
    default:
      throw SpecError(path: "", layer: path, "unknown layer type '\(type)'")
    }
  }

  func checkKeys(_ known: Set<String>, _ path: String) throws {
    let unknown = Set(options.keys).subtracting(known)
    guard unknown.isEmpty else {
      throw SpecError(path: "", layer: path, "\(type) does not take \(unknown.sorted()); it takes \(known.sorted())")
    }
  }
}

/// A YAML/JSON value inside a spec; mappings keep their line for error messages.
public indirect enum SpecValue {
  case number(Double), string(String), bool(Bool), array([SpecValue]), object([String: SpecValue], line: Int?), null

  /// Converts a composed YAML node, spending one unit of `budget` per value (aliases are expanded,
  /// so a billion-laughs spec runs out of budget instead of memory).
  init(_ node: Node, budget: inout Int, depth: Int) throws {
    budget -= 1
    guard budget >= 0 else {
      throw SpecError(path: "", layer: "", "more than \(ModelSpec.maxValues) values once aliases are expanded; not a model spec")
    }
    guard depth <= ModelSpec.maxDepth else {
      var e = SpecError(path: "", layer: "", "nested more than \(ModelSpec.maxDepth) levels deep")
      e.line = node.mark?.line
      throw e
    }
    switch node {
    case .scalar(let sc):
      if sc.style == .plain || sc.style == .any {
        if node.null != nil { self = .null; return }
        if let b = node.bool { self = .bool(b); return }
        // Numbers are read here, not by Yams: its YAML 1.1 base-60 integers ("1:30:00") overflow
        // and trap on long inputs (found by fuzzing). A spec's numbers are decimal.
        if let d = Self.decimal(sc.string) { self = .number(d); return }
      }
      self = .string(sc.string)
    case .sequence(let sq):
      var out = [SpecValue]()
      for n in sq { out.append(try SpecValue(n, budget: &budget, depth: depth + 1)) }
      self = .array(out)
    case .mapping(let m):
      var out = [String: SpecValue]()
      for (k, v) in m {
        guard case .scalar(let ks) = k else {
          var e = SpecError(path: "", layer: "", "mapping keys must be plain names")
          e.line = k.mark?.line
          throw e
        }
        guard out[ks.string] == nil else {
          var e = SpecError(path: "", layer: "", "key '\(ks.string)' appears twice")
          e.line = k.mark?.line
          throw e
        }
        out[ks.string] = try SpecValue(v, budget: &budget, depth: depth + 1)
      }
      self = .object(out, line: m.mark?.line)
    }
  }

  /// A plain decimal number (digits, optional sign, point and exponent), or nil.
  static func decimal(_ s: String) -> Double? {
    guard !s.isEmpty, s.count <= 64, s.allSatisfy({ "0123456789+-.eE_".contains($0) }), s.contains(where: \.isNumber) else { return nil }
    return Double(s.replacingOccurrences(of: "_", with: ""))
  }

  func decodeLayer(_ path: String) throws -> LayerSpec {
    guard case .object(let o, let line) = self else { throw SpecError(path: "", layer: path, "a layer must be a mapping") }
    var name: String? = nil
    if case .string(let n)? = o["name"] { name = n }
    let types = o.keys.filter { $0 != "name" }
    guard types.count == 1, let t = types.first else {
      var e = SpecError(path: "", layer: path, "each layer needs exactly one type key (conv, batchnorm, relu, …), found \(types.sorted())")
      e.line = line
      throw e
    }
    do {
      var spec = try LayerSpec(type: t, name: name, value: o[t]!, path: path)
      spec.line = line
      return spec
    } catch var e as SpecError {
      e.line = e.line ?? line
      throw e
    }
  }
}

extension LayerSpec {
  init(type: String, name: String?, value: SpecValue, path: String) throws {
    self.type = type
    self.name = name
    switch value {
    case .object(let o, _): options = o
    case .null: options = [:]
    case .array(let a): options = ["layers": .array(a)]
    default: throw SpecError(path: "", layer: path, "options of '\(type)' must be a mapping, e.g. \(type): {}")
    }
  }
}
