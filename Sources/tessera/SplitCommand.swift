import ArgumentParser
import Foundation
import TesseraData

struct SplitCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "split",
    abstract: "Deterministic, stratified train/val/test split of an image folder, saved as a CSV manifest.",
    discussion: prose("""
      DIR holds one folder per class (DIR/<class>/<images>). Within each class the files are sorted,
      shuffled from --seed (the same split on any machine) and round(n·test) go to test,
      round(n·val) to val, the rest to train. The manifest lists path,label,split with paths
      relative to DIR; when the manifest is written outside DIR its first line is `# root: DIR` (relative
      to the manifest), so `tessera train --manifest` reads the same files back (or give --data DIR).
      """))

  @Option(help: "Image folder: DIR/<class>/<images>.") var data: String
  @Option(help: "Test share.") var test = 0.3
  @Option(help: "Validation share.") var val = 0.0
  @Option(help: "Seed of the shuffle (the same default as train).") var seed: UInt64 = 0
  @Option(help: "Where to write the manifest (CSV).") var out: String
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    guard test >= 0, val >= 0, test + val < 1 else { throw ValidationError("--test and --val must be ≥ 0 with test + val < 1") }
  }

  func run() throws {
    let ds = try ImageDataset.folder(URL(fileURLWithPath: data))
    let splits = DatasetSplit.assign(ds.samples, test: test, val: val, seed: seed)
    // Paths are relative to the data folder; a manifest written elsewhere says where that is.
    let outDir = URL(fileURLWithPath: out).deletingLastPathComponent().standardizedFileURL
    let dataDir = URL(fileURLWithPath: data).standardizedFileURL
    let root = outDir.path == dataDir.path ? nil : relativePath(from: outDir, to: dataDir)
    try DatasetSplit.manifest(ds, splits: splits, root: root).write(to: URL(fileURLWithPath: out), atomically: true, encoding: .utf8)
    var counts = [String: [String: Int]]()
    for (i, s) in ds.samples.enumerated() { counts[ds.classes[s.label], default: [:]][splits[i], default: 0] += 1 }
    if json {
      printJSON(["data": data, "out": out, "seed": seed, "images": ds.samples.count, "classes": ds.classes,
                 "counts": counts])
      return
    }
    print("\(ds.samples.count) images in \(ds.classes.count) classes → \(out) (seed \(seed))")
    for c in ds.classes {
      let k = counts[c] ?? [:]
      print(pad(c, 24) + "train \(k["train"] ?? 0)  val \(k["val"] ?? 0)  test \(k["test"] ?? 0)")
    }
  }
}

/// `to` relative to the folder `from` (both standardized file URLs), with `..` where needed.
func relativePath(from: URL, to: URL) -> String {
  let a = from.pathComponents, b = to.pathComponents
  var i = 0
  while i < a.count && i < b.count && a[i] == b[i] { i += 1 }
  let parts = Array(repeating: "..", count: a.count - i) + b[i...]
  return parts.isEmpty ? "." : parts.joined(separator: "/")
}
