import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraTIFF

/// Patch reading speed from a TIFF, beside tifffile and OpenSlide reading the same regions in the
/// same run (alternating rounds).
struct ReadBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "read", abstract: "Patches per second read from a (pyramidal) TIFF, beside tifffile and OpenSlide.",
    discussion: prose("""
      The same patches (seeded random positions, or the grid) are read by Tessera (region reads through
      its tile cache, --workers threads) and, with --peer PYTHON, by tifffile + imagecodecs (tiles
      decoded with the same cache size, the same workers) and OpenSlide (openslide-python +
      openslide-bin; one handle per worker) — each side --rounds times, alternating, median reported.
      scripts/setup_peers.sh installs the peers.
      """))

  @Argument(help: "A TIFF.") var file: String
  @Option(help: "Patch side in pixels.") var patch = 256
  @Option(help: "Patches per round.") var count = 500
  @Flag(help: "Every patch of the grid (row by row) instead of random positions.") var grid = false
  @Flag(help: "Random positions (the default).") var random = false
  @Option(help: "Pyramid level.") var level = 0
  @Option(help: "Reader threads.") var workers = 1
  @Option(help: "Rounds per side (alternating).") var rounds = 3
  @Option(help: "Tile cache in MiB (each side).") var cacheMib = 64
  @Flag(help: "Decode every JPEG tile a patch touches whole, into the cache (the default decodes only the part a patch needs of a tile not in the cache).")
  var wholeTiles = false
  @Option(help: "Python with tifffile/openslide for the peers (e.g. .venv-peers/bin/python).") var peer: String?
  @Option(help: "Seed of the random positions.") var seed: UInt64 = 0
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws {
    try checkRange(patch, 1...16384, "--patch")
    try checkRange(count, 1...10_000_000, "--count")
    try checkRange(workers, 1...256, "--workers")
    try checkRange(rounds, 1...100, "--rounds")
    guard !(grid && random) else { throw ValidationError("--grid or --random, not both") }
  }

  func run() throws {
    try global.apply()
    let url = URL(fileURLWithPath: file)
    let probe = try TIFFFile(url)
    guard probe.levels.indices.contains(level) else { throw CLIError("\(file): level \(level) does not exist (levels 0…\(probe.levels.count - 1))") }
    let L = probe.levels[level]
    guard L.width >= patch, L.height >= patch else { throw CLIError("\(file): level \(level) (\(L.width)×\(L.height)) is smaller than a \(patch)-px patch") }
    var rects = [PixelRect]()
    if grid {
      outer: for y in stride(from: 0, through: L.height - patch, by: patch) {
        for x in stride(from: 0, through: L.width - patch, by: patch) {
          rects.append(PixelRect(x: x, y: y, width: patch, height: patch))
          if rects.count == count { break outer }
        }
      }
    } else {
      var g = SeededGenerator(seed: seed)
      rects = (0..<count).map { _ in
        PixelRect(x: Int(g.next() % UInt64(L.width - patch + 1)), y: Int(g.next() % UInt64(L.height - patch + 1)), width: patch, height: patch)
      }
    }
    // The regions, for the peers.
    let list = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-read-\(getpid()).txt")
    try rects.map { "\($0.x) \($0.y)" }.joined(separator: "\n").write(to: list, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: list) }

    var counts = (hits: 0, tiles: 0, parts: 0)
    func ours() throws -> Double {
      let f = try TIFFFile(url, cacheBytes: cacheMib << 20)  // a cold cache each round, as the peers
      f.partialJPEG = !wholeTiles
      defer { counts = (f.cache.hits, f.cache.misses - f.partsDecoded, f.partsDecoded) }
      let t0 = DispatchTime.now().uptimeNanoseconds
      let failure = Locked<Error?>(nil)
      DispatchQueue.concurrentPerform(iterations: workers) { w in
        var i = w
        while i < rects.count {
          do { _ = try f.read(level: level, region: rects[i]) } catch { failure.withLock { $0 = $0 ?? error } }
          i += workers
        }
      }
      if let e = failure.withLock({ $0 }) { throw e }
      return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("benchmarks/read_peers.py").path
    func peers() throws -> [String: Double] {
      guard let py = peer else { return [:] }
      let p = Process()
      p.executableURL = URL(fileURLWithPath: py)
      p.arguments = [script, file, list.path, String(patch), String(level), String(workers), String(cacheMib)]
      let out = Pipe()
      p.standardOutput = out
      try p.run()
      let d = out.fileHandleForReading.readDataToEndOfFile()
      p.waitUntilExit()
      guard p.terminationStatus == 0, let o = try JSONSerialization.jsonObject(with: d) as? [String: Double] else {
        throw CLIError("the peer script failed (\(script)); scripts/setup_peers.sh installs tifffile and OpenSlide")
      }
      return o
    }
    var mine = [Double](), theirs = [String: [Double]]()
    for r in 0..<rounds {
      mine.append(try ours())
      for (k, v) in try peers() { theirs[k, default: []].append(v) }
      if !json { note("round \(r + 1)/\(rounds): tessera \(String(format: "%.3f", mine.last!)) s" + theirs.keys.sorted().map { ", \($0) \(String(format: "%.3f", theirs[$0]!.last!)) s" }.joined()) }
    }
    func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
    let mp = Double(rects.count * patch * patch) / 1e6
    var o: [String: Any] = [
      "file": file, "patch": patch, "count": rects.count, "level": level, "workers": workers, "rounds": rounds,
      "patches_per_second": Double(rects.count) / median(mine), "megapixels_per_second": mp / median(mine),
      "seconds": mine, "peak_bytes": MemoryLedger.shared.peakBytes, "max_rss_bytes": maxRSSBytes(),
      "positions": grid ? "grid" : "random", "cache_mib": cacheMib, "whole_tiles": wholeTiles,
      "tile_cache_hits": counts.hits, "tiles_decoded": counts.tiles, "tile_parts_decoded": counts.parts,
    ]
    for (k, v) in theirs {
      o[k] = ["patches_per_second": Double(rects.count) / median(v), "seconds": v, "ratio": median(v) / median(mine)] as [String: Any]
    }
    if json { return printJSON(o) }
    print(String(format: "tessera: %.0f patches/s (%.1f MP/s)", o["patches_per_second"] as! Double, o["megapixels_per_second"] as! Double)
          + theirs.keys.sorted().map { String(format: "; %@: %.0f patches/s (tessera %.2f×)", $0, Double(rects.count) / median(theirs[$0]!), median(theirs[$0]!) / median(mine)) }.joined())
  }
}
