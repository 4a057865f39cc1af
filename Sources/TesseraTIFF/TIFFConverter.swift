import CTesseraTIFF
import Foundation
import Tessera
import TesseraData
import TesseraKernels

/// A TIFF's level 0 read band by band (for converting one TIFF into another).
public final class TIFFRowStream: RowStream {
  public let width: Int, height: Int, channels: Int
  let file: TIFFFile
  var y = 0
  public init(_ file: TIFFFile, channels: Int = 3) {
    self.file = file
    width = file.levels[0].width
    height = file.levels[0].height
    self.channels = channels
  }
  public func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    interleaveBytes(try file.read(level: 0, region: PixelRect(x: 0, y: y, width: width, height: rows), channels: channels), into: out)
    y += rows
  }
}

/// Rows of a raw temporary file (8-bit interleaved), read in order.
final class RawRowStream: RowStream {
  let width: Int, height: Int, channels: Int
  let handle: FileHandle
  init(_ url: URL, width: Int, height: Int, channels: Int) throws {
    handle = try FileHandle(forReadingFrom: url)
    self.width = width
    self.height = height
    self.channels = channels
  }
  deinit { try? handle.close() }
  func read(rows: Int, into out: UnsafeMutablePointer<UInt8>) throws {
    let n = rows * width * channels
    guard let d = try handle.read(upToCount: n), d.count == n else { throw TIFFError("(temporary level file)", "short read") }
    d.copyBytes(to: out, count: n)
  }
}

/// Writes a tiled pyramidal TIFF from rows in order, never holding the image: level 0 is written one
/// band of tiles at a time while its 2×2 means go to a temporary file, which becomes the next
/// level, down to a level that fits one tile. Each reduced level is a page with NewSubfileType 1
/// (tifffile and OpenSlide read them as the pyramid). BigTIFF when the pixels pass 4 GiB. The file
/// is written under a temporary name and renamed when complete.
public enum TIFFConverter {
  public struct Result: Sendable {
    public var levels: [(width: Int, height: Int)]
    public var bigTIFF: Bool
    public var bytes: Int
  }

  public static func compressionCode(_ name: String) -> Int? {
    ["jpeg": 7, "deflate": 8, "lzw": 5, "none": 1][name]
  }

  public static func convert(
    _ source: RowStream, to url: URL, tile: Int = 256, compression: Int = 7, quality: Int = 90, bigTIFF: Bool? = nil,
    progress: (String) -> Void = { _ in }, shouldStop: () -> Bool = { false }
  ) throws -> Result {
    guard tile >= 16, tile % 16 == 0, tile <= 4096 else { throw TIFFError(url.path, "--tile must be a multiple of 16 from 16 to 4096") }
    let c = source.channels
    var sizes = [(source.width, source.height)]
    while max(sizes.last!.0, sizes.last!.1) > tile { sizes.append(((sizes.last!.0 + 1) / 2, (sizes.last!.1 + 1) / 2)) }
    let raw = sizes.reduce(0) { $0 + $1.0 * $1.1 * c }
    let big = bigTIFF ?? (raw > 3_900_000_000)
    let partial = url.deletingLastPathComponent().appendingPathComponent("." + url.lastPathComponent + ".partial")
    var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
    guard let w = ti_tiff_writer_open(partial.path, big ? 1 : 0, &err) else { throw TIFFError(url.path, String(cString: err)) }
    var closed = false
    var temps = [URL]()
    defer {
      if !closed { _ = ti_tiff_writer_close(w, &err) }
      for t in temps { try? FileManager.default.removeItem(at: t) }
      if FileManager.default.fileExists(atPath: partial.path) { try? FileManager.default.removeItem(at: partial) }
    }
    var input: RowStream = source
    for (k, (W, H)) in sizes.enumerated() {
      progress("level \(k): \(W)×\(H)")
      guard ti_tiff_writer_begin(w, UInt32(W), UInt32(H), Int32(c), UInt32(tile), Int32(compression), Int32(quality), k > 0 ? 1 : 0,
                                 k == 0 ? "Tessera pyramidal TIFF" : nil, &err) == 0 else {
        throw TIFFError(url.path, String(cString: err))
      }
      // The next level's rows (2×2 means) go to a temporary file.
      var next: FileHandle? = nil
      var nextURL: URL? = nil
      if k + 1 < sizes.count {
        let u = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).level\(k + 1).raw")
        FileManager.default.createFile(atPath: u.path, contents: nil)
        temps.append(u)
        next = try FileHandle(forWritingTo: u)
        nextURL = u
      }
      let band = Buffer(byteCount: tile * W * c, category: .data, zeroed: false)
      let tileBuf = Buffer(byteCount: tile * tile * c, category: .data, zeroed: true)
      let b = band.raw.assumingMemoryBound(to: UInt8.self), t = tileBuf.raw.assumingMemoryBound(to: UInt8.self)
      var half = [UInt8](repeating: 0, count: ((W + 1) / 2) * c * (tile / 2 + 1))
      for y0 in stride(from: 0, to: H, by: tile) {
        // Stopped (Ctrl-C): the temporary files go with the defer above; nothing is left behind.
        if shouldStop() { throw TIFFError(url.path, "interrupted; nothing was written") }
        let rows = min(tile, H - y0)
        try input.read(rows: rows, into: b)
        for tx in 0..<((W + tile - 1) / tile) {
          let x0 = tx * tile, cols = min(tile, W - x0)
          if cols < tile || rows < tile { tileBuf.raw.initializeMemory(as: UInt8.self, repeating: 0, count: tile * tile * c) }
          for r in 0..<rows { (t + r * tile * c).update(from: b + (r * W + x0) * c, count: cols * c) }
          guard ti_tiff_writer_tile(w, UInt32(tx), UInt32(y0 / tile), t, &err) == 0 else {
            throw TIFFError(url.path, "level \(k), tile (\(tx), \(y0 / tile)): \(String(cString: err))")
          }
        }
        if let n = next {
          // 2×2 means (an odd last row or column pairs with itself).
          let W2 = (W + 1) / 2, R2 = (rows + 1) / 2
          for r in 0..<R2 {
            let ra = 2 * r, rb = min(2 * r + 1, rows - 1)
            for x in 0..<W2 {
              let xa = 2 * x, xb = min(2 * x + 1, W - 1)
              for ch in 0..<c {
                let s = Int(b[(ra * W + xa) * c + ch]) + Int(b[(ra * W + xb) * c + ch]) + Int(b[(rb * W + xa) * c + ch])
                  + Int(b[(rb * W + xb) * c + ch])
                half[(r * W2 + x) * c + ch] = UInt8((s + 2) / 4)
              }
            }
          }
          n.write(Data(half[0..<(R2 * W2 * c)]))
        }
      }
      guard ti_tiff_writer_end(w, &err) == 0 else { throw TIFFError(url.path, String(cString: err)) }
      try next?.close()
      if let u = nextURL { input = try RawRowStream(u, width: sizes[k + 1].0, height: sizes[k + 1].1, channels: c) }
    }
    closed = true
    _ = ti_tiff_writer_close(w, &err)
    if FileManager.default.fileExists(atPath: url.path) { try FileManager.default.removeItem(at: url) }
    try FileManager.default.moveItem(at: partial, to: url)
    let bytes = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0
    return Result(levels: sizes.map { (width: $0.0, height: $0.1) }, bigTIFF: big, bytes: bytes)
  }
}
