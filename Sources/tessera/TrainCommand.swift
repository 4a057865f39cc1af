import ArgumentParser
import Foundation
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner
import TesseraTraining

struct TrainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a model on a folder of images (or a split manifest), within a memory budget.",
    discussion: """
      Prints the plan first (bytes per image, the batch, predicted peak against --budget) and refuses,
      with the nearest settings that fit, when it cannot fit. Images stream from disk each epoch
      (decoded on --workers threads); the held-out split is evaluated after every epoch. The run
      folder gets config.json, metrics.jsonl, last.safetensors / best.safetensors (atomic) and
      state.json; --resume continues from last.safetensors with the same next batches.
      """)

  @Option(help: "Image folder DIR/<class>/<images> (split --test by the seed).") var data: String?
  @Option(help: "A CSV manifest path,label,split (from `tessera split`).") var manifest: String?
  @Option(help: "Zoo model or spec file.") var model = "fcn-large"
  @Option(help: "Input side in pixels.") var imageSize = 256
  @Option(help: "fit, fill or stretch.") var policy = "fit"
  @Option(help: "Images per batch, or auto (largest that fits --budget).") var batch = "8"
  @Option(help: "Memory budget, e.g. 4GiB.") var budget: String?
  @Option(help: "Epochs.") var epochs = 10
  @Option(help: "sgd, momentum or adamw.") var optimizer = "momentum"
  @Option(help: "Learning rate.") var lr: Float = 0.01
  @Option(help: "constant, cosine or step (×0.1 every third of the run).") var schedule = "cosine"
  @Option(help: "Linear warm-up steps.") var warmup = 0
  @Option(help: "Gradient accumulation: micro-batches per update.") var accumulate = 1
  @Option(help: "Gradient checkpointing: none, sqrt, all or N (default none; with --batch auto the planner chooses).")
  var checkpointing: String?
  @Option(help: "Storage of what a step keeps: fp32, fp16 or bf16 (default fp32; with --batch auto the planner chooses).")
  var precision: String?
  @OptionGroup var streaming: StreamingOptions
  @Option(help: "Held-out share when splitting --data.") var test = 0.3
  @Option(help: "Seed of the split, initialisation, shuffles and augmentation.") var seed: UInt64 = 0
  @Option(help: "Loader threads.") var workers = 2
  @Flag(help: "Flips and brightness/contrast jitter; random crops with --policy fill.") var augment = false
  @Option(help: "skip or fail.") var onBadFile = "skip"
  @Option(help: "Run folder.") var out: String
  @Flag(help: "Continue from <out>/last.safetensors.") var resume = false
  @Flag(help: "Print a JSON summary at the end.") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws {
    guard (data == nil) != (manifest == nil) else { throw ValidationError("give --data DIR or --manifest CSV") }
    guard ["fit", "fill", "stretch"].contains(policy) else { throw ValidationError("--policy must be fit, fill or stretch") }
    guard batch == "auto" || (Int(batch) ?? 0) >= 1 else { throw ValidationError("--batch must be a positive number or auto") }
    guard batch != "auto" || budget != nil else { throw ValidationError("--batch auto needs --budget, e.g. --budget 4GiB") }
    guard OptimizerKind(rawValue: optimizer) != nil else { throw ValidationError("--optimizer must be sgd, momentum or adamw") }
    guard ["constant", "cosine", "step"].contains(schedule) else { throw ValidationError("--schedule must be constant, cosine or step") }
    guard CheckpointingPolicy(checkpointing ?? "none") != nil else {
      throw ValidationError("--checkpointing must be none, sqrt, all or a number of blocks per segment")
    }
    guard StoragePrecision(rawValue: precision ?? "fp32") != nil else { throw ValidationError("--precision must be fp32, fp16 or bf16") }
    guard BadFilePolicy(rawValue: onBadFile) != nil else { throw ValidationError("--on-bad-file must be skip or fail") }
    guard epochs >= 1, accumulate >= 1, imageSize >= 1 else { throw ValidationError("--epochs, --accumulate and --image-size must be positive") }
  }

  func run() throws {
    try global.apply()
    ActivationStorage.precision = StoragePrecision(rawValue: precision ?? "fp32")!
    // Data: train and held-out indices.
    let ds: ImageDataset
    var trainIdx = [Int](), valIdx = [Int]()
    if let m = manifest {
      ds = try ImageDataset.manifest(URL(fileURLWithPath: m))
      let hasVal = ds.samples.contains { $0.split == "val" }
      for (i, s) in ds.samples.enumerated() {
        switch s.split {
        case "val": valIdx.append(i)
        case "test": if !hasVal { valIdx.append(i) }
        default: trainIdx.append(i)
        }
      }
    } else {
      ds = try ImageDataset.folder(URL(fileURLWithPath: data!))
      for (i, s) in DatasetSplit.assign(ds.samples, test: test, seed: seed).enumerated() {
        if s == "train" { trainIdx.append(i) } else { valIdx.append(i) }
      }
    }
    guard !trainIdx.isEmpty else { throw ValidationError("no training images") }
    let classes = ds.classes.count
    let (name, loaded, channels) = try ModelLoader.load(model, classes: classes)
    let input = [channels, imageSize, imageSize]
    let opt = OptimizerKind(rawValue: optimizer)!
    // The loader's batches in flight count beside the step's own peak.
    let prefetch = 2
    func loaderBytes(_ batch: Int) -> Int { BatchLoader.bytesInFlight(batch: batch, imageShape: input, prefetch: prefetch) }
    var ckptPolicy = CheckpointingPolicy(checkpointing ?? "none")!
    var chosenBatch: Int? = nil
    var base = loaded
    if let s = streaming.settings() {
      let c = try Planner.applyStreaming(loaded, s, input: input, batch: Int(batch) ?? 1,
                                         budget: try budget.map { try ByteSize.parse($0) - runtimeReserveBytes - loaderBytes(Int(batch) ?? 1) },
                                         optimizer: opt)
      base = c.model
      note(describe(c, s))
    }
    if batch == "auto" && precision == nil && checkpointing == nil && streaming.tile == nil {
      // The planner picks the fastest memory mode that fits, then the largest batch in it.
      let (best, all) = Planner.chooseMode(loaded, input: input, batch: 1, maxBatch: trainIdx.count, optimizer: opt,
                                           budget: budgetBytesForChoice(), extraBytes: loaderBytes, runtimeReserve: runtimeReserveBytes)
      guard let choice = best else { throw refusal(loaded, input: input, batch: 1, opt: opt, budget: budgetBytesForChoice()) }
      ActivationStorage.precision = choice.mode.precision
      ckptPolicy = choice.mode.checkpointing
      if choice.mode.streaming != nil {
        var streamingOnly = choice.mode
        streamingOnly.checkpointing = .none  // checkpoints are applied below
        base = try streamingOnly.apply(to: loaded)
      }
      chosenBatch = choice.batch
      let others = all.filter { $0.mode != choice.mode }.map { "\($0.mode): batch \($0.batch)" }.joined(separator: "; ")
      note("mode: \(choice.mode) — the fastest that fits (estimated ×\(String(format: "%.2f", choice.relativeTime)) time), batch \(choice.batch)" + (others.isEmpty ? "" : "; also fitting: \(others)"))
    }
    let net = ckptPolicy.apply(to: base)

    // Plan: the batch and the predicted peak (step + loader) against the budget.
    let budgetBytes = try budget.map { try ByteSize.parse($0) }
    var b = Int(batch) ?? 1
    if batch == "auto" {
      let advice = try Planner.advise(net, input: input, batch: 1, optimizer: opt, budget: budgetBytes!)
      guard var mb = chosenBatch ?? advice.maxTrainingBatch else { throw refusal(net, input: input, batch: 1, opt: opt, budget: budgetBytes!) }
      mb = min(mb, trainIdx.count)
      while mb > 1, try Planner.plan(net, name: name, input: input, batch: mb, optimizer: opt).peakTrainingBytes
        + loaderBytes(mb) > budgetBytes! { mb -= 1 }
      b = mb
    }
    let plan = try Planner.plan(net, name: name, input: input, batch: b, optimizer: opt)
    let predicted = plan.peakTrainingBytes + loaderBytes(b)
    note("plan: \(name) on \(input.map(String.init).joined(separator: "×")), \(ByteSize.format(plan.inputBytes / b)) per image, batch \(b), predicted peak \(ByteSize.format(predicted)) (step \(ByteSize.format(plan.peakTrainingBytes)) + \(prefetch + 1) batches in the loader)" + (budgetBytes.map { " of \(ByteSize.format($0))" } ?? ""))
    if let bb = budgetBytes, predicted > bb { throw refusal(net, input: input, batch: b, opt: opt, budget: bb) }
    if let bb = budgetBytes { limitBlockCache(budget: bb, planned: predicted) }

    // Model, optimizer, schedule; resume.
    net.initializeParameters(seed: seed)
    let optimizerObj: Optimizer = switch opt {
    case .sgd: SGD()
    case .momentum: SGD(momentum: 0.9)
    case .adamw: AdamW()
    }
    let updatesPerEpoch = (trainIdx.count + b - 1) / b / accumulate
    let total = max(1, updatesPerEpoch * epochs)
    var sched: LRSchedule = switch schedule {
    case "cosine": .cosine(base: lr, total: total)
    case "step": .step(base: lr, every: max(1, total / 3), gamma: 0.1)
    default: .constant(lr)
    }
    if warmup > 0 { sched = .warmup(steps: warmup, then: sched) }
    let trainer = Trainer(model: net, optimizer: optimizerObj, schedule: sched, classes: classes, accumulate: accumulate)
    let outURL = URL(fileURLWithPath: out)
    var startEpoch = 0, best = -1.0
    let lastURL = outURL.appendingPathComponent("last.safetensors")
    if resume, FileManager.default.fileExists(atPath: lastURL.path) {
      if let st = try Checkpoint.load(lastURL, into: net, optimizer: optimizerObj) {
        startEpoch = st.epoch
        trainer.step = st.step
        best = st.bestAccuracy
        note("resuming from \(lastURL.path): epoch \(st.epoch) done, step \(st.step)")
      }
    }
    let config: [String: Any] = [
      "model": model, "data": data as Any? ?? NSNull(), "manifest": manifest as Any? ?? NSNull(), "classes": ds.classes,
      "imageSize": imageSize, "policy": policy, "batch": b, "epochs": epochs, "optimizer": optimizer, "lr": Double(lr),
      "schedule": schedule, "warmup": warmup, "accumulate": accumulate, "checkpointing": "\(ckptPolicy)", "precision": ActivationStorage.precision.rawValue, "test": test, "seed": seed, "augment": augment,
      "threads": Parallel.threadCount, "trainImages": trainIdx.count, "heldOutImages": valIdx.count,
      "predictedPeakBytes": predicted,
    ]
    let folder = try RunFolder(outURL, config: config, seed: seed, bestAccuracy: best)
    try ds.saveClassMap(to: outURL.appendingPathComponent("classes.json"))

    let pipeline = ImagePipeline(size: imageSize, policy: ResizePolicy(rawValue: policy)!, channels: channels)
    let trainLoader = BatchLoader(dataset: ds, indices: trainIdx, pipeline: pipeline, batchSize: b)
    trainLoader.seed = seed
    trainLoader.workers = workers
    trainLoader.prefetch = prefetch
    trainLoader.badFilePolicy = BadFilePolicy(rawValue: onBadFile)!
    trainLoader.onWarning = { note("warning: " + $0) }
    if augment { trainLoader.augmentation = Augmentation(horizontalFlip: true, brightness: 0.1, contrast: 0.1) }
    var valLoader: BatchLoader? = nil
    if !valIdx.isEmpty {
      let v = BatchLoader(dataset: ds, indices: valIdx, pipeline: pipeline, batchSize: b)
      v.shuffle = false
      v.workers = workers
      v.onWarning = { note("warning: " + $0) }
      valLoader = v
    }
    let logs = try trainer.fit(train: trainLoader, validation: valLoader, epochs: epochs, startEpoch: startEpoch,
                               callbacks: [ProgressPrinter(epochs: epochs), folder])
    let lastLog = logs.last
    let summary: [String: Any] = [
      "out": out, "epochs": epochs, "batch": b, "steps": trainer.step, "bestAccuracy": folder.bestAccuracy,
      "accuracy": lastLog?.validation?.accuracy ?? lastLog?.train.accuracy ?? NSNull(),
      "loss": lastLog?.train.loss ?? NSNull(), "predictedPeakBytes": predicted,
      "peakBytes": logs.map(\.peakBytes).max() ?? 0, "maxRSSBytes": maxRSSBytes(),
    ]
    if json { printJSON(summary) } else {
      print("trained \(name): best held-out accuracy \(String(format: "%.3f", folder.bestAccuracy)); run folder \(out)")
    }
  }

  func budgetBytesForChoice() -> Int { (try? budget.map { try ByteSize.parse($0) } ?? nil) ?? Int.max }

  func refusal(_ net: Layer, input: [Int], batch: Int, opt: OptimizerKind, budget: Int) -> Error {
    let advice = try? Planner.advise(net, input: input, batch: batch, optimizer: opt, budget: budget)
    var lines = ["does not fit the \(ByteSize.format(budget)) budget at batch \(batch) and input \(input.map(String.init).joined(separator: "×"))"]
    for s in advice?.suggestions ?? [] {
      lines.append("  try: batch \(s.batch), input \(s.input.map(String.init).joined(separator: "×")) (peak \(ByteSize.format(s.peakTrainingBytes)))")
    }
    lines.append("  or a memory mode: --precision fp16, --checkpointing sqrt|all, streamed training --tile N (tessera plan --budget lists what fits)")
    return CLIError(lines.joined(separator: "\n"))
  }
}

/// A refusal or failure to report as is (no usage text), with a non-zero exit.
struct CLIError: Error, CustomStringConvertible {
  let description: String
  init(_ d: String) { description = d }
}
