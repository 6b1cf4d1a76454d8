import Foundation
import Glibc

/// A Tansu broker (Apache-Kafka-compatible, in-memory storage) run as a child process on a loopback
/// port, for tests, demos and local development. Memory storage means a restart loses every topic,
/// record, committed offset and producer id.
///
/// Tansu creates a missing topic when a producer asks for its metadata (with its default partition
/// count); consumers do not create topics. Create topics explicitly with `KafkaAdmin`.
public final class DevelopmentBroker: @unchecked Sendable {  // `pid`, the only mutable state, is guarded by `lock`
    /// The Tansu executable.
    public let executable: String
    /// The loopback port the broker listens on (kept across `restart()`).
    public let port: UInt16
    /// The broker's stdout and stderr (appended across restarts).
    public let logPath: String

    private let lock = NSLock()
    private var pid: pid_t?

    /// The Tansu binary under mesa's data directory `home` (`<home>/bin/tansu`, where ops/install.sh puts it).
    public static func executable(home: URL) -> String { home.appendingPathComponent("bin/tansu").path }

    /// Starts the broker and waits until it accepts TCP connections.
    /// - Parameters:
    ///   - executable: the Tansu binary (`executable(home:)` for the installed one).
    ///   - port: the port to listen on; a free one when nil.
    ///   - logPath: where the broker's output goes; a file in the temporary directory when nil.
    ///   - startTimeout: how long to wait for the broker to accept connections.
    public init(executable: String, port: UInt16? = nil, logPath: String? = nil, startTimeout: Double = 10) throws {
        self.executable = executable
        guard FileManager.default.isExecutableFile(atPath: self.executable) else {
            throw KafkaError("no Tansu broker at \(self.executable): run ops/install.sh (or set MESA_HOME)")
        }
        self.port = try port ?? Self.freePort()
        self.logPath = logPath ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("mesa-tansu-\(getpid())-\(self.port).log")
        try start(timeout: startTimeout)
    }

    deinit { stop(grace: 0) }

    /// "127.0.0.1:<port>", for `bootstrap.servers`.
    public var bootstrapServers: String { "127.0.0.1:\(port)" }

    /// The broker process id while it runs.
    public var processIdentifier: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return pid
    }

    /// Whether the broker process is alive.
    public var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return reapIfExited()
    }

    /// Starts the broker on the same port again, after stopping it if it runs. Its memory is empty.
    public func restart(timeout: Double = 10) throws {
        stop()
        try start(timeout: timeout)
    }

    /// Stops the broker: SIGTERM, then SIGKILL after `grace` seconds (Tansu keeps serving open
    /// connections for a while after SIGTERM), and reaps it. Idempotent.
    public func stop(grace: Double = 1) {
        lock.lock()
        defer { lock.unlock() }
        guard let p = pid, reapIfExited() else {
            pid = nil
            return
        }
        kill(p, SIGTERM)
        let deadline = Date(timeIntervalSinceNow: grace)
        while Date() < deadline {
            if !reapIfExited() { return }
            usleep(20_000)
        }
        kill(p, SIGKILL)
        var status: Int32 = 0
        while waitpid(p, &status, 0) < 0 && errno == EINTR {}
        pid = nil
    }

    /// Whether the child runs; reaps it (and forgets its pid) when it has exited. Under `lock`.
    private func reapIfExited() -> Bool {
        guard let p = pid else { return false }
        var status: Int32 = 0
        let r = waitpid(p, &status, WNOHANG)
        if r == 0 { return true }
        pid = nil
        return false
    }

    private func start(timeout: Double) throws {
        lock.lock()
        defer { lock.unlock() }
        precondition(pid == nil, "the broker is running")
        guard !Self.accepts(port: port) else {
            throw KafkaError("port \(port) is already in use on 127.0.0.1")
        }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while true {
            let child = try spawn()
            pid = child
            while Date() < deadline {
                if Self.accepts(port: port) { return }
                if !reapIfExited() { break }  // exited: the port may still be held by the previous broker
                usleep(20_000)
            }
            if pid != nil {
                kill(child, SIGKILL)
                var status: Int32 = 0
                while waitpid(child, &status, 0) < 0 && errno == EINTR {}
                pid = nil
            }
            guard Date() < deadline else {
                throw KafkaError("Tansu did not accept connections on port \(port) within \(timeout) s; see \(logPath)")
            }
            usleep(200_000)
        }
    }

    private func spawn() throws -> pid_t {
        let url = "tcp://127.0.0.1:\(port)"
        let args = [executable, "broker", "--listener-url", url, "--advertised-listener-url", url]
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }  // keep the caller's sockets out of the broker
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, nil, argv, environ)
        guard rc == 0 else { throw KafkaError("starting \(executable): \(String(cString: strerror(rc)))") }
        return child
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), looked up at run time: Swift's Glibc
    /// module does not declare it.
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    static func accepts(port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = loopback(port)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// A port that was free on 127.0.0.1 a moment ago.
    public static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw KafkaError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = loopback(0)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw KafkaError("bind: \(String(cString: strerror(errno)))") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard named == 0 else { throw KafkaError("getsockname: \(String(cString: strerror(errno)))") }
        return UInt16(bigEndian: addr.sin_port)
    }

    private static func loopback(_ port: UInt16) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return addr
    }
}
