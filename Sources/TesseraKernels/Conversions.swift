/// Float32 ↔ 16-bit conversions. With F16C target flags the Float16 loops compile to
/// `vcvtps2ph`/`vcvtph2ps` and stream at memory speed (../shared/MEASURED.md).
public enum Conversions {
  public static func toFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float16>, count: Int) {
    for i in 0..<count { dst[i] = Float16(src[i]) }
  }

  public static func fromFloat16(_ src: UnsafePointer<Float16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dst[i] = Float(src[i]) }
  }

  /// bfloat16 = the upper 16 bits of a Float32, rounded to nearest even; NaN stays NaN (quiet).
  @inline(__always) public static func bfloat16Bits(_ f: Float) -> UInt16 {
    let b = f.bitPattern
    if f.isNaN { return UInt16(truncatingIfNeeded: b >> 16) | 0x0040 }
    let rounded = b &+ 0x7FFF &+ ((b >> 16) & 1)
    return UInt16(truncatingIfNeeded: rounded >> 16)
  }

  @inline(__always) public static func float(fromBFloat16 bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
  }

  public static func toBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
    for i in 0..<count { dst[i] = bfloat16Bits(src[i]) }
  }

  public static func fromBFloat16(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dst[i] = float(fromBFloat16: src[i]) }
  }

  /// (x − mean[channel]) of NCHW planes written straight into 16-bit storage (fp16, or bf16 bits).
  public static func centred(
    _ x: UnsafePointer<Float>, planes: Int, spatial: Int, channels: Int, mean: [Float],
    into raw: UnsafeMutableRawPointer, bfloat16: Bool
  ) {
    let dst = SendablePointer(raw.assumingMemoryBound(to: UInt16.self))
    Parallel.forRanges(planes) { _, r in
      for pl in r {
        let m = mean[pl % channels], src = x + pl * spatial, out = dst.p + pl * spatial
        if bfloat16 {
          for i in 0..<spatial { out[i] = bfloat16Bits(src[i] - m) }
        } else {
          let h = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Float16.self)
          for i in 0..<spatial { h[i] = Float16(src[i] - m) }
        }
      }
    }
  }
}
