import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import Tensor
import TestSupport
import Testing

/// A `mesa serve` process on the tiny model against a real broker, with its own topics, consumer
/// group, state directory and log; and a client to publish events and collect results.
final class DaemonHarness: @unchecked Sendable {
    let dir: URL
    let bootstrap: String
    let prefix: String
    var group: String
    let modelPath: String
    let httpPort: Int
    let early: Double
    var stateDir: URL
    var process: Process?
    var logURL: URL
    private var launches = 0

    static let modelName = "tiny-daemon"

    /// The `mesa` executable next to the test bundle (built by `swift build --build-tests`).
    static var executable: URL {
        let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundleDir.appendingPathComponent("mesa"), bundleDir.deletingLastPathComponent().appendingPathComponent("mesa"),
                          TestPaths.repoRoot.appendingPathComponent(".build/debug/mesa")]
        where FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        return TestPaths.repoRoot.appendingPathComponent(".build/debug/mesa")
    }

    let steps: Int

    /// `prefix` names the topics (a fresh one by default); `steps` sets the edit's Adam steps (with
    /// early stopping off when given, so every edit takes a predictable time).
    init(bootstrap: String, label: String, prefix: String? = nil, steps: Int? = nil) throws {
        dir = try TestPaths.temporaryDirectory("daemon-\(label)")
        self.bootstrap = bootstrap
        self.prefix = prefix ?? "t\(UUID().uuidString.prefix(8).lowercased())"
        self.steps = steps ?? 8
        early = steps == nil ? 0.05 : 0
        group = "\(self.prefix)-\(label)"
        modelPath = dir.appendingPathComponent("\(Self.modelName).gguf").path
        try TinyModel.write(to: modelPath)
        stateDir = dir.appendingPathComponent("state")
        logURL = dir.appendingPathComponent("daemon.log")
        httpPort = try Self.freePort()
        try writeHparams()
    }

    deinit { kill9() }

    var topics: Topics {
        var t = Topics()
        t.factUpdates = "\(prefix).fact-updates"
        t.control = "\(prefix).control"
        t.results = "\(prefix).edit-results"
        t.deadLetters = "\(prefix).dead-letters"
        t.weightDeltas = "\(prefix).weight-deltas"
        return t
    }

    /// ROME on layer 1 of the tiny model without covariance statistics (no corpus needed).
    func writeHparams() throws {
        let d = dir.appendingPathComponent("hparams/rome")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        try TinyModel.romeHyperparameters(model: Self.modelName, steps: steps, earlyStop: early).write(to: d.appendingPathComponent("\(Self.modelName).json"))
        for method in ["memit", "alphaedit", "encore"] {
            let m = dir.appendingPathComponent("hparams/\(method)")
            try FileManager.default.createDirectory(at: m, withIntermediateDirectories: true)
            try TinyModel.memitHyperparameters(model: Self.modelName, method: method, steps: steps).write(to: m.appendingPathComponent("\(Self.modelName).json"))
        }
    }

    /// The config's "method" (the tests' default: ROME on layer 1 of the tiny model, which needs no
    /// key statistics; the daemon's own default is ENCORE).
    var method: String? = "rome"

    /// The config's "mesa" block (nil: none).
    var mesa: [String: Any]?

    /// The config's "batch" block (nil: none).
    var batch: [String: Any]?

    /// More top-level config settings (e.g. "retry", "lmdb_map_bytes").
    var settings: [String: Any] = [:]

    func writeConfig(maxEventBytes: Int = 8192, extra: [String: String] = [:], createTopics: Bool = true) throws -> URL {
        let t = topics
        var props = ["session.timeout.ms": "6000", "heartbeat.interval.ms": "1000", "topic.metadata.refresh.interval.ms": "2000"]
        for (k, v) in extra { props[k] = v }
        let c: [String: Any] = [
            "model": modelPath, "state_dir": stateDir.path, "hparams_dir": dir.appendingPathComponent("hparams").path, "threads": 1,
            "max_event_bytes": maxEventBytes,
            "kafka": ["bootstrap_servers": bootstrap, "group_id": group, "create_topics": createTopics,
                      "topics": ["fact_updates": t.factUpdates, "control": t.control, "results": t.results, "dead_letters": t.deadLetters,
                                 "weight_deltas": t.weightDeltas],
                      "properties": props],
            "http": ["listen": "127.0.0.1:\(httpPort)"],
            // The tiny model answers no canary fact; the guard's own tests turn it on with their canary file.
            "quality_guard": ["enabled": false],
        ].merging(mesa.map { ["mesa": $0] } ?? [:]) { a, _ in a }.merging(batch.map { ["batch": $0] } ?? [:]) { a, _ in a }.merging(method.map { ["method": $0] } ?? [:]) { a, _ in a }.merging(settings) { _, b in b }
        let url = dir.appendingPathComponent("mesa.json")
        try JSONSerialization.data(withJSONObject: c, options: [.sortedKeys]).write(to: url)
        return url
    }

    /// Starts `mesa serve` (appending to the log) and waits until /readyz answers 200.
    /// Starts `mesa arguments…` with `home` as MESA_HOME and the repository's schemas, its output
    /// appended to `log` after a "---- launch N" line.
    static func launch(_ arguments: [String], home: URL, log logURL: URL, launch: Int) throws -> Process {
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        var env = mesaChildEnvironment()
        env["MESA_HOME"] = home.path
        p.environment = env
        if !FileManager.default.fileExists(atPath: logURL.path) { _ = FileManager.default.createFile(atPath: logURL.path, contents: nil) }
        let log = try FileHandle(forWritingTo: logURL)
        log.seekToEndOfFile()
        log.write(Data("---- launch \(launch)\n".utf8))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        return p
    }

    func start(maxEventBytes: Int = 8192, extra: [String: String] = [:], createTopics: Bool = true, timeout: Double = 60) throws {
        let config = try writeConfig(maxEventBytes: maxEventBytes, extra: extra, createTopics: createTopics)
        launches += 1
        let p = try Self.launch(["serve", "--config", config.path], home: dir, log: logURL, launch: launches)
        process = p
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if !p.isRunning { throw HarnessError("mesa serve exited with \(p.terminationStatus):\n\(tail())") }
            if (try? http("/readyz").status) == 200 { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw HarnessError("mesa serve not ready within \(timeout) s:\n\(tail())")
    }

    func kill9() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// SIGTERM (or `signal`) and wait; returns the exit status.
    func terminate(signal: Int32 = SIGTERM, timeout: Double = 60) -> Int32? {
        guard let p = process, p.isRunning else { return process?.terminationStatus }
        kill(p.processIdentifier, signal)
        let end = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < end { Thread.sleep(forTimeInterval: 0.05) }
        if p.isRunning { kill9(); return nil }
        return p.terminationStatus
    }

    var isRunning: Bool { process?.isRunning ?? false }

    /// Whether the last launch has ended with exit status `status` (not by a signal: a crash).
    func exited(with status: Int32) -> Bool {
        guard let p = process, !p.isRunning else { return false }
        return p.terminationReason == .exit && p.terminationStatus == status
    }

    /// What the last launch wrote.
    var launchLog: String {
        let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
        return text.components(separatedBy: "---- launch \(launches)\n").last ?? ""
    }

    func tail(_ n: Int = 40) -> String {
        let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(n).joined(separator: "\n")
    }

    // MARK: client side

    private var clientProducer: KafkaProducer?

    /// The test's producer (idempotent; replaced by `resetProducer` after a broker lost its state).
    var producer: KafkaProducer {
        get throws {
            if let p = clientProducer { return p }
            let p = try KafkaProducer(properties: ["bootstrap.servers": bootstrap, "message.timeout.ms": "10000"])
            clientProducer = p
            return p
        }
    }

    func resetProducer() {
        clientProducer?.close(flushTimeout: 0)
        clientProducer = nil
    }

    static func factUpdate(id: String = UUID().uuidString.lowercased(), subject: String = "Paris", prompt: String = "{} is in",
                           targetNew: String = "Rome", targetTrue: String? = "is", model: String = modelName, extra: [String: Any] = [:]) -> Data {
        var e: [String: Any] = [
            "id": id, "model": ["name": model, "revision": "main"], "subject": subject, "prompt": prompt, "target_new": ["str": targetNew],
            "method": "ROME", "issued_by": ["principal": "test"], "issued_at": "2026-11-21T10:00:00Z",
            "paraphrase_prompts": ["Where is \(subject)? It is in"], "neighborhood_prompts": ["Lyon is in"],
        ]
        if let targetTrue { e["target_true"] = ["str": targetTrue] }
        for (k, v) in extra { e[k] = v }
        return try! JSONSerialization.data(withJSONObject: e, options: [.sortedKeys])
    }

    static func rollback(to: Int, id: String = UUID().uuidString.lowercased()) -> Data {
        let c: [String: Any] = ["id": id, "command": "rollback", "to": to, "model": ["name": modelName], "issued_by": ["principal": "test"],
                                "issued_at": "2026-11-21T10:00:00Z"]
        return try! JSONSerialization.data(withJSONObject: c, options: [.sortedKeys])
    }

    @discardableResult
    func publish(_ payload: Data, topic: String? = nil, cloudEvent type: String? = EventTypes.factUpdate) throws -> (Int32, Int64) {
        var headers: [KafkaHeader] = []
        if let type {
            let id = (try? JSONValue.parse(payload))?["id"]?.stringValue ?? UUID().uuidString
            headers = CloudEvent(id: id, source: "urn:mesa:test", type: type, subject: nil, datacontenttype: "application/json", data: Array(payload)).kafkaHeaders()
        }
        return try producer.send(topic: topic ?? topics.factUpdates, key: nil, payload: Array(payload), headers: headers, timeout: 15)
    }

    /// Collects JSON records from `topic` until `done` says so or the timeout passes.
    func collect(_ topic: String, timeout: Double, until done: ([JSONValue]) -> Bool) throws -> [JSONValue] {
        let c = try KafkaConsumer(properties: ["bootstrap.servers": bootstrap, "group.id": "\(prefix)-reader-\(UUID().uuidString.prefix(6))",
                                               "auto.offset.reset": "earliest", "session.timeout.ms": "6000", "heartbeat.interval.ms": "1000",
                                               "topic.metadata.refresh.interval.ms": "1000"],
                                  topics: [topic], maxBufferedPerPartition: 1000)
        defer { c.close() }
        var out: [JSONValue] = []
        let end = Date().addingTimeInterval(timeout)
        while Date() < end && !done(out) {
            let ms = c.nextBatch(max: 500, linger: 0, timeout: 0.2)
            guard let last = ms.last else { continue }
            try? c.commit(last, wait: false)
            for m in ms { if let v = try? JSONValue.parse(Data(m.payload)) { out.append(v) } }
        }
        return out
    }

    /// The results for `ids` (the last one per id), waiting up to `timeout`.
    func results(for ids: Set<String>, timeout: Double = 120) throws -> [String: JSONValue] {
        let all = try collect(topics.results, timeout: timeout) { rs in ids.isSubset(of: Set(rs.compactMap { $0["event_id"]?.stringValue })) }
        var by: [String: JSONValue] = [:]
        for r in all { if let id = r["event_id"]?.stringValue, ids.contains(id) { by[id] = r } }
        return by
    }

    // MARK: HTTP

    /// GET `path` from the daemon's listener (or the one on `port`).
    func http(_ path: String, port: Int? = nil) throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port ?? httpPort).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw HarnessError("connect") }
        let req = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        _ = req.withCString { send(fd, $0, strlen($0), 0) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data += buf[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    // MARK: state

    /// The daemon's snapshot store (opened read/write from the test process; LMDB allows it).
    func store() throws -> SnapshotStore {
        let dirs = try FileManager.default.contentsOfDirectory(atPath: stateDir.path)
        for d in dirs {
            let lmdb = stateDir.appendingPathComponent(d).appendingPathComponent("lmdb")
            if FileManager.default.fileExists(atPath: lmdb.appendingPathComponent("data.mdb").path) { return try SnapshotStore(path: lmdb.path) }
        }
        throw HarnessError("no snapshot store under \(stateDir.path)")
    }

    /// `mesa replay --verify` over the daemon's state in a fresh process: its exit status, its output
    /// and the audit report it wrote.
    func replayVerify() throws -> (status: Int32, output: String, audit: JSONValue) {
        let report = dir.appendingPathComponent("audit.json").path
        let (status, out) = try mesa(["replay", "--verify", "--model", modelPath, "--state-dir", stateDir.path, "--report", report])
        return (status, out, try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: report))))
    }

    /// Runs the `mesa` executable with arguments; returns (status, output).
    func mesa(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = Self.executable
        p.arguments = args
        var env = mesaChildEnvironment()
        env["MESA_HOME"] = dir.path
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Stops the daemon and removes the directory (kept when MESA_KEEP_TEST_DIRS=1, for debugging).
    func cleanup() {
        kill9()
        resetProducer()
        if ProcessInfo.processInfo.environment["MESA_KEEP_TEST_DIRS"] == "1" { print("kept \(dir.path)") } else {
            try? FileManager.default.removeItem(at: dir)
        }
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// One Tansu broker for the whole integration suite run (tests use their own topics and groups).
enum SharedBroker {
    nonisolated(unsafe) private static var broker: DevelopmentBroker?
    private static let lock = NSLock()

    static func get() throws -> DevelopmentBroker {
        lock.lock(); defer { lock.unlock() }
        if let b = broker, b.isRunning { return b }
        let b = try DevelopmentBroker(executable: DevelopmentBroker.executable(home: TestPaths.home))
        broker = b
        atexit { SharedBroker.stopAtExit() }
        return b
    }

    static func stopAtExit() { broker?.stop() }
}

extension JSONValue {
    var intValue: Int? {
        if case .number(let n) = self { return n.int64Value.map(Int.init) }
        return nil
    }

    var doubleValue: Double? {
        if case .number(let n) = self { return n.doubleValue }
        return nil
    }
}

/// A fixed event id (a UUID, as the event schemas require) named by `name` in the tests.
func tid(_ name: String) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    let hex = String(h, radix: 16)
    let x = String(repeating: "0", count: 16 - hex.count) + hex
    return "\(x.prefix(8))-\(x.dropFirst(8).prefix(4))-4\(x.dropFirst(12).prefix(3))-8\(x.suffix(1))00-000000000000"
}

/// The environment of a `mesa` child process: the repository's schemas, and this test process's
/// OpenBLAS kernel family. Weights and hashes computed in the test and in the child then agree bit for
/// bit; otherwise, on a CPU OpenBLAS does not recognise, the child would name the family the CPU
/// supports while this process keeps OpenBLAS's fallback.
func mesaChildEnvironment() -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["MESA_SCHEMAS_DIR"] = TestPaths.repoRoot.appendingPathComponent("Schemas").path
    env["MESA_BLAS_CORETYPE"] = BLAS.configuration.coreName
    return env
}
