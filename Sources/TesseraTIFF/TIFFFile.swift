import CTesseraTIFF
import Foundation
import Tessera
import TesseraData
import TesseraKernels

/// A TIFF that cannot be read, naming the file (and the page or tile).
public struct TIFFError: Error, CustomStringConvertible {
  public let path: String
  public let message: String
  public init(_ path: String, _ message: String) {
    self.path = path
    self.message = message
  }
  public var description: String { "\(path): \(message)" }
}

/// One resolution of a pyramid: level 0 is the full image.
public struct TIFFLevel: Sendable, Codable, Equatable {
  public var index: Int
  public var width: Int, height: Int
  /// Level-0 pixels per pixel of this level (OpenSlide's convention: the mean of both axes' ratios).
  public var downsample: Double
  /// Tile size (stripped images: the width × rows per strip).
  public var tileWidth: Int, tileHeight: Int
  public var tiled: Bool
  /// Main-chain page, and whether the level is a SubIFD of it.
  public var page: Int, subIFD: Bool
}

/// A tiled or stripped, classic or BigTIFF file read region by region through libtiff (loaded at
/// run time): only the tiles a region touches are decoded, through a byte-bounded cache counted in
/// the memory ledger. Safe to read from several threads: each read takes its own libtiff handle
/// (libtiff handles are not thread-safe) from a small pool.
public final class TIFFFile: @unchecked Sendable {
  public let url: URL
  public let levels: [TIFFLevel]
  /// Output channels of level 0 before conversion: 1 (gray), 3 (RGB).
  public let channels: Int
  public let bitsPerSample: Int
  public let compression: Int
  public let bigTIFF: Bool
  public let cache: TileCache
  let dirs: [ti_tiff_dir]  // per level

  private let lock = NSLock()
  private var idle: [OpaquePointer] = []
  private var handles = 0

  /// Compression schemes by TIFF code, for messages and `info`.
  public static let compressionNames: [Int: String] = [
    1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate", 32773: "packbits", 34925: "lzma", 50000: "zstd",
    50001: "webp", 33003: "jpeg2000 (Aperio YCbCr)", 33005: "jpeg2000 (Aperio RGB)", 34712: "jpeg2000",
  ]

  /// Whether libtiff is there (TIFF tests skip with this message where it is not).
  public static func available() -> String? {
    var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
    return ti_tiff_load(&err) == 0 ? nil : String(cString: err)
  }

  public static func isTIFF(_ url: URL) -> Bool {
    guard let h = FileHandle(forReadingAtPath: url.path), let d = try? h.read(upToCount: 4), d.count == 4 else { return false }
    try? h.close()
    return d == Data([0x49, 0x49, 0x2A, 0]) || d == Data([0x4D, 0x4D, 0, 0x2A]) || d == Data([0x49, 0x49, 0x2B, 0])
      || d == Data([0x4D, 0x4D, 0, 0x2B])
  }

