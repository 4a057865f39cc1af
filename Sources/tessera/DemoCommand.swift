import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner
import TesseraTraining

struct DemoCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demo",
    abstract: "The seed's warning, measured: train at full resolution vs on images shrunk to 112×112.",
    discussion: prose("""
      Generates (seeded, cached under $TESSERA_CACHE_DIR or ~/.cache/tessera, regenerated when missing
      or damaged) 1024×1024 textured images whose class is decided only by the shape of eight 16-pixel
      marks: crosses or hollow squares. Trains the fully convolutional fcn-large at full resolution
      within --budget (the plan is printed first), then the same net on the images shrunk to 112×112,
      and prints both held-out accuracies with time and peak memory. `--quick` runs a tiny version.
      """))

  @Option(help: "Epochs for each run.") var epochs = 6
  @Option(help: "Learning rate (cosine schedule, SGD momentum 0.9).") var lr: Float = 0.01
  @Option(help: "Memory budget for the full-resolution run.") var budget = "2GiB"
  @Option(help: "Seed of the data, initialisation and shuffles.") var seed: UInt64 = 7
  @Flag(help: "A tiny version (seconds), for tests.") var quick = false
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func run() throws {
    try global.apply()
    compute.apply()
    let data = quick ? DemoData(side: 128, mark: 10, train: 24, test: 12, seed: seed)
      : DemoData(side: 1024, mark: 16, marksPerImage: 8, train: 160, test: 80, seed: seed)
    let manifest = try data.prepare(progress: { note($0) })
    let ds = try ImageDataset.manifest(manifest)
    let trainIdx = ds.samples.indices.filter { ds.samples[$0].split == "train" }
    let testIdx = ds.samples.indices.filter { ds.samples[$0].split == "test" }
    let epochs = quick ? 2 : self.epochs
    let budgetBytes = try ByteSize.parse(budget)
    var results = [String: [String: Any]]()
    for (key, size, batch) in [("fullResolution", data.side, 4), ("downsampled", quick ? 32 : 112, 16)] {
      let net = Zoo.fcnLarge(classes: 2, bnMomentum: 0.9)
      let plan = try Planner.plan(net, name: "fcn-large", input: [3, size, size], batch: batch)
      // The step's peak plus the loader's batches in flight and the runtime's reserve.
      let predicted = plan.peakTrainingBytes
        + BatchLoader.bytesInFlight(batch: batch, imageShape: [3, size, size], prefetch: 2) + runtimeReserveBytes
      note("\(key): fcn-large on \(size)×\(size), batch \(batch), predicted peak \(ByteSize.format(predicted)) of \(ByteSize.format(budgetBytes))")
      guard predicted <= budgetBytes else {
        throw CLIError("the \(key) run needs \(ByteSize.format(predicted)), over the \(ByteSize.format(budgetBytes)) budget")
      }
      limitBlockCache(budget: budgetBytes, planned: predicted - runtimeReserveBytes)
      net.initializeParameters(seed: seed)
      let pipeline = ImagePipeline(size: size, policy: .fit, filter: .area)
      let train = BatchLoader(dataset: ds, indices: trainIdx, pipeline: pipeline, batchSize: batch)
      train.seed = seed
      train.prefetch = 2
      let test = BatchLoader(dataset: ds, indices: testIdx, pipeline: pipeline, batchSize: batch)
      test.shuffle = false
      let steps = max(1, epochs * ((trainIdx.count + batch - 1) / batch))
      let trainer = Trainer(model: net, optimizer: SGD(momentum: 0.9), schedule: .cosine(base: lr, total: steps), classes: 2)
      MemoryLedger.shared.resetPeak()
      let t0 = DispatchTime.now().uptimeNanoseconds
      try trainer.fit(train: train, epochs: epochs, callbacks: [ProgressPrinter(epochs: epochs)])
      let m = try trainer.evaluate(test)
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      results[key] = ["accuracy": m.accuracy, "seconds": seconds, "peakBytes": MemoryLedger.shared.peakBytes,
                      "inputSize": [3, size, size], "predictedPeakBytes": predicted, "batch": batch]
    }
    if json {
      printJSON(["fullResolution": results["fullResolution"]!, "downsampled": results["downsampled"]!,
                 "trainImages": trainIdx.count, "testImages": testIdx.count, "epochs": epochs, "data": data.folder.path,
                 "compute": compute.effective])
      return
    }
    print("\(trainIdx.count) training and \(testIdx.count) held-out \(data.side)×\(data.side) images; the class is the shape of \(data.marksPerImage) \(data.mark)-pixel marks"
          + (compute.effective == "bf16" ? "; convolutions in bf16 (--compute bf16)" : ""))
    print(pad("", 18) + pad("input", 14) + pad("accuracy", 10, right: true) + pad("time", 10, right: true) + pad("ledger peak", 14, right: true))
    for key in ["fullResolution", "downsampled"] {
      let r = results[key]!, s = (r["inputSize"] as! [Int])[1]
      print(pad(key == "fullResolution" ? "full resolution" : "shrunk (seed)", 18) + pad("\(s)×\(s)", 14)
            + pad(String(format: "%.1f %%", 100 * (r["accuracy"] as! Double)), 10, right: true)
            + pad(String(format: "%.0f s", r["seconds"] as! Double), 10, right: true)
            + pad(ByteSize.format(r["peakBytes"] as! Int), 14, right: true))
    }
  }
}
