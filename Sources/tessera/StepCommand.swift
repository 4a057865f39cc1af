import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraPlanner
import TesseraDistributed

struct StepCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "step",
    abstract: "One training-mode forward and backward (no update), written to safetensors.",
    discussion: prose("""
      Reads `input` (N, C, H, W; F32, F16 or BF16) and `labels` (N; I64 or I32) from --batch, runs the
      model in training mode (batch statistics in BatchNorm), computes the mean softmax cross-entropy
      and writes `loss` (shape [1]), `logits` (N, classes) and `grad.<parameter>` for every trainable
      parameter to --out. Without --weights the model gets a seeded He-normal initialisation.
      This is how to check Tessera against another framework on the same numbers.
      """)
  )

  @Option(help: "Model name (\(Zoo.names.joined(separator: ", "))).") var model = "fcn-large"
  @Option(help: "Number of classes (default 10; an ONNX model keeps its own unless given).") var classes: Int?
  @Option(help: "Weights to load (safetensors, names as the model's parameters).") var weights: String?
  @Option(help: "safetensors file holding `input` and `labels`.") var batch: String
  @Option(help: "Where to write loss, logits and gradients (safetensors).") var out: String
  @Option(help: "Seed for the initialisation when no --weights are given.") var seed: UInt64 = 0
  @Option(help: "Gradient checkpointing: none, sqrt, all or N (same gradients, less memory).") var checkpointing = "none"
  @Option(help: "Storage of what the step keeps for backward: fp32, fp16 or bf16.") var precision = "fp32"
  @OptionGroup var streaming: StreamingOptions
  @OptionGroup var parallelOptions: ParallelOptions
  @Flag(help: "Print a JSON summary.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    if let c = classes { try checkRange(c, 1...(1 << 20), "--classes") }
    guard StoragePrecision(rawValue: precision) != nil else { throw ValidationError("--precision must be fp32, fp16 or bf16") }
    guard CheckpointingPolicy(checkpointing) != nil else {
      throw ValidationError("--checkpointing must be none, sqrt, all or a number of blocks per segment")
    }
  }

  func run() throws {
    try global.apply()
    compute.apply()
    let parallel = try parallelOptions.start()
    if parallel?.mode == .tiles && streaming.tile == nil {
      throw ValidationError("--parallel tiles spreads a streamed step's tiles over the ranks: it needs --tile")
    }
    if parallel?.mode == .pipeline && (streaming.tile != nil || checkpointing != "none") {
      throw ValidationError("--parallel pipeline already runs each micro-batch again in backward: leave out --tile and --checkpointing")
    }
    ActivationStorage.precision = StoragePrecision(rawValue: precision)!
    let file = try SafeTensors.read(URL(fileURLWithPath: batch))
    guard let rawInput = file.tensors["input"] else {
      throw SafeTensorsError.missingTensor(path: batch, tensor: "input")
    }
    guard let rawLabels = file.tensors["labels"] else {
      throw SafeTensorsError.missingTensor(path: batch, tensor: "labels")
    }
    guard rawInput.rank == 4, [.float32, .float16, .bfloat16].contains(rawInput.dtype) else {
      throw BatchError("\(batch): tensor 'input' must be (N, C, H, W) of F32, F16 or BF16; got \(rawInput.dtype.rawValue) \(rawInput.shape)")
    }
    guard [.int64, .int32].contains(rawLabels.dtype), rawLabels.count == rawInput.shape[0],
          rawLabels.rank == 1 || (rawLabels.rank == 2 && rawLabels.shape[1] == 1)
    else {
      throw BatchError("\(batch): tensor 'labels' must hold \(rawInput.shape[0]) I64 or I32 values; got \(rawLabels.dtype.rawValue) \(rawLabels.shape)")
    }
    guard rawInput.shape.allSatisfy({ $0 >= 1 }) else {
      throw BatchError("\(batch): tensor 'input' has an empty dimension \(rawInput.shape); it needs N, C, H, W ≥ 1")
    }
    try Limits.check(rawInput.shape, "\(batch): tensor 'input'")
    let input = rawInput.dtype == .float32 ? rawInput : rawInput.converted(to: .float32, category: .data)
    if let bad = (0..<input.count).first(where: { !input.floats[$0].isFinite }) {
      let chw = input.count / input.shape[0]
      throw BatchError("\(batch): tensor 'input' holds \(input.floats[bad].isNaN ? "NaN" : "infinity") at image \(bad / chw), element \(bad % chw); a step needs finite values")
    }
    let zoo = try ModelLoader.load(model, classes: classes ?? (ModelLoader.isPretrained(model) ? nil : 10), inputChannels: input.shape[1]).model
    var base = zoo
    if let s = streaming.settings() {
      let c = try Planner.applyStreaming(zoo, s, input: Array(input.shape.dropFirst()), batch: input.shape[0])
      if !json { note(describe(c, s)) }
      base = c.model
    }
    let net = CheckpointingPolicy(checkpointing)!.apply(to: base)
    if let w = weights { try net.load(from: URL(fileURLWithPath: w)) } else if !ModelLoader.isPretrained(model) { net.initializeParameters(seed: seed) }
    do { _ = try net.checkInput(input.shape) } catch {
      throw BatchError("\(batch): input \(input.shape) does not fit \(model): \(error)")
    }
    let labels = rawLabels.toIntArray()
    let result: StepResult
    if let (comm, mode) = parallel, mode == .data {
      // This rank's share of the batch; the gradients summed over the ranks in buckets.
      let n = input.shape[0]
      guard n >= comm.size else { throw ValidationError("--parallel data: the batch has \(n) images for \(comm.size) ranks; each rank needs at least one") }
      let mine = comm.share(of: n)
      let dp = DataParallel(model: net, communicator: comm, bucketBytes: parallelOptions.bucketMb << 20,
                            synchronizedBatchNorm: parallelOptions.bn == "sync")
      dp.arm()
      var r = try net.trainingStep(input: input.slice(images: mine), labels: Array(labels[mine]),
                                   gradientScale: Float(mine.count) / Float(n))
      dp.finish()
      r.loss = Float(dp.globalMean(Double(r.loss), count: mine.count))
      let k = r.logits.shape[1], all = Tensor(zeros: [n, k])
      (all.floats + mine.lowerBound * k).update(from: r.logits.floats, count: mine.count * k)
      comm.allreduceSum(all.floats, count: all.count)
      r.logits = all
      result = r
    } else if let (comm, mode) = parallel, mode == .pipeline {
      // One stage per rank; the gradients gathered to rank 0 for --out.
      let (pp, _) = try parallelOptions.pipeline(net, input: Array(input.shape.dropFirst()), batch: input.shape[0],
                                                 communicator: comm, stageMemory: nil, optimizer: .momentum)
      pp.releaseOtherStages(optimizer: nil)
      result = try pp.trainingStep(input: input, inputShape: Array(input.shape.dropFirst()), labels: labels)
      pp.gatherGradients()
    } else {
      if let (comm, _) = parallel { for s in net.layers.compactMap({ $0.1 as? Streamed }) { s.collective = comm } }
      result = try net.trainingStep(input: input, labels: labels)
    }
    // Rank 0 alone writes.
    guard quietRank == 0 else { return }
    var outTensors: [(String, Tensor)] = [
      ("loss", Tensor(shape: [1], values: [result.loss])), ("logits", result.logits),
    ]
    for (name, p) in net.namedParameters() where p.trainable {
      outTensors.append(("grad." + name, p.grad ?? Tensor(zeros: p.shape)))
    }
    try SafeTensors.write(outTensors, metadata: ["model": model, "format": "tessera-step"],
                          to: URL(fileURLWithPath: out))
    if json {
      printJSON(["loss": Double(result.loss), "batch": input.shape[0], "input": Array(input.shape.dropFirst()),
                 "gradients": outTensors.count - 2, "out": out])
    } else {
      print("loss \(result.loss) on \(input.shape[0]) images of \(input.shape.dropFirst().map(String.init).joined(separator: "x"))")
      print("wrote loss, logits and \(outTensors.count - 2) gradients to \(out)")
    }
  }
}
