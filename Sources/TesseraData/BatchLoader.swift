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
  /// Native resolution, read crop by crop (`BatchLoader.streamFromFiles`): the image as a source;
  /// `images` is then empty.
  public var source: TileSource? = nil
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
  /// Images at native resolution, one per batch, each handed to the model as a file read crop by
  /// crop (`Batch.source`), never decoded whole: for streamed training on images larger than memory.
  public var streamFromFiles = false
  /// Data-parallel training: this rank's share of every batch (`Tessera.share`), the batches
  /// themselves formed as one process forms them. A batch smaller than the number of ranks is
  /// left out, and a batch whose files all failed comes back empty instead of being passed over,
  /// so every rank sees the same batches.
  public var shard: (rank: Int, ranks: Int)?
  /// Called (from worker threads) with one line per skipped file.
  public var onWarning: @Sendable (String) -> Void = { _ in }

  /// Bytes of batch tensors the loader can hold at once: `prefetch` decoded ahead plus the one in
  /// use, each `batch` images of `imageShape` (C, H, W) floats. Decode buffers are not included.
  public static func bytesInFlight(batch: Int, imageShape: [Int], prefetch: Int) -> Int {
    (prefetch + 1) * batch * imageShape.reduce(1, *) * 4
  }

  public init(dataset: ImageDataset, indices: [Int]? = nil, pipeline: ImagePipeline, batchSize: Int) {
    precondition(batchSize >= 1, "batch size must be positive")
    precondition(pipeline.policy != .none || batchSize == 1, "native-size images (policy none) batch one at a time")
    self.dataset = dataset
    self.indices = indices ?? Array(dataset.samples.indices)
    self.pipeline = pipeline
    self.batchSize = batchSize
  }

  /// A patch's rectangle in its level's pixels, inside the level.
  static func levelRect(_ r: PatchRegion, _ img: RegionImage) -> PixelRect {
    let ds = img.downsample(r.level), size = img.levelSizes[r.level]
    let x = min(Int(Double(r.x) / ds), size.width - 1), y = min(Int(Double(r.y) / ds), size.height - 1)
    let w: Int = max(1, min(size.width - x, Int((Double(r.width) / ds).rounded())))
    let h: Int = max(1, min(size.height - y, Int((Double(r.height) / ds).rounded())))
    return PixelRect(x: x, y: y, width: w, height: h)
  }

  /// Open region images (patch datasets read many patches of one file).
  private let openLock = NSLock()
  nonisolated(unsafe) private var open: [URL: RegionImage] = [:]

  func openImage(_ url: URL) throws -> RegionImage {
    if let i = openLock.withLock({ open[url] }) { return i }
    let i = try RegionImages.open(url, reader: pipeline.reader)
    openLock.withLock {
      if open.count > 64 { open.removeAll() }
      open[url] = i
    }
    return i
  }

  /// The sample order of an epoch (the same for the same seed and epoch).
  public func order(epoch: Int) -> [Int] {
    var o = indices
    guard shuffle, o.count > 1 else { return o }
    var rng = SeededGenerator(seed: seed &+ UInt64(epoch) &* 0xD1B5_4A32_D192_ED03)
    for i in stride(from: o.count - 1, to: 0, by: -1) { o.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
    return o
  }

  /// The batches of epoch `e`, starting at batch `from` (a resumed epoch skips what it trained).
  public func epoch(_ e: Int, from: Int = 0) -> EpochIterator {
    let o = order(epoch: e)
    var groups = stride(from: 0, to: o.count, by: batchSize).map { Array(o[$0..<min(o.count, $0 + batchSize)]) }
    if dropLast, let last = groups.last, last.count < batchSize { groups.removeLast() }
    if let (r, n) = shard {
      groups = groups.filter { $0.count >= n }.map { Array($0[share(of: $0.count, rank: r, ranks: n)]) }
    }
    return EpochIterator(loader: self, epoch: e, groups: Array(groups.dropFirst(from)))
  }

  /// One image, prepared and augmented with its own generator.
  func load(_ sample: Int, epoch: Int) throws -> Tensor {
    let e: UInt64 = UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15
    let s: UInt64 = UInt64(sample) &* 0xBF58_476D_1CE4_E5B9
    var rng = SeededGenerator(seed: seed ^ e ^ s)
    func pick(_ m: Int) -> Int { m > 0 ? Int(rng.next() % UInt64(m + 1)) : 0 }
    let crop: ((Int, Int) -> (Int, Int))?
    if augmentation == nil { crop = nil } else { crop = { mx, my in (pick(mx), pick(my)) } }
    let item = dataset.samples[sample]
    let p: Tensor
    if let r = item.region {
      // A patch: read at its level from the (cached) open file, then brought to the pipeline's size.
      let img = try openImage(item.url)
      p = pipeline.resize(try img.read(level: r.level, region: Self.levelRect(r, img), channels: pipeline.channels))
    } else {
      p = try pipeline.prepare(item.url, cropOrigin: crop).pixels
    }
    guard let aug = augmentation else { return p }
    return aug.apply(p, &rng)
  }
}

