import Tessera
import TesseraKernels

/// Test data: a seeded synthetic image set: noise textures with one small bright square whose quadrant is
/// the class (4 classes). The same seed gives the same images.
public struct SyntheticMarks {
  public var size: Int, markSize: Int, channels: Int

  public init(size: Int, markSize: Int = 6, channels: Int = 3) {
    precondition(size >= 4 * markSize, "image too small for its mark")
    self.size = size
    self.markSize = markSize
    self.channels = channels
  }

  /// `count` images (N, C, size, size) and their labels in 0..<4.
  public func batch(count: Int, seed: UInt64) -> (images: Tensor, labels: [Int]) {
    var g = SeededGenerator(seed: seed)
    let t = Tensor(zeros: [count, channels, size, size], category: .data)
    let p = t.floats, plane = size * size
    var labels = [Int]()
    for n in 0..<count {
      let label = Int(g.next() % 4)
      labels.append(label)
      for c in 0..<channels {
        let base = p + (n * channels + c) * plane
        for i in 0..<plane { base[i] = g.nextUniform() * 0.6 - 0.3 }
      }
      let half = size / 2
      let y0 = (label / 2) * half + Int(g.next() % UInt64(half - markSize))
      let x0 = (label % 2) * half + Int(g.next() % UInt64(half - markSize))
      for c in 0..<channels {
        let base = p + (n * channels + c) * plane
        for y in y0..<(y0 + markSize) { for x in x0..<(x0 + markSize) { base[y * size + x] = 1.5 } }
      }
    }
    return (t, labels)
  }
}
