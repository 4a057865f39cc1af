#if MPI
import CMPI
#endif
import Foundation
import Tessera

/// A run that cannot be spread over processes as asked, said in words that name the fix.
public struct DistributedError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// The processes of one run, over Open MPI. All MPI calls are made by one thread of its own (MPI is
/// initialised there, MPI_THREAD_FUNNELED), in the order they were asked for, so the ranks issue
/// their collectives in the same order whatever the compute threads do. A blocking sum is asked
/// for and waited on; `start` returns a request to wait on later — the gradient buckets run while
/// backward goes on. The MPI thread polls a non-blocking collective (MPI_Test) with short sleeps
/// instead of spinning in a blocking one, leaving the cores to the compute threads.
///
/// No answer within `timeout` seconds (a rank died, hangs or took another path) ends this process
/// with a message naming the collective; `mpirun` then stops the others.
public final class Communicator: Collective, @unchecked Sendable {
  public let rank: Int
  public let size: Int
  /// Seconds a collective may wait for the other ranks.
  public var timeout: Double
  /// Payload bytes this rank put into allreduces.
  public var bytesReduced: Int {
    queue.lock.lock()
    defer { queue.lock.unlock() }
    return queue.bytes
  }
  /// Seconds the MPI thread spent inside collectives.
  public var collectiveSeconds: Double {
    queue.lock.lock()
    defer { queue.lock.unlock() }
    return queue.seconds
  }

  final class Job {
    let name: String
    let bytes: Int
    let body: () -> Void
    let done = DispatchSemaphore(value: 0)
    var seconds = 0.0
    init(_ name: String, bytes: Int, _ body: @escaping () -> Void) {
      self.name = name
      self.bytes = bytes
      self.body = body
    }
  }

  /// A collective under way; `wait` returns when it is done.
  public final class Request {
    let job: Job
    let owner: Communicator
    fileprivate init(_ job: Job, _ owner: Communicator) {
      self.job = job
      self.owner = owner
    }
    /// Seconds it took on the MPI thread (after `wait`).
    public var seconds: Double { job.seconds }
    public func wait() {
      if job.done.wait(timeout: .now() + owner.timeout) == .timedOut {
        Communicator.fail("rank \(owner.rank) of \(owner.size): no answer from the other ranks within \(Int(owner.timeout)) s in \(job.name) — a rank stopped, hangs or is running other settings. Stopping (--comm-timeout sets the limit)")
      }
      job.done.signal()  // a request may be waited on twice
    }
  }

  /// The jobs waiting for the MPI thread.
  final class Queue: @unchecked Sendable {
    let lock = NSCondition()
    var jobs: [Job] = []
    var seconds = 0.0, bytes = 0
  }
  private let queue = Queue()
  private var thread: Thread?

  /// The run's communicator when this process was started by `mpirun` with the MPI build; nil for
  /// one process.
  public private(set) static var shared: Communicator?

  /// Whether this binary was built with Open MPI inside.
  public static var isAvailable: Bool {
    #if MPI
      return true
    #else
      return false
    #endif
  }

