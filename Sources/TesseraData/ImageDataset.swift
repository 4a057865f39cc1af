import Foundation
import TesseraKernels

/// One labelled image of a data set.
public struct Sample: Sendable, Equatable {
  public var url: URL
  /// Path relative to the data set's root (as written in manifests).
  public var relativePath: String
  public var label: Int
  /// "train", "val" or "test" when a manifest says so.
  public var split: String?
  /// A patch of the file rather than the whole image (patch datasets).
  public var region: PatchRegion? = nil
}

/// A patch: x, y, width, height in level-0 pixels, read at `level`.
public struct PatchRegion: Sendable, Equatable {
  public var x: Int, y: Int, width: Int, height: Int, level: Int
  public init(x: Int, y: Int, width: Int, height: Int, level: Int) {
    self.x = x
    self.y = y
    self.width = width
    self.height = height
    self.level = level
  }
}

/// Why a data set could not be listed, naming the file (and line) at fault.
public struct DatasetError: Error, CustomStringConvertible {
  public var path: String
  public var message: String
  public var description: String { "\(path): \(message)" }
}

/// Images with labels: an ImageFolder tree (`root/<class>/<file>`) or a CSV manifest
/// (`path,label[,split]`). Classes are sorted by name; their index is the label.
public struct ImageDataset: Sendable {
  public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png", "ppm", "pgm", "tif", "tiff", "svs"]
  public var root: URL
  public var classes: [String]
  public var samples: [Sample]

  /// `root/<class>/<file>`: every image file under each class folder (recursively), hidden files
  /// and other extensions ignored, in sorted order.
  public static func folder(_ root: URL) throws -> ImageDataset {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
      throw DatasetError(path: root.path, message: "not a folder; expected root/<class>/<image files>")
    }
    let classes = try fm.contentsOfDirectory(atPath: root.path).filter { name in
      var d: ObjCBool = false
      return !name.hasPrefix(".") && fm.fileExists(atPath: root.appendingPathComponent(name).path, isDirectory: &d) && d.boolValue
    }.sorted()
    guard !classes.isEmpty else { throw DatasetError(path: root.path, message: "no class folders (root/<class>/<image files>)") }
    var samples = [Sample]()
    for (label, c) in classes.enumerated() {
      let dir = root.appendingPathComponent(c)
      guard let e = fm.enumerator(atPath: dir.path) else { continue }
      var files = [String]()
      while let f = e.nextObject() as? String {
        let name = (f as NSString).lastPathComponent
        if name.hasPrefix(".") { continue }
        if imageExtensions.contains((f as NSString).pathExtension.lowercased()) { files.append(f) }
      }
      let realRoot = root.standardizedFileURL.resolvingSymlinksInPath().path
      for f in files.sorted() {
        let real = dir.appendingPathComponent(f).resolvingSymlinksInPath().path
        guard real.hasPrefix(realRoot + "/") else {
          throw DatasetError(path: dir.appendingPathComponent(f).path, message: "a symbolic link to \(real), outside the data set root \(root.path); copy the file in or remove the link")
        }
        samples.append(Sample(url: dir.appendingPathComponent(f), relativePath: c + "/" + f, label: label, split: nil))
      }
    }
    return ImageDataset(root: root, classes: classes, samples: samples)
  }

  /// A CSV manifest of `path,label[,split]`. A header line (its first field `path`) names the columns
  /// in any order (`path` and `label` required, `split` optional); without one the order is
  /// path,label[,split]. Paths are relative to the root: `root` when given (`--data`), else the
  /// folder a `# root: DIR` line names (relative to the manifest; `tessera split` writes it when the
  /// manifest is not in the data folder), else the manifest's own folder. No path may leave the root,
  /// symbolic links included.
  public static func manifest(_ csv: URL, root: URL? = nil) throws -> ImageDataset {
    let text: String
    do { text = try String(contentsOf: csv, encoding: .utf8) } catch {
      throw DatasetError(path: csv.path, message: "cannot read the manifest: \((error as NSError).localizedDescription)")
    }
    var base = (root ?? csv.deletingLastPathComponent()).standardizedFileURL
    var rows = [(String, String, String?, Int)]()
    var columns: (path: Int, label: Int, split: Int?)? = nil
    var sawData = false
    for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.hasPrefix("#") {
        let body = line.dropFirst().trimmingCharacters(in: .whitespaces)
        if root == nil, !sawData, let r = rootLine(body, of: csv) { base = r }
        continue
      }
      if line.isEmpty { continue }
      let f = CSV.fields(line)
      if !sawData && columns == nil && f.contains(where: { $0.lowercased() == "path" })
        && f.allSatisfy({ ["path", "label", "split"].contains($0.lowercased()) }) {
        let names = f.map { $0.lowercased() }
        guard let l = names.firstIndex(of: "label") else {
          throw DatasetError(path: "\(csv.path):\(n + 1)", message: "the header names no 'label' column (got \(f.joined(separator: ","))); a manifest needs path,label[,split]")
        }
        let unknown = names.filter { !["path", "label", "split"].contains($0) }
        guard unknown.isEmpty, Set(names).count == names.count else {
          throw DatasetError(path: "\(csv.path):\(n + 1)", message: "header columns must be path, label and optionally split, once each; got \(f.joined(separator: ","))")
        }
        columns = (names.firstIndex(of: "path")!, l, names.firstIndex(of: "split"))
        continue
      }
      sawData = true
      let c = columns ?? (0, 1, f.count == 3 ? 2 : nil)
      let width = columns.map { $0.split == nil ? 2 : 3 } ?? f.count
      guard f.count == width, width == 2 || width == 3, !f[c.path].isEmpty, !f[c.label].isEmpty else {
        throw DatasetError(path: "\(csv.path):\(n + 1)", message: "expected \(columns == nil ? "path,label[,split]" : "\(width) fields as the header says"), got '\(line)'")
      }
      let split = c.split.map { f[$0] }
      if let sp = split, !["train", "val", "test"].contains(sp) {
        throw DatasetError(path: "\(csv.path):\(n + 1)", message: "split must be train, val or test, got '\(sp)'")
      }
      rows.append((f[c.path], f[c.label], split, n + 1))
    }
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: base.path, isDirectory: &isDir), isDir.boolValue else {
      throw DatasetError(path: csv.path, message: "the manifest's root \(base.path) is not a folder; give --data ROOT (the folder its paths are relative to)")
    }
    let classes = Array(Set(rows.map(\.1))).sorted()
    let index = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, $0) })
    var samples = [Sample]()
    let realBase = base.resolvingSymlinksInPath().path
    for r in rows {
      let url = try inside(r.0, base: base, realBase: realBase, at: "\(csv.path):\(r.3)")
      samples.append(Sample(url: url, relativePath: r.0, label: index[r.1]!, split: r.2))
    }
    return ImageDataset(root: base, classes: classes, samples: samples)
  }

  /// The folder a `# root: DIR` comment names (relative to the list's folder), or nil.
  static func rootLine(_ comment: String, of csv: URL) -> URL? {
    guard comment.lowercased().hasPrefix("root:") else { return nil }
    let dir = comment.dropFirst(5).trimmingCharacters(in: .whitespaces)
    return (dir.hasPrefix("/") ? URL(fileURLWithPath: dir) : csv.deletingLastPathComponent().appendingPathComponent(dir)).standardizedFileURL
  }

  /// A list's relative path as a file under `base`, refused (naming `at`) when it leaves it, by
  /// `..`, an absolute path or a symbolic link (`realBase`: base with its links resolved).
  static func inside(_ relative: String, base: URL, realBase: String, at: String) throws -> URL {
    let url = base.appendingPathComponent(relative).standardizedFileURL
    guard !relative.hasPrefix("/"), url.path.hasPrefix(base.path + "/") else {
      throw DatasetError(path: at, message: "path '\(relative)' leaves the data set root \(base.path)")
    }
    let real = url.resolvingSymlinksInPath().path
    guard real.hasPrefix(realBase + "/") else {
      throw DatasetError(path: at, message: "'\(relative)' is a symbolic link to \(real), outside the data set root \(base.path)")
    }
    return url
  }

  /// Writes `{"classes": [...]}`: the class-to-index map (index = position).
  public func saveClassMap(to url: URL) throws {
    let d = try JSONSerialization.data(withJSONObject: ["classes": classes], options: [.prettyPrinted, .sortedKeys])
    try d.write(to: url, options: .atomic)
  }
}

