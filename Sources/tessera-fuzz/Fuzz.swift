import Foundation
import Tessera
import TesseraData
import TesseraONNX
import TesseraTIFF
import TesseraTraining

/// Fuzz targets for every reader of untrusted bytes. Built with libFuzzer by `scripts/fuzz.sh TARGET
/// SECONDS` (`-sanitize=fuzzer,address -DFUZZING`); a plain build makes a replayer instead:
/// `tessera-fuzz TARGET FILE…` runs the inputs once each (how a crash becomes a regression test).
///
/// Targets: image (JPEG/PNG/PNM header, whole decode and a region), safetensors, spec (model spec
/// YAML/JSON), manifest (CSV), runjson (a run folder's config.json and checkpoint state), tiff
/// (directories, levels and a region of each level through libtiff), onnx (an ONNX model imported,
/// then run on a small input).
enum Fuzz {
  static let targets = ["image", "safetensors", "spec", "manifest", "runjson", "tiff", "onnx"]
  static let scratch: URL = {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-fuzz-\(getpid())")
    try? FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
  }()

  /// Runs one input through `target`. Errors are the expected outcome for most inputs; only a
  /// crash, a hang or a sanitizer report is a finding.
  static func run(_ target: String, _ data: Data) {
    switch target {
    case "image":
      let u = scratch.appendingPathComponent("input")
      try? data.write(to: u)
      let reader = ImageReader(maxPixels: 1 << 22, maxFileBytes: 1 << 24)
      guard let f = try? reader.open(u) else { return }
      _ = try? reader.read(f, channels: 3)
      let w = f.info.width, h = f.info.height
      if w > 2 && h > 2 {
        _ = try? reader.read(f, region: PixelRect(x: w / 3, y: h / 3, width: max(1, w / 3), height: max(1, h / 3)), channels: 1)
        _ = try? reader.read(f, minimumSize: (max(1, w / 8), max(1, h / 8)))
      }
    case "safetensors":
      let u = scratch.appendingPathComponent("input.safetensors")
      try? data.write(to: u)
      _ = try? SafeTensors.read(u)
    case "spec":
      guard let text = String(data: data, encoding: .utf8), let spec = try? ModelSpec.parse(yaml: text) else { return }
      if let m = try? spec.build() { _ = try? m.outputShape(for: [1, spec.inputChannels, 32, 32]) }
    case "manifest":
      let dir = scratch.appendingPathComponent("m")
      try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
      let u = dir.appendingPathComponent("split.csv")
      try? data.write(to: u)
      _ = try? ImageDataset.manifest(u)
    case "runjson":
      let dir = scratch.appendingPathComponent("run")
      try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
      try? data.write(to: dir.appendingPathComponent("config.json"))
      try? Data().write(to: dir.appendingPathComponent("last.safetensors"))
      _ = try? RunFolder.check(dir, config: ["model": "fcn-large", "imageSize": 32], resume: true, overwrite: false,
                                fixed: ["model", "classes", "imageSize", "policy"])
      _ = try? JSONDecoder().decode(TrainingState.self, from: data)
    case "tiff":
      let u = scratch.appendingPathComponent("input.tif")
      try? data.write(to: u)
      guard let f = try? TIFFFile(u, cacheBytes: 4 << 20) else { return }
      for l in f.levels where l.width * l.height <= 1 << 22 {
        _ = try? f.read(level: l.index, region: PixelRect(x: 0, y: 0, width: min(l.width, 300), height: min(l.height, 300)))
        // A small region inside: JPEG tiles decoded in part (rows skipped, columns cropped).
        _ = try? f.read(level: l.index, region: PixelRect(x: l.width / 3, y: l.height / 3, width: min(l.width - l.width / 3, 37),
                                                          height: min(l.height - l.height / 3, 29)))
      }
    case "onnx":
      let u = scratch.appendingPathComponent("input.onnx")
      try? data.write(to: u)
      // Import, plan-size checks, and an inference on a small input when the graph allows one.
      guard let m = try? ONNXModel.load(u, side: 16) else { return }
      let c = m.inputShape[1] ?? 3
      if let shape = try? m.model.outputShape(for: [1, c, 16, 16]), shape.reduce(1, *) <= 1 << 20 {
        _ = try? m.forward(Tensor(zeros: [1, c, 16, 16]))
      }
    default:
      FileHandle.standardError.write(Data("unknown fuzz target '\(target)'; one of \(targets.joined(separator: ", "))\n".utf8))
      exit(2)
    }
  }
}

#if FUZZING
/// libFuzzer's entry; the target comes from TESSERA_FUZZ_TARGET.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
  let target = ProcessInfo.processInfo.environment["TESSERA_FUZZ_TARGET"] ?? "image"
  Fuzz.run(target, Data(bytes: bytes, count: count))
  return 0
}

/// SwiftPM links an executable's entry as `main`; under libFuzzer it hands over to libFuzzer's driver.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
  _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
  _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("tessera_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
  var c = argc, v = argv
  return LLVMFuzzerRunDriver(&c, &v) { fuzzOne($0, $1) }
}
#else
@main
struct Replay {
  static func main() {
    let args = CommandLine.arguments.dropFirst()
    guard let target = args.first, Fuzz.targets.contains(target), args.count >= 2 else {
      print("usage: tessera-fuzz TARGET FILE…  (replays inputs; targets: \(Fuzz.targets.joined(separator: ", ")))")
      print("fuzzing itself: scripts/fuzz.sh TARGET SECONDS")
      exit(args.isEmpty ? 0 : 2)
    }
    for path in args.dropFirst() {
      guard let d = FileManager.default.contents(atPath: path) else { print("\(path): unreadable"); exit(1) }
      Fuzz.run(target, d)
    }
    print("\(args.count - 1) inputs, no crash")
  }
}
#endif