  /// The rank and size `mpirun` gave this process (from its environment), or nil when not started
  /// by mpirun. Known before MPI is initialised, and to a binary without MPI.
  public static var launch: (rank: Int, size: Int)? {
    let env = ProcessInfo.processInfo.environment
    guard let s = env["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init) ?? env["PMI_SIZE"].flatMap(Int.init),
          let r = env["OMPI_COMM_WORLD_RANK"].flatMap(Int.init) ?? env["PMI_RANK"].flatMap(Int.init)
    else { return nil }
    return (r, s)
  }

  /// How to get a `tessera` that can run in parallel.
  public static let buildHint = "this tessera was built without MPI. Build it with Open MPI inside: apt-get install openmpi-bin libopenmpi-dev, then swift build -c release --traits MPI (see README, \"Beyond one machine\")"

  /// Starts MPI (once) when the process runs under mpirun; nil for a single process.
  public static func start(timeout: Double = 300) throws -> Communicator? {
    if let c = shared { return c }
    guard let l = launch, l.size > 1 else { return nil }
    guard isAvailable else { throw DistributedError("started by mpirun with \(l.size) ranks, but \(buildHint)") }
    let c = Communicator(timeout: timeout)
    shared = c
    return c
  }

  private init(timeout: Double) {
    self.timeout = timeout
    var r = 0, s = 1
    let ready = DispatchSemaphore(value: 0)
    let q = queue
    let t = Thread {
      #if MPI
        var provided: Int32 = 0
        MPI_Init_thread(nil, nil, tessera_mpi_thread_funneled(), &provided)
        var rr: Int32 = 0, ss: Int32 = 0
        MPI_Comm_rank(tessera_mpi_comm_world(), &rr)
        MPI_Comm_size(tessera_mpi_comm_world(), &ss)
        (r, s) = (Int(rr), Int(ss))
      #endif
      ready.signal()
      while true {
        q.lock.lock()
        while q.jobs.isEmpty { q.lock.wait() }
        let job = q.jobs.removeFirst()
        q.lock.unlock()
        let t0 = DispatchTime.now().uptimeNanoseconds
        job.body()
        job.seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        q.lock.lock()
        q.seconds += job.seconds
        q.lock.unlock()
        job.done.signal()
      }
    }
    t.name = "tessera-mpi"
    t.stackSize = 1 << 20
    thread = t
    t.start()
    ready.wait()
    rank = r
    size = s
  }

  /// Fault injection for the tests: TESSERA_FAULT=RANK:COUNT:kill|stop makes that rank kill or
  /// stop itself at its COUNT-th collective (a crashed or hung machine).
  private lazy var fault: (count: Int, signal: Int32)? = {
    let parts = (ProcessInfo.processInfo.environment["TESSERA_FAULT"] ?? "").split(separator: ":")
    guard parts.count == 3, Int(parts[0]) == rank, let n = Int(parts[1]) else { return nil }
    return (n, parts[2] == "stop" ? SIGSTOP : SIGKILL)
  }()
  private var submitted = 0

  private func submit(_ name: String, bytes: Int, _ body: @escaping () -> Void) -> Request {
    submitted += 1
    if let f = fault, f.count == submitted { kill(getpid(), f.signal) }
    let job = Job(name, bytes: bytes, body)
    queue.lock.lock()
    queue.bytes += bytes
    queue.jobs.append(job)
    queue.lock.signal()
    queue.lock.unlock()
    return Request(job, self)
  }

  /// Starts an in-place sum over the ranks; the buffer must stay untouched until `wait`.
  public func startSum(_ values: UnsafeMutablePointer<Float>, count: Int, name: String = "a gradient allreduce") -> Request {
    let p = SendablePointer(values)
    return submit(name, bytes: count * 4) {
      #if MPI
        Communicator.reduce(UnsafeMutableRawPointer(p.p), count: count, float: true)
      #endif
    }
  }

  public func allreduceSum(_ values: UnsafeMutablePointer<Float>, count: Int) {
    startSum(values, count: count, name: "an allreduce of \(count) floats").wait()
  }

  public func allreduceSum(_ values: UnsafeMutablePointer<Double>, count: Int) {
    let p = SendablePointer(values)
    submit("an allreduce of \(count) sums", bytes: count * 8) {
      #if MPI
        Communicator.reduce(UnsafeMutableRawPointer(p.p), count: count, float: false)
      #endif
    }.wait()
  }

  #if MPI
    /// MPI_Iallreduce in chunks that fit its Int32 count, polled to completion.
    static func reduce(_ p: UnsafeMutableRawPointer, count: Int, float: Bool) {
      let size = float ? 4 : 8, chunk = 1 << 28
      var done = 0
      while done < count {
        let n = min(chunk, count - done)
        var request = tessera_mpi_request_null()
        let rc = MPI_Iallreduce(tessera_mpi_in_place(), p + done * size, Int32(n), float ? tessera_mpi_float() : tessera_mpi_double(),
                                tessera_mpi_sum(), tessera_mpi_comm_world(), &request)
        if rc != 0 { fail("MPI_Iallreduce failed (error \(rc))") }
        var flag: Int32 = 0
        while flag == 0 {
          MPI_Test(&request, &flag, tessera_mpi_status_ignore())
          if flag == 0 { usleep(20) }
        }
        done += n
      }
    }
  #endif

  /// Sends `count` floats to rank `to` under `tag` (in chunks that fit MPI's Int32 count); the
  /// buffer must stay untouched until `wait`.
  public func send(_ values: UnsafeMutablePointer<Float>, count: Int, to: Int, tag: Int) -> Request {
    let p = SendablePointer(values)
    return submit("sending \(count) floats to rank \(to)", bytes: 0) {
      #if MPI
        Communicator.pointToPoint(p.p, count: count, peer: to, tag: tag, send: true)
      #endif
    }
  }

  /// Receives `count` floats from rank `from` under `tag` into `values`; returns when they are there.
  public func receive(_ values: UnsafeMutablePointer<Float>, count: Int, from: Int, tag: Int) {
    let p = SendablePointer(values)
    submit("receiving \(count) floats from rank \(from)", bytes: 0) {
      #if MPI
        Communicator.pointToPoint(p.p, count: count, peer: from, tag: tag, send: false)
      #endif
    }.wait()
  }

  #if MPI
    /// MPI_Isend / MPI_Irecv in chunks, polled to completion (on the MPI thread).
    static func pointToPoint(_ p: UnsafeMutablePointer<Float>, count: Int, peer: Int, tag: Int, send: Bool) {
      let chunk = 1 << 28
      var done = 0, part = 0
      repeat {
        let n = min(chunk, count - done)
        var request = tessera_mpi_request_null()
        // Tags below MPI's guaranteed 32767: the chunk number goes in the low bits.
        let t = Int32((tag * 8 + part) % 32_768)
        let rc = send
          ? MPI_Isend(p + done, Int32(n), tessera_mpi_float(), Int32(peer), t, tessera_mpi_comm_world(), &request)
          : MPI_Irecv(p + done, Int32(n), tessera_mpi_float(), Int32(peer), t, tessera_mpi_comm_world(), &request)
        if rc != 0 { fail("MPI_\(send ? "Isend" : "Irecv") failed (error \(rc))") }
        var flag: Int32 = 0
        while flag == 0 {
          MPI_Test(&request, &flag, tessera_mpi_status_ignore())
          if flag == 0 { usleep(20) }
        }
        done += n
        part += 1
      } while done < count
    }
  #endif

  func submitJob(_ name: String, bytes: Int, _ body: @escaping () -> Void) -> Request {
    submit(name, bytes: bytes, body)
  }

  /// A blocking in-place sum, called on the MPI thread itself (inside a job).
  static func sumOnThisThread(_ p: UnsafeMutablePointer<Float>, count: Int) {
    #if MPI
      reduce(UnsafeMutableRawPointer(p), count: count, float: true)
    #endif
  }

  /// Whether `flag` is true on any rank (e.g. one of them was asked to stop).
  public func any(_ flag: Bool) -> Bool {
    var v = [flag ? 1.0 : 0]
    allreduceSum(&v)
    return v[0] > 0
  }

  /// Refuses a run whose ranks were started with different settings or builds: every rank's
  /// fingerprint (a hash of its arguments and of its executable) must equal rank 0's.
  public func checkSameSettings(_ fingerprint: String) throws {
    let h = Self.fnv1a(fingerprint.utf8)
    let mine = [Double(h >> 32), Double(h & 0xffff_ffff)]
    let all = allGather(mine)
    let differ = all.indices.filter { all[$0] != all[0] }
    guard differ.isEmpty else {
      throw DistributedError("rank\(differ.count > 1 ? "s" : "") \(differ.map(String.init).joined(separator: ", ")) started with other settings or another build than rank 0: every rank must run the same tessera binary with the same arguments (refused before any work)")
    }
  }

  /// A fingerprint of this process's settings: its arguments and its executable's size and bytes.
  public static func fingerprint(arguments: [String] = CommandLine.arguments) -> String {
    var parts = Array(arguments.dropFirst())
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    if let d = try? Data(contentsOf: exe, options: .alwaysMapped) {
      // 8 bytes a round: the hash of a 30 MB executable takes a few milliseconds.
      let h = d.withUnsafeBytes { fnv1a($0.bindMemory(to: UInt64.self)) }
      parts.append("exe \(d.count) \(h)")
    }
    return parts.joined(separator: "\u{1}")
  }

  /// FNV-1a over words (bytes or 8-byte words).
  static func fnv1a<S: Sequence>(_ words: S) -> UInt64 where S.Element: FixedWidthInteger {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for w in words { h = (h ^ UInt64(truncatingIfNeeded: w)) &* 0x100_0000_01b3 }
    return h
  }

  /// Ends MPI after the ranks' last collective (a normal end of the command).
  public func finish() {
    submit("the end of the run (MPI_Finalize)", bytes: 0) {
      #if MPI
        MPI_Finalize()
      #endif
    }.wait()
  }

  /// Prints `message` and ends the process at once (no unwinding: the MPI thread may be blocked).
  public static func fail(_ message: String) -> Never {
    FileHandle.standardError.write(("error: " + message + "\n").data(using: .utf8)!)
    _exit(3)
  }
}

/// A raw pointer handed to the MPI thread.
struct SendablePointer<T>: @unchecked Sendable {
  let p: UnsafeMutablePointer<T>
  init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}
