/// Everything a 2-D convolution's kernels need to know about its shapes. Tensors are NCHW,
/// weights (outChannels, inChannels / groups, kernelH, kernelW).
public struct ConvGeometry: Sendable, Equatable, CustomStringConvertible {
  public var batch: Int
  public var inChannels: Int, inHeight: Int, inWidth: Int
  public var outChannels: Int
  public var kernelH: Int, kernelW: Int
  public var strideH: Int = 1, strideW: Int = 1
  public var dilationH: Int = 1, dilationW: Int = 1
  public var padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0
  public var groups: Int = 1

  public init(
    batch: Int, inChannels: Int, inHeight: Int, inWidth: Int, outChannels: Int,
    kernelH: Int, kernelW: Int, strideH: Int = 1, strideW: Int = 1, dilationH: Int = 1, dilationW: Int = 1,
    padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0, groups: Int = 1
  ) {
    self.batch = batch
    self.inChannels = inChannels
    self.inHeight = inHeight
    self.inWidth = inWidth
    self.outChannels = outChannels
    self.kernelH = kernelH
    self.kernelW = kernelW
    self.strideH = strideH
    self.strideW = strideW
    self.dilationH = dilationH
    self.dilationW = dilationW
    self.padTop = padTop
    self.padLeft = padLeft
    self.padBottom = padBottom
    self.padRight = padRight
    self.groups = groups
  }

  public var outHeight: Int { (inHeight + padTop + padBottom - dilationH * (kernelH - 1) - 1) / strideH + 1 }
  public var outWidth: Int { (inWidth + padLeft + padRight - dilationW * (kernelW - 1) - 1) / strideW + 1 }
  /// Input channels per group.
  /// The input's size with its padding (the kernels' zero-padded copy).
  public var paddedHeight: Int { inHeight + padTop + padBottom }
  public var paddedWidth: Int { inWidth + padLeft + padRight }
  public var groupInChannels: Int { inChannels / groups }
  /// Output channels per group.
  public var groupOutChannels: Int { outChannels / groups }
  /// Weight values per output channel (inChannels / groups × kernelH × kernelW).
  public var taps: Int { groupInChannels * kernelH * kernelW }
  public var weightCount: Int { outChannels * taps }
  public var inputCount: Int { batch * inChannels * inHeight * inWidth }
  public var outputCount: Int { batch * outChannels * outHeight * outWidth }
  /// Multiply-accumulates of the forward pass.
  public var macs: Int { batch * outChannels * outHeight * outWidth * taps }

  /// A reason the geometry is impossible, or nil when it is valid.
  public var problem: String? {
    if batch < 1 || inChannels < 1 || inHeight < 1 || inWidth < 1 || outChannels < 1 { return "sizes must be positive" }
    if kernelH < 1 || kernelW < 1 { return "kernel size must be positive" }
    if strideH < 1 || strideW < 1 { return "stride must be positive" }
    if dilationH < 1 || dilationW < 1 { return "dilation must be positive" }
    if min(padTop, padLeft, padBottom, padRight) < 0 { return "padding must not be negative" }
    if groups < 1 || inChannels % groups != 0 || outChannels % groups != 0 {
      return "groups (\(groups)) must divide input channels (\(inChannels)) and output channels (\(outChannels))"
    }
    if inHeight + padTop + padBottom < dilationH * (kernelH - 1) + 1
      || inWidth + padLeft + padRight < dilationW * (kernelW - 1) + 1
    {
      return "the \(kernelH)×\(kernelW) kernel (dilation \(dilationH)×\(dilationW)) does not fit the padded "
        + "\(inHeight)×\(inWidth) input"
    }
    return nil
  }

  public var description: String {
    "conv \(inChannels)→\(outChannels) k\(kernelH)×\(kernelW) s\(strideH)×\(strideW) d\(dilationH)×\(dilationW) "
      + "pad(\(padTop),\(padLeft),\(padBottom),\(padRight)) g\(groups) on \(batch)×\(inHeight)×\(inWidth)"
  }

  /// TensorFlow's `same` padding for one axis: out = ceil(in / stride), the odd extra pad at the end.
  public static func samePadding(input: Int, kernel: Int, stride: Int, dilation: Int) -> (before: Int, after: Int) {
    let out = (input + stride - 1) / stride
    let total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - input, 0)
    return (total / 2, total - total / 2)
  }
}
