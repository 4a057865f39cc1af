import TesseraKernels
import Foundation
let n = Int(CommandLine.arguments.dropFirst().first ?? "1024")!
let a = Buffer(floats: n*n), b = Buffer(floats: n*n), c = Buffer(floats: n*n)
for i in 0..<n*n { a.floats[i] = Float(i % 7) * 0.1; b.floats[i] = Float(i % 5) * 0.1 }
for t in [1, 2] {
  Parallel.threadCount = t
  GEMM.sgemm(m: n, n: n, k: n, a: a.floats, lda: n, b: b.floats, ldb: n, c: c.floats, ldc: n)
  let t0 = Date()
  for _ in 0..<5 { GEMM.sgemm(m: n, n: n, k: n, a: a.floats, lda: n, b: b.floats, ldb: n, c: c.floats, ldc: n) }
  let dt = Date().timeIntervalSince(t0) / 5
  print(t, 2.0*Double(n*n*n)/dt/1e9)
}
