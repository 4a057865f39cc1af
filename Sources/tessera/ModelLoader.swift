import Foundation
import Tessera
import TesseraONNX

/// Resolves --model: a zoo name, a model-spec file, or an ONNX file.
enum ModelLoader {
  /// Whether `--model` brings its own weights (an ONNX file): training then starts from them
  /// instead of a seeded initialisation.
  static func isPretrained(_ nameOrPath: String) -> Bool { nameOrPath.lowercased().hasSuffix(".onnx") }

  /// `classes`: for an ONNX model, nil keeps its classifier; another count replaces it (see
  /// `replaceClassifier`).
  /// `side`: the input's height, for an ONNX graph whose height and width are dynamic (traced there).
  static func load(_ nameOrPath: String, classes: Int?, inputChannels: Int? = nil, side: Int? = nil) throws
    -> (name: String, model: Sequential, channels: Int)
  {
    if let m = Zoo.model(nameOrPath, classes: classes ?? 1000, inputChannels: inputChannels ?? 3) {
      return (nameOrPath, m, inputChannels ?? 3)
    }
    let url = URL(fileURLWithPath: nameOrPath)
    guard FileManager.default.fileExists(atPath: url.path) else {
      throw ValidationError("unknown model '\(nameOrPath)': not a zoo model (\(Zoo.names.joined(separator: ", "))), and no such spec or ONNX file")
    }
    if isPretrained(nameOrPath) {
      let m = try ONNXModel.load(url, channels: inputChannels, side: side)
      let channels = m.inputShape[1] ?? inputChannels ?? 3
      var model = m.model
      if let k = classes { model = try replaceClassifier(model, classes: k, channels: channels, path: url.path) }
      return (m.name, model, channels)
    }
    let spec = try ModelSpec.load(url)
    return (spec.name ?? url.deletingPathExtension().lastPathComponent, try spec.build(), spec.inputChannels)
  }

  /// Fine-tuning to another number of classes: the last top-level layer with weights — a Linear
  /// (`Gemm`, `MatMul`) or a Conv2D (a fully convolutional head) — is replaced by one of the same
  /// kind with `classes` outputs, He-initialised from seed 0 (biases zero); every other weight stays
  /// as imported. The same count keeps the model as it is.
  static func replaceClassifier(_ model: Sequential, classes: Int, channels: Int, path: String) throws -> Sequential {
    var layers = model.layers
    guard let i = layers.lastIndex(where: { !$0.1.namedParameters().isEmpty }) else {
      throw CLIError("\(path): the model has no layer with weights to use as its classifier")
    }
    let fresh: Layer
    switch layers[i].1 {
    case let fc as Linear:
      if fc.outputFeatures == classes { return model }
      fresh = Linear(inputFeatures: fc.inputFeatures, outputFeatures: classes, bias: fc.bias != nil)
    case let c as Conv2D:
      if c.outputChannels == classes { return model }
      guard c.groups == 1 else { throw CLIError("\(path): the last layer with weights is a grouped convolution; it cannot be replaced for \(classes) classes") }
      fresh = Conv2D(inputChannels: c.inputChannels, outputChannels: classes, kernelSize: (c.kernelSize.height, c.kernelSize.width),
                     stride: (c.stride.height, c.stride.width), padding: c.padding, dilation: (c.dilation.height, c.dilation.width),
                     bias: c.bias != nil)
    default:
      throw CLIError("\(path): the last layer with weights (\(layers[i].0), \(layers[i].1.kind)) is not a classifier (Linear or Conv2D); it cannot be replaced for \(classes) classes")
    }
    fresh.initializeParameters(seed: 0)
    note("\(path): classifier '\(layers[i].0)' replaced for \(classes) classes (new weights; the rest as imported)")
    layers[i].1 = fresh
    return Sequential(layers)
  }
}

import ArgumentParser
