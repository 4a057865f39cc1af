import Tessera

/// Receptive field of one unit of a feature map, in input pixels, per axis: its size, the step
/// between neighbouring units (effective stride), and where the first unit's field is centred
/// (input index; negative or fractional when padding shifts it). `global` once a layer sees the
/// whole input (global pooling, or fully connected layers after a flatten).
public struct ReceptiveField: Equatable, Sendable, Codable {
  public var size: [Int]  // (height, width)
  public var stride: [Int]
  public var center: [Double]
  public var global: Bool

  public static let identity = ReceptiveField(size: [1, 1], stride: [1, 1], center: [0, 0], global: false)

  /// After a window of `kernel` (dilated) with `stride` and `padBefore` on each axis.
  func through(kernel: [Int], stride s: [Int], dilation: [Int] = [1, 1], padBefore: [Int]) -> ReceptiveField {
    guard !global else { return self }
    var out = self
    for a in 0..<2 {
      let k = dilation[a] * (kernel[a] - 1) + 1
      out.size[a] = size[a] + (k - 1) * stride[a]
      out.center[a] = center[a] + (Double(k - 1) / 2 - Double(padBefore[a])) * Double(stride[a])
      out.stride[a] = stride[a] * s[a]
    }
    return out
  }

  func union(_ o: ReceptiveField) -> ReceptiveField {
    if global || o.global { return ReceptiveField(size: size, stride: stride, center: center, global: true) }
    return ReceptiveField(size: zip(size, o.size).map { max($0, $1) }, stride: stride, center: center, global: false)
  }

  var asGlobal: ReceptiveField { ReceptiveField(size: size, stride: stride, center: center, global: true) }
}