  public init(_ url: URL, cacheBytes: Int = 64 << 20) throws {
    self.url = url
    let path = url.path
    var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
    guard let h = ti_tiff_open(path, &err) else { throw TIFFError(path, "damaged, truncated or not a TIFF: \(String(cString: err))") }
    defer { ti_tiff_close(h) }
    bigTIFF = ti_tiff_is_bigtiff(h) != 0
    var all = [ti_tiff_dir](repeating: ti_tiff_dir(), count: 256)
    let n = ti_tiff_list(h, &all, 256, &err)
    guard n > 0 else { throw TIFFError(path, n == 0 ? "no image directory" : String(cString: err)) }
    all = Array(all.prefix(Int(n)))
    let base = all[0]
    try Self.check(base, path: path, what: "page 0")
    // Levels: page 0, then every smaller tiled directory of the same aspect ratio (reduced pages,
    // SubIFDs, Aperio's level pages), largest first; thumbnails, labels and macros (stripped, or of
    // another aspect ratio) are not levels.
    var picked = [(ti_tiff_dir, Int)]()
    picked.append((base, 0))
    for (i, d) in all.enumerated().dropFirst() where d.tiled != 0 && d.width < base.width && d.width > 0 && d.height > 0 {
      let rw = Double(base.width) / Double(d.width), rh = Double(base.height) / Double(d.height)
      guard abs(rw - rh) / rw < 0.02 || abs(Int(d.height) - Int((Double(base.height) / rw).rounded())) <= 1 else { continue }
      try Self.check(d, path: path, what: d.is_subifd != 0 ? "SubIFD of page \(d.page)" : "page \(d.page)")
      guard Self.outSamples(d) == Self.outSamples(base), d.bits == base.bits else {
        throw TIFFError(path, "pages disagree: page \(d.page) has \(d.samples) samples of \(d.bits) bits, page 0 \(base.samples) of \(base.bits)")
      }
      if !picked.contains(where: { $0.0.width == d.width }) { picked.append((d, i)) }
    }
    picked.sort { $0.0.width > $1.0.width }
    dirs = picked.map(\.0)
    levels = picked.enumerated().map { i, p in
      let d = p.0
      let ds = (Double(base.width) / Double(d.width) + Double(base.height) / Double(d.height)) / 2
      return TIFFLevel(index: i, width: Int(d.width), height: Int(d.height), downsample: ds, tileWidth: Int(d.tile_width),
                       tileHeight: Int(d.tile_height), tiled: d.tiled != 0, page: Int(d.page), subIFD: d.is_subifd != 0)
    }
    channels = min(3, Self.outSamples(base) >= 3 ? 3 : 1)
    bitsPerSample = Int(base.bits)
    compression = Int(base.compression)
    cache = TileCache(limitBytes: cacheBytes)
  }

  deinit {
    for h in idle { ti_tiff_close(h) }
  }

  /// Whether JPEG tiles are decoded straight by libjpeg-turbo, and a region that touches only part
  /// of a tile that is not in the cache (nor asked for lately) decodes just that part (rows below it
  /// not at all, columns beside it not inverse-transformed); a tile asked for a second time is
  /// decoded whole into the cache. The pixels are the same either way. false: libtiff decodes
  /// every tile whole into the cache (`bench read --whole-tiles` compares).
  public var partialJPEG = true
  /// JPEG tile parts decoded so far (each also a cache miss).
  public var partsDecoded: Int { lock.withLock { parts } }
  private var parts = 0

  /// JPEG tiles of 8-bit gray or RGB, which `ti_tiff_read_jpeg_part` decodes in part.
  static func decodesInPart(_ d: ti_tiff_dir) -> Bool {
    d.tiled != 0 && d.compression == 7 && d.bits == 8 && d.planar == 1 && (d.photometric == 6 || d.samples == 1 || d.samples == 3)
  }

  /// Samples per decoded pixel (JPEG-compressed YCbCr decodes to RGB).
  static func outSamples(_ d: ti_tiff_dir) -> Int { d.compression == 7 && d.photometric == 6 ? 3 : Int(d.samples) }