/// The batches of one epoch, in order. Workers take images one at a time (so even one batch is
/// decoded in parallel) from at most `prefetch` batches ahead of the consumer, writing each into its
/// slot of the batch tensor. `next()` blocks until the next batch is complete; dropping the iterator
/// stops the workers.
public final class EpochIterator: @unchecked Sendable {
  let loader: BatchLoader
  let epoch: Int
  let groups: [[Int]]
  private let cond = NSCondition()
  /// Per batch in flight: its tensor (allocated with its first image), which slots hold an image,
  /// how many images are finished (loaded or skipped), and the first error under `.fail`.
  private final class Pending {
    var tensor: Tensor?
    var filled: [Bool]
    var finished = 0
    var error: Error?
    init(_ n: Int) { filled = [Bool](repeating: false, count: n) }
  }
  private var pending: [Int: Pending] = [:]
  private var nextBatch = 0, nextSlot = 0, nextToTake = 0
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

  /// The next file as a source (streamFromFiles); a file that cannot be opened follows the policy.
  private func nextFile() throws -> Batch? {
    if !started {
      started = true
      startTime = Date().timeIntervalSince1970
    }
    while nextToTake < groups.count {
      let b = nextToTake
      nextToTake += 1
      let sample = groups[b][0], s = loader.dataset.samples[sample]
      do {
        let src = try RegionTileSource(s.url, channels: loader.pipeline.channels)
        imagesDelivered += 1
        return Batch(images: Tensor(zeros: [1, loader.pipeline.channels, 0, 0]), labels: [s.label], urls: [s.url], index: b, source: src)
      } catch {
        if loader.badFilePolicy == .fail { throw error }
        skipped.append((s.url.path, "\(error)"))
        loader.onWarning("skipping \(error)")
      }
    }
    return nil
  }
  /// Images in this epoch's batches.
  public var imageCount: Int { groups.reduce(0) { $0 + $1.count } }

  /// Images per second delivered since the first `next()`.
  public var imagesPerSecond: Double {
    let dt = Date().timeIntervalSince1970 - startTime
    return dt > 0 ? Double(imagesDelivered) / dt : 0
  }

  private func startWorkers() {
    started = true
    startTime = Date().timeIntervalSince1970
    let images = groups.reduce(0) { $0 + $1.count }
    for _ in 0..<max(1, min(loader.workers, images)) {
      let t = Thread { [weak self] in self?.work() }
      t.stackSize = 1 << 20
      t.start()
    }
  }

  private func work() {
    while true {
      cond.lock()
      while !cancelled && nextBatch < groups.count && nextBatch >= nextToTake + loader.prefetch { cond.wait() }
      if cancelled || nextBatch >= groups.count {
        cond.unlock()
        return
      }
      let b = nextBatch, slot = nextSlot
      if pending[b] == nil { pending[b] = Pending(groups[b].count) }
      let job = pending[b]!
      nextSlot += 1
      if nextSlot == groups[b].count {
        nextBatch += 1
        nextSlot = 0
      }
      cond.unlock()

      let sample = groups[b][slot]
      let result = Result { try loader.load(sample, epoch: epoch) }
      cond.lock()
      switch result {
      case .success(let image):
        if job.tensor == nil {
          job.tensor = Tensor(uninitialized: [groups[b].count] + image.shape, category: .data)
        }
        job.tensor!.floats.advanced(by: slot * image.count).update(from: image.floats, count: image.count)
        job.filled[slot] = true
      case .failure(let error):
        if loader.badFilePolicy == .fail {
          job.error = job.error ?? error
        } else {
          let url = loader.dataset.samples[sample].url
          skipped.append((url.path, "\(error)"))
          loader.onWarning("skipping \(error)")
        }
      }
      job.finished += 1
      cond.broadcast()
      cond.unlock()
    }
  }

  /// The next batch of the epoch, or nil at its end. Throws a bad file's error under `.fail`.
  public func next() throws -> Batch? {
    if loader.streamFromFiles { return try nextFile() }
    cond.lock()
    defer { cond.unlock() }
    if !started { startWorkers() }
    while nextToTake < groups.count {
      let b = nextToTake
      while pending[b] == nil || pending[b]!.finished < groups[b].count { cond.wait() }
      let job = pending.removeValue(forKey: b)!
      nextToTake += 1
      cond.broadcast()
      if let e = job.error {
        cancelled = true
        throw e
      }
      guard let t = job.tensor else {  // every file of this batch was skipped
        if loader.shard == nil { continue }
        return Batch(images: Tensor(zeros: [0]), labels: [], urls: [], index: b)
      }
      let kept = job.filled.indices.filter { job.filled[$0] }
      let per = t.count / groups[b].count
      var images = t
      if kept.count < groups[b].count {
        images = Tensor(uninitialized: [kept.count] + Array(t.shape.dropFirst()), category: .data)
        for (i, k) in kept.enumerated() { (images.floats + i * per).update(from: t.floats + k * per, count: per) }
      }
      let samples = kept.map { loader.dataset.samples[groups[b][$0]] }
      imagesDelivered += kept.count
      return Batch(images: images, labels: samples.map(\.label), urls: samples.map(\.url), index: b)
    }
    return nil
  }
}
