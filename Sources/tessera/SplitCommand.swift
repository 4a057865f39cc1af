import ArgumentParser
import Foundation
import TesseraData

struct SplitCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "split",
    abstract: "Deterministic, stratified train/val/test split of an image folder, saved as a CSV manifest.",
    discussion: """
      DIR holds one folder per class (DIR/<class>/<images>). Within each class the files are sorted,
      shuffled from --seed (the same split on any machine) and round(n·test) go to test,
      round(n·val) to val, the rest to train. The manifest lists path,label,split with paths
      relative to DIR; `tessera train --manifest` reads it.
      """)

  @Option(help: "Image folder: DIR/<class>/<images>.") var data: String
  @Option(help: "Test share.") var test = 0.3
  @Option(help: "Validation share.") var val = 0.0
  @Option(help: "Seed of the shuffle.") var seed: UInt64 = 42
  @Option(help: "Where to write the manifest (CSV).") var out: String
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    guard test >= 0, val >= 0, test + val < 1 else { throw ValidationError("--test and --val must be ≥ 0 with test + val < 1") }
  }

  func run() throws {
    let ds = try ImageDataset.folder(URL(fileURLWithPath: data))
    let splits = DatasetSplit.assign(ds.samples, test: test, val: val, seed: seed)
    try DatasetSplit.manifest(ds, splits: splits).write(to: URL(fileURLWithPath: out), atomically: true, encoding: .utf8)
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
