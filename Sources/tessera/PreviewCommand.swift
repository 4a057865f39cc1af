import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraTIFF

struct PreviewCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "preview",
    abstract: "Write what the network will see of an image (PNG), and say how it got there.",
    discussion: prose("""
      Reads the header, decodes at the smallest JPEG DCT scale that still covers the target (1/2, 1/4,
      1/8), resizes by the policy and writes an 8-bit PNG. Policies keep the aspect ratio: fit
      (letterbox), fill (cover, centre crop), none (native size); stretch distorts and must be named.

      --region X,Y,W,H [--level N] --policy none writes exactly that region's pixels (X, Y in that
      level's pixels; levels of pyramidal TIFF as `tessera info` lists them; other formats have level 0);
      with another policy the region is then resized to --size.
      """))

  @Argument(help: "The image (JPEG, PNG, PPM/PGM).") var image: String
  @Option(help: "Target side in pixels (square input).") var size = 512
  @Option(help: "fit, fill, none or stretch.") var policy = "fit"
  @Option(help: "Resampling filter: area, bilinear or lanczos3.") var filter = "area"
  @Option(help: "Channels: 3 (RGB) or 1 (gray).") var channels = 3
  @Option(help: "Where to write the PNG (default: <image>.preview.png in the current folder).") var out: String?
  @Option(help: "Only this region, X,Y,W,H in the level's pixels (any size of image: only the tiles it touches are decoded).")
  var region: String?
  @Option(help: "With --region: the pyramid level (TIFF; 0 is full resolution).") var level = 0
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    try checkRange(size, 1...16384, "--size (a preview of at most 2^28 pixels)")
    guard ResizePolicy(rawValue: policy) != nil else { throw ValidationError("--policy must be fit, fill, none or stretch") }
    guard ResampleFilter(rawValue: filter) != nil else { throw ValidationError("--filter must be area, bilinear or lanczos3") }
    guard channels == 1 || channels == 3 else { throw ValidationError("--channels must be 1 or 3") }
  }

  func parsedRegion() throws -> PixelRect? {
    guard let r = region else { return nil }
    let v = r.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard v.count == 4, v.allSatisfy({ $0 != nil }), v[0]! >= 0, v[1]! >= 0, v[2]! >= 1, v[3]! >= 1,
          let px = Limits.product([v[2]!, v[3]!]), px <= 1 << 28
    else { throw ValidationError("--region must be X,Y,W,H with X, Y ≥ 0 and W, H ≥ 1 (at most 2^28 pixels), got '\(r)'") }
    return PixelRect(x: v[0]!, y: v[1]!, width: v[2]!, height: v[3]!)
  }

  func run() throws {
    let url = URL(fileURLWithPath: image)
    if let r = try parsedRegion() { return try runRegion(url, r) }
    guard level == 0 else { throw ValidationError("--level goes with --region") }
    let pipeline = ImagePipeline(size: size, policy: ResizePolicy(rawValue: policy)!, filter: ResampleFilter(rawValue: filter)!,
                                 channels: channels)
    let p = try pipeline.prepare(url)
    let dest = URL(fileURLWithPath: out ?? url.deletingPathExtension().lastPathComponent + ".preview.png")
    try writePNG(p.pixels, to: dest)
    let output = [p.pixels.shape[2], p.pixels.shape[1]]
    if json {
      printJSON(["image": image, "original": [p.originalWidth, p.originalHeight], "decodeScale": p.decodeScale,
                 "resized": [p.resizedWidth, p.resizedHeight], "output": output, "policy": policy, "out": dest.path])
    } else {
      print("\(image): \(p.originalWidth)×\(p.originalHeight), decoded at 1/\(p.decodeScale), resized to \(p.resizedWidth)×\(p.resizedHeight), output \(output[0])×\(output[1]) (\(policy)) → \(dest.path)")
    }
  }

  /// Exactly a region's pixels at a level (then resized by the policy unless it is none).
  func runRegion(_ url: URL, _ r: PixelRect) throws {
    var pixels: Tensor
    var levels = 1
    if TIFFFile.isTIFF(url) {
      let f = try TIFFFile(url)
      levels = f.levels.count
      pixels = try f.read(level: level, region: r, channels: channels)
    } else {
      guard level == 0 else { throw CLIError("\(image): only TIFF has levels; use --level 0") }
      let reader = ImageReader(maxPixels: 1 << 28, maxFileBytes: 1 << 40)
      pixels = try reader.read(try reader.open(url), region: r, channels: channels).pixels
    }
    let pol = ResizePolicy(rawValue: policy)!
    if pol != .none {
      let pipeline = ImagePipeline(size: size, policy: pol, filter: ResampleFilter(rawValue: filter)!, channels: channels)
      pixels = pipeline.resize(pixels)
    }
    let dest = URL(fileURLWithPath: out ?? url.deletingPathExtension().lastPathComponent + ".preview.png")
    try writePNG(pixels, to: dest)
    if json {
      printJSON(["image": image, "region": [r.x, r.y, r.width, r.height], "level": level, "levels": levels,
                 "output": [pixels.shape[2], pixels.shape[1]], "policy": policy, "out": dest.path])
    } else {
      print("\(image): level \(level) region \(r.x),\(r.y),\(r.width),\(r.height) → \(pixels.shape[2])×\(pixels.shape[1]) (\(policy)) → \(dest.path)")
    }
  }
}
