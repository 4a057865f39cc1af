import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraPlanner
import TesseraData
import TesseraTIFF
import TesseraDistributed

struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Measure kernels and training speed (build with -c release).",
    subcommands: [GemmBench.self, ConvBench.self, TrainBench.self, DataBench.self, ReadBench.self]
  )
}

/// Median seconds of `runs` calls after one warm-up.
func medianSeconds(runs: Int, _ body: () throws -> Void) rethrows -> Double {
  try body()
  var times = [Double]()
  for _ in 0..<max(runs, 1) {
    let t0 = DispatchTime.now().uptimeNanoseconds
    try body()
    times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
  }
  return times.sorted()[times.count / 2]
}

struct GemmBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "gemm",
    abstract: "SGEMM GFLOP/s on n×n matrices, beside numpy/OpenBLAS in the same run when python3 has numpy.")

  @Option(help: "Matrix size n.") var size = 1024
  @Option(help: "Timed repetitions per round (median of a round).") var runs = 7
  @Option(help: "Rounds, alternating Tessera and the peer; the best round of each is reported.") var rounds = 3
  @Flag(help: "Skip the numpy/OpenBLAS peer.") var noPeer = false
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func run() throws {
    try global.apply()
    let n = size
    guard n >= 1 else { throw ValidationError("--size must be positive") }
    let a = Buffer(floats: n * n), b = Buffer(floats: n * n), c = Buffer(floats: n * n)
    var g = SeededGenerator(seed: 1)
    for i in 0..<(n * n) { a.floats[i] = g.nextUniform(); b.floats[i] = g.nextUniform() }
    // The machine is shared and noisy: alternate Tessera and the peer for `rounds` rounds and
    // report each one's best round (median of `runs` within a round).
    var ours = [Double](), theirs = [Double](), version = ""
    for _ in 0..<max(rounds, 1) {
      let s = medianSeconds(runs: runs) {
        GEMM.sgemm(m: n, n: n, k: n, a: a.floats, lda: n, b: b.floats, ldb: n, c: c.floats, ldc: n)
      }
      ours.append(2 * Double(n) * Double(n) * Double(n) / s / 1e9)
      if !noPeer, let peer = numpyGflops(n: n, threads: Parallel.threadCount, runs: runs) {
        theirs.append(peer.gflops)
        version = peer.version
      }
    }
    let gflops = ours.max()!
    func r1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
    var out: [String: Any] = ["bench": "gemm", "size": n, "threads": Parallel.threadCount, "rounds": ours.count,
                              "gflops": r1(gflops), "gflops_rounds": ours.map(r1)]
    if let peer = theirs.max() {
      out["peer"] = "numpy \(version) OpenBLAS"
      out["peer_gflops"] = r1(peer)
      out["peer_gflops_rounds"] = theirs.map(r1)
      out["ratio"] = ((gflops / peer) * 100).rounded() / 100
    }
    if json { printJSON(out) } else {
      print(String(format: "sgemm n=%d threads=%d: %.1f GFLOP/s (best of %d rounds)", n, Parallel.threadCount, gflops, ours.count))
      if let p = out["peer_gflops"] as? Double {
        print(String(format: "numpy/OpenBLAS same run: %.1f GFLOP/s (ratio %.2f)", p, gflops / p))
      }
    }
  }

  /// numpy's float32 matmul GFLOP/s with the BLAS pool limited to `threads` (nil without python3/numpy).
  func numpyGflops(n: Int, threads: Int, runs: Int) -> (gflops: Double, version: String)? {
    let script = """
      import time, numpy as np
      a = np.random.default_rng(0).standard_normal((\(n), \(n)), dtype=np.float32); b = a.copy(); c = np.empty_like(a)
      np.matmul(a, b, out=c); ts = []
      for _ in range(\(runs)):
          t = time.perf_counter(); np.matmul(a, b, out=c); ts.append(time.perf_counter() - t)
      ts.sort(); print(2 * \(n) ** 3 / ts[len(ts) // 2] / 1e9, np.__version__)
      """
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script]
    var env = ProcessInfo.processInfo.environment
    env["OPENBLAS_NUM_THREADS"] = String(threads)
    env["OMP_NUM_THREADS"] = String(threads)
    // Older OpenBLAS overrides set on some machines force a slower kernel (../shared/MEASURED.md).
    env["OPENBLAS_CORETYPE"] = nil
    env["OPENBLAS_L2_SIZE"] = nil
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return nil }
    p.waitUntilExit()
    guard p.terminationStatus == 0,
          let s = String(data: pipe.fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)
    else { return nil }
    let parts = s.split(separator: " ")
    guard parts.count == 2, let v = Double(parts[0]) else { return nil }
    return (v, parts[1].trimmingCharacters(in: .whitespacesAndNewlines))
  }
}