  /// Refuses what this reader does not decode, naming it.
  static func check(_ d: ti_tiff_dir, path: String, what: String) throws {
    let c = Int(d.compression)
    guard [33003, 33005, 34712].contains(c) == false else {
      throw TIFFError(path, "\(what) uses \(compressionNames[c]!) compression (\(c)), which this reader does not decode")
    }
    guard ti_tiff_codec_configured(Int32(c)) != 0 else {
      throw TIFFError(path, "\(what) uses compression \(compressionNames[c] ?? "code \(c)"), which the system libtiff does not decode")
    }
    guard d.sample_format == 1 else {
      throw TIFFError(path, "\(what) has sample format \(d.sample_format == 3 ? "float" : d.sample_format == 2 ? "signed integer" : "\(d.sample_format)"); only unsigned integer samples are read")
    }
    guard (d.bits == 8 && (1...4).contains(d.samples)) || (d.bits == 16 && (d.samples == 1 || d.samples == 3)) else {
      throw TIFFError(path, "\(what) has \(d.samples) samples of \(d.bits) bits; 8-bit gray/RGB/RGBA and 16-bit gray/RGB are read")
    }
    guard [0, 1, 2].contains(d.photometric) || (d.photometric == 6 && d.compression == 7) else {
      throw TIFFError(path, "\(what) has photometric interpretation \(d.photometric) (\(d.photometric == 3 ? "palette" : d.photometric == 6 ? "YCbCr without JPEG" : d.photometric == 5 ? "CMYK" : "other")); gray and RGB are read")
    }
    guard d.width >= 1, d.height >= 1, d.tile_width >= 1, d.tile_height >= 1 else {
      throw TIFFError(path, "\(what) has an empty size or tile size")
    }
    guard let block = Limits.product([Int(d.tile_width), Int(d.tile_height), outSamples(d), Int(d.bits) / 8]), block <= 256 << 20 else {
      throw TIFFError(path, "\(what) has blocks of \(d.tile_width)×\(d.tile_height) pixels, over 256 MiB each")
    }
  }

  // MARK: handles

  func withHandle<T>(_ body: (OpaquePointer) throws -> T) throws -> T {
    lock.lock()
    var h = idle.popLast()
    lock.unlock()
    if h == nil {
      var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
      guard let o = ti_tiff_open(url.path, &err) else { throw TIFFError(url.path, String(cString: err)) }
      h = o
    }
    defer {
      lock.lock()
      idle.append(h!)
      lock.unlock()
    }
    return try body(h!)
  }

  // MARK: reading

  /// Decoded bytes of one block (tile or strip) of a level, from the cache or the file.
  /// `looked`: the cache was just asked (and had not the block).
  func block(level: Int, bx: Int, by: Int, looked: Bool = false) throws -> Buffer {
    let key = TileCache.Key(level: level, bx: bx, by: by)
    if !looked, let b = cache.get(key) { return b }
    var d = dirs[level]
    let bytes = Int(d.tile_width) * Int(d.tile_height) * Self.outSamples(d) * Int(d.bits) / 8
    let buf = Buffer(byteCount: bytes, category: .data, zeroed: false)
    let direct = partialJPEG && Self.decodesInPart(d)
    try withHandle { h in
      var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
      let out = buf.raw.assumingMemoryBound(to: UInt8.self)
      let status = direct
        ? ti_tiff_read_jpeg_part(h, &d, UInt32(bx), UInt32(by), 0, 0, d.tile_width, d.tile_height, out, &err)
        : ti_tiff_read_block(h, &d, UInt32(bx), UInt32(by), out, bytes, &err)
      guard status == 0 else {
        throw TIFFError(url.path, "level \(level), \(d.tiled != 0 ? "tile" : "strip") (\(bx), \(by)): \(String(cString: err))")
      }
    }
    cache.put(key, buf)
    return buf
  }

