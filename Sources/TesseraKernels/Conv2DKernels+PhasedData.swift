import Foundation

/// Backward-data of a strided convolution as stride-1 convolutions, one per phase of dx.
///
/// dx[c][iy][ix] = Σ dy[k][oy][ox] · w[k][c][ky][kx] over iy = sh·oy − pt + ky (and the same in x).
/// The input rows of one phase iy ≡ ry (mod sh) take only the taps ky ≡ ry + pt (mod sh); those sit
/// sh apart, so row a of the phase reads dy rows a + offset(ky) that are consecutive: a stride-1
/// correlation of dy (K channels) with a sub-kernel of those taps, channels swapped. Each phase
/// runs through `forward` (bf16: `--compute bf16` is when this path is taken) into a buffer the
/// phase's size, then goes to its rows and columns of dx.
extension Conv2DKernels {
  enum PhasedData {
    /// Under `--compute bf16` only: there the phases take the bf16 forward kernel (conv1 backward of
    /// fcn-large at 1024² b4: 36 ms against 38–44 ms with the fp32 scatter). In fp32 the phases'
    /// small convolutions, their buffers and the copy measured no faster than the scatter kernel
    /// (41–63 against 55–58 GFLOP/s at 16→32 channels, 84–101 against 95–105 at 64→128).
    /// `TESSERA_PHASED_DATA=0` turns it off.
    static func applies(_ g: ConvGeometry) -> Bool { enabled && BF16.applies(g) }
    nonisolated(unsafe) static var enabled = ProcessInfo.processInfo.environment["TESSERA_PHASED_DATA"] != "0"

    /// One phase (ry, rx) of dx: its rows and columns, and the stride-1 convolution that makes
    /// them (nil when no tap reaches the phase: it is zero).
    struct Phase {
      let ry: Int, rx: Int, rows: Int, cols: Int
      let kys: [Int], kxs: [Int]
      let geometry: ConvGeometry?
    }

    /// The phases of g's backward-data, or nil when this path does not apply: stride 1 (the
    /// transposed forward does it), dilation, groups, or a phase whose first dy row or column
    /// would lie past the map's start (it would need cropping).
    static func phases(_ g: ConvGeometry) -> [Phase]? {
      guard g.strideH > 1 || g.strideW > 1, g.dilationH == 1, g.dilationW == 1, g.groups == 1 else { return nil }
      var out = [Phase]()
      for ry in 0..<min(g.strideH, g.inHeight) {
        for rx in 0..<min(g.strideW, g.inWidth) {
          let rows = (g.inHeight - ry + g.strideH - 1) / g.strideH, cols = (g.inWidth - rx + g.strideW - 1) / g.strideW
          let kys = reaching(ry, kernel: g.kernelH, pad: g.padTop, stride: g.strideH)
          let kxs = reaching(rx, kernel: g.kernelW, pad: g.padLeft, stride: g.strideW)
          guard let ky0 = kys.first, let kx0 = kxs.first else {
            out.append(Phase(ry: ry, rx: rx, rows: rows, cols: cols, kys: [], kxs: [], geometry: nil))
            continue
          }
          let padTop = -(ry + g.padTop - ky0) / g.strideH, padLeft = -(rx + g.padLeft - kx0) / g.strideW
          guard padTop >= 0, padLeft >= 0 else { return nil }
          // Enough padding below and right for `rows` × `cols` outputs (more are made and dropped).
          let padBottom = max(0, rows - 1 + kys.count - g.outHeight - padTop)
          let padRight = max(0, cols - 1 + kxs.count - g.outWidth - padLeft)
          let pg = ConvGeometry(batch: g.batch, inChannels: g.outChannels, inHeight: g.outHeight, inWidth: g.outWidth,
                                outChannels: g.inChannels, kernelH: kys.count, kernelW: kxs.count,
                                padTop: padTop, padLeft: padLeft, padBottom: padBottom, padRight: padRight)
          guard pg.problem == nil, pg.outHeight >= rows, pg.outWidth >= cols else { return nil }
          out.append(Phase(ry: ry, rx: rx, rows: rows, cols: cols, kys: kys, kxs: kxs, geometry: pg))
        }
      }
      return out
    }

    /// The taps k that reach input positions ≡ r (mod stride), r + pad − k ≡ 0, in descending
    /// order: their dy offsets (r + pad − k) / stride ascend by one.
    static func reaching(_ r: Int, kernel: Int, pad: Int, stride: Int) -> [Int] {
      (0..<kernel).reversed().filter { ((r + pad - $0) % stride + stride) % stride == 0 }
    }

    /// Workspace bytes at the peak: the phases run one after another, each holding its sub-kernel,
    /// its output and `forward`'s workspace.
    static func workspaceBytes(_ phases: [Phase], threads: Int) -> Int {
      phases.compactMap(\.geometry).map {
        4 * ($0.weightCount + $0.outputCount) + forwardWorkspaceBytes($0, threads: threads)
      }.max() ?? 0
    }

    static func backwardData(
      _ g: ConvGeometry, _ phases: [Phase], dy: UnsafePointer<Float>, w: UnsafePointer<Float>,
      dx: UnsafeMutablePointer<Float>
    ) {
      let C = g.inChannels, K = g.outChannels, T = g.taps, H = g.inHeight, W = g.inWidth
      let out = SendablePointer(dx)
      for ph in phases {
        guard let pg = ph.geometry else {
          Parallel.forRanges(g.batch * C) { _, planes in
            for plane in planes {
              let d = out.p + plane * H * W
              for a in 0..<ph.rows { for b in 0..<ph.cols { d[(ph.ry + a * g.strideH) * W + ph.rx + b * g.strideW] = 0 } }
            }
          }
          continue
        }
        // Sub-kernel [c][k][j][i] = w[k][c][kys[j]][kxs[i]].
        let sub = Buffer(floats: pg.weightCount, zeroed: false)
        let kh = ph.kys.count, kw = ph.kxs.count
        for c in 0..<C {
          for k in 0..<K {
            let src = w + k * T + c * g.kernelH * g.kernelW, dst = sub.floats + (c * K + k) * kh * kw
            for j in 0..<kh { for i in 0..<kw { dst[j * kw + i] = src[ph.kys[j] * g.kernelW + ph.kxs[i]] } }
          }
        }
        let y = Buffer(floats: pg.outputCount, zeroed: false)
        forward(pg, x: dy, w: sub.floats, bias: nil, y: y.floats)
        let src = UnsafePointer(y.floats), ho = pg.outHeight, wo = pg.outWidth
        Parallel.forRanges(g.batch * C) { _, planes in
          for plane in planes {
            let s = src + plane * ho * wo, d = out.p + plane * H * W + ph.ry * W + ph.rx
            for a in 0..<ph.rows {
              let sa = s + a * wo, da = d + a * g.strideH * W
              for b in 0..<ph.cols { da[b * g.strideW] = sa[b] }
            }
          }
        }
        withExtendedLifetime((sub, y)) {}
      }
    }
  }
}
