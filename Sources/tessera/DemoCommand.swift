import ArgumentParser
import Foundation
import Tessera
import TesseraKernels

struct DemoCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demo",
    abstract: "Train fcn-large on a built-in synthetic image set and report test accuracy.",
    discussion: """
      Generates (from a seed) images of noise with one small bright mark whose quadrant is the class,
      trains the fully convolutional reference model fcn-large on them with SGD + momentum, and
      evaluates on held-out images. A smoke run of the engine: the large-image demo (full resolution
      against a downsampled baseline) comes with the training issue.
      """)

  @Option(help: "Image side in pixels.") var size = 128
  @Option(help: "Training images.") var trainImages = 96
  @Option(help: "Test images.") var testImages = 48
  @Option(help: "Epochs.") var epochs = 6
  @Option(help: "Batch size.") var batch = 8
  @Option(help: "Learning rate.") var lr: Float = 0.05
  @Option(help: "Seed for data, initialisation and shuffling.") var seed: UInt64 = 42
  @Flag(help: "A very short run (for tests).") var quick = false
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func run() throws {
    try global.apply()
    let size = quick ? 64 : self.size, nTrain = quick ? 32 : trainImages, nTest = quick ? 16 : testImages
    let epochs = quick ? 2 : self.epochs
    guard size >= 32, nTrain >= batch, nTest >= 1, batch >= 1, epochs >= 1 else {
      throw ValidationError("need --size ≥ 32, --train-images ≥ --batch ≥ 1, --test-images ≥ 1, --epochs ≥ 1")
    }
    let data = SyntheticMarks(size: size, markSize: max(4, size / 16))
    let train = data.batch(count: nTrain, seed: seed), test = data.batch(count: nTest, seed: seed &+ 1)
    let net = Zoo.fcnLarge(classes: 4)
    net.initializeParameters(seed: seed)
    let opt = SGD(momentum: 0.9)
    let schedule = LRSchedule.cosine(base: lr, total: epochs * (nTrain / batch))
    var rng = SeededGenerator(seed: seed &+ 2)
    let t0 = Date()
    MemoryLedger.shared.resetPeak()
    var history = [[String: Any]]()
    let plane = 3 * size * size
    var stepIndex = 0
    for epoch in 1...epochs {
      var order = Array(0..<nTrain)
      order.shuffle(using: &rng)
      var lossSum = 0.0, correct = 0, seen = 0
      for b in 0..<(nTrain / batch) {
        let idx = Array(order[(b * batch)..<((b + 1) * batch)])
        let x = Tensor(uninitialized: [batch, 3, size, size], category: .data)
        for (j, i) in idx.enumerated() { (x.floats + j * plane).update(from: train.images.floats + i * plane, count: plane) }
        let labels = idx.map { train.labels[$0] }
        let r = try net.trainingStep(input: x, labels: labels, optimizer: opt, lr: schedule.learningRate(at: stepIndex))
        stepIndex += 1
        lossSum += Double(r.loss) * Double(batch)
        correct += zip(r.predictions, labels).filter { $0 == $1 }.count
        seen += batch
      }
      let testAcc = try accuracy(net, test.images, test.labels, batch: batch)
      let row: [String: Any] = ["epoch": epoch, "loss": lossSum / Double(seen),
                                "train_accuracy": Double(correct) / Double(seen), "test_accuracy": testAcc]
      history.append(row)
      if !json {
        note(String(format: "epoch %d/%d  loss %.4f  train acc %.3f  test acc %.3f  (%.1f s)", epoch, epochs,
                    lossSum / Double(seen), Double(correct) / Double(seen), testAcc, Date().timeIntervalSince(t0)))
      }
    }
    let final = history.last!
    let out: [String: Any] = [
      "model": "fcn-large", "inputSize": [3, size, size], "trainImages": nTrain, "testImages": nTest,
      "epochs": epochs, "accuracy": final["test_accuracy"]!, "seconds": Date().timeIntervalSince(t0),
      "peakBytes": MemoryLedger.shared.peakBytes, "history": history,
    ]
    if json { printJSON(out) } else {
      print(String(format: "fcn-large on %d×%d synthetic marks: test accuracy %.1f%% after %d epochs (%.1f s, ledger peak %@)",
                   size, size, 100 * (final["test_accuracy"] as! Double), epochs, Date().timeIntervalSince(t0),
                   mib(MemoryLedger.shared.peakBytes)))
    }
  }

  func accuracy(_ net: Sequential, _ images: Tensor, _ labels: [Int], batch: Int) throws -> Double {
    let n = labels.count, plane = images.count / n
    var correct = 0, i = 0
    while i < n {
      let b = min(batch, n - i)
      let x = Tensor(uninitialized: [b] + Array(images.shape.dropFirst()), category: .data)
      x.floats.update(from: images.floats + i * plane, count: b * plane)
      let logits = try net.predict(x)
      let k = logits.shape[1]
      for j in 0..<b {
        let row = (0..<k).map { logits.floats[j * k + $0] }
        if row.indices.max(by: { row[$0] < row[$1] }) == labels[i + j] { correct += 1 }
      }
      i += b
    }
    return Double(correct) / Double(n)
  }
}