  /// The pixels of `region` (level pixels) of `level` as (channels, height, width) floats in [0, 1]:
  /// only the blocks it touches are decoded. `channels`: 1 (gray) or 3 (RGB; gray replicated).
  public func read(level: Int = 0, region: PixelRect? = nil, channels: Int = 3) throws -> Tensor {
    guard levels.indices.contains(level) else {
      throw TIFFError(url.path, "level \(level) does not exist; the file has levels 0…\(levels.count - 1)")
    }
    let L = levels[level], d = dirs[level]
    let r = region ?? PixelRect(x: 0, y: 0, width: L.width, height: L.height)
    guard r.width >= 1, r.height >= 1, r.x >= 0, r.y >= 0, r.x + r.width <= L.width, r.y + r.height <= L.height else {
      throw TIFFError(url.path, "region \(r.x),\(r.y),\(r.width),\(r.height) is not inside level \(level) (\(L.width)×\(L.height))")
    }
    guard let px = Limits.product([r.width, r.height, channels]), px <= Limits.maxElements else {
      throw TIFFError(url.path, "region \(r.width)×\(r.height) is too large to hold")
    }
    let out = Tensor(uninitialized: [channels, r.height, r.width], category: .data)
    let o = out.floats, plane = r.width * r.height
    let tw = Int(d.tile_width), th = Int(d.tile_height), s = Self.outSamples(d), wide = d.bits == 16
    let scale: Float = wide ? 1 / 65535 : 1 / 255
    let invert = d.photometric == 0
    var scratch: Buffer?  // one part at a time, for JPEG tiles decoded in part
    for by in (r.y / th)...((r.y + r.height - 1) / th) {
      for bx in (r.x / tw)...((r.x + r.width - 1) / tw) {
        let x0 = max(r.x, bx * tw), x1 = min(r.x + r.width, (bx + 1) * tw)
        let y0 = max(r.y, by * th), y1 = min(r.y + r.height, (by + 1) * th)
        let whole = x1 - x0 == min(tw, L.width - bx * tw) && y1 - y0 == min(th, L.height - by * th)
        let inPart = partialJPEG && !whole && Self.decodesInPart(d)
        let key = TileCache.Key(level: level, bx: bx, by: by)
        let cached = inPart ? cache.get(key) : nil
        if inPart && cached == nil && !cache.seenBefore(key, tileBytes: tw * th * s) {
          // A JPEG tile the region only touches, not in the cache: decode just that part (unless it
          // was asked for lately and the cache has room, then it is decoded whole into it).
          let bytes = tw * th * s
          if scratch == nil { scratch = Buffer(byteCount: bytes, category: .data, zeroed: false) }
          let part = scratch!.raw.assumingMemoryBound(to: UInt8.self)
          try withHandle { h in
            var dd = d
            var err = [CChar](repeating: 0, count: Int(TI_TIFF_ERROR_SIZE))
            guard ti_tiff_read_jpeg_part(h, &dd, UInt32(bx), UInt32(by), UInt32(x0 - bx * tw), UInt32(y0 - by * th),
                                         UInt32(x1 - bx * tw), UInt32(y1 - by * th), part, &err) == 0 else {
              throw TIFFError(url.path, "level \(level), tile (\(bx), \(by)): \(String(cString: err))")
            }
          }
          lock.withLock { parts += 1 }
          copy(UnsafeRawPointer(part), originX: x0, originY: y0, stride: x1 - x0)
          continue
        }
        let buf = try cached ?? block(level: level, bx: bx, by: by, looked: inPart)
        copy(UnsafeRawPointer(buf.raw), originX: bx * tw, originY: by * th, stride: tw)

        /// Copies [x0, x1) × [y0, y1) from decoded samples whose first pixel is level pixel
        /// (originX, originY), `stride` pixels a row.
        func copy(_ raw: UnsafeRawPointer, originX: Int, originY: Int, stride: Int) {
          let b8 = raw.assumingMemoryBound(to: UInt8.self), b16 = raw.assumingMemoryBound(to: UInt16.self)
          if !wide && !invert && s == 3 && channels == 3 {
            // The common case (8-bit RGB): one tight loop per row and channel.
            for y in y0..<y1 {
              let src = b8 + ((y - originY) * stride + (x0 - originX)) * 3, dst = o + (y - r.y) * r.width + (x0 - r.x)
              for c in 0..<3 {
                let d = dst + c * plane, sc = src + c
                for i in 0..<(x1 - x0) { d[i] = Float(sc[3 * i]) * scale }
              }
            }
            return
          }
          for y in y0..<y1 {
            let row = ((y - originY) * stride) * s
            let dst = (y - r.y) * r.width
            for x in x0..<x1 {
              let i = row + (x - originX) * s
              func v(_ c: Int) -> Float {
                let raw = wide ? Float(b16[i + c]) : Float(b8[i + c])
                return invert ? (wide ? 65535 : 255) - raw : raw
              }
              let k = dst + x - r.x
              if s >= 3 {
                if channels == 3 {
                  o[k] = v(0) * scale
                  o[plane + k] = v(1) * scale
                  o[2 * plane + k] = v(2) * scale
                } else {
                  o[k] = (0.299 * v(0) + 0.587 * v(1) + 0.114 * v(2)) * scale
                }
              } else {
                let g = v(0) * scale
                o[k] = g
                if channels == 3 {
                  o[plane + k] = g
                  o[2 * plane + k] = g
                }
              }
            }
          }
        }
      }
    }
    return out
  }

