import Foundation
import Tessera
import TesseraKernels

/// Patch datasets, the everyday pathology and remote-sensing workflow: a foreground (tissue) mask
/// at a low resolution, then patches of a size at a level on the foreground only, labelled by the
/// image's folder or by regions drawn on it — listed as coordinates, never written as files.
public enum Patches {
  /// A foreground mask: Otsu's threshold on saturation ((max − min) / max per pixel) of the image at
  /// the level whose longer side is at most `maxSide` (the smallest level when none is).
  public struct Mask {
    public var width: Int, height: Int
    /// Level-0 pixels per mask pixel.
    public var downsample: Double
    public var level: Int
    public var threshold: Float
    public var foreground: [Bool]
  }

  public static func mask(_ img: RegionImage, path: String, maxSide: Int = 2048) throws -> Mask {
    let sizes = img.levelSizes
    let level = sizes.indices.first { max(sizes[$0].width, sizes[$0].height) <= maxSide } ?? (sizes.count - 1)
    let s = sizes[level]
    guard s.width * s.height <= 1 << 26 else {
      throw ImageError(path: path, .tooLarge(width: s.width, height: s.height, limit: 1 << 26))
    }
    let rgb = try img.read(level: level, region: PixelRect(x: 0, y: 0, width: s.width, height: s.height), channels: 3)
    let n = s.width * s.height, p = rgb.floats
    var sat = [Float](repeating: 0, count: n)
    var hist = [Int](repeating: 0, count: 256)
    for i in 0..<n {
      let r = p[i], g = p[n + i], b = p[2 * n + i]
      let mx = max(r, g, b), mn = min(r, g, b)
      sat[i] = mx > 0 ? (mx - mn) / mx : 0
      hist[min(255, Int(sat[i] * 255))] += 1
    }
    // Foreground: a bin above Otsu's (compared as bins, the way the threshold was chosen).
    let t = otsu(hist)
    return Mask(width: s.width, height: s.height, downsample: img.downsample(level), level: level, threshold: Float(t + 1) / 255,
                foreground: sat.map { min(255, Int($0 * 255)) > t })
  }

  /// Otsu's threshold of a histogram: the bin that maximises the between-class variance.
  public static func otsu(_ hist: [Int]) -> Int {
    let total = hist.reduce(0, +)
    guard total > 0 else { return 0 }
    let sumAll = hist.enumerated().reduce(0.0) { $0 + Double($1.offset * $1.element) }
    var wB = 0, sumB = 0.0, best = 0.0, at = 0
    for (t, h) in hist.enumerated() {
      wB += h
      if wB == 0 { continue }
      let wF = total - wB
      if wF == 0 { break }
      sumB += Double(t * h)
      let mB = sumB / Double(wB), mF = (sumAll - sumB) / Double(wF)
      let between = Double(wB) * Double(wF) * (mB - mF) * (mB - mF)
      if between > best { best = between; at = t }
    }
    return at
  }

  /// Share of the mask's pixels inside a level-0 box that are foreground.
  public static func coverage(_ m: Mask, x: Int, y: Int, width: Int, height: Int) -> Double {
    let x0 = max(0, Int(Double(x) / m.downsample)), y0 = max(0, Int(Double(y) / m.downsample))
    let x1 = min(m.width, max(x0 + 1, Int((Double(x + width) / m.downsample).rounded(.up))))
    let y1 = min(m.height, max(y0 + 1, Int((Double(y + height) / m.downsample).rounded(.up))))
    guard x1 > x0, y1 > y0 else { return 0 }
    var on = 0
    for yy in y0..<y1 { for xx in x0..<x1 where m.foreground[yy * m.width + xx] { on += 1 } }
    return Double(on) / Double((x1 - x0) * (y1 - y0))
  }

  /// Patches of `size` level pixels at `level` over the image: the whole grid, or `random` seeded
  /// positions; kept where the mask covers at least `minForeground` of the patch.
  public static func patches(_ img: RegionImage, mask m: Mask?, size: Int, level: Int, random: Int? = nil, seed: UInt64 = 0,
                             minForeground: Double = 0.5) -> [PatchRegion] {
    let ls = img.levelSizes[level], ds = img.downsample(level)
    guard ls.width >= size, ls.height >= size else { return [] }
    let side = Int((Double(size) * ds).rounded())
    var out = [PatchRegion]()
    func consider(_ lx: Int, _ ly: Int) {
      let x = Int((Double(lx) * ds).rounded()), y = Int((Double(ly) * ds).rounded())
      if let m, coverage(m, x: x, y: y, width: side, height: side) < minForeground { return }
      out.append(PatchRegion(x: x, y: y, width: side, height: side, level: level))
    }
    if let n = random {
      var g = SeededGenerator(seed: seed)
      // Tries a bounded number of positions: a mostly empty image gives fewer patches, not a hang.
      var tries = 0
      while out.count < n && tries < 20 * n {
        consider(Int(g.next() % UInt64(ls.width - size + 1)), Int(g.next() % UInt64(ls.height - size + 1)))
        tries += 1
      }
    } else {
      for ly in stride(from: 0, through: ls.height - size, by: size) {
        for lx in stride(from: 0, through: ls.width - size, by: size) { consider(lx, ly) }
      }
    }
    return out
  }
}

