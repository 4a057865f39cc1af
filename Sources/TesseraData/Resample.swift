import Foundation
import Tessera
import TesseraKernels

/// Resampling filters. All are separable and antialiased when shrinking (the filter is widened by
/// the shrink factor, as Pillow and libvips do), so a 4000-pixel image shrunk to 512 does not alias.
public enum ResampleFilter: String, Sendable, Codable, CaseIterable {
  /// Exact area averaging: each output pixel is the mean of the input area it covers (partial
  /// pixels weighted by their overlap). The right filter for shrinking.
  case area
  /// Triangle filter (bilinear interpolation when enlarging).
  case bilinear
  /// Lanczos, 3 lobes: the sharpest of the three.
  case lanczos3
}

public enum Resample {
  /// (C, H, W) → (C, height, width). Single-threaded: the loader runs one image per worker.
  public static func resize(_ t: Tensor, height: Int, width: Int, filter: ResampleFilter) -> Tensor {
    precondition(t.rank == 3 && height > 0 && width > 0, "resize takes (C, H, W) to a positive size")
    let c = t.shape[0], h = t.shape[1], w = t.shape[2]
    if h == height && w == width { return t.copy() }
    let wx = weights(input: w, output: width, filter: filter)
    let wy = weights(input: h, output: height, filter: filter)
    // Horizontal pass (C, H, width), then vertical (C, height, width).
    let mid = Tensor(uninitialized: [c, h, width], category: .data)
    let out = Tensor(uninitialized: [c, height, width], category: .data)
    let src = SendablePointer(t.floats), m = SendablePointer(mid.floats), dst = SendablePointer(out.floats)
    do {
      for row in 0..<(c * h) {
        let s = src.p + row * w, d = m.p + row * width
        for (ox, k) in wx.enumerated() {
          var acc: Float = 0
          for (j, wt) in k.weights.enumerated() { acc += s[k.start + j] * wt }
          d[ox] = acc
        }
      }
    }
    do {
      for row in 0..<(c * height) {
        let ch = row / height, oy = row % height
        let k = wy[oy], d = dst.p + row * width
        for x in 0..<width { d[x] = 0 }
        for (j, wt) in k.weights.enumerated() {
          let s = m.p + (ch * h + k.start + j) * width
          for x in 0..<width { d[x] += s[x] * wt }
        }
      }
    }
    return out
  }

  struct Kernel {
    var start: Int
    var weights: [Float]
  }

  /// Per output pixel: the first input pixel and the normalised weights of the inputs it reads.
  static func weights(input n: Int, output m: Int, filter: ResampleFilter) -> [Kernel] {
    let scale = Double(n) / Double(m)
    return (0..<m).map { i in
      var start: Int, w: [Double]
      switch filter {
      case .area:
        let a = Double(i) * scale, b = Double(i + 1) * scale
        start = max(0, Int(a.rounded(.down)))
        let end = min(n, Int(b.rounded(.up)))
        w = (start..<end).map { j in max(0, min(Double(j + 1), b) - max(Double(j), a)) }
        if scale < 1 {  // enlarging: nearest input pixel
          start = min(n - 1, Int(((Double(i) + 0.5) * scale).rounded(.down)))
          w = [1]
        }
      case .bilinear, .lanczos3:
        let support = (filter == .bilinear ? 1.0 : 3.0) * max(scale, 1)
        let center = (Double(i) + 0.5) * scale
        start = max(0, Int((center - support).rounded(.down)))
        let end = min(n, Int((center + support).rounded(.up)))
        let fs = max(scale, 1)
        w = (start..<end).map { j in value(filter, (Double(j) + 0.5 - center) / fs) }
      }
      // Trim zero weights at the ends and normalise.
      while w.count > 1, w.last == 0 { w.removeLast() }
      while w.count > 1, w.first == 0 { w.removeFirst(); start += 1 }
      let sum = w.reduce(0, +)
      return Kernel(start: start, weights: w.map { Float($0 / (sum == 0 ? 1 : sum)) })
    }
  }

  /// The filter's value at x (in input pixels of the unscaled filter).
  static func value(_ f: ResampleFilter, _ x: Double) -> Double {
    switch f {
    case .area: return abs(x) < 0.5 ? 1 : 0
    case .bilinear: return max(0, 1 - abs(x))
    case .lanczos3:
      if x == 0 { return 1 }
      guard abs(x) < 3 else { return 0 }
      let px = Double.pi * x
      return 3 * sin(px) * sin(px / 3) / (px * px)
    }
  }
}