struct ConvBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "conv",
    abstract: "Convolution forward, backward-data and backward-weights GFLOP/s.",
    discussion: prose("""
      `forward` is the direct kernel; `inference forward` the forward inference and training take:
      Winograd F(4×4, 3×3) for 3×3 stride-1 layers of 16+ channels, F(3×3, 4×4) on the four phases
      of 7×7 and 8×8 stride-2 layers with 16+ outputs and up to 16 inputs (the stem; GFLOP/s counted
      as the direct convolution's FLOPs, so they compare), the direct kernel otherwise. `backward-data` is
      training's: at stride 1 a forward of the flipped weights, so Winograd where it applies.
      `backward-weights` is training's too: Winograd's weight gradient where the forward takes
      Winograd and both channel counts are 32 or more, the direct kernel otherwise.
      gflops (JSON) is the three kernels a training step runs. `bf16 forward` is the forward and
      backward-weights of --compute bf16 (bf16 multiplies, fp32 sums) on CPUs with AVX512_BF16 (its
      stride-1 backward-data is its forward kernel).
      TESSERA_WINOGRAD=0 turns Winograd off everywhere; TESSERA_WINOGRAD_TRAINING=0 in training only;
      TESSERA_WINOGRAD_WEIGHTS=0 keeps the weight gradient direct; TESSERA_WINOGRAD_BATCHED=0 keeps
      the per-image tile blocks (wide layers on small maps then take the direct kernel);
      TESSERA_WINOGRAD_STRIDED=0 keeps 7×7 and 8×8 stride-2 layers direct.
      """))

  @Option(help: "Input C×H×W, e.g. 16x256x256.") var input = "16x256x256"
  @Option(help: "Batch size.") var batch = 4
  @Option(help: "Output channels.") var outChannels = 32
  @Option(help: "Kernel size.") var kernel = 3
  @Option(help: "Stride.") var stride = 1
  @Option(help: "Dilation.") var dilation = 1
  @Option(help: "Groups.") var groups = 1
  @Option(help: "Backward-data algorithm: auto, or scatter (the general kernel, also for stride 1).")
  var dataPath = "auto"
  @Option(help: "Timed repetitions (median reported).") var runs = 5
  @Option(help: "Also time inference with a max pooling of this window (stride 2, same padding) after the convolution: the two passes, then the banded one-pass kernel.")
  var maxPool: Int?
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions

  func validate() throws {
    for (name, v) in [("--batch", batch), ("--out-channels", outChannels), ("--kernel", kernel), ("--stride", stride),
                      ("--dilation", dilation), ("--groups", groups), ("--runs", runs), ("--max-pool", maxPool ?? 1)] {
      try Limits.check(v, in: 1...Limits.maxChannels, name)
    }
    guard ["auto", "scatter"].contains(dataPath) else { throw ValidationError("--data-path must be auto or scatter") }
  }

  func run() throws {
    try global.apply()
    let chw = try parseInput(input)
    guard chw[0] % groups == 0, outChannels % groups == 0 else {
      throw ValidationError("--groups \(groups) must divide the \(chw[0]) input and \(outChannels) output channels")
    }
    let conv = Conv2D(inputChannels: chw[0], outputChannels: outChannels, kernelSize: kernel, stride: stride,
                      padding: .same, dilation: dilation, groups: groups, bias: false)
    let g = try conv.geometry(for: [batch] + chw)
    let x = Buffer(floats: g.inputCount), w = Buffer(floats: g.weightCount), y = Buffer(floats: g.outputCount)
    let dx = Buffer(floats: g.inputCount), dw = Buffer(floats: g.weightCount)
    var r = SeededGenerator(seed: 2)
    for i in 0..<g.inputCount { x.floats[i] = r.nextUniform() }
    for i in 0..<g.weightCount { w.floats[i] = r.nextUniform() }
    let flop = 2 * Double(g.macs)
    let tf = medianSeconds(runs: runs) { Conv2DKernels.forward(g, x: x.floats, w: w.floats, bias: nil, y: y.floats) }
    // Inference's (and training's) forward: Winograd F(4×4, 3×3) or F(3×3, 4×4) on the phases of a
    // 7×7 stride-2 layer, where they apply.
    let strided = StridedWinograd.applies(g), winograd = Winograd.applies(g) || strided
    let ti = winograd
      ? medianSeconds(runs: runs) {
        Conv2DKernels.forward(g, x: x.floats, w: w.floats, bias: nil, y: y.floats, winograd: true)
      } : tf
    let td = medianSeconds(runs: runs) {
      switch dataPath {
      case "scatter": Conv2DKernels.backwardDataScatter(g, dy: y.floats, w: w.floats, dx: dx.floats)
      default: Conv2DKernels.backwardData(g, dy: y.floats, w: w.floats, dx: dx.floats)
      }
    }
    let tw = medianSeconds(runs: runs) {
      Conv2DKernels.backwardWeights(g, x: x.floats, dy: y.floats, dw: dw.floats, dbias: nil)
    }
    func gf(_ t: Double) -> Double { (flop / t / 1e8).rounded() / 10 }
    // The forward in bf16 (`--compute bf16`) where this CPU has it.
    func bf16<T>(_ body: () -> T) -> T {
      BF16.enabled = true
      defer { BF16.enabled = false }
      return body()
    }
    let tb: Double? = BF16.supported && groups == 1
      ? bf16 { medianSeconds(runs: runs) { Conv2DKernels.forward(g, x: x.floats, w: w.floats, bias: nil, y: y.floats) } }
      : nil
    let tbw: Double? = tb == nil ? nil : bf16 {
      medianSeconds(runs: runs) { Conv2DKernels.backwardWeights(g, x: x.floats, dy: y.floats, dw: dw.floats, dbias: nil) }
    }
    var pooled: [String: Any] = [:]
    if let k = maxPool {
      let pool = Pool2D(.max, kernelSize: k, stride: 2, padding: .same)
      let pg = try pool.geometry(for: [g.batch, g.outChannels, g.outHeight, g.outWidth])
      let yp = Buffer(floats: pg.planes * pg.outHeight * pg.outWidth)
      let two = medianSeconds(runs: runs) {
        Conv2DKernels.forward(g, x: x.floats, w: w.floats, bias: nil, y: y.floats, relu: true, winograd: true)
        Pool2DKernels.maxForward(pg, x: y.floats, y: yp.floats)
      }
      let one = medianSeconds(runs: runs) {
        Conv2DKernels.forwardMaxPooled(g, x: x.floats, w: w.floats, bias: nil, scale: nil, relu: true, pool: pg, y: yp.floats)
      }
      pooled = ["conv_then_pool_ms": (two * 1e4).rounded() / 10, "banded_conv_pool_ms": (one * 1e4).rounded() / 10]
      if tb != nil {
        let oneBF16 = bf16 {
          medianSeconds(runs: runs) {
            Conv2DKernels.forwardMaxPooled(g, x: x.floats, w: w.floats, bias: nil, scale: nil, relu: true, pool: pg, y: yp.floats)
          }
        }
        pooled["banded_conv_pool_bf16_ms"] = (oneBF16 * 1e4).rounded() / 10
      }
    }
    let out: [String: Any] = [
      "bench": "conv", "geometry": g.description, "threads": Parallel.threadCount, "gflop": flop / 1e9,
      "forward_gflops": gf(tf), "backward_data_gflops": gf(td), "backward_weights_gflops": gf(tw),
      "inference_forward_gflops": gf(ti), "inference_algorithm": strided ? "strided_winograd" : winograd ? "winograd" : "direct",
      "bf16_forward_gflops": tb.map(gf) as Any, "bf16_backward_weights_gflops": tbw.map(gf) as Any,
      "gflops": ((3 * flop / ((Winograd.inTraining ? ti : tf) + td + tw)) / 1e8).rounded() / 10,
    ].merging(pooled) { a, _ in a }
    if json { printJSON(out) } else {
      print(g.description)
      print("forward \(gf(tf)) GFLOP/s, backward-data \(gf(td)), backward-weights \(gf(tw)) (threads \(Parallel.threadCount))")
      let algorithm = strided ? "Winograd F(3×3, 4×4) on the stride-2 phases" : winograd ? "Winograd F(4×4, 3×3)" : "direct"
      print("inference forward \(gf(ti)) GFLOP/s (\(algorithm)\(winograd ? ", as direct-convolution FLOPs" : ""))")
      print(tb.map { "bf16 forward \(gf($0)) GFLOP/s, backward-weights \(gf(tbw!)) (--compute bf16)" }
            ?? "bf16: not on this CPU (no AVX512_BF16) or grouped")
      if let a = pooled["conv_then_pool_ms"], let b = pooled["banded_conv_pool_ms"] {
        print("with a \(maxPool!)×\(maxPool!)/2 max pooling: conv then pool \(a) ms, banded in one pass \(b) ms"
              + (pooled["banded_conv_pool_bf16_ms"].map { ", banded in bf16 \($0) ms" } ?? ""))
      }
    }
  }
}

