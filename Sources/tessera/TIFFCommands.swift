import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner
import TesseraTIFF

struct InfoCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "info", abstract: "What an image file holds: format, size, channels, compression, pyramid levels.",
    discussion: prose("""
      Reads only the header and directories. TIFF (tiled or stripped, classic or BigTIFF, pyramids as
      reduced pages, SubIFDs or Aperio-style page chains) through the system's libtiff; JPEG, PNG and
      PNM have one level.
      """))

  @Argument(help: "The image file.") var file: String
  @Flag(help: "Print one JSON object.") var json = false

  func run() throws {
    let url = URL(fileURLWithPath: file)
    var o: [String: Any]
    if TIFFFile.isTIFF(url) {
      let f = try TIFFFile(url)
      o = ["format": "tiff", "width": f.levels[0].width, "height": f.levels[0].height, "channels": f.channels,
           "bitsPerSample": f.bitsPerSample, "compression": TIFFFile.compressionNames[f.compression] ?? "code \(f.compression)",
           "bigTIFF": f.bigTIFF,
           "levels": f.levels.map { ["index": $0.index, "width": $0.width, "height": $0.height, "downsample": $0.downsample,
                                     "tileWidth": $0.tileWidth, "tileHeight": $0.tileHeight] as [String: Any] }]
    } else {
      let info = try ImageReader(maxPixels: 1 << 40, maxFileBytes: 1 << 40).info(url)
      o = ["format": info.format.rawValue, "width": info.width, "height": info.height, "channels": info.channels,
           "bitsPerSample": info.bitDepth, "compression": info.format == .jpeg ? "jpeg" : info.format == .png ? "deflate" : "none",
           "bigTIFF": false,
           "levels": [["index": 0, "width": info.width, "height": info.height, "downsample": 1.0, "tileWidth": info.width,
                       "tileHeight": info.height] as [String: Any]]]
    }
    o["path"] = file
    if json { return printJSON(o) }
    print("\(file): \(o["format"]!) \(o["width"]!)×\(o["height"]!), \(o["channels"]!) channel(s) of \(o["bitsPerSample"]!) bits, \(o["compression"]!) compression\((o["bigTIFF"] as? Bool) == true ? ", BigTIFF" : "")")
    var rows = [["level", "width", "height", "downsample", "tile"]]
    for l in o["levels"] as! [[String: Any]] {
      rows.append(["\(l["index"]!)", "\(l["width"]!)", "\(l["height"]!)", String(format: "%.3f", l["downsample"] as! Double),
                   "\(l["tileWidth"]!)×\(l["tileHeight"]!)"])
    }
    printColumns(rows, right: [1, 2, 3])
  }
}

struct ConvertCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "convert", abstract: "Write an image as a tiled pyramidal TIFF that can be read region by region.",
    discussion: prose("""
      The image is read once, row band by row band (a JPEG is decoded row by row from a small read
      buffer, so neither its pixels nor its bytes are held); level 0 is written one band of tiles at a time while
      its 2×2 means go to a temporary file that becomes the next level, down to one tile. BigTIFF when
      the pixels pass 4 GiB. The output appears only when complete.
      """))

  @Argument(help: "The image (JPEG, PNG, PNM or TIFF).") var input: String
  @Option(help: "Output TIFF.") var out: String
  @Option(help: "Tile side in pixels (a multiple of 16).") var tile = 256
  @Option(help: "jpeg, deflate, lzw or none.") var compression = "jpeg"
  @Option(help: "JPEG quality (1–100).") var quality = 90
  @Option(help: "Channels: 3 (RGB) or 1 (gray).") var channels = 3
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    guard TIFFConverter.compressionCode(compression) != nil else { throw ValidationError("--compression must be jpeg, deflate, lzw or none") }
    try checkRange(tile, 16...4096, "--tile")
    guard tile % 16 == 0 else { throw ValidationError("--tile must be a multiple of 16, got \(tile)") }
    try checkRange(quality, 1...100, "--quality")
    guard channels == 1 || channels == 3 else { throw ValidationError("--channels must be 1 or 3") }
  }

  /// By the first bytes only (reading a header through `ImageReader` would load the whole file).
  static func isJPEG(_ url: URL) -> Bool {
    guard let h = FileHandle(forReadingAtPath: url.path), let d = try? h.read(upToCount: 3) else { return false }
    try? h.close()
    return d == Data([0xFF, 0xD8, 0xFF])
  }

  func run() throws {
    let url = URL(fileURLWithPath: input)
    let source: RowStream
    if TIFFFile.isTIFF(url) {
      source = TIFFRowStream(try TIFFFile(url), channels: channels)
    } else if Self.isJPEG(url) {
      source = try JPEGRowStream(url, channels: channels)
    } else {
      source = try RegionRowStream(url, channels: channels)
    }
    let t0 = Date()
    let interrupt = Interrupt.install()
    let r: TIFFConverter.Result
    do {
      r = try TIFFConverter.convert(source, to: URL(fileURLWithPath: out), tile: tile,
                                    compression: TIFFConverter.compressionCode(compression)!, quality: quality,
                                    progress: { if !json { note($0) } }, shouldStop: { interrupt.requested })
    } catch where interrupt.requested {
      note("\(error)")
      throw ExitCode(130)
    }
    let seconds = Date().timeIntervalSince(t0)
    if json {
      return printJSON(["out": out, "levels": r.levels.map { [$0.width, $0.height] }, "bigTIFF": r.bigTIFF, "bytes": r.bytes,
                        "seconds": seconds, "peakBytes": MemoryLedger.shared.peakBytes, "maxRSSBytes": maxRSSBytes()])
    }
    print("\(input) → \(out): \(r.levels.count) levels (\(r.levels.map { "\($0.width)×\($0.height)" }.joined(separator: ", "))), \(ByteSize.format(r.bytes))\(r.bigTIFF ? ", BigTIFF" : ""), \(String(format: "%.1f", seconds)) s")
  }
}
