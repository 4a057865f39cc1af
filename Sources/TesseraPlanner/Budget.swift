import Tessera
import TesseraKernels

/// A byte count written the way people write them: `8GiB`, `500MB`, `1.5 GiB`, `123456`.
/// KB/MB/GB/TB are powers of 10, KiB/MiB/GiB/TiB powers of 2.
public enum ByteSize {
  public struct ParseError: Error, CustomStringConvertible {
    public let text: String
    public var description: String {
      "'\(text)' is not a size: write e.g. 8GiB, 512MiB, 16GB or 1000000 (B/KB/MB/GB = 10ⁿ, KiB/MiB/GiB = 2ⁿ)"
    }
  }

  static let units: [(String, Double)] = [
    ("kib", 1024), ("mib", 1_048_576), ("gib", 1_073_741_824), ("tib", 1_099_511_627_776),
    ("kb", 1e3), ("mb", 1e6), ("gb", 1e9), ("tb", 1e12), ("b", 1),
  ]

  public static func parse(_ text: String) throws -> Int {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    var number = t, scale = 1.0
    for (u, f) in units where t.hasSuffix(u) {
      number = String(t.dropLast(u.count)).trimmingCharacters(in: .whitespaces)
      scale = f
      break
    }
    guard let v = Double(number), v >= 0, v.isFinite, v * scale < 9e18 else { throw ParseError(text: text) }
    return Int((v * scale).rounded())
  }

  /// "1.23 GiB (1,320,000,000 B)"-style text in binary units.
  public static func format(_ bytes: Int) -> String {
    let b = Double(bytes)
    if b >= Double(1 << 30) { return String(format: "%.2f GiB", b / Double(1 << 30)) }
    if b >= Double(1 << 20) { return String(format: "%.1f MiB", b / Double(1 << 20)) }
    if b >= 1024 { return String(format: "%.1f KiB", b / 1024) }
    return "\(bytes) B"
  }
}

import Foundation

/// A change of settings that would fit the budget, with its predicted peak.
public struct Suggestion: Sendable, Codable, Equatable {
  /// What changes: "batch" or "input".
  public var change: String
  public var batch: Int
  /// (C, H, W)
  public var input: [Int]
  public var peakTrainingBytes: Int
  public var peakInferenceBytes: Int
  public var note: String
}

/// What a memory budget allows.
public struct BudgetAdvice: Sendable, Codable {
  public var budgetBytes: Int
  /// Largest batch whose training step fits (nil: not even one image).
  public var maxTrainingBatch: Int?
  public var maxInferenceBatch: Int?
  /// Whether the requested batch trains within the budget.
  public var fits: Bool
  public var suggestions: [Suggestion]
}

extension Planner {
  /// Peak bytes for (input, batch), or nil when the model cannot take that input.
  static func peaks(_ model: Layer, input: [Int], batch: Int, optimizer: OptimizerKind, threads: Int,
                    inputResident: Bool = true) -> (Int, Int)? {
    guard let p = try? plan(model, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads,
                            inputResident: inputResident) else {
      return nil
    }
    return (p.peakTrainingBytes, p.peakInferenceBytes)
  }

  /// Largest n in 1...limit with fits(n) (fits is monotone: true then false), or nil.
  static func largest(upTo limit: Int, _ fits: (Int) -> Bool) -> Int? {
    guard fits(1) else { return nil }
    var lo = 1, hi = 2
    while hi <= limit && fits(hi) { lo = hi; hi *= 2 }
    hi = min(hi, limit + 1)
    while hi - lo > 1 {
      let mid = (lo + hi) / 2
      if fits(mid) { lo = mid } else { hi = mid }
    }
    return lo
  }

  /// The largest batches that fit `budget`, and — when the requested batch does not — the nearest
  /// settings that would: a smaller batch, or a smaller input of the same aspect ratio.
  public static func advise(
    _ model: Layer, input: [Int], batch: Int, optimizer: OptimizerKind = .momentum, budget: Int,
    threads: Int = Parallel.threadCount, inputResident: Bool = true, resolutionAdvice: Bool = true
  ) throws -> BudgetAdvice {
    _ = try plan(model, name: "", input: input, batch: batch, optimizer: optimizer, threads: threads, inputResident: inputResident)
    func peaks(_ model: Layer, input: [Int], batch: Int, optimizer: OptimizerKind, threads: Int) -> (Int, Int)? {
      Self.peaks(model, input: input, batch: batch, optimizer: optimizer, threads: threads, inputResident: inputResident)
    }
    let limit = 1 << 16
    let maxTrain = largest(upTo: limit) {
      (peaks(model, input: input, batch: $0, optimizer: optimizer, threads: threads)?.0 ?? .max) <= budget
    }
    let maxInfer = largest(upTo: limit) {
      (peaks(model, input: input, batch: $0, optimizer: optimizer, threads: threads)?.1 ?? .max) <= budget
    }
    var suggestions = [Suggestion]()
    let fits = (maxTrain ?? 0) >= batch
    if !fits, let b = maxTrain, let p = peaks(model, input: input, batch: b, optimizer: optimizer, threads: threads) {
      suggestions.append(Suggestion(change: "batch", batch: b, input: input, peakTrainingBytes: p.0,
                                    peakInferenceBytes: p.1, note: "largest batch that trains within the budget"))
    }
    // Resolution advice: the largest input of the same aspect ratio that trains at the requested batch.
    func scaled(_ permille: Int) -> [Int] {
      [input[0], max(1, input[1] * permille / 1000), max(1, input[2] * permille / 1000)]
    }
    // (Inputs too small for the model count as fitting during the search, so that the predicate
    // stays monotone; the answer must then be a valid input.)
    if resolutionAdvice, let s = largest(upTo: fits ? 8000 : 999, { permille in
      (peaks(model, input: scaled(permille), batch: batch, optimizer: optimizer, threads: threads)?.0 ?? 0) <= budget
    }), let p = peaks(model, input: scaled(s), batch: batch, optimizer: optimizer, threads: threads), p.0 <= budget {
      suggestions.append(Suggestion(
        change: "input", batch: batch, input: scaled(s), peakTrainingBytes: p.0, peakInferenceBytes: p.1,
        note: fits ? "largest input of this aspect ratio that trains at batch \(batch)"
          : "input shrunk, aspect ratio kept, to train at batch \(batch)"))
    }
    return BudgetAdvice(budgetBytes: budget, maxTrainingBatch: maxTrain, maxInferenceBatch: maxInfer, fits: fits,
                        suggestions: suggestions)
  }
}