struct TrainBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Training steps of a zoo model on synthetic data: images/s, GFLOP/s, ledger peak, max RSS.",
    discussion: prose("""
      SGD with momentum 0.9 and learning rate 0.01, as peers/keras_bench.py. GFLOP/s counts a training
      step as 3× the forward convolution/linear FLOPs (2·MACs), as the peer does. peak_bytes is the
      memory ledger's peak over the whole run (parameters, gradients, optimizer state, the batch,
      activations and workspaces) and planned_peak_bytes the planner's prediction of it;
      max_rss_bytes is the process's peak resident set. Per timed step: fresh_block_bytes_per_step,
      the large blocks taken from the system rather than reused from the block cache (the kernel
      faults in and zeroes their pages), and user_seconds_per_step / system_seconds_per_step, the
      CPU seconds all threads spent in user and in kernel mode. With --budget,
      cache_released_for_budget_bytes: cached blocks the block cache returned to the system because
      the process's resident memory reached the budget (0 when the runtime reserve sufficed).
      Streamed training: --tile N (with --stream-blocks, --frozen-bn); --streamed-input generates the
      input region by region (deterministic noise) so an image larger than memory is never held.
      The JSON then adds the plan's tile, tiles, halo, stream_blocks, stream_split(s), keeps_last_tile, kept_tiles,
      cached_inputs (per segment, the layer whose input each tile keeps across the BatchNorm passes,
      or null) and estimated_relative_time.
      --budget refuses a run whose planned peak exceeds it, before allocating.
      """))

  @Option(help: "Model name (\(Zoo.names.joined(separator: ", "))).") var model = "fcn-large"
  @Option(help: "Input C×H×W or H×W.") var input = "3x1024x1024"
  @Option(help: "Batch size.") var batch = 4
  @Option(help: "Timed steps.") var steps = 5
  @Option(help: "Untimed warm-up steps.") var warmup = 1
  @Option(help: "Number of classes (default 10; an ONNX model keeps its own unless given).") var classes: Int?
  @Flag(help: "Forward passes only (inference mode).") var inference = false
  @Flag(help: "Print time per layer and pass (to stderr).") var profile = false
  @Option(help: "Gradient checkpointing: none, sqrt, all or N.") var checkpointing = "none"
  @Option(help: "Storage of kept tensors: fp32, fp16 or bf16.") var precision = "fp32"
  @OptionGroup var streaming: StreamingOptions
  @Flag(help: "With --tile: read the input region by region from a generator instead of holding it.") var streamedInput = false
  @Option(help: "With --tile: train on this image file (TIFF level 0, JPEG, PNG, PNM), read crop by crop, never held; sets --input.")
  var image: String?
  @Option(help: "Refuse to run when the planned peak exceeds this (e.g. 2GiB).") var budget: String?
  @OptionGroup var parallelOptions: ParallelOptions
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func run() throws {
    try global.apply()
    compute.apply()
    let parallel = try parallelOptions.start()
    if parallel != nil && inference { throw ValidationError("--parallel is for training steps, not --inference") }
    if parallel?.mode == .tiles && streaming.tile == nil { throw ValidationError("--parallel tiles needs --tile") }
    if parallel?.mode == .data && (streamedInput || image != nil) {
      throw ValidationError("--parallel data shares a resident batch; for one image read region by region use --parallel tiles")
    }
    if parallel?.mode == .pipeline && (streaming.tile != nil || checkpointing != "none") {
      throw ValidationError("--parallel pipeline already runs each micro-batch again in backward: leave out --tile and --checkpointing")
    }
    if let (c, mode) = parallel, mode == .data, batch < c.size {
      throw ValidationError("--parallel data: --batch \(batch) is the global batch and needs at least one image for each of the \(c.size) ranks")
    }
    // This rank's images of the global batch (all of them outside data-parallel runs).
    let mine = parallel.map { $0.mode == .data ? $0.communicator.share(of: batch) : 0..<batch } ?? 0..<batch
    let fileSource = try image.map { try RegionTileSource(URL(fileURLWithPath: $0)) }
    if image != nil && (streaming.tile == nil || inference || batch != 1) {
      throw ValidationError("--image trains one image read crop by crop: it needs --tile and --batch 1 (not --inference)")
    }
    let streamedInput = self.streamedInput || fileSource != nil
    let chw = try fileSource.map { Array($0.shape.dropFirst()) } ?? parseInput(input)
    if streamedInput && streaming.tile == nil { throw ValidationError("--streamed-input needs --tile") }
    if streamedInput && inference { throw ValidationError("--streamed-input is for training steps") }
    let budgetBytes = try budget.map { try ByteSize.parse($0) }
    guard batch >= 1, steps >= 1, warmup >= 0 else { throw ValidationError("--batch and --steps must be positive") }
    let zoo = try ModelLoader.load(model, classes: classes ?? (ModelLoader.isPretrained(model) ? nil : 10), inputChannels: chw[0]).model
    guard let policy = CheckpointingPolicy(checkpointing) else {
      throw ValidationError("--checkpointing must be none, sqrt, all or a number")
    }
    guard let storage = StoragePrecision(rawValue: precision) else { throw ValidationError("--precision must be fp32, fp16 or bf16") }
    ActivationStorage.precision = storage
    var base = zoo, streamChoice: StreamingChoice?
    if let settings = streaming.settings(inputResident: !streamedInput) {
      // Within the budget less the runtime's reserve and the file reader's tile cache.
      let c = try Planner.applyStreaming(zoo, settings, input: chw, batch: mine.count,
                                         budget: budgetBytes.map { $0 - runtimeReserveBytes - (fileSource?.cacheBytes ?? 0) })
      streamChoice = c
      base = c.model
      if !json { note(describe(c, settings)) }
    }
    let net = policy.apply(to: base)
    let shape = [batch] + chw
    _ = try net.checkInput(shape)
    let plan = try Planner.plan(net, name: model, input: chw, batch: mine.count, optimizer: .momentum, inputResident: !streamedInput)
    // A file's tile cache lives beside the step.
    var planned = (inference ? plan.peakInferenceBytes : plan.peakTrainingBytes) + (fileSource?.cacheBytes ?? 0)
    // Pipeline: this rank's stage, the split chosen within the budget.
    var pipelined: (PipelineParallel, PipelinePlan)?
    if let (c, mode) = parallel, mode == .pipeline {
      let pp = try parallelOptions.pipeline(net, input: chw, batch: batch, communicator: c,
                                            stageMemory: budgetBytes.map { $0 - runtimeReserveBytes }, optimizer: .momentum)
      planned = pp.1.stages[c.rank].peakBytes
      pipelined = pp
    }
    if let b = budgetBytes, planned + runtimeReserveBytes > b {
      throw CLIError("planned peak \(ByteSize.format(planned)) + the runtime's \(ByteSize.format(runtimeReserveBytes)) exceeds --budget \(ByteSize.format(b)); try --tile, --checkpointing, --precision fp16 or a smaller batch (tessera plan --budget lists what fits)")
    }
    if let b = budgetBytes { limitBlockCache(budget: b, planned: planned) }
    if !ModelLoader.isPretrained(model) { net.initializeParameters(seed: 0) }
    let macs = try Planner.plan(net, name: model, input: chw, batch: 1, optimizer: .sgd).macs
    MemoryLedger.shared.resetPeak()
    var g = SeededGenerator(seed: 1)
    var x: Tensor? = streamedInput ? nil : Tensor(uninitialized: shape, category: .data)
    if let x { for i in 0..<x.count { x.floats[i] = g.nextNormal() } }
    let source: TileSource = fileSource ?? SyntheticTileSource(shape: shape, seed: 1)
    let k = try net.outputShape(for: shape).last ?? 1  // the model's classes (an ONNX model's own)
    let labels = (0..<batch).map { _ in Int(g.next() % UInt64(k)) }
    let opt = SGD(momentum: 0.9)
    var losses = [Float]()
    var dp: DataParallel?
    if let (c, mode) = parallel {
      switch mode {
      case .data: dp = DataParallel(model: net, communicator: c, bucketBytes: parallelOptions.bucketMb << 20,
                                    synchronizedBatchNorm: parallelOptions.bn == "sync")
      case .tiles: for s in net.layers.compactMap({ $0.1 as? Streamed }) { s.collective = c }
      case .pipeline: break
      }
    }
    var xLocal = dp != nil ? x.map { $0.slice(images: mine) } : x
    if dp != nil {  // the global batch was made whole for the same numbers as one process; kept: this rank's share
      x = nil
      MemoryLedger.shared.resetPeak()
    }
    if let (pp, _) = pipelined {  // the batch stays with the first stage; each rank keeps its stage's weights
      if pp.communicator.rank != 0 { x = nil }
      xLocal = nil
      pp.releaseOtherStages(optimizer: nil)
      MemoryLedger.shared.resetPeak()
    }
    let bytes0 = parallel?.communicator.bytesReduced ?? 0, comm0 = parallel?.communicator.collectiveSeconds ?? 0
    func step() throws {
      if let (pp, _) = pipelined {
        let r = try pp.trainingStep(input: x, inputShape: chw, labels: labels)
        opt.step(net.namedParameters(), lr: 0.01)
        losses.append(r.loss)
      } else if let dp, let x = xLocal {
        dp.arm()
        let r = try net.trainingStep(input: x, labels: Array(labels[mine]), gradientScale: Float(mine.count) / Float(batch))
        dp.finish()
        opt.step(net.namedParameters(), lr: 0.01)
        losses.append(Float(dp.globalMean(Double(r.loss), count: mine.count)))
      } else if let x {
        if inference { _ = try net.predict(x) } else {
          losses.append(try net.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.01).loss)
        }
      } else {
        losses.append(try net.trainingStep(source: source, labels: labels, optimizer: opt, lr: 0.01).loss)
      }
    }
    for _ in 0..<warmup { try step() }
    Profiler.shared.enabled = profile
    let fresh0 = BlockCache.shared.freshBytes, cpu0 = cpuSeconds()
    let t0 = DispatchTime.now().uptimeNanoseconds
    for i in 0..<steps {
      try step()
      if !json { note("step \(i + 1)/\(steps)") }
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let cpu1 = cpuSeconds(), freshBytes = BlockCache.shared.freshBytes - fresh0
    let ips = Double(batch * steps) / seconds
    let allSteps = Double(steps + warmup)
    // Every rank's ledger peak, for rank 0's report.
    let rankPeaks = parallel.map { $0.communicator.allGather([Double(MemoryLedger.shared.peakBytes)]).map { Int($0[0]) } }
    guard quietRank == 0 else { return }  // rank 0 alone reports
    if profile {
      for (k, v) in Profiler.shared.entries.sorted(by: { $0.1 > $1.1 }) {
        note(String(format: "%8.1f ms/step  %@", v * 1000 / Double(steps), k))
      }
    }
    let flopPerImage = (inference ? 1.0 : 3.0) * 2 * Double(macs)
    var out: [String: Any] = [
      "bench": inference ? "inference" : "train", "model": model, "input": chw, "batch": batch, "steps": steps,
      "threads": Parallel.threadCount, "seconds": seconds, "images_per_second": (ips * 100).rounded() / 100,
      "seconds_per_step": seconds / Double(steps), "gflop_per_image": flopPerImage / 1e9,
      "gflops": (ips * flopPerImage / 1e8).rounded() / 10,
      "peak_bytes": MemoryLedger.shared.peakBytes, "max_rss_bytes": maxRSSBytes(),
      "parameters": net.parameterCount, "final_loss": Double(losses.last ?? 0), "checkpointing": checkpointing, "precision": precision, "compute": compute.effective,
      "planned_peak_bytes": planned,
      "fresh_block_bytes_per_step": freshBytes / steps,
      "user_seconds_per_step": (cpu1.user - cpu0.user) / Double(steps),
      "system_seconds_per_step": (cpu1.system - cpu0.system) / Double(steps),
    ]
    if let b = budgetBytes { out["budget_bytes"] = b; out["cache_released_for_budget_bytes"] = BlockCache.shared.releasedForCeilingBytes }
    if let (c, mode) = parallel {
      // Per step, averaged over every step run (warm-up included: the sums are the same each step).
      let bytes = Double(c.bytesReduced - bytes0) / allSteps
      out["ranks"] = c.size
      out["parallel"] = mode.rawValue
      out["rank_peak_bytes"] = rankPeaks ?? []
      out["local_batch"] = mine.count
      out["allreduce_bytes_per_step"] = Int(bytes)
      // A ring allreduce sends 2(N − 1)/N of the buffer from each rank.
      out["bytes_sent_per_step"] = Int(bytes * 2 * Double(c.size - 1) / Double(c.size))
      out["allreduce_seconds_per_step"] = (c.collectiveSeconds - comm0) / allSteps
      if let (pp, p) = pipelined {
        out["stages"] = p.stages.map { $0.names }
        out["micro_batches"] = pp.microBatches
        out["stage_planned_peak_bytes"] = p.stages.map(\.peakBytes)
      }
      if let dp {
        out["bn"] = parallelOptions.bn
        out["bucket_mb"] = parallelOptions.bucketMb
        out["buckets"] = dp.bucketSizes
        out["gradient_allreduce_seconds_per_step"] = dp.allreduceSeconds / allSteps
        out["allreduce_hidden_share"] = (dp.hiddenShare * 1000).rounded() / 1000
      }
    }
    if let c = streamChoice {
      out["tile"] = c.tile
      out["stream_blocks"] = c.blocks
      if let j = c.split { out["stream_split"] = j }
      if c.splits.count > 1 { out["stream_splits"] = c.splits }
      out["tiles"] = c.tiles
      out["halo"] = c.halo
      out["frozen_bn"] = streaming.frozenBn
      out["keeps_last_tile"] = c.keepsLastTile
      out["kept_tiles"] = c.keptTiles
      out["cached_inputs"] = cachedInputs(c)
      out["streamed_input"] = streamedInput
      if let image { out["image"] = image }
      out["estimated_relative_time"] = (c.relativeTime * 100).rounded() / 100
    }
    if json { printJSON(out) } else {
      print(String(format: "%@ %@ batch %d: %.2f images/s, %.1f GFLOP/s, ledger peak %@ (planned %@), max RSS %@",
                   model, input, batch, ips, ips * flopPerImage / 1e9, mib(MemoryLedger.shared.peakBytes), mib(planned),
                   mib(maxRSSBytes())))
    }
  }
}
