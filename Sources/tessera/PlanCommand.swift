import ArgumentParser
import Foundation
import Tessera
import TesseraKernels
import TesseraPlanner
import TesseraData
import TesseraReport

/// Options shared by `plan` and `rf`: which model, on what input.
struct ModelOptions: ParsableArguments {
  @Option(help: "A zoo model (\(Zoo.names.joined(separator: ", "))), a model-spec file (.json, .yaml) or an ONNX file (.onnx).")
  var model: String = "fcn-large"
  @Option(help: "Input C×H×W or H×W (channels from the model), e.g. 3x2400x2400.") var input: String = "3x224x224"
  @Option(help: "Classes (zoo models: default 1000; spec files give their own; an ONNX model keeps its own unless given).")
  var classes: Int?

  func validate() throws { if let c = classes { try checkRange(c, 1...(1 << 20), "--classes") } }

  func load() throws -> (name: String, model: Sequential, input: [Int]) {
    // An ONNX graph with a dynamic channel count or size takes them from --input.
    let hint = ModelLoader.isPretrained(model) ? try? parseInput(input, defaultChannels: 3) : nil
    let (name, model, channels) = try ModelLoader.load(model, classes: classes, inputChannels: hint?[0], side: hint?[1])
    return (name, model, try parseInput(input, defaultChannels: channels))
  }
}

