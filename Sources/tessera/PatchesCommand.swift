import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels

struct PatchesCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "patches", abstract: "List foreground patches of large images (a patch dataset), without writing patch files.",
    discussion: prose("""
      For each image under DIR/<class>/ (TIFF pyramids, JPEG, PNG, PNM): a foreground mask at a low
      resolution (Otsu's threshold on saturation, as tissue detection in pathology), then the grid of
      --size-pixel patches at --level (or --random N seeded positions), kept where the mask covers at
      least --min-foreground of the patch. Labels come from the class folder, or from --regions
      (a CSV path,x,y,w,h,label of rectangles in level-0 pixels: a patch takes the label of the
      rectangle holding its centre; patches in none are left out). The list is path,x,y,w,h,level,label
      in level-0 pixels; `tessera train --patches` trains on it, reading each patch from its file
      (whole files split into train and test, never patches of one file in both).
      """))

  @Option(help: "Image folder DIR/<class>/<images>.") var data: String
  @Option(help: "Patch side in pixels of --level.") var size = 256
  @Option(help: "Pyramid level the patches are read at (0: full resolution).") var level = 0
  @Option(help: "Where to write the list (CSV).") var out: String
  @Option(help: "Seeded random patches per image instead of the whole grid.") var random: Int?
  @Option(help: "Seed of --random.") var seed: UInt64 = 0
  @Option(help: "Share of a patch the foreground must cover (0–1).") var minForeground = 0.5
  @Flag(help: "No mask: every patch of the grid.") var noMask = false
  @Option(help: "A CSV path,x,y,w,h,label of labelled rectangles (level-0 pixels; paths relative to --data).") var regions: String?
  @Option(help: "Write the foreground mask as a PNG (with several images: one per image, named after it).") var maskPreview: String?
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    try checkRange(size, 1...16384, "--size")
    try checkRange(level, 0...64, "--level")
    if let n = random { try checkRange(n, 1...1_000_000, "--random") }
    guard minForeground >= 0, minForeground <= 1 else { throw ValidationError("--min-foreground must be between 0 and 1") }
  }

  func run() throws {
    let root = URL(fileURLWithPath: data)
    let ds = try ImageDataset.folder(root)
    let labelled = try regions.map { try readRegions(URL(fileURLWithPath: $0)) }
    var lines = [String](), perImage = [[String: Any]]()
    var classes = Set<String>()
    for s in ds.samples {
      let img = try RegionImages.open(s.url)
      guard img.levelSizes.indices.contains(level) else {
        throw CLIError("\(s.url.path): level \(level) does not exist (levels 0…\(img.levelSizes.count - 1))")
      }
      let m = noMask ? nil : try Patches.mask(img, path: s.url.path)
      if let m, let preview = maskPreview {
        let u = URL(fileURLWithPath: preview)
        let dest = ds.samples.count == 1 ? u : u.deletingPathExtension().appendingPathExtension(s.url.deletingPathExtension().lastPathComponent)
          .appendingPathExtension(u.pathExtension.isEmpty ? "png" : u.pathExtension)
        try writePNG(bytes: m.foreground.map { $0 ? 255 : 0 }, width: m.width, height: m.height, to: dest)
      }
      var kept = 0
      for p in Patches.patches(img, mask: m, size: size, level: level, random: random, seed: seed ^ UInt64(lines.count),
                               minForeground: minForeground) {
        var label = ds.classes[s.label]
        if let rs = labelled {
          let cx = p.x + p.width / 2, cy = p.y + p.height / 2
          guard let r = rs.first(where: { $0.path == s.relativePath && cx >= $0.x && cx < $0.x + $0.w && cy >= $0.y && cy < $0.y + $0.h })
          else { continue }
          label = r.label
        }
        classes.insert(label)
        lines.append([s.relativePath, "\(p.x)", "\(p.y)", "\(p.width)", "\(p.height)", "\(p.level)", label].map(csvField).joined(separator: ","))
        kept += 1
      }
      perImage.append(["path": s.relativePath, "patches": kept, "levels": img.levelSizes.count,
                       "maskThreshold": m.map { Double($0.threshold) } as Any? ?? NSNull()])
      if !json { note("\(s.relativePath): \(kept) patches" + (m.map { String(format: " (foreground threshold %.3f at level %d)", $0.threshold, $0.level) } ?? "")) }
    }
    guard !lines.isEmpty else { throw CLIError("no patch kept: lower --min-foreground, use a smaller --size or --level, or --no-mask") }
    let outURL = URL(fileURLWithPath: out)
    let outDir = outURL.deletingLastPathComponent().standardizedFileURL
    let rootLine = outDir.path == root.standardizedFileURL.path ? "" : "# root: \(relativePath(from: outDir, to: root.standardizedFileURL))\n"
    try (rootLine + "path,x,y,w,h,level,label\n" + lines.joined(separator: "\n") + "\n").write(to: outURL, atomically: true, encoding: .utf8)
    if json {
      return printJSON(["out": out, "patches": lines.count, "images": perImage, "classes": classes.sorted(), "size": size, "level": level])
    }
    print("\(lines.count) patches of \(size) px at level \(level) from \(ds.samples.count) images → \(out)")
  }

  func csvField(_ s: String) -> String {
    s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
  }

  struct Labelled { var path: String, x: Int, y: Int, w: Int, h: Int, label: String }

  func readRegions(_ url: URL) throws -> [Labelled] {
    let text = try String(contentsOf: url, encoding: .utf8)
    var out = [Labelled]()
    for (n, raw) in text.split(whereSeparator: \.isNewline).enumerated() {
      let f = raw.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
      if n == 0 && f.first?.lowercased() == "path" { continue }
      guard f.count == 6, let x = Int(f[1]), let y = Int(f[2]), let w = Int(f[3]), let h = Int(f[4]), w > 0, h > 0 else {
        throw CLIError("\(url.path):\(n + 1): expected path,x,y,w,h,label with whole numbers")
      }
      out.append(Labelled(path: f[0], x: x, y: y, w: w, h: h, label: f[5]))
    }
    return out
  }
}
