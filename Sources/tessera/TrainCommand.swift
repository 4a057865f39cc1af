import ArgumentParser
import Foundation
import TesseraDistributed
import Tessera
import TesseraData
import TesseraKernels
import TesseraPlanner
import TesseraReport
import TesseraTraining

struct TrainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a model on a folder of images (or a split manifest), within a memory budget.",
    discussion: prose("""
      Prints the plan first (bytes per image, the batch, predicted peak against --budget) and refuses,
      with the nearest settings that fit, when it cannot fit. Images stream from disk each epoch
      (decoded on --workers threads); the held-out split is evaluated after every epoch. The run
      folder gets config.json, metrics.jsonl, last.safetensors / best.safetensors (atomic) and
      state.json; --resume continues from last.safetensors with the same next batches.

      Memory: the run's plan counts the step, the loader's batches in flight ((--prefetch + 1) ×
      batch images) and a runtime reserve (code, threads, allocator: \(runtimeReserveBytes >> 20) MiB); it
      must fit --budget, or, without one, the memory this machine (or its cgroup) has available.

      Run folders: an existing run is never replaced silently: --resume continues it (refusing a
      change of model, classes, image size or policy; other changes are recorded in config.json),
      --overwrite replaces it. A second train on the same folder is refused while the first runs.
      Ctrl-C or SIGTERM finishes the current update, saves last.safetensors with the position in the
      epoch and exits 130; --resume continues from the next batch. A second Ctrl-C stops at once.
      """))

  @Option(help: "Image folder DIR/<class>/<images> (split --test by the seed); with --manifest, the folder its paths are relative to.") var data: String?
  @Option(help: "A CSV manifest path,label[,split] (from `tessera split`); paths relative to --data, else to its '# root:' line, else to its folder.") var manifest: String?
  @Option(help: "A patch list path,x,y,w,h,level,label (from `tessera patches`): each patch is read from its file; whole files are split into train and test by --test and --seed.")
  var patches: String?
  @Option(help: "Zoo model, spec file, or ONNX file (trained from its weights; another class count replaces its classifier).") var model = "fcn-large"
  @Option(help: "Input side in pixels.") var imageSize = 256
  @Flag(help: "Images at their native resolution, one per batch (--image-size is ignored); with --tile each is read from its file crop by crop and never held (gigapixel TIFF pyramids, large JPEGs).")
  var native = false
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
  @Option(help: "Batches the loader decodes ahead (each counted in the plan).") var prefetch = 2
  @Option(help: "Fail an epoch in which more than this share of the training images cannot be read (0–1).")
  var maxSkipped = 0.1
  @Flag(help: "Flips and brightness/contrast jitter; random crops with --policy fill.") var augment = false
  @Option(help: "skip or fail.") var onBadFile = "skip"
  @Option(help: "Run folder.") var out: String
  @Flag(help: "Continue from <out>/last.safetensors.") var resume = false
  @Flag(help: "Replace the run already in --out.") var overwrite = false
  @Flag(help: "Keep <out>/report.html up to date (rewritten after every epoch; a browser tab reloads it), with held-out predictions at the end; `tessera report` makes it for any run.")
  var report = false
  @Option(help: "Also log every N-th update to metrics.jsonl (lines with \"kind\": \"step\": loss, learning rate, images/s).")
  var logEvery = 0
  @Option(help: "Write TensorBoard scalar event files to this folder (epoch curves, and steps with --log-every).")
  var tensorboard: String?
  @OptionGroup var parallelOptions: ParallelOptions
  @Flag(help: "Print a JSON summary at the end.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    guard data != nil || manifest != nil || patches != nil else { throw ValidationError("give --data DIR, --manifest CSV or --patches CSV") }
    guard manifest == nil || patches == nil else { throw ValidationError("--manifest or --patches, not both") }
    guard !(resume && overwrite) else { throw ValidationError("--resume and --overwrite contradict each other; choose one") }
    try checkRange(prefetch, 1...64, "--prefetch")
    try checkRange(logEvery, 0...1_000_000_000, "--log-every")
    guard maxSkipped >= 0, maxSkipped <= 1 else { throw ValidationError("--max-skipped must be between 0 and 1, got \(maxSkipped)") }
    guard ["fit", "fill", "stretch"].contains(policy) else { throw ValidationError("--policy must be fit, fill or stretch") }
    guard batch == "auto" || (Int(batch) ?? 0) >= 1 else { throw ValidationError("--batch must be a positive number or auto") }
    guard !native || (batch == "8" || batch == "1") else { throw ValidationError("--native trains one image per batch; leave --batch out") }
    guard !native || patches == nil else { throw ValidationError("--native trains on whole images; --patches lists patches") }
    guard batch != "auto" || budget != nil else { throw ValidationError("--batch auto needs --budget, e.g. --budget 4GiB") }
    guard OptimizerKind(rawValue: optimizer) != nil else { throw ValidationError("--optimizer must be sgd, momentum or adamw") }
    guard ["constant", "cosine", "step"].contains(schedule) else { throw ValidationError("--schedule must be constant, cosine or step") }
    guard CheckpointingPolicy(checkpointing ?? "none") != nil else {
      throw ValidationError("--checkpointing must be none, sqrt, all or a number of blocks per segment")
    }
    guard StoragePrecision(rawValue: precision ?? "fp32") != nil else { throw ValidationError("--precision must be fp32, fp16 or bf16") }
    guard BadFilePolicy(rawValue: onBadFile) != nil else { throw ValidationError("--on-bad-file must be skip or fail") }
    try checkRange(epochs, 1...1_000_000, "--epochs")
    try checkRange(accumulate, 1...1_000_000, "--accumulate")
    try checkRange(imageSize, 1...Limits.maxSide, "--image-size")
    try checkRange(warmup, 0...1_000_000_000, "--warmup")
    try checkRange(workers, 1...256, "--workers")
    if let b = Int(batch) { try checkRange(b, 1...Limits.maxBatch, "--batch") }
    guard lr.isFinite, lr >= 0 else { throw ValidationError("--lr must be a number ≥ 0, got \(lr)") }
    guard test >= 0, test < 1 else { throw ValidationError("--test must be in [0, 1), got \(test)") }
  }

  func run() throws {
    try global.apply()
    compute.apply()
    let parallel = try parallelOptions.start()
    if let (c, mode) = parallel {
      switch mode {
      case .data:
        guard batch != "auto" else { throw ValidationError("--parallel data: give the global --batch (auto chooses one process's batch)") }
        guard !native else { throw ValidationError("--parallel data shares batches of several images; --native trains one image per batch: use --parallel tiles with --tile") }
        guard (Int(batch) ?? 0) >= c.size else { throw ValidationError("--parallel data: --batch \(batch) is the global batch and needs at least one image for each of the \(c.size) ranks") }
      case .tiles:
        guard streaming.tile != nil else { throw ValidationError("--parallel tiles spreads each image's tiles over the ranks: it needs --tile") }
      case .pipeline:
        guard batch != "auto", !native, streaming.tile == nil, checkpointing == nil || checkpointing == "none" else {
          throw ValidationError("--parallel pipeline needs a given --batch, and runs each micro-batch again in backward itself: leave out --native, --tile and --checkpointing")
        }
      }
      // Rank 0 alone owns the run folder; the others only read a checkpoint to --resume.
      if c.rank != 0 {
        var started = false
        return try train(URL(fileURLWithPath: out), started: &started, parallel: parallel)
      }
    }
    // The folder is locked first, so two runs never interleave; a folder this run created is
    // removed again if it is refused before training starts.
    let outURL = URL(fileURLWithPath: out)
    let existed = FileManager.default.fileExists(atPath: outURL.path)
    let lock = try RunLock(outURL)
    var started = false
    defer {
      if !started && !existed { try? FileManager.default.removeItem(at: outURL) }
      withExtendedLifetime(lock) {}
    }
    try train(outURL, started: &started, parallel: parallel)
  }

  func train(_ outURL: URL, started: inout Bool, parallel: (communicator: Communicator, mode: ParallelOptions.Mode)?) throws {
    let dataRanks = parallel?.mode == .data ? parallel!.communicator.size : 1
    let writer = quietRank == 0  // the one process that writes the run folder
    ActivationStorage.precision = StoragePrecision(rawValue: precision ?? "fp32")!
    // Data: train and held-out indices.
    let ds: ImageDataset
    var trainIdx = [Int](), valIdx = [Int]()
    if let p = patches {
      ds = try ImageDataset.patches(URL(fileURLWithPath: p), root: data.map { URL(fileURLWithPath: $0) })
      let given = ds.samples.contains { $0.split != nil }
      let splits = given ? ds.samples.map { $0.split ?? "train" } : DatasetSplit.assignByFile(ds.samples, test: test, seed: seed)
      for (i, s) in splits.enumerated() { if s == "train" { trainIdx.append(i) } else { valIdx.append(i) } }
    } else if let m = manifest {
      ds = try ImageDataset.manifest(URL(fileURLWithPath: m), root: data.map { URL(fileURLWithPath: $0) })
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
    // Native resolution: planned for the largest image (each file's header only).
    var input = [channels, imageSize, imageSize]
    var cacheBytes = 0
    if native {
      var (h, w) = (0, 0)
      for s in ds.samples {
        let img = try RegionImages.open(s.url, reader: ImageReader(maxPixels: 1 << 40, maxFileBytes: 1 << 40))
        (h, w) = (max(h, img.levelSizes[0].height), max(w, img.levelSizes[0].width))
        cacheBytes = max(cacheBytes, img.cacheLimitBytes)
      }
      input = [channels, h, w]
      try Limits.check([1] + input, "the largest image")
      note("native resolution: planned for the largest image, \(w)×\(h)" + (streaming.tile == nil ? "" : ", read from its file crop by crop"))
    }
    let streamedFiles = native && streaming.tile != nil
    try checkHead(loaded, input: input, classes: classes, model: model)
    let opt = OptimizerKind(rawValue: optimizer)!
    // The loader's batches in flight count beside the step's own peak.
    // (Files read crop by crop hold no batch; their reader's tile cache counts instead.)
    func loaderBytes(_ batch: Int) -> Int {
      streamedFiles ? cacheBytes : BatchLoader.bytesInFlight(batch: batch, imageShape: input, prefetch: prefetch)
    }
    var ckptPolicy = CheckpointingPolicy(checkpointing ?? "none")!
    var chosenBatch: Int? = nil
    var base = loaded
    let batch = native ? "1" : self.batch
    if let s = streaming.settings(inputResident: !streamedFiles) {
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

    // Plan: the batch and the predicted peak (step + loader + runtime) against the budget.
    let budgetBytes = try budget.map { try ByteSize.parse($0) }
    var b = Int(batch) ?? 1
    if batch == "auto" {
      let advice = try Planner.advise(net, input: input, batch: 1, optimizer: opt, budget: budgetBytes!)
      guard var mb = chosenBatch ?? advice.maxTrainingBatch else { throw refusal(net, input: input, batch: 1, opt: opt, budget: budgetBytes!) }
      mb = min(mb, trainIdx.count)
      while mb > 1, try Planner.plan(net, name: name, input: input, batch: mb, optimizer: opt).peakTrainingBytes
        + loaderBytes(mb) + runtimeReserveBytes > budgetBytes! { mb -= 1 }
      b = mb
    }
    // Data-parallel: each rank holds its share of the batch (the largest share).
    let localBatch = (b + dataRanks - 1) / dataRanks
    let plan = try Planner.plan(net, name: name, input: input, batch: localBatch, optimizer: opt, inputResident: !streamedFiles)
    var predicted = plan.peakTrainingBytes + loaderBytes(localBatch)
    // Pipeline: this rank's stage (the split keeps every stage within the budget).
    var pipelined: (PipelineParallel, PipelinePlan)?
    if let (c, mode) = parallel, mode == .pipeline {
      let stageMemory = budgetBytes.map { $0 - runtimeReserveBytes - loaderBytes(b) }
      let pp = try parallelOptions.pipeline(net, input: input, batch: b, communicator: c, stageMemory: stageMemory, optimizer: opt)
      predicted = pp.1.stages[c.rank].peakBytes + loaderBytes(b)
      pipelined = pp
    }
    let machine = MachineMemory.availableBytes()
    let ceiling = budgetBytes ?? machine
    note("plan: \(name) on \(input.map(String.init).joined(separator: "×")), \(ByteSize.format(input.reduce(4, *))) per image, batch \(b)\(dataRanks > 1 ? " (\(localBatch) per rank on \(dataRanks) ranks)" : ""), predicted peak \(ByteSize.format(predicted + runtimeReserveBytes)) (step \(ByteSize.format(predicted - loaderBytes(localBatch)))\(parallel?.mode == .pipeline ? " on this rank's stage" : "") + \(streamedFiles ? "the file reader's tile cache" : "\(prefetch + 1) batches in the loader") \(ByteSize.format(loaderBytes(localBatch))) + runtime \(ByteSize.format(runtimeReserveBytes))) of \(ByteSize.format(ceiling))" + (budgetBytes == nil ? " available (no --budget)" : ""))
    if predicted + runtimeReserveBytes > ceiling {
      throw refusal(net, input: input, batch: localBatch, opt: opt, budget: ceiling, what: budgetBytes == nil ? "the memory this machine has available" : nil)
    }
    limitBlockCache(budget: ceiling, planned: predicted)

    // Model, optimizer, schedule; resume.
    // An ONNX model starts from its own weights (fine-tuning); others from a seeded initialisation.
    if !ModelLoader.isPretrained(model) { net.initializeParameters(seed: seed) }
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
    var startEpoch = 0, best = -1.0
    var resumed: TrainingState? = nil
    var config: [String: Any] = [
      "model": model, "data": data as Any? ?? NSNull(), "manifest": manifest as Any? ?? NSNull(),
      "patches": patches as Any? ?? NSNull(), "classes": ds.classes,
      "imageSize": imageSize, "policy": policy, "batch": b, "epochs": epochs, "optimizer": optimizer, "lr": Double("\(lr)") ?? Double(lr),
      "schedule": schedule, "warmup": warmup, "accumulate": accumulate, "checkpointing": "\(ckptPolicy)", "precision": ActivationStorage.precision.rawValue, "compute": compute.effective, "test": test, "seed": seed, "augment": augment,
      "threads": Parallel.threadCount, "trainImages": trainIdx.count, "heldOutImages": valIdx.count,
      "predictedPeakBytes": predicted + runtimeReserveBytes, "plannedLedgerBytes": predicted, "prefetch": prefetch, "workers": workers,
      "native": native, "tile": streaming.tile as Any? ?? NSNull(), "budget": budgetBytes as Any? ?? NSNull(),
      "input": input, "ranks": parallel?.communicator.size ?? 1, "parallel": parallel?.mode.rawValue ?? NSNull(),
    ]
    // What a resume may not change: what the weights were trained to take and to say.
    let fixed = ["model", "classes", "imageSize", "policy"]
    if let old = try RunFolder.check(outURL, config: config, resume: resume, overwrite: overwrite, fixed: fixed) {
      let lastURL = outURL.appendingPathComponent("last.safetensors")
      guard let st = try Checkpoint.load(lastURL, into: net, optimizer: optimizerObj) else {
        throw CLIError("\(lastURL.path) holds no training state; it is not a tessera checkpoint to resume")
      }
      startEpoch = st.epoch
      trainer.step = st.step
      best = st.bestAccuracy
      resumed = st
      // Allowed changes are kept in the config's history.
      var changed = [String: String]()
      for (k, v) in config where !fixed.contains(k) && !["predictedPeakBytes", "plannedLedgerBytes", "threads"].contains(k) {
        // Compared as JSON text: a Bool read back from config.json prints as 0/1, the new one as false/true.
        let a = old[k].map(jsonText) ?? "none", b = jsonText(v)
        if a != b { changed[k] = "\(a) → \(b)" }
      }
      var history = old["resumes"] as? [Any] ?? []
      history.append(["atEpoch": st.epoch, "atBatch": st.batchesDone ?? 0, "changed": changed])
      config["resumes"] = history
      if !changed.isEmpty { note("resuming with changes: " + changed.keys.sorted().map { "\($0) \(changed[$0]!)" }.joined(separator: "; ")) }
      if !writer { note("rank \(quietRank) resumes from \(lastURL.path)") }
      note("resuming from \(lastURL.path): epoch \(st.epoch) done" + (st.batchesDone.map { ", and \($0) batches of epoch \(st.epoch + 1)" } ?? "") + ", step \(st.step)")
      guard startEpoch < epochs || st.batchesDone != nil else {
        throw CLIError("\(out) already trained \(st.epoch) epochs; give --epochs above \(st.epoch) to train more")
      }
    }
    // Event files are opened before the run folder is touched: a bad --tensorboard leaves nothing.
    var tensorBoard: TensorBoardLogger?
    if let dir = tensorboard, writer {
      do { tensorBoard = try TensorBoardLogger(directory: URL(fileURLWithPath: dir), logEvery: logEvery) } catch {
        throw CLIError("--tensorboard \(dir): cannot write event files there (\(error.localizedDescription))")
      }
    }
    // Every rank has passed its checks (and read the checkpoint it resumes) before rank 0 touches
    // the folder; a rank that refused has ended the run by now.
    if let (c, _) = parallel { _ = c.any(false) }
    started = true
    var folder: RunFolder?
    if writer {
      let f = try RunFolder(outURL, config: config, seed: seed, bestAccuracy: best, overwrite: overwrite)
      f.heldOut = !valIdx.isEmpty
      if let st = resumed { try f.keepMetrics(through: st.epoch, steps: st.step) }
      try ds.saveClassMap(to: outURL.appendingPathComponent("classes.json"))
      // The step's plan, for the report (the bytes of every layer, the planned peak).
      try AtomicFile.write(try JSONEncoder().encode(plan), to: outURL.appendingPathComponent("plan.json"))
      f.logEvery = logEvery
      folder = f
    }
    switch parallel {
    case let (c, .data)?:
      trainer.dataParallel = DataParallel(model: net, communicator: c, bucketBytes: parallelOptions.bucketMb << 20,
                                          synchronizedBatchNorm: parallelOptions.bn == "sync")
    case let (c, .tiles)?:
      for st in net.layers.compactMap({ $0.1 as? Streamed }) { st.collective = c }
    case (_, .pipeline)?:
      trainer.pipeline = pipelined?.0
      pipelined?.0.releaseOtherStages(optimizer: optimizerObj)
    case nil: break
    }

    let pipeline = ImagePipeline(size: imageSize, policy: native ? .none : ResizePolicy(rawValue: policy)!, channels: channels)
    let trainLoader = BatchLoader(dataset: ds, indices: trainIdx, pipeline: pipeline, batchSize: b)
    trainLoader.seed = seed
    trainLoader.workers = workers
    trainLoader.prefetch = prefetch
    trainLoader.streamFromFiles = streamedFiles
    if dataRanks > 1 { trainLoader.shard = (quietRank, dataRanks) }
    trainer.maxSkippedShare = maxSkipped
    trainLoader.badFilePolicy = BadFilePolicy(rawValue: onBadFile)!
    // (Pipeline ranks all read the same files: rank 0 alone says which it skipped.)
    let quiet = parallel?.mode == .pipeline && !writer
    let warn: @Sendable (String) -> Void = { if !quiet { note("warning: " + $0) } }
    trainLoader.onWarning = warn
    if augment { trainLoader.augmentation = Augmentation(horizontalFlip: true, brightness: 0.1, contrast: 0.1) }
    var valLoader: BatchLoader? = nil
    if !valIdx.isEmpty {
      let v = BatchLoader(dataset: ds, indices: valIdx, pipeline: pipeline, batchSize: b)
      v.shuffle = false
      v.workers = workers
      v.prefetch = prefetch
      v.streamFromFiles = streamedFiles
      if dataRanks > 1 { v.shard = (quietRank, dataRanks) }
      v.onWarning = warn
      valLoader = v
    }
    let interrupt = Interrupt.install()
    trainer.interruptRequested = { interrupt.requested }
    var callbacks: [TrainingCallback] = folder.map { [ProgressPrinter(epochs: epochs), $0] } ?? []
    if let tb = tensorBoard, let dir = tensorboard {
      tb.onError = { note("warning: TensorBoard event not written: \($0)") }
      note("TensorBoard: \(tb.file.path) (tensorboard --logdir \(dir))")
      callbacks.append(tb)
    }
    // The live report: rewritten after every epoch, reloading itself in the browser while training.
    func writeReport(predictions: Int, refresh: Int?) {
      do {
        let r = try RunReportBuilder.build(run: outURL, predictions: predictions, heatmaps: nil, refreshSeconds: refresh, warn: { note("warning: " + $0) })
        try AtomicFile.write(Data(r.html.utf8), to: outURL.appendingPathComponent("report.html"))
      } catch { note("warning: report not written: \(error)") }
    }
    if report && writer {
      writeReport(predictions: 0, refresh: 30)
      note("report: \(outURL.appendingPathComponent("report.html").path) (reloads every 30 s while training)")
      callbacks.append(EpochHook { writeReport(predictions: 0, refresh: 30) })
    }
    // Test hook: a real SIGINT to this process after N batches (tests Ctrl-C deterministically).
    if let n = ProcessInfo.processInfo.environment["TESSERA_TEST_SIGINT_AFTER_BATCHES"].flatMap(Int.init) {
      callbacks.append(RaiseAfter(batches: n))
    }
    let logs: [EpochLog]
    do {
      logs = try trainer.fit(train: trainLoader, validation: valLoader, epochs: epochs, startEpoch: startEpoch,
                             resumeFrom: resumed, callbacks: callbacks)
    } catch let e as TrainingInterrupted {
      if let folder { note("\(e); saved \(folder.last.path)") }
      // Every rank waits for rank 0's checkpoint: mpirun ends the job at the first rank that exits.
      if let (c, _) = parallel { _ = c.any(false) }
      throw ExitCode(130)
    }
    if trainer.batchesLeftOut > 0 && writer {
      note("warning: \(trainer.batchesLeftOut) batches were left out on every rank because one rank could not read any image of its share")
    }
    guard let folder else { return }  // ranks other than 0 report nothing
    if report { writeReport(predictions: 24, refresh: nil) }
    let lastLog = logs.last
    let summary: [String: Any] = [
      "out": out, "epochs": epochs, "batch": b, "steps": trainer.step, "bestAccuracy": folder.bestAccuracy,
      "heldOut": !valIdx.isEmpty,
      "accuracy": lastLog?.validation?.accuracy ?? lastLog?.train.accuracy ?? NSNull(),
      "loss": lastLog?.train.loss ?? NSNull(), "predictedPeakBytes": predicted,
      "peakBytes": logs.map(\.peakBytes).max() ?? 0, "maxRSSBytes": maxRSSBytes(),
    ]
    if json { printJSON(summary) } else {
      let which = valIdx.isEmpty ? "training accuracy (no held-out images)" : "held-out accuracy"
      print("trained \(name): best \(which) \(String(format: "%.3f", folder.bestAccuracy)); run folder \(out)")
    }
  }

  func budgetBytesForChoice() -> Int { (try? budget.map { try ByteSize.parse($0) } ?? nil) ?? Int.max }

  func refusal(_ net: Layer, input: [Int], batch: Int, opt: OptimizerKind, budget: Int, what: String? = nil) -> Error {
    let advice = try? Planner.advise(net, input: input, batch: batch, optimizer: opt, budget: budget - runtimeReserveBytes)
    var lines = ["does not fit \(what.map { "\($0) (\(ByteSize.format(budget)))" } ?? "the \(ByteSize.format(budget)) budget") at batch \(batch) and input \(input.map(String.init).joined(separator: "×")); nothing was started"]
    for s in advice?.suggestions ?? [] {
      lines.append("  try: batch \(s.batch), input \(s.input.map(String.init).joined(separator: "×")) (peak \(ByteSize.format(s.peakTrainingBytes)))")
    }
    lines.append("  or a memory mode: --precision fp16, --checkpointing sqrt|all, streamed training --tile N (tessera plan --budget lists what fits)")
    return CLIError(lines.joined(separator: "\n"))
  }
}

/// A config value as JSON text (how config.json holds it).
func jsonText(_ v: Any) -> String {
  (try? JSONSerialization.data(withJSONObject: [v], options: [.sortedKeys])).map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "\(v)"
}

/// Runs `body` after every epoch (after the run folder has written it).
final class EpochHook: TrainingCallback {
  let body: () -> Void
  init(_ body: @escaping () -> Void) { self.body = body }
  func onEpochEnd(_ log: EpochLog, trainer: Trainer) throws { body() }
}

/// A refusal or failure to report as is (no usage text), with a non-zero exit.
struct CLIError: Error, CustomStringConvertible {
  let description: String
  init(_ d: String) { description = d }
}

/// Checks that a model maps (C, size, size) images to one score per class, before anything runs.
func checkHead(_ net: Layer, input: [Int], classes: Int, model: String) throws {
  do { try Trainer.checkHead(net, input: input, classes: classes) } catch { throw CLIError("\(model): \(error)") }
}

/// SIGINT/SIGTERM: the first asks training to stop after the current update (and save); a second
/// SIGINT ends the process at once.
final class Interrupt: @unchecked Sendable {
  nonisolated(unsafe) static var flag: sig_atomic_t = 0
  static let message = Array("\nstopping at the next safe point (train: after this update, saving; Ctrl-C again to stop now)…\n".utf8)
  var requested: Bool { Interrupt.flag != 0 }

  static func install() -> Interrupt {
    let handler: @convention(c) (Int32) -> Void = { sig in
      if Interrupt.flag != 0 && sig == SIGINT { _exit(130) }
      Interrupt.flag = 1
      _ = Interrupt.message.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count) }
    }
    _ = message.count  // initialised here, not inside the handler
    signal(SIGINT, handler)
    signal(SIGTERM, handler)
    return Interrupt()
  }
}

/// Raises SIGINT after a number of batches (the test hook TESSERA_TEST_SIGINT_AFTER_BATCHES).
final class RaiseAfter: TrainingCallback {
  var left: Int
  init(batches: Int) { left = batches }
  func onBatchEnd(_ epoch: Int, batch: Int, of batches: Int, running: ClassificationMetrics, imagesPerSecond: Double) {
    left -= 1
    if left == 0 { raise(SIGINT) }
  }
}