struct PlanCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "plan",
    abstract: "Predict a run's memory, MACs and receptive field before it runs, and the batch a budget allows.",
    discussion: prose("""
      Bytes are predicted by dry-running every layer's forward and backward allocations (outputs, what
      each layer keeps for backward, kernel workspaces) — the same numbers the memory ledger measures
      in a real step (tests hold them equal to the byte). Peak training = parameters + gradients +
      optimizer state + the batch + the activation/workspace peak of one step; peak inference =
      parameters + the batch + the forward peak. Sizes print in binary units (1 MiB = 2^20 bytes);
      --budget takes B/KB/MB/GB (10^n) or KiB/MiB/GiB (2^n).
      """))

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "Images per batch.") var batch = 1
  @Option(help: "Storage of what a step keeps for backward: fp32, fp16 or bf16 (compute stays fp32).") var precision = "fp32"
  @Option(help: "Optimizer state to count: sgd (none), momentum (1×), adamw (2×).") var optimizer = "momentum"
  @Option(help: "Memory budget, e.g. 8GiB: report the largest batches that fit and what would fit.") var budget: String?
  @Option(help: "Gradient checkpointing: none, sqrt, all or N (top-level blocks per segment).") var checkpointing = "none"
  @OptionGroup var streaming: StreamingOptions
  @Flag(help: "With --tile: the input is read region by region, never held whole (images larger than memory).")
  var streamedInput = false
  @Option(help: "Batches a training run's loader decodes ahead (as train --prefetch): (N + 1) batches are counted beside the step.")
  var prefetch = 2
  @Option(help: "Also write the plan as one self-contained HTML page: bytes per layer, receptive-field growth and, with --budget, every memory mode with its largest batch.")
  var html: String?
  @Option(help: ArgumentHelp("Predict the time per step on this many machines (e.g. 8 or 64; several: 2,8,64).",
                              discussion: "From one process's measured step (--step-seconds, or one measured here at --batch) and a ring allreduce over --link-gbps."))
  var ranks: String?
  @Option(help: "With --ranks: the link between machines in Gbit/s.") var linkGbps: Double = 10
  @Option(help: "With --ranks: data (each rank a share of the batch) or tiles (each image's tiles spread; needs --tile).") var parallel = "data"
  @Option(help: "With --ranks: seconds of one process's training step at this --batch (from tessera bench train --json); measured here when left out.")
  var stepSeconds: Double?
  @Option(help: ArgumentHelp("Split the network into this many consecutive stages for mpirun -np N tessera train --parallel pipeline.",
                              discussion: "Each stage's planned peak (exact: its parameters, gradients and optimizer state, one micro-batch's step with re-materialisation, the other micro-batches' stored inputs) fits --stage-memory; the stages' MACs are as even as that allows."))
  var stages: Int?
  @Option(help: "With --stages: the memory of each rank, e.g. 2GiB.") var stageMemory: String?
  @Option(help: "With --stages: micro-batches per batch (as train --micro-batches).") var microBatches = 4
  @Flag(help: "Print one JSON object.") var json = false
  @OptionGroup var global: GlobalOptions
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    try checkRange(batch, 1...Limits.maxBatch, "--batch")
    try checkRange(prefetch, 1...64, "--prefetch")
    guard OptimizerKind(rawValue: optimizer) != nil else {
      throw ValidationError("--optimizer must be sgd, momentum or adamw, got '\(optimizer)'")
    }
    guard ["fp32", "fp16", "bf16"].contains(precision) else {
      throw ValidationError("--precision must be fp32, fp16 or bf16, got '\(precision)'")
    }
    guard CheckpointingPolicy(checkpointing) != nil else {
      throw ValidationError("--checkpointing must be none, sqrt, all or a number of blocks per segment")
    }
    if let r = ranks { _ = try rankList(r) }
    guard linkGbps.isFinite, linkGbps > 0 else { throw ValidationError("--link-gbps must be a positive number, got \(linkGbps)") }
    guard parallel == "data" || parallel == "tiles" else { throw ValidationError("--parallel must be data or tiles, got '\(parallel)'") }
    if parallel == "tiles" && ranks != nil && streaming.tile == nil { throw ValidationError("--parallel tiles needs --tile") }
    if let t = stepSeconds, !(t.isFinite && t > 0) { throw ValidationError("--step-seconds must be a positive number") }
    if let n = stages { try checkRange(n, 1...10_000, "--stages") }
    try checkRange(microBatches, 1...Limits.maxBatch, "--micro-batches")
    if stages == nil && stageMemory != nil { throw ValidationError("--stage-memory goes with --stages N") }
    if stages != nil && (streaming.tile != nil || checkpointing != "none") {
      throw ValidationError("--stages plans a pipeline, which runs each micro-batch again in backward itself: leave out --tile and --checkpointing")
    }

  }

  func run() throws {
    try global.apply()
    compute.apply()
    ActivationStorage.precision = StoragePrecision(rawValue: precision)!
    let (name, loaded, input) = try modelOptions.load()
    let opt = OptimizerKind(rawValue: optimizer)!
    if streamedInput && streaming.tile == nil { throw ValidationError("--streamed-input needs --tile") }
    var base = loaded, streamChoice: StreamingChoice?
    if let s = streaming.settings(inputResident: !streamedInput) {
      let c = try Planner.applyStreaming(loaded, s, input: input, batch: batch, budget: try budget.map { try ByteSize.parse($0) - runtimeReserveBytes },
                                         optimizer: opt)
      base = c.model
      streamChoice = c
    }
    let model = CheckpointingPolicy(checkpointing)!.apply(to: base)
    let plan = try Planner.plan(model, name: name, input: input, batch: batch, optimizer: opt, inputResident: !streamedInput)
    // (A streamed model's advice is about the batch: its tiles answer the resolution question.)
    let advice = try budget.map { try Planner.advise(model, input: input, batch: batch, optimizer: opt,
                                                    budget: try ByteSize.parse($0), inputResident: !streamedInput,
                                                    resolutionAdvice: streamChoice == nil) }
    // What a training run holds beside the step: the same count `train` uses to choose.
    func loaderBytes(_ b: Int) -> Int { streamedInput ? 0 : BatchLoader.bytesInFlight(batch: b, imageShape: input, prefetch: prefetch) }
    let modes = try budget.map { Planner.chooseMode(loaded, input: input, batch: batch, optimizer: opt, budget: try ByteSize.parse($0),
                                                    extraBytes: loaderBytes, runtimeReserve: runtimeReserveBytes) }
    let runPeak = plan.peakTrainingBytes + loaderBytes(batch) + runtimeReserveBytes
    if let path = html {
      let budgetBytes = try budget.map { try ByteSize.parse($0) }
      var page = HTMLPage(title: "Tessera plan: \(name) on \(batch) × \(input.map(String.init).joined(separator: "×"))",
                          subtitle: esc("kept tensors in \(precision), \(opt.rawValue), checkpointing \(checkpointing), \(plan.threads) threads; \(grouped(plan.parameters)) parameters, \(String(format: "%.2f", Double(plan.macs) / 1e9)) G MACs per image; planned training peak \(ByteSize.format(plan.peakTrainingBytes)), with the loader's batches and the runtime reserve \(ByteSize.format(runPeak))"))
      page.add("layers", "Bytes per layer", PlanFigures.bytesPerLayer(plan, budget: budgetBytes))
      page.add("rf", "Receptive field", PlanFigures.receptiveField(plan))
      if let m = modes, let b = budgetBytes { page.add("modes", "What fits in \(ByteSize.format(b))", PlanFigures.modes(m.all, best: m.best, budget: b)) }
      do {
        try AtomicFile.write(Data(page.html.utf8), to: URL(fileURLWithPath: path))
      } catch {
        throw CLIError("\(path): cannot write the plan page (\(error.localizedDescription))")
      }
      if !json { note("plan page: \(path)") }
    }
    let cluster = try ranks.map { try clusterEstimates($0, model: model, plan: plan, streamChoice: streamChoice, input: input) }
    let pipeline = try stages.map {
      try Planner.planPipeline(model, input: input, batch: batch, microBatches: microBatches, stages: $0,
                               stageMemory: try stageMemory.map { try ByteSize.parse($0) }, optimizer: opt)
    }
    if json {
      var o = planJSON(plan, advice: advice)
      if let c = cluster { o["cluster"] = c.map(clusterJSON) }
      if let p = pipeline {
        o["pipeline"] = ["microBatches": p.microBatches, "microBatch": p.microBatch, "stageMemory": p.stageMemory as Any? ?? NSNull(),
                         "imbalance": p.imbalance,
                         "stages": p.stages.map { ["blocks": $0.names, "input": $0.input, "macs": $0.macs, "peakBytes": $0.peakBytes] as [String: Any] }] as [String: Any]
      }
      o["run"] = ["loaderBytes": loaderBytes(batch), "loaderBatches": prefetch + 1, "runtimeReserveBytes": runtimeReserveBytes,
                  "peakBytes": runPeak] as [String: Any]
      func modeJSON(_ m: MemoryMode) -> [String: Any] {
        var d: [String: Any] = ["precision": m.precision.rawValue, "checkpointing": "\(m.checkpointing)", "description": m.description]
        if let s = m.streaming {
          d["streaming"] = ["tile": s.tile, "blocks": s.blocks ?? 0, "split": s.split as Any? ?? NSNull(), "splits": s.splits ?? []]
        }
        return d
      }
      if let m = modes {
        o["modes"] = m.all.map { modeJSON($0.mode).merging(["maxBatch": $0.batch, "peakTraining": $0.peakTrainingBytes,
                                                           "relativeTime": $0.relativeTime]) { a, _ in a } }
        if let b = m.best { o["chosenMode"] = modeJSON(b.mode).merging(["maxBatch": b.batch]) { a, _ in a } }
      }
      if let c = streamChoice {
        o["streaming"] = ["tile": c.tile, "blocks": c.blocks, "split": c.split as Any? ?? NSNull(), "splits": c.splits, "tiles": c.tiles, "halo": c.halo, "frozenBatchNorm": streaming.frozenBn,
                          "inputResident": !streamedInput, "estimatedRelativeTime": c.relativeTime,
                          "batchNormPasses": (c.model.layers[0].1 as! Streamed).passes().count,
                          "keepsLastTile": c.keepsLastTile, "keptTiles": c.keptTiles,
                          "cachedInputs": cachedInputs(c)] as [String: Any]
      }
      printJSON(o)
      return
    }
    printTable(plan)
    if let p = pipeline {
      print("pipeline of \(p.stages.count) stages, \(p.microBatches) micro-batches of up to \(p.microBatch)\(p.stageMemory.map { " within \(ByteSize.format($0)) each" } ?? ""); the slowest stage \(String(format: "%.2f", p.imbalance))× the mean:")
      for (i, st) in p.stages.enumerated() {
        print("  rank \(i): \(pad(st.names.joined(separator: ", "), 40)) \(String(format: "%6.2f", Double(st.macs) / 1e9)) G MACs/image  peak \(ByteSize.format(st.peakBytes))")
      }
    }
    for e in cluster ?? [] {
      print(String(format: "%@ %d ranks over %g Gbit/s: %.3f s per step (compute %.3f s, allreduce %.3f s of %@ sent per rank; overlapped %.3f s), speed-up %.2f, efficiency %.0f %%",
                   e.parallel, e.ranks, e.linkGbps, e.secondsPerStep, e.computeSeconds, e.commSeconds, ByteSize.format(e.bytesSent),
                   e.secondsPerStepOverlapped, e.speedup, e.efficiency * 100))
    }
    print("a training run adds: the loader's \(prefetch + 1) batches in flight \(ByteSize.format(loaderBytes(batch))) + runtime reserve \(ByteSize.format(runtimeReserveBytes)) → \(ByteSize.format(runPeak))")
    if let c = streamChoice { print(describe(c, streaming.settings(inputResident: !streamedInput)!)) }
    if let a = advice { printAdvice(a, plan: plan) }
    if let m = modes, !m.all.isEmpty {
      // What `train --budget` would choose by itself: exact BatchNorm, the loader's batches and the
      // reserve counted — not a verdict on the streaming flags given above.
      print("memory modes a training run fits in the budget (exact BatchNorm; with the loader's batches and the reserve; largest batch, estimated relative time):")
      for c in m.all { print("  \(pad(c.mode.description, 40)) batch \(pad(String(c.batch), 6)) peak \(ByteSize.format(c.peakTrainingBytes))  ×\(String(format: "%.2f", c.relativeTime))") }
      if let b = m.best { print("  → fastest that fits batch \(batch): \(b.mode)") }
    }
  }

  func rankList(_ s: String) throws -> [Int] {
    let v = s.split(separator: ",").map { Int($0) }
    guard !v.isEmpty, v.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 1_000_000 }) else {
      throw ValidationError("--ranks must be a number of machines (or several: 2,8,64), got '\(s)'")
    }
    return v.map { $0! }
  }

  /// The cost model's prediction for each rank count, from one process's step time.
  func clusterEstimates(_ r: String, model: Sequential, plan: Plan, streamChoice: StreamingChoice?, input: [Int]) throws -> [ClusterEstimate] {
    let t1 = try stepSeconds ?? measureStep(model, input: input)
    return try rankList(r).map { n in
      if parallel == "tiles" {
        // The streamed segments' share of the step: their MACs, weighted by the recomputation the
        // streaming estimate adds (relative time t: the rest is (1 − m) of the plain step).
        // (Streamed is transparent in the plan: its layers are named by their own blocks.)
        let blocks = Set(model.layers.compactMap { $0.1 as? Streamed }.flatMap { $0.segment.layers.map(\.0) })
        let streamed = plan.layers.filter { blocks.contains(String($0.name.split(separator: ".")[0])) }.reduce(0) { $0 + $1.macs }
        let m = plan.macs > 0 ? Double(streamed) / Double(plan.macs) : 0
        let rel = max(streamChoice?.relativeTime ?? 1, 1e-9)
        return try Planner.tileParallelEstimate(model: model, plan: plan, stepSeconds: t1, streamedShare: 1 - (1 - min(m, 1)) / rel,
                                                ranks: n, linkGbps: linkGbps)
      }
      return Planner.dataParallelEstimate(plan: plan, stepSeconds: t1, ranks: n, linkGbps: linkGbps)
    }
  }

  /// One training step timed here (after one untimed), at the planned batch on seeded noise.
  func measureStep(_ model: Sequential, input: [Int]) throws -> Double {
    if !json { note("measuring one training step at batch \(batch) (give --step-seconds to skip)…") }
    if !ModelLoader.isPretrained(modelOptions.model) { model.initializeParameters(seed: 0) }
    var g = SeededGenerator(seed: 1)
    let x = Tensor(uninitialized: [batch] + input, category: .data)
    for i in 0..<x.count { x.floats[i] = g.nextNormal() }
    let k = try model.outputShape(for: [batch] + input).last ?? 1
    let labels = (0..<batch).map { _ in Int(g.next() % UInt64(k)) }
    let opt = SGD(momentum: 0.9)
    return try medianSeconds(runs: 1) { _ = try model.trainingStep(input: x, labels: labels, optimizer: opt, lr: 0.01) }
  }

  func clusterJSON(_ e: ClusterEstimate) -> [String: Any] {
    ["parallel": e.parallel, "ranks": e.ranks, "linkGbps": e.linkGbps, "latencySeconds": e.latencySeconds,
     "singleStepSeconds": e.singleStepSeconds, "computeSeconds": e.computeSeconds, "allreduceBytes": e.allreduceBytes,
     "bytesSent": e.bytesSent, "messages": e.messages, "commSeconds": e.commSeconds, "secondsPerStep": e.secondsPerStep,
     "secondsPerStepOverlapped": e.secondsPerStepOverlapped, "speedup": e.speedup, "efficiency": e.efficiency]
  }

  func planJSON(_ p: Plan, advice: BudgetAdvice?) -> [String: Any] {
    var out: [String: Any] = [
      "model": p.model, "input": p.input, "batch": p.batch, "precision": precision, "compute": compute.effective,
      "optimizer": p.optimizer.rawValue,
      "checkpointing": checkpointing,
      "threads": p.threads, "parameters": p.parameters, "macs": p.macs,
      "bytes": [
        "input": p.inputBytes, "parameters": p.parameterBytes, "gradients": p.gradientBytes,
        "optimizer": p.optimizerBytes, "activations": p.activationBytes, "peakTraining": p.peakTrainingBytes,
        "peakInference": p.peakInferenceBytes,
      ],
      "receptiveField": rfJSON(p.receptiveField),
      "fullyConnectedShare": p.fullyConnectedShare,
      "layers": p.layers.map { l -> [String: Any] in
        ["name": l.name, "kind": l.kind, "output": l.output, "parameters": l.parameters, "macs": l.macs,
         "keptBytes": l.keptBytes, "workspaceBytes": l.workspaceBytes, "receptiveField": rfJSON(l.receptiveField)]
      },
    ]
    if let a = advice {
      out["budget"] = a.budgetBytes
      out["fits"] = a.fits
      out["maxBatch"] = ["training": a.maxTrainingBatch as Any? ?? NSNull(), "inference": a.maxInferenceBatch as Any? ?? NSNull()]
      out["suggestions"] = a.suggestions.map {
        ["change": $0.change, "batch": $0.batch, "input": $0.input, "peakTraining": $0.peakTrainingBytes,
         "peakInference": $0.peakInferenceBytes, "note": $0.note] as [String: Any]
      }
    }
    return out
  }

  func printTable(_ p: Plan) {
    print("\(p.model) on \(p.batch) × \(p.input.map(String.init).joined(separator: "×")), kept tensors in \(precision), \(p.optimizer.rawValue), \(p.threads) threads")
    var rows = [["layer", "kind", "output", "params", "MACs/img", "kept", "RF"]]
    for l in p.layers {
      let rf = l.receptiveField.global ? "global" : l.receptiveField.size.map(String.init).joined(separator: "×")
      rows.append([l.name, l.kind, l.output.map(String.init).joined(separator: "×"), grouped(l.parameters), grouped(l.macs),
                   ByteSize.format(l.keptBytes), rf])
    }
    printColumns(rows, right: [2, 3, 4, 5, 6])
    print("")
    print("parameters        \(grouped(p.parameters))")
    print("MACs per image    \(grouped(p.macs))  (\(String(format: "%.2f", Double(p.macs) / 1e9)) G)")
    if p.fullyConnectedShare > 0 {
      print(String(format: "FC share          %.1f %% of the parameters are in fully connected layers", p.fullyConnectedShare * 100))
    }
    let rfText = p.receptiveField.global ? "global (the whole input)" : p.receptiveField.size.map(String.init).joined(separator: "×")
    print("receptive field   \(rfText), effective stride \(p.receptiveField.stride.map(String.init).joined(separator: "×"))")
    print("bytes (binary units):")
    for (k, v) in [("input batch", p.inputBytes), ("parameters", p.parameterBytes), ("gradients", p.gradientBytes),
                   ("optimizer state", p.optimizerBytes), ("activations+workspace", p.activationBytes),
                   ("peak training", p.peakTrainingBytes), ("peak inference", p.peakInferenceBytes)] {
      print("  " + pad(k, 24) + pad(ByteSize.format(v), 12, right: true) + "  (\(grouped(v)) B)")
    }
  }

  func printAdvice(_ a: BudgetAdvice, plan p: Plan) {
    print("budget \(ByteSize.format(a.budgetBytes)) (\(grouped(a.budgetBytes)) B):")
    print("  largest training batch:  \(a.maxTrainingBatch.map(String.init) ?? "none — not even one image")")
    print("  largest inference batch: \(a.maxInferenceBatch.map(String.init) ?? "none — not even one image")")
    print(a.fits ? "  batch \(p.batch) fits." : "  batch \(p.batch) does NOT fit (needs \(ByteSize.format(p.peakTrainingBytes))).")
    for s in a.suggestions {
      print("  → \(s.note): batch \(s.batch), input \(s.input.map(String.init).joined(separator: "×")), peak \(ByteSize.format(s.peakTrainingBytes))")
    }
  }
}