/// Minimal CSV: commas, double-quoted fields with "" escapes.
enum CSV {
  static func fields(_ line: String) -> [String] {
    var out = [String](), cur = "", quoted = false
    var it = Array(line).makeIterator()
    var pending: Character? = nil
    while let ch = pending ?? it.next() {
      pending = nil
      if quoted {
        if ch == "\"" {
          if let n = it.next() { if n == "\"" { cur.append("\"") } else { quoted = false; pending = n } } else { quoted = false }
        } else { cur.append(ch) }
      } else if ch == "\"" { quoted = true } else if ch == "," {
        out.append(cur.trimmingCharacters(in: .whitespaces))
        cur = ""
      } else { cur.append(ch) }
    }
    out.append(cur.trimmingCharacters(in: .whitespaces))
    return out
  }

  static func quote(_ s: String) -> String {
    s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
  }
}

/// Deterministic, stratified train/val/test split: within each class the samples (sorted by path)
/// are shuffled by a Fisher–Yates driven by `SeededGenerator`, so the same seed gives the same split
/// on any machine and Swift version; each class contributes round(n·test) test and round(n·val)
/// validation images.
public enum DatasetSplit {
  public static func assign(_ samples: [Sample], test: Double = 0.3, val: Double = 0, seed: UInt64 = 42) -> [String] {
    precondition(test >= 0 && val >= 0 && test + val < 1, "test + val must be below 1")
    var result = [String](repeating: "train", count: samples.count)
    let byClass = Dictionary(grouping: samples.indices, by: { samples[$0].label })
    for label in byClass.keys.sorted() {
      var idx = byClass[label]!.sorted { samples[$0].relativePath < samples[$1].relativePath }
      var rng = SeededGenerator(seed: seed &+ UInt64(label) &* 0x9E37_79B9_7F4A_7C15)
      if idx.count > 1 {
        for i in stride(from: idx.count - 1, to: 0, by: -1) {
          let j = Int(rng.next() % UInt64(i + 1))
          idx.swapAt(i, j)
        }
      }
      let nTest = Int((Double(idx.count) * test).rounded()), nVal = Int((Double(idx.count) * val).rounded())
      for (k, i) in idx.enumerated() {
        if k < nTest { result[i] = "test" } else if k < nTest + nVal { result[i] = "val" }
      }
    }
    return result
  }

  /// `path,label,split` lines (with a header) for a manifest; `root`: the `# root:` line (the data
  /// folder relative to where the manifest is written), when the manifest is not in it.
  public static func manifest(_ ds: ImageDataset, splits: [String], root: String? = nil) -> String {
    var s = root.map { "# root: \($0)\n" } ?? ""
    s += "path,label,split\n"
    for (i, x) in ds.samples.enumerated() {
      s += "\(CSV.quote(x.relativePath)),\(CSV.quote(ds.classes[x.label])),\(splits[i])\n"
    }
    return s
  }
}