  /// The smallest level at least as fine as `downsample` (level-0 pixels per output pixel), and how
  /// much that level must still be shrunk to reach it.
  public func level(forDownsample ds: Double) -> (level: Int, remaining: Double) {
    let best = levels.filter { $0.downsample <= ds * 1.0001 }.max { $0.downsample < $1.downsample } ?? levels[0]
    return (best.index, ds / best.downsample)
  }
}

/// Decoded blocks, least recently used out first, at most `limitBytes` held; every block is a
/// ledger-counted `Buffer`. Thread-safe.
public final class TileCache: @unchecked Sendable {
  struct Key: Hashable { var level: Int, bx: Int, by: Int }
  public let limitBytes: Int
  private let lock = NSLock()
  private var entries: [Key: (Buffer, Int)] = [:]
  private var clock = 0
  public private(set) var bytes = 0
  public private(set) var hits = 0, misses = 0

  public init(limitBytes: Int) { self.limitBytes = limitBytes }

  func get(_ k: Key) -> Buffer? {
    lock.lock()
    defer { lock.unlock() }
    guard let e = entries[k] else {
      misses += 1
      return nil
    }
    hits += 1
    clock += 1
    entries[k] = (e.0, clock)
    return e.0
  }

  /// Tiles asked for lately but not cached (keys only).
  /// "Lately": the last as many requests as the cache holds tiles of `tileBytes`.
  private var seen = Set<Key>(), seenOrder = [Key](), seenNext = 0

  /// Whether `k` was asked for lately and a tile of `tileBytes` fits without evicting one (then it
  /// forgets `k`); otherwise it remembers `k`. Tiles read in part are admitted whole on their
  /// second request while the cache has room: a level that fits is cached as with whole tiles,
  /// and a larger one does not churn the cache for tiles read once.
  func seenBefore(_ k: Key, tileBytes: Int) -> Bool {
    lock.lock()
    defer { lock.unlock() }
    if bytes + tileBytes <= limitBytes, seen.remove(k) != nil { return true }
    let capacity = min(65536, max(16, limitBytes / max(1, tileBytes)))
    if seenOrder.count < capacity {
      seenOrder.append(k)
    } else {
      seenNext %= seenOrder.count
      seen.remove(seenOrder[seenNext])
      seenOrder[seenNext] = k
      seenNext += 1
    }
    seen.insert(k)
    return false
  }

  func put(_ k: Key, _ b: Buffer) {
    lock.lock()
    defer { lock.unlock() }
    guard b.byteCount <= limitBytes else { return }
    if entries[k] == nil { bytes += b.byteCount }
    clock += 1
    entries[k] = (b, clock)
    while bytes > limitBytes, let old = entries.min(by: { $0.value.1 < $1.value.1 }) {
      bytes -= old.value.0.byteCount
      entries.removeValue(forKey: old.key)
    }
  }
}

extension TIFFFile: RegionImage {
  public var levelSizes: [(width: Int, height: Int)] { levels.map { ($0.width, $0.height) } }
  public var cacheLimitBytes: Int { cache.limitBytes }

  public func read(level: Int, region: PixelRect, channels: Int) throws -> Tensor {
    try read(level: level, region: Optional(region), channels: channels)
  }

  /// Makes TIFF readable wherever TesseraData opens images by region or prepares whole files
  /// (patch datasets, folders of slides): call once at startup.
  public static func registerWithTesseraData() {
    RegionImages.register { url in TIFFFile.isTIFF(url) ? try TIFFFile(url) : nil }
  }
}