struct RFCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "rf",
    abstract: "Receptive field per layer: size, effective stride and centre of the first unit, in input pixels.")

  @OptionGroup var modelOptions: ModelOptions
  @Flag(help: "Print one JSON object.") var json = false

  func run() throws {
    let (name, model, input) = try modelOptions.load()
    let p = try Planner.plan(model, name: name, input: input, batch: 1, optimizer: .sgd)
    if json {
      printJSON(["model": name, "input": input, "receptiveField": rfJSON(p.receptiveField),
                 "layers": p.layers.map { ["name": $0.name, "kind": $0.kind, "output": Array($0.output.dropFirst()),
                                           "receptiveField": rfJSON($0.receptiveField)] as [String: Any] }])
      return
    }
    print("\(name) on \(input.map(String.init).joined(separator: "×"))")
    print(pad("layer", 26) + pad("kind", 18) + pad("output", 16, right: true) + pad("RF size", 12, right: true)
          + pad("stride", 10, right: true) + pad("centre", 14, right: true))
    for l in p.layers {
      let r = l.receptiveField
      print(pad(l.name, 26) + pad(l.kind, 18) + pad(l.output.dropFirst().map(String.init).joined(separator: "×"), 16, right: true)
            + pad(r.global ? "global" : r.size.map(String.init).joined(separator: "×"), 12, right: true)
            + pad(r.stride.map(String.init).joined(separator: "×"), 10, right: true)
            + pad(r.center.map { String(format: "%g", $0) }.joined(separator: ","), 14, right: true))
    }
  }
}

func rfJSON(_ r: ReceptiveField) -> [String: Any] {
  ["size": r.size, "stride": r.stride, "center": r.center, "global": r.global]
}

func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
  let c = s.count
  guard c < n else { return s + " " }
  return right ? String(repeating: " ", count: n - c) + s : s + String(repeating: " ", count: n - c)
}

func grouped(_ v: Int) -> String {
  let s = String(v)
  var out = ""
  for (i, ch) in s.reversed().enumerated() {
    if i > 0 && i % 3 == 0 && ch != "-" { out.append(",") }
    out.append(ch)
  }
  return String(out.reversed())
}
