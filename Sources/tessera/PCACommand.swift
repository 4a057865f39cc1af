import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner

struct PCACommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pca",
    abstract: "Principal components of images or patches (fit), and features from them (transform).",
    subcommands: [PCAFit.self, PCATransform.self])
}

struct PCAFit: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fit",
    abstract: "Fit a PCA to whole images (--size) or native-resolution patches (--patch), streaming.",
    discussion: prose("""
      Whole images are brought to --size × --size by --policy (fit, fill or stretch); patches are
      --patches-per-image random squares of --patch pixels per image (or every non-overlapping one
      with --grid), decoded by region. The data set is never held in memory: --method exact streams
      the covariance (dimension² numbers) and eigendecomposes it; randomized (Halko et al.) streams
      the data a few times keeping dimension × (components + 10) numbers. auto: exact up to 1024
      dimensions. Writes the model (safetensors) and a PNG grid of the components.
      """))

  @Option(help: "Image folder (DIR/<class>/<images> or images under DIR/<any>/).") var data: String
  @Option(help: "Whole images at this side (pixels).") var size: Int?
  @Option(help: "Patches of this side (pixels), at native resolution.") var patch: Int?
  @Option(help: "Random patches per image.") var patchesPerImage = 16
  @Flag(help: "Every non-overlapping patch instead of random ones.") var grid = false
  @Option(help: "fit, fill or stretch (whole images).") var policy = "fit"
  @Option(help: "Channels: 3 or 1.") var channels = 3
  @Option(help: "Components to keep.") var components = 50
  @Flag(help: "Whiten the transformed features (unit variance).") var whiten = false
  @Option(help: "auto, exact or randomized.") var method = "auto"
  @Option(help: "Seed of patches and of the randomized method.") var seed: UInt64 = 0
  @Option(help: "Where to write the model (safetensors).") var out: String
  @Option(help: "PNG grid of the components (default: <out>.png).") var gridImage: String?
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws {
    guard (size == nil) != (patch == nil) else { throw ValidationError("give exactly one of --size (whole images) or --patch (patches)") }
    guard (size ?? patch ?? 0) >= 1, components >= 1 else { throw ValidationError("--size/--patch and --components must be positive") }
    // Each vector has side² × channels values; the exact method holds a d × d covariance (Double),
    // the randomized one a few d × k blocks. Refused here, before any image is read.
    let side = size ?? patch ?? 1
    try checkRange(side, 1...16384, size != nil ? "--size" : "--patch")
    let d = side * side * channels
    let exact = method == "exact" || (method == "auto" && d <= 1024)
    let bytes = exact ? Limits.product([d, d, 8, 2]) : Limits.product([d, components + 10, 8, 4])
    let available = MachineMemory.availableBytes()
    guard let b = bytes, b <= available else {
      throw ValidationError("PCA of \(d)-value vectors with \(components) components needs about \(ByteSize.format(bytes ?? Int.max)), more than the \(ByteSize.format(available)) this machine can give; use a smaller --size/--patch\(exact ? " or --method randomized" : "")")
    }
    guard ["auto", "exact", "randomized"].contains(method) else { throw ValidationError("--method must be auto, exact or randomized") }
    guard channels == 1 || channels == 3 else { throw ValidationError("--channels must be 1 or 3") }
    guard ["fit", "fill", "stretch"].contains(policy) else { throw ValidationError("--policy must be fit, fill or stretch") }
  }

  func run() throws {
    try global.apply()
    let ds = try ImageDataset.folder(URL(fileURLWithPath: data))
    final class Count: @unchecked Sendable { var n = 0; let lock = NSLock() }
    let skipped = Count()
    let warn: @Sendable (String) -> Void = { line in
      skipped.lock.withLock { skipped.n += 1 }
      note("warning: " + line)
    }
    let (d, shape, source): (Int, [Int], VectorSource)
    if let s = size {
      (d, shape, source) = PCAVectors.images(ds, pipeline: ImagePipeline(size: s, policy: ResizePolicy(rawValue: policy)!,
                                                                          channels: channels), onSkip: warn)
    } else {
      (d, shape, source) = PCAVectors.patches(ds, size: patch!, channels: channels, perImage: patchesPerImage, grid: grid,
                                              seed: seed, onSkip: warn)
    }
    guard components <= d else { throw ValidationError("--components \(components) is more than the \(d) dimensions") }
    let useExact = method == "exact" || (method == "auto" && d <= 1024)
    let t0 = DispatchTime.now().uptimeNanoseconds
    let model = useExact
      ? try PCA.exact(dimension: d, components: components, whiten: whiten, vectorShape: shape, source: source)
      : try PCA.randomized(dimension: d, components: components, whiten: whiten, seed: seed, vectorShape: shape, source: source)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let outURL = URL(fileURLWithPath: out)
    try model.save(to: outURL)
    let gridURL = URL(fileURLWithPath: gridImage ?? outURL.deletingPathExtension().path + ".png")
    try PCAVectors.writeGrid(model, to: gridURL)
    let needed = [0.9, 0.95, 0.99].map { model.componentsNeeded($0) }
    if json {
      printJSON(["data": data, "vectors": model.samples, "dimension": d, "shape": shape, "components": model.count,
                 "method": useExact ? "exact" : "randomized", "whiten": whiten,
                 "explainedVarianceRatio": model.explainedVarianceRatio, "cumulative": model.cumulativeRatio,
                 "componentsFor": ["0.90": needed[0] as Any? ?? NSNull(), "0.95": needed[1] as Any? ?? NSNull(),
                                   "0.99": needed[2] as Any? ?? NSNull()],
                 "seconds": seconds, "skipped": skipped.n, "out": out, "grid": gridURL.path])
      return
    }
    print("\(model.samples) vectors of \(shape.map(String.init).joined(separator: "×")) (\(d) dims), \(useExact ? "exact" : "randomized") PCA in \(String(format: "%.1f", seconds)) s\(skipped.n > 0 ? ", \(skipped.n) files skipped" : "")")
    print("component  ratio     cumulative")
    for i in 0..<min(model.count, 10) {
      print(String(format: "%9d  %.5f   %.5f", i + 1, model.explainedVarianceRatio[i], model.cumulativeRatio[i]))
    }
    for (f, n) in zip(["90 %", "95 %", "99 %"], needed) {
      print("components for \(f): \(n.map(String.init) ?? "more than the \(model.count) computed")")
    }
    print("wrote \(out) and \(gridURL.path)")
  }
}

