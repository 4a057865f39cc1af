import Foundation
import Tessera
import TesseraKernels

/// What the loader does with a file it cannot read.
public enum BadFilePolicy: String, Sendable, CaseIterable {
  /// Leave it out of its batch, warn once with the file and the reason, count it.
  case skip
  /// Stop the epoch with the file's error.
  case fail
}

/// Seeded augmentation, applied per image with a generator derived from (seed, epoch, sample), so
/// results do not depend on which worker thread decoded the image.
public struct Augmentation: Sendable {
  public var horizontalFlip: Bool
  public var verticalFlip: Bool
  /// Rotate by a random multiple of 90° (square images keep their shape; others only by 180°).
  public var rotate90: Bool
  /// Brightness jitter: add a uniform value in ±brightness.
  public var brightness: Float
  /// Contrast jitter: scale around the image mean by a factor in 1 ± contrast.
  public var contrast: Float

  public init(horizontalFlip: Bool = true, verticalFlip: Bool = false, rotate90: Bool = false,
              brightness: Float = 0, contrast: Float = 0) {
    self.horizontalFlip = horizontalFlip
    self.verticalFlip = verticalFlip
    self.rotate90 = rotate90
    self.brightness = brightness
    self.contrast = contrast
  }

  /// (C, H, W) → augmented copy.
  public func apply(_ t: Tensor, _ rng: inout SeededGenerator) -> Tensor {
    let c = t.shape[0], h = t.shape[1], w = t.shape[2]
    let flipX = horizontalFlip && rng.next() & 1 == 1
    let flipY = verticalFlip && rng.next() & 1 == 1
    var turns = rotate90 ? Int(rng.next() % 4) : 0
    if h != w && turns % 2 == 1 { turns = 2 }  // a quarter turn would change the shape
    let bright = brightness > 0 ? (rng.nextUniform() * 2 - 1) * brightness : 0
    let contr = contrast > 0 ? 1 + (rng.nextUniform() * 2 - 1) * contrast : 1
    let out = Tensor(uninitialized: t.shape, category: .data)
    let src = t.floats, dst = out.floats
    for ch in 0..<c {
      var mean: Float = 0
      if contr != 1 {
        for i in 0..<(h * w) { mean += src[ch * h * w + i] }
        mean /= Float(h * w)
      }
      for y in 0..<h {
        for x in 0..<w {
          // Destination (x, y) reads source (sx, sy): flips, then `turns` quarter turns.
          var sx = flipX ? w - 1 - x : x, sy = flipY ? h - 1 - y : y
          for _ in 0..<turns { (sx, sy) = (sy, w - 1 - sx) }
          let v = src[(ch * h + sy) * w + sx]
          dst[(ch * h + y) * w + x] = (v - mean) * contr + mean + bright
        }
      }
    }
    return out
  }
}

/// A batch of prepared images: (N, C, H, W) with labels.
public struct Batch {
  public var images: Tensor
  public var labels: [Int]
  public var urls: [URL]
  /// Position of the batch in its epoch.
  public var index: Int
}

/// Streams batches: worker threads decode, resize and augment while the model computes, with at most
/// `prefetch` batches in flight (decoded or being decoded, not yet taken); each epoch's order is a
/// seeded shuffle; bad files follow `badFilePolicy`. Batch tensors are counted in the memory ledger
/// (category `.data`).
public final class BatchLoader: @unchecked Sendable {
  public let dataset: ImageDataset
  public let indices: [Int]
  public let pipeline: ImagePipeline
  public let batchSize: Int
  public var shuffle = true
  public var dropLast = false
  public var seed: UInt64 = 0
  public var workers = 2
  public var prefetch = 2
  public var badFilePolicy = BadFilePolicy.skip
  public var augmentation: Augmentation?
  /// Called (from worker threads) with one line per skipped file.
  public var onWarning: @Sendable (String) -> Void = { _ in }

  public init(dataset: ImageDataset, indices: [Int]? = nil, pipeline: ImagePipeline, batchSize: Int) {
    precondition(batchSize >= 1, "batch size must be positive")
    precondition(pipeline.policy != .none || batchSize == 1, "native-size images (policy none) batch one at a time")
    self.dataset = dataset
    self.indices = indices ?? Array(dataset.samples.indices)
    self.pipeline = pipeline
    self.batchSize = batchSize
  }

