import Foundation
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
public struct ModelSpec: Decodable {
  public var name: String?
  public var inputChannels: Int
  public var layers: [LayerSpec]

  enum CodingKeys: String, CodingKey { case name, input_channels, inputChannels, layers }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    name = try c.decodeIfPresent(String.self, forKey: .name)
    inputChannels = try c.decodeIfPresent(Int.self, forKey: .input_channels)
      ?? c.decodeIfPresent(Int.self, forKey: .inputChannels) ?? 3
    layers = try c.decode([LayerSpec].self, forKey: .layers)
  }

  /// Reads a .json, .yaml or .yml file.
  public static func load(_ url: URL) throws -> ModelSpec {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw SpecError(path: url.path, layer: "", "cannot read the file: \((error as NSError).localizedDescription)")
    }
    guard data.count <= 10_000_000 else { throw SpecError(path: url.path, layer: "", "larger than 10 MB; not a model spec") }
    do {
      if url.pathExtension.lowercased() == "json" { return try JSONDecoder().decode(ModelSpec.self, from: data) }
      return try YAMLDecoder().decode(ModelSpec.self, from: String(decoding: data, as: UTF8.self))
    } catch let e as SpecError {
      throw SpecError(path: url.path, layer: e.layer, e.message)
    } catch {
      throw SpecError(path: url.path, layer: "", "not a model spec: \(describe(error))")
    }
  }

  public static func parse(yaml: String) throws -> ModelSpec { try YAMLDecoder().decode(ModelSpec.self, from: yaml) }

  static func describe(_ error: Error) -> String {
    switch error {
    case let DecodingError.keyNotFound(k, ctx): "missing '\(k.stringValue)' at \(path(ctx.codingPath))"
    case let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx),
      let DecodingError.dataCorrupted(ctx):
      "\(ctx.debugDescription) at \(path(ctx.codingPath))"
    default: "\(error)"
    }
  }

  static func path(_ keys: [CodingKey]) -> String {
    keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
  }

  /// Builds the network, inferring each layer's input channels from the one before it.
  public func build() throws -> Sequential {
    var channels = inputChannels
    var features: Int? = nil
    return try Self.build(layers, path: "", channels: &channels, features: &features)
  }

  static func build(_ specs: [LayerSpec], path: String, channels: inout Int, features: inout Int?) throws -> Sequential {
    var out = [(String, Layer)]()
    for (i, s) in specs.enumerated() {
      let name = s.name ?? String(i)
      let p = path.isEmpty ? name : path + "." + name
      guard !out.contains(where: { $0.0 == name }) else { throw SpecError(path: "", layer: p, "duplicate layer name") }
      out.append((name, try s.build(path: p, channels: &channels, features: &features)))
    }
    return Sequential(out)
  }
}

/// A spec that cannot be built, naming the layer path.
public struct SpecError: Error, CustomStringConvertible {
  public var path: String, layer: String, message: String
  public init(path: String, layer: String, _ message: String) {
    self.path = path
    self.layer = layer
    self.message = message
  }
  public var description: String {
    [path.isEmpty ? nil : path, layer.isEmpty ? nil : "layer \(layer)"].compactMap { $0 }.joined(separator: ": ")
      + (path.isEmpty && layer.isEmpty ? "" : ": ") + message
  }
}

/// One entry of `layers`: exactly one type key (conv, batchnorm, relu, relu6, leaky_relu, maxpool,
/// avgpool, adaptive_avgpool, gap, flatten, dropout, linear, residual, sequential) with its
/// options, and an optional `name`.
public struct LayerSpec: Decodable {
  public var name: String?
  public var type: String
  public var options: [String: SpecValue]

  struct Key: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
  }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: Key.self)
    name = try c.decodeIfPresent(String.self, forKey: Key(stringValue: "name"))
    let types = c.allKeys.map(\.stringValue).filter { $0 != "name" }
    guard types.count == 1, let t = types.first else {
      throw SpecError(path: "", layer: name ?? "", "each layer needs exactly one type key (conv, batchnorm, relu, …), found \(types.sorted())")
    }
    type = t
    let v = try c.decode(SpecValue.self, forKey: Key(stringValue: t))
    switch v {
    case .object(let o): options = o
    case .null: options = [:]
    case .array(let a): options = ["layers": .array(a)]
    default: throw SpecError(path: "", layer: name ?? t, "options of '\(t)' must be a mapping, e.g. \(t): {}")
    }
  }

  func int(_ k: String, _ path: String, default d: Int? = nil) throws -> Int {
    guard let v = options[k] else {
      if let d { return d }
      throw SpecError(path: "", layer: path, "\(type) needs '\(k)'")
    }
    guard case .number(let x) = v, x == x.rounded(), x >= 0, x < 1e9 else {
      throw SpecError(path: "", layer: path, "'\(k)' must be a non-negative whole number")
    }
    return Int(x)
  }

  func number(_ k: String, _ path: String, default d: Double) throws -> Double {
    guard let v = options[k] else { return d }
    guard case .number(let x) = v else { throw SpecError(path: "", layer: path, "'\(k)' must be a number") }
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
    case .number(let p)? where p >= 0 && p == p.rounded(): return .symmetric(Int(p))
    case .array(let a)? where a.count == 4:
      let v = try a.map { x -> Int in
        guard case .number(let n) = x, n >= 0, n == n.rounded() else {
          throw SpecError(path: "", layer: path, "padding [top, left, bottom, right] takes whole numbers")
        }
        return Int(n)
      }
      return .explicit(top: v[0], left: v[1], bottom: v[2], right: v[3])
    default: throw SpecError(path: "", layer: path, "padding must be same, valid, a number or [top, left, bottom, right]")
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
      let c = Conv2D(inputChannels: channels, outputChannels: filters, kernelSize: try int("kernel", path),
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
            h >= 1, w >= 1
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

/// A YAML/JSON value inside a spec.
public indirect enum SpecValue: Decodable {
  case number(Double), string(String), bool(Bool), array([SpecValue]), object([String: SpecValue]), null

  public init(from decoder: Decoder) throws {
    let c = try decoder.singleValueContainer()
    if c.decodeNil() { self = .null }
    else if let b = try? c.decode(Bool.self) { self = .bool(b) }
    else if let d = try? c.decode(Double.self) { self = .number(d) }
    else if let s = try? c.decode(String.self) { self = .string(s) }
    else if let a = try? c.decode([SpecValue].self) { self = .array(a) }
    else { self = .object(try c.decode([String: SpecValue].self)) }
  }

  func decodeLayer(_ path: String) throws -> LayerSpec {
    guard case .object(let o) = self else { throw SpecError(path: "", layer: path, "a layer must be a mapping") }
    var name: String? = nil
    if case .string(let n)? = o["name"] { name = n }
    let types = o.keys.filter { $0 != "name" }
    guard types.count == 1, let t = types.first else {
      throw SpecError(path: "", layer: path, "each layer needs exactly one type key, found \(types.sorted())")
    }
    var spec = try LayerSpec(type: t, name: name, value: o[t]!, path: path)
    spec.name = name
    return spec
  }
}

extension LayerSpec {
  init(type: String, name: String?, value: SpecValue, path: String) throws {
    self.type = type
    self.name = name
    switch value {
    case .object(let o): options = o
    case .null: options = [:]
    case .array(let a): options = ["layers": .array(a)]
    default: throw SpecError(path: "", layer: path, "options of '\(type)' must be a mapping, e.g. \(type): {}")
    }
  }
}
