import ArgumentParser
import Foundation
import Tessera
import TesseraData

struct PreviewCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "preview",
    abstract: "Write what the network will see of an image (PNG), and say how it got there.",
    discussion: prose("""
      Reads the header, decodes at the smallest JPEG DCT scale that still covers the target (1/2, 1/4,
      1/8), resizes by the policy and writes an 8-bit PNG. Policies keep the aspect ratio: fit
      (letterbox), fill (cover, centre crop), none (native size); stretch distorts and must be named.
      """))

  @Argument(help: "The image (JPEG, PNG, PPM/PGM).") var image: String
  @Option(help: "Target side in pixels (square input).") var size = 512
  @Option(help: "fit, fill, none or stretch.") var policy = "fit"
  @Option(help: "Resampling filter: area, bilinear or lanczos3.") var filter = "area"
  @Option(help: "Channels: 3 (RGB) or 1 (gray).") var channels = 3
  @Option(help: "Where to write the PNG (default: <image>.preview.png in the current folder).") var out: String?
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    try checkRange(size, 1...16384, "--size (a preview of at most 2^28 pixels)")
    guard ResizePolicy(rawValue: policy) != nil else { throw ValidationError("--policy must be fit, fill, none or stretch") }
    guard ResampleFilter(rawValue: filter) != nil else { throw ValidationError("--filter must be area, bilinear or lanczos3") }
    guard channels == 1 || channels == 3 else { throw ValidationError("--channels must be 1 or 3") }
  }

  func run() throws {
    let url = URL(fileURLWithPath: image)
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
}
