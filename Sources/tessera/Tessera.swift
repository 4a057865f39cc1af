import ArgumentParser
import Foundation
import Tessera
import TesseraKernels

@main
struct TesseraCLI: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tessera",
    abstract: "Train and run convolutional networks on images too large for memory.",
    discussion: """
      Quick start:
        swift run -c release tessera demo      train a small model on built-in synthetic data
        tessera plan --model resnet50 --input 3x2400x2400 --budget 16GiB   will it fit? what batch?
        tessera rf --model vgg16               receptive field layer by layer
        tessera step --model fcn-large ...     one forward+backward on a batch, gradients to safetensors
        tessera bench train --json             training throughput and memory of a zoo model

      Threads: --threads N on any command, or TESSERA_THREADS=N (default: all cores).
      Results go to stdout, progress and warnings to stderr; --json prints one JSON object.
      """,
    subcommands: [DemoCommand.self, PlanCommand.self, RFCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, PreviewCommand.self, SplitCommand.self, PCACommand.self, StepCommand.self, BenchCommand.self]
  )
}

struct GlobalOptions: ParsableArguments {
  @Option(name: .long, help: "Worker threads for the kernels (default: TESSERA_THREADS or all cores).")
  var threads: Int?

  func apply() throws {
    if let t = threads {
      guard t >= 1 else { throw ValidationError("--threads must be at least 1, got \(t)") }
      Parallel.threadCount = t
    }
  }
}

/// Prints one JSON object on stdout, keys sorted.
func printJSON(_ object: [String: Any]) {
  if let d = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]),
     let s = String(data: d, encoding: .utf8)
  {
    print(s)
  }
}

/// Writes a line to stderr (progress, warnings).
func note(_ s: String) {
  FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

/// The process's peak resident set size in bytes.
func maxRSSBytes() -> Int {
  var u = rusage()
  getrusage(RUSAGE_SELF.rawValue, &u)
  return Int(u.ru_maxrss) * 1024
}

/// "3x1024x768" or "1024x768" (channels default) → [C, H, W].
func parseInput(_ s: String, defaultChannels: Int = 3) throws -> [Int] {
  let parts = s.lowercased().split(separator: "x").map { Int($0) }
  guard parts.allSatisfy({ ($0 ?? 0) > 0 }), parts.count == 2 || parts.count == 3 else {
    throw ValidationError("--input must look like 3x1024x1024 or 1024x768, got '\(s)'")
  }
  let v = parts.map { $0! }
  return v.count == 3 ? v : [defaultChannels] + v
}

func mib(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
