import Foundation
import Tessera

/// Resolves --model: a zoo name, or a model-spec file.
enum ModelLoader {
  static func load(_ nameOrPath: String, classes: Int) throws -> (name: String, model: Sequential, channels: Int) {
    if let m = Zoo.model(nameOrPath, classes: classes) { return (nameOrPath, m, 3) }
    let url = URL(fileURLWithPath: nameOrPath)
    guard FileManager.default.fileExists(atPath: url.path) else {
      throw ValidationError("unknown model '\(nameOrPath)': not a zoo model (\(Zoo.names.joined(separator: ", "))) and no such spec file")
    }
    let spec = try ModelSpec.load(url)
    return (spec.name ?? url.deletingPathExtension().lastPathComponent, try spec.build(), spec.inputChannels)
  }
}

import ArgumentParser
