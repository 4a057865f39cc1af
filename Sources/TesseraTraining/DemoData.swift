import Foundation
import Tessera
import TesseraData
import TesseraKernels

/// The demo's data set: large textured images whose class is decided only by the *shape* of a few
/// small marks (crosses or hollow squares, `mark` pixels wide) scattered at random — detail that a
/// shrink to 112×112 erases. Seeded and cached as JPEGs under `cacheRoot`; files that are missing
/// or do not decode as expected are (re)generated.
public struct DemoData {
  public static let classes = ["cross", "square"]
  public var side: Int, mark: Int, marksPerImage: Int
  public var train: Int, test: Int
  public var seed: UInt64

  public init(side: Int, mark: Int, marksPerImage: Int = 4, train: Int, test: Int, seed: UInt64 = 7) {
    self.side = side
    self.mark = mark
    self.marksPerImage = marksPerImage
    self.train = train
    self.test = test
    self.seed = seed
  }

  /// `$TESSERA_CACHE_DIR` or `~/.cache/tessera`, then `demo-<side>-<mark>-<seed>`.
  public var folder: URL {
    let base = ProcessInfo.processInfo.environment["TESSERA_CACHE_DIR"].map { URL(fileURLWithPath: $0) }
      ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/tessera")
    return base.appendingPathComponent("demo-\(side)-\(mark)-\(seed)")
  }

  /// Makes sure every image exists and decodes to side × side; returns the manifest (path,label,split).
  public func prepare(progress: (String) -> Void = { _ in }) throws -> URL {
    let root = folder
    var lines = ["path,label,split"]
    var made = 0
    for i in 0..<(train + test) {
      let label = i % 2, split = i < train ? "train" : "test"
      let rel = "\(split)/\(Self.classes[label])/\(i).jpg"
      let url = root.appendingPathComponent(rel)
      let ok = (try? ImageReader().info(url)).map { $0.width == side && $0.height == side } ?? false
      if !ok {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try JPEGEncoder.encode(render(index: i, label: label), width: side, height: side, quality: 92).write(to: url, options: .atomic)
        made += 1
        if made % 50 == 0 { progress("generated \(made) images in \(root.path)") }
      }
      lines.append("\(rel),\(Self.classes[label]),\(split)")
    }
    let manifest = root.appendingPathComponent("manifest.csv")
    try (lines.joined(separator: "\n") + "\n").write(to: manifest, atomically: true, encoding: .utf8)
    return manifest
  }

  /// One image: smooth random texture + noise, `marksPerImage` marks of the class's shape.
  func render(index: Int, label: Int) -> [UInt8] {
    var g = SeededGenerator(seed: seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
    let n = side
    let fx = 0.002 + Double(g.nextUniform()) * 0.02, fy = 0.002 + Double(g.nextUniform()) * 0.02
    let ph = Double(g.nextUniform()) * 6.28
    var px = [UInt8](repeating: 0, count: n * n * 3)
    let tint = (0..<3).map { _ in 0.7 + 0.3 * Double(g.nextUniform()) }
    for y in 0..<n {
      for x in 0..<n {
        let base = 0.45 + 0.2 * sin(fx * Double(x) + ph) * cos(fy * Double(y))
        let noise = Double(g.next() % 40) / 255
        for c in 0..<3 { px[(y * n + x) * 3 + c] = UInt8(max(0, min(255, (base * tint[c] + noise) * 255))) }
      }
    }
    let t = max(2, mark / 5)
    for _ in 0..<marksPerImage {
      let x0 = Int(g.next() % UInt64(n - mark)), y0 = Int(g.next() % UInt64(n - mark))
      for dy in 0..<mark {
        for dx in 0..<mark {
          let on: Bool
          if label == 0 {  // cross
            on = abs(dy - mark / 2) < t / 2 + 1 || abs(dx - mark / 2) < t / 2 + 1
          } else {  // hollow square
            on = dy < t || dy >= mark - t || dx < t || dx >= mark - t
          }
          if on {
            let o = ((y0 + dy) * n + x0 + dx) * 3
            px[o] = 240; px[o + 1] = 240; px[o + 2] = 240
          }
        }
      }
    }
    return px
  }
}