extension ImageDataset {
  /// A patch list `path,x,y,w,h,level,label[,split]` (x, y, w, h in level-0 pixels; from `tessera
  /// patches`), with paths resolved as a manifest's (`root`, its `# root:` line, or its folder).
  public static func patches(_ csv: URL, root: URL? = nil) throws -> ImageDataset {
    let text: String
    do { text = try String(contentsOf: csv, encoding: .utf8) } catch {
      throw DatasetError(path: csv.path, message: "cannot read the patch list: \((error as NSError).localizedDescription)")
    }
    var base = (root ?? csv.deletingLastPathComponent()).standardizedFileURL
    var rows = [(path: String, region: PatchRegion, label: String, split: String?, line: Int)]()
    var names: [String]? = nil
    for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.isEmpty { continue }
      if line.hasPrefix("#") {
        let body = line.dropFirst().trimmingCharacters(in: .whitespaces)
        if root == nil, let r = rootLine(body, of: csv) { base = r }
        continue
      }
      let f = CSV.fields(line)
      if names == nil {
        names = f.map { $0.lowercased() }
        guard ["path", "x", "y", "w", "h", "level", "label"].allSatisfy({ names!.contains($0) }) else {
          throw DatasetError(path: "\(csv.path):\(n + 1)", message: "a patch list starts with the header path,x,y,w,h,level,label[,split]")
        }
        continue
      }
      guard f.count == names!.count else {
        throw DatasetError(path: "\(csv.path):\(n + 1)", message: "expected \(names!.count) fields, got \(f.count)")
      }
      func v(_ k: String) -> String { f[names!.firstIndex(of: k)!] }
      guard let x = Int(v("x")), let y = Int(v("y")), let w = Int(v("w")), let h = Int(v("h")), let l = Int(v("level")),
            x >= 0, y >= 0, (1...Limits.maxSide).contains(w), (1...Limits.maxSide).contains(h), (0...64).contains(l)
      else { throw DatasetError(path: "\(csv.path):\(n + 1)", message: "x, y, w, h and level must be whole numbers (x, y ≥ 0; w, h ≥ 1)") }
      let split = names!.contains("split") ? v("split") : nil
      if let s = split, !["train", "val", "test"].contains(s) {
        throw DatasetError(path: "\(csv.path):\(n + 1)", message: "split must be train, val or test, got '\(s)'")
      }
      rows.append((v("path"), PatchRegion(x: x, y: y, width: w, height: h, level: l), v("label"), split, n + 1))
    }
    let classes = Array(Set(rows.map(\.label))).sorted()
    let index = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, $0) })
    let realBase = base.resolvingSymlinksInPath().path
    var samples = [Sample]()
    for r in rows {
      let url = try inside(r.path, base: base, realBase: realBase, at: "\(csv.path):\(r.line)")
      var s = Sample(url: url, relativePath: r.path, label: index[r.label]!, split: r.split)
      s.region = r.region
      samples.append(s)
    }
    return ImageDataset(root: base, classes: classes, samples: samples)
  }
}

extension DatasetSplit {
  /// A split by file: every patch of an image goes where the image goes (no image in both train and
  /// test), images stratified by their first patch's label.
  public static func assignByFile(_ samples: [Sample], test: Double = 0.3, seed: UInt64 = 0) -> [String] {
    var firstOf = [String: Int]()
    for (i, s) in samples.enumerated() where firstOf[s.relativePath] == nil { firstOf[s.relativePath] = i }
    let files = firstOf.keys.sorted()
    let reps = files.map { samples[firstOf[$0]!] }
    let split = assign(reps, test: test, seed: seed)
    let byFile = Dictionary(uniqueKeysWithValues: zip(files, split))
    return samples.map { byFile[$0.relativePath]! }
  }
}