struct PCATransform: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "transform",
    abstract: "Project whole images onto a fitted PCA and write the features as CSV (path,label,f1…fk).")

  @Option(help: "The model from `pca fit --size`.") var pca: String
  @Option(help: "Image folder.") var data: String
  @Option(help: "fit, fill or stretch — as at fitting.") var policy = "fit"
  @Option(help: "Where to write the CSV.") var out: String
  @OptionGroup var global: GlobalOptions

  func run() throws {
    try global.apply()
    let model = try PCAModel.load(URL(fileURLWithPath: pca))
    let s = model.vectorShape
    guard s.count == 3, s[0] == 1 || s[0] == 3 else { throw ValidationError("\(pca): no image shape in the model") }
    let ds = try ImageDataset.folder(URL(fileURLWithPath: data))
    let pipeline = ImagePipeline(height: s[1], width: s[2], policy: ResizePolicy(rawValue: policy) ?? .fit, channels: s[0])
    var lines = ["path,label," + (1...model.count).map { "f\($0)" }.joined(separator: ",")]
    var skipped = 0
    for sample in ds.samples {
      do {
        let img = try pipeline.prepare(sample.url).pixels
        var f = [Float](repeating: 0, count: model.count)
        model.transform(img.floats, rows: 1, into: &f)
        lines.append("\(sample.relativePath),\(ds.classes[sample.label])," + f.map { String($0) }.joined(separator: ","))
      } catch {
        skipped += 1
        note("warning: skipping \(error)")
      }
    }
    try (lines.joined(separator: "\n") + "\n").write(toFile: out, atomically: true, encoding: .utf8)
    print("\(lines.count - 1) images → \(model.count) features each → \(out)\(skipped > 0 ? " (\(skipped) skipped)" : "")")
  }
}
