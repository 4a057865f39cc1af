import Foundation
import Tessera
import TestSupport
import XCTest

/// Runs under `mpirun` with the MPI build of `tessera` (`swift build --traits MPI --scratch-path
/// .build-mpi --product tessera`, or TESSERA_MPI_BINARY); skipped with a message where Open MPI or
/// that build is absent (`.ci/run` installs and builds both).
final class MPITests: TemporaryDirectoryTestCase {
  static var packageRoot: URL {
    var u = CLI.productsDirectory
    while u.path != "/" {
      if FileManager.default.fileExists(atPath: u.appendingPathComponent("Package.swift").path) { return u }
      u.deleteLastPathComponent()
    }
    return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
  }

  var mpiBinary: String {
    get throws {
      let path = ProcessInfo.processInfo.environment["TESSERA_MPI_BINARY"]
        ?? Self.packageRoot.appendingPathComponent(".build-mpi/debug/tessera").path
      guard FileManager.default.isExecutableFile(atPath: "/usr/bin/mpirun") || FileManager.default.isExecutableFile(atPath: "/usr/local/bin/mpirun") else {
        throw XCTSkip("MPI tests skip: no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
      }
      guard FileManager.default.isExecutableFile(atPath: path) else {
        throw XCTSkip("MPI tests skip: no MPI build at \(path) (swift build --traits MPI --scratch-path .build-mpi --product tessera)")
      }
      return path
    }
  }

  /// `mpirun -np N tessera args` (or MPMD `apps`), ended after `limit` seconds.
  func mpirun(_ n: Int, _ args: [String], env: [String: String] = [:], limit: Double = 180) throws -> (CLIResult, Double) {
    try mpirun(["-np", String(n), try mpiBinary] + args, env: env, limit: limit)
  }

  func mpirun(_ tail: [String], env: [String: String] = [:], limit: Double = 180) throws -> (CLIResult, Double) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["mpirun", "--allow-run-as-root", "--oversubscribe"] + tail
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    let out = dir.appendingPathComponent("mpirun.out"), err = dir.appendingPathComponent("mpirun.err")
    FileManager.default.createFile(atPath: out.path, contents: nil)
    FileManager.default.createFile(atPath: err.path, contents: nil)
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = try FileHandle(forWritingTo: err)
    let t0 = Date()
    try p.run()
    let deadline = Date().addingTimeInterval(limit)
    while p.isRunning && Date() < deadline { usleep(50_000) }
    if p.isRunning {
      p.terminate()
      p.waitUntilExit()
      XCTFail("mpirun \(tail.joined(separator: " ")) still running after \(limit) s")
    }
    p.waitUntilExit()
    let r = CLIResult(status: p.terminationStatus, stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    return (r, Date().timeIntervalSince(t0))
  }

  /// One process of the MPI build, without mpirun.
  func one(_ args: [String]) throws -> CLIResult {
    try CLI.run(args, binary: URL(fileURLWithPath: try mpiBinary))
  }

  func batch(_ name: String, _ shape: [Int], labels: [Int], seed: UInt64) throws -> String {
    let url = dir.appendingPathComponent(name)
    try SafeTensors.write([("input", randomTensor(shape, seed: seed)), ("labels", .labels(labels, dtype: .int64))], to: url)
    return url.path
  }

  func assertSame(_ a: String, _ b: String, rtol: Float = 1e-5, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let x = try SafeTensors.read(URL(fileURLWithPath: a)), y = try SafeTensors.read(URL(fileURLWithPath: b))
    XCTAssertEqual(Set(x.tensors.keys), Set(y.tensors.keys), what, file: file, line: line)
    for (name, t) in x.tensors {
      let e = maxRelativeError(try XCTUnwrap(y.tensors[name]).toArray(), t.toArray())
      XCTAssertLessThanOrEqual(e, rtol, "\(what): \(name)", file: file, line: line)
    }
  }

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func testDataParallelStepEqualsOneProcessAtTheSameGlobalBatch() throws {
    let b = try batch("b.safetensors", [5, 3, 64, 64], labels: [0, 3, 1, 4, 2], seed: 11)
    let common = ["step", "--classes", "5", "--batch", b, "--threads", "1"]
    var r = try one(common + ["--out", path("one.safetensors")])
    XCTAssertEqual(r.status, 0, r.stderr)
    for n in [2, 3] {
      let (m, _) = try mpirun(n, common + ["--out", path("dp\(n).safetensors"), "--parallel", "data"])
      XCTAssertEqual(m.status, 0, m.stderr)
      // Synchronized BatchNorm: loss, logits and every gradient as one process on all 5 images.
      try assertSame(path("one.safetensors"), path("dp\(n).safetensors"), "\(n) ranks, --bn sync")
      XCTAssertEqual(m.stdout.components(separatedBy: "wrote loss").count, 2, "rank 0 alone reports: \(m.stdout)")
    }
    // Each rank's own BatchNorm statistics: a different step (so the check above can fail).
    let (m, _) = try mpirun(2, common + ["--out", path("local.safetensors"), "--bn", "local"])
    XCTAssertEqual(m.status, 0, m.stderr)
    let x = try SafeTensors.read(URL(fileURLWithPath: path("one.safetensors"))), y = try SafeTensors.read(URL(fileURLWithPath: path("local.safetensors")))
    XCTAssertGreaterThan(maxRelativeError(y.tensors["grad.stem.conv.weight"]!.toArray(), x.tensors["grad.stem.conv.weight"]!.toArray()), 1e-3)
    // More ranks than images: refused, by rank 0 only.
    r = try one(["step", "--classes", "5", "--batch", b, "--out", path("x.safetensors"), "--parallel", "data"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("mpirun -np 2 tessera"), r.stderr)
  }

  func testTileParallelStepEqualsTheStreamedStep() throws {
    let b = try batch("big.safetensors", [1, 3, 160, 160], labels: [2], seed: 12)
    let common = ["step", "--classes", "5", "--batch", b, "--threads", "1", "--tile", "64"]
    for (name, extra) in [("one", ["--stream-blocks", "3"]), ("split", ["--stream-blocks", "3", "--stream-split", "1"]),
                          ("frozen", ["--stream-blocks", "2", "--frozen-bn"])] {
      let r = try one(common + extra + ["--out", path("\(name)1.safetensors")])
      XCTAssertEqual(r.status, 0, r.stderr)
      for n in name == "one" ? [2, 3] : [2] {
        let (m, _) = try mpirun(n, common + extra + ["--out", path("\(name)\(n)r.safetensors"), "--parallel", "tiles"])
        XCTAssertEqual(m.status, 0, m.stderr)
        try assertSame(path("\(name)1.safetensors"), path("\(name)\(n)r.safetensors"), "\(name), \(n) ranks")
      }
    }
    // and the streamed step equals the plain one (so the chain reaches the whole-image step)
    let r = try one(["step", "--classes", "5", "--batch", b, "--threads", "1", "--out", path("plain.safetensors")])
    XCTAssertEqual(r.status, 0, r.stderr)
    // (two float-rounding differences in a row: streamed vs plain, then 2 ranks vs 1)
    try assertSame(path("plain.safetensors"), path("one2r.safetensors"), rtol: 3e-5, "plain vs 2 ranks")
  }

  func testBenchTrainUnderMpirunReportsOnceAndMatchesOneProcess() throws {
    let args = ["bench", "train", "--model", "fcn-large", "--input", "3x64x64", "--batch", "4", "--steps", "2",
                "--warmup", "1", "--threads", "1", "--json"]
    let single = try one(args)
    XCTAssertEqual(single.status, 0, single.stderr)
    let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(single.stdout.utf8)) as? [String: Any])
    let (m, _) = try mpirun(2, args)
    XCTAssertEqual(m.status, 0, m.stderr)
    let lines = m.stdout.split(separator: "\n")
    XCTAssertEqual(lines.count, 1, "one JSON object, from rank 0: \(m.stdout)")
    let d = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
    XCTAssertEqual(d["ranks"] as? Int, 2)
    XCTAssertEqual(d["local_batch"] as? Int, 2)
    // Three updates with momentum on the same global batch: the same loss as one process.
    let l1 = try XCTUnwrap(s["final_loss"] as? Double), l2 = try XCTUnwrap(d["final_loss"] as? Double)
    XCTAssertEqual(l2, l1, accuracy: 1e-4 * max(1, abs(l1)))
    // Every trainable gradient is summed once per step, and BatchNorm's few sums beside it.
    let grads = try XCTUnwrap(d["buckets"] as? [Int]).reduce(0, +)
    XCTAssertGreaterThan(grads, 0)
    XCTAssertGreaterThanOrEqual(try XCTUnwrap(d["allreduce_bytes_per_step"] as? Int), grads)
    let share = try XCTUnwrap(d["allreduce_hidden_share"] as? Double)
    XCTAssert((0...1).contains(share))
    // Tile-parallel within a budget: each rank's ledger peak within its plan.
    let (t, _) = try mpirun(2, ["bench", "train", "--model", "fcn-large", "--input", "3x256x256", "--batch", "1", "--steps", "1",
                                "--warmup", "0", "--threads", "1", "--json", "--tile", "64", "--stream-blocks", "3",
                                "--parallel", "tiles", "--budget", "300MiB"])
    XCTAssertEqual(t.status, 0, t.stderr)
    let tj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(t.stdout.utf8)) as? [String: Any])
    XCTAssertLessThanOrEqual(try XCTUnwrap(tj["peak_bytes"] as? Int), try XCTUnwrap(tj["planned_peak_bytes"] as? Int))
    XCTAssertEqual(tj["parallel"] as? String, "tiles")
  }

  func testFaultsStopEveryRankWithAClearErrorAndWriteNothing() throws {
    let b = try batch("b.safetensors", [4, 3, 32, 32], labels: [0, 1, 2, 3], seed: 13)
    let args = ["step", "--classes", "4", "--batch", b, "--threads", "1", "--out", path("x.safetensors")]
    // Ranks started with different settings: refused before any work.
    let bin = try mpiBinary
    var (r, _) = try mpirun(["-np", "1", bin] + args + [":", "-np", "1", bin] + args + ["--seed", "3"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("rank 1 started with other settings or another build than rank 0"), r.stderr)
    // A rank killed mid-step: the others are stopped by mpirun, quickly.
    var seconds = 0.0
    (r, seconds) = try mpirun(2, args, env: ["TESSERA_FAULT": "1:3:kill"], limit: 120)
    XCTAssertNotEqual(r.status, 0)
    XCTAssertLessThan(seconds, 60)
    XCTAssert(r.stderr.contains("signal 9") || r.stderr.contains("Killed"), r.stderr)
    // A rank that hangs: the others give up after --comm-timeout, naming what they waited for.
    (r, seconds) = try mpirun(2, args + ["--comm-timeout", "5"], env: ["TESSERA_FAULT": "1:3:stop"], limit: 120)
    XCTAssertNotEqual(r.status, 0)
    XCTAssertLessThan(seconds, 60)
    XCTAssert(r.stderr.contains("no answer from the other ranks within 5 s"), r.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: path("x.safetensors")), "nothing written")
    // train does not share its work yet: refused, its folder not made.
    (r, _) = try mpirun(2, ["train", "--data", dir.path, "--out", path("run")])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("train does not run under mpirun yet"), r.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: path("run")))
  }
}

/// Without MPI built in, a parallel mode says how to get it (no Open MPI needed for this one).
final class ParallelHintTests: TemporaryDirectoryTestCase {
  func testTheDefaultBuildExplainsHowToBuildWithMPI() throws {
    let r = try CLI.run(["step", "--batch", "none.safetensors", "--out", dir.appendingPathComponent("x").path, "--parallel", "data"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssert(r.stderr.contains("--traits MPI"), r.stderr)
    let p = try CLI.run(["step", "--batch", "none.safetensors", "--out", "x", "--parallel", "pipeline"])
    XCTAssert(p.stderr.contains("--parallel pipeline is not built yet"), p.stderr)
  }
}