  /// The sample order of an epoch (the same for the same seed and epoch).
  public func order(epoch: Int) -> [Int] {
    var o = indices
    guard shuffle, o.count > 1 else { return o }
    var rng = SeededGenerator(seed: seed &+ UInt64(epoch) &* 0xD1B5_4A32_D192_ED03)
    for i in stride(from: o.count - 1, to: 0, by: -1) { o.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
    return o
  }

  public func epoch(_ e: Int) -> EpochIterator {
    let o = order(epoch: e)
    var groups = stride(from: 0, to: o.count, by: batchSize).map { Array(o[$0..<min(o.count, $0 + batchSize)]) }
    if dropLast, let last = groups.last, last.count < batchSize { groups.removeLast() }
    return EpochIterator(loader: self, epoch: e, groups: groups)
  }

  /// One image, prepared and augmented with its own generator.
  func load(_ sample: Int, epoch: Int) throws -> Tensor {
    let e: UInt64 = UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15
    let s: UInt64 = UInt64(sample) &* 0xBF58_476D_1CE4_E5B9
    var rng = SeededGenerator(seed: seed ^ e ^ s)
    func pick(_ m: Int) -> Int { m > 0 ? Int(rng.next() % UInt64(m + 1)) : 0 }
    let crop: ((Int, Int) -> (Int, Int))?
    if augmentation == nil { crop = nil } else { crop = { mx, my in (pick(mx), pick(my)) } }
    let p = try pipeline.prepare(dataset.samples[sample].url, cropOrigin: crop).pixels
    guard let aug = augmentation else { return p }
    return aug.apply(p, &rng)
  }
}

/// The batches of one epoch, in order. `next()` blocks until the next batch is ready; dropping the
/// iterator stops its workers.
public final class EpochIterator: @unchecked Sendable {
  let loader: BatchLoader
  let epoch: Int
  let groups: [[Int]]
  private let cond = NSCondition()
  private var results: [Int: Result<Batch?, Error>] = [:]
  private var nextToStart = 0, nextToTake = 0, inFlight = 0
  private var cancelled = false
  private var started = false
  private var startTime = 0.0
  public private(set) var imagesDelivered = 0
  /// (file, reason) of every file skipped so far this epoch.
  public private(set) var skipped: [(path: String, reason: String)] = []

  init(loader: BatchLoader, epoch: Int, groups: [[Int]]) {
    self.loader = loader
    self.epoch = epoch
    self.groups = groups
  }

  deinit {
    cond.lock()
    cancelled = true
    cond.broadcast()
    cond.unlock()
  }

  public var batchCount: Int { groups.count }

  /// Images per second delivered since the first `next()`.
  public var imagesPerSecond: Double {
    let dt = Date().timeIntervalSince1970 - startTime
    return dt > 0 ? Double(imagesDelivered) / dt : 0
  }

  private func startWorkers() {
    started = true
    startTime = Date().timeIntervalSince1970
    for _ in 0..<max(1, min(loader.workers, groups.count)) {
      let t = Thread { [weak self] in self?.work() }
      t.stackSize = 1 << 20
      t.start()
    }
  }

  private func work() {
    while true {
      cond.lock()
      while inFlight >= loader.prefetch && !cancelled { cond.wait() }
      if cancelled || nextToStart >= groups.count {
        cond.unlock()
        return
      }
      let b = nextToStart
      nextToStart += 1
      inFlight += 1
      cond.unlock()
      let r = Result { try build(b) }
      cond.lock()
      results[b] = r
      cond.broadcast()
      cond.unlock()
    }
  }

  private func build(_ b: Int) throws -> Batch? {
    var images = [Tensor](), labels = [Int](), urls = [URL]()
    for s in groups[b] {
      let sample = loader.dataset.samples[s]
      do {
        images.append(try loader.load(s, epoch: epoch))
        labels.append(sample.label)
        urls.append(sample.url)
      } catch {
        guard loader.badFilePolicy == .skip else { throw error }
        cond.lock()
        skipped.append((sample.url.path, "\(error)"))
        cond.unlock()
        loader.onWarning("skipping \(error)")
      }
    }
    guard let first = images.first else { return nil }
    let x = Tensor(uninitialized: [images.count] + first.shape, category: .data)
    for (i, im) in images.enumerated() { (x.floats + i * first.count).update(from: im.floats, count: first.count) }
    return Batch(images: x, labels: labels, urls: urls, index: b)
  }

  /// The next batch of the epoch, or nil at its end. Throws a bad file's error under `.fail`.
  public func next() throws -> Batch? {
    cond.lock()
    defer { cond.unlock() }
    if !started { startWorkers() }
    while nextToTake < groups.count {
      while results[nextToTake] == nil { cond.wait() }
      let r = results.removeValue(forKey: nextToTake)!
      nextToTake += 1
      inFlight -= 1
      cond.broadcast()
      switch r {
      case .failure(let e):
        cancelled = true
        throw e
      case .success(let batch?):
        imagesDelivered += batch.labels.count
        return batch
      case .success(nil):
        continue  // every file of this batch was skipped
      }
    }
    return nil
  }
}
