import Tessera

/// Interleaved 8/16-bit samples → planar (C, H, W) Float32 in [0, 1], mapping channels: gray →
/// replicated RGB, RGB → gray by ITU-R BT.601 luma (0.299, 0.587, 0.114, as libjpeg), alpha dropped.
enum Pixels {
  static func planar(
    _ src: UnsafePointer<UInt8>, width w: Int, height h: Int, channels _: Int, stride: Int, inChannels: Int, outChannels: Int
  ) -> Tensor {
    if inChannels == outChannels && (inChannels == 3 || inChannels == 1) {
      // The common case, as one tight loop per row: de-interleave and scale.
      let t = Tensor(uninitialized: [outChannels, h, w], category: .data)
      let p = t.floats, plane = w * h, k: Float = 1 / 255
      for y in 0..<h {
        let row = src + y * stride, o = p + y * w
        if inChannels == 1 {
          for x in 0..<w { o[x] = Float(row[x]) * k }
        } else {
          for x in 0..<w {
            o[x] = Float(row[3 * x]) * k
            o[plane + x] = Float(row[3 * x + 1]) * k
            o[2 * plane + x] = Float(row[3 * x + 2]) * k
          }
        }
      }
      return t
    }
    return convert(width: w, height: h, inChannels: inChannels, outChannels: outChannels, scale: 1 / 255) { y, x, c in
      Float(src[y * stride + x * inChannels + c])
    }
  }

  static func planar16(
    _ src: UnsafePointer<UInt16>, width w: Int, height h: Int, stride: Int, inChannels: Int, outChannels: Int
  ) -> Tensor {
    convert(width: w, height: h, inChannels: inChannels, outChannels: outChannels, scale: 1 / 65535) { y, x, c in
      Float(src[y * stride + x * inChannels + c])
    }
  }

  @inline(__always)
  static func convert(
    width w: Int, height h: Int, inChannels: Int, outChannels: Int, scale: Float, _ sample: (Int, Int, Int) -> Float
  ) -> Tensor {
    let t = Tensor(uninitialized: [outChannels, h, w], category: .data)
    let p = t.floats, plane = w * h
    let color = inChannels >= 3
    for y in 0..<h {
      for x in 0..<w {
        let o = y * w + x
        if outChannels == 3 {
          if color {
            p[o] = sample(y, x, 0) * scale
            p[plane + o] = sample(y, x, 1) * scale
            p[2 * plane + o] = sample(y, x, 2) * scale
          } else {
            let g = sample(y, x, 0) * scale
            p[o] = g
            p[plane + o] = g
            p[2 * plane + o] = g
          }
        } else {
          p[o] = color ? (0.299 * sample(y, x, 0) + 0.587 * sample(y, x, 1) + 0.114 * sample(y, x, 2)) * scale
            : sample(y, x, 0) * scale
        }
      }
    }
    return t
  }
}

/// EXIF orientation (1…8): how stored pixels map to displayed ones.
struct Orientation {
  let value: Int
  init(_ v: Int) { value = (1...8).contains(v) ? v : 1 }
  var swapsAxes: Bool { value >= 5 }

  /// Stored (x, y) of displayed (X, Y), for a stored image of w × h.
  @inline(__always) func stored(_ X: Int, _ Y: Int, _ w: Int, _ h: Int) -> (Int, Int) {
    switch value {
    case 2: (w - 1 - X, Y)
    case 3: (w - 1 - X, h - 1 - Y)
    case 4: (X, h - 1 - Y)
    case 5: (Y, X)
    case 6: (Y, h - 1 - X)
    case 7: (w - 1 - Y, h - 1 - X)
    case 8: (w - 1 - Y, X)
    default: (X, Y)
    }
  }

  /// The stored rectangle holding a displayed one.
  func storedRect(_ r: PixelRect, width w: Int, height h: Int) -> PixelRect {
    let a = stored(r.x, r.y, w, h), b = stored(r.x + r.width - 1, r.y + r.height - 1, w, h)
    return PixelRect(x: min(a.0, b.0), y: min(a.1, b.1), width: abs(a.0 - b.0) + 1, height: abs(a.1 - b.1) + 1)
  }

  /// (C, h, w) stored pixels → displayed.
  func apply(_ t: Tensor) -> Tensor {
    guard value != 1 else { return t }
    let c = t.shape[0], h = t.shape[1], w = t.shape[2]
    let (dh, dw) = swapsAxes ? (w, h) : (h, w)
    let out = Tensor(uninitialized: [c, dh, dw], category: .data)
    let src = t.floats, dst = out.floats
    for ch in 0..<c {
      for Y in 0..<dh {
        for X in 0..<dw {
          let (x, y) = stored(X, Y, w, h)
          dst[(ch * dh + Y) * dw + X] = src[(ch * h + y) * w + x]
        }
      }
    }
    return out
  }
}
