import ArgumentParser
import EditDaemon
import Evaluation
import Foundation
import Logging
import Messaging
import ModelRuntime
import Storage
import Tensor

/// The editor the follower and query benchmarks run: `buildPipeline` (the daemon's own pipeline, no
/// broker) on the model with ROME, the quality guard off, over a scratch state directory that links
/// the installed templates and key statistics; and CounterFact facts to edit. Used from one thread
/// at a time.
final class BenchEditor: @unchecked Sendable {
    let dir: URL
    let config: DaemonConfiguration
    let pipeline: Pipeline
    let modelPath: String
    let modelName: String
    let facts: [CounterFactRecord]
    private var offset: Int64 = 0

    init(label: String, model: String?, threads: Int, facts count: Int) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        modelPath = try model ?? paths.defaultModel()
        modelName = Installation.modelName(modelPath)
        let state = dir.appendingPathComponent("state")
        try linkEditState(into: state)
        var c = DaemonConfiguration()
        c.method = "rome"
        c.model = modelPath
        c.stateDir = state.path
        c.threads = threads
        c.qualityGuard = .init(enabled: false)
        config = c
        pipeline = try buildPipeline(config: c, paths: paths, catalog: try paths.schemaCatalog(), logger: MesaLogging.discarding())
        let data = paths.data.appendingPathComponent("counterfact/counterfact-val.json").path
        let records = try CounterFact.load(path: data).records
        guard records.count >= count else { throw ValidationError("\(data) has \(records.count) records; \(count) needed") }
        facts = Array(records.prefix(count))
    }

    /// A fact update of CounterFact record `i` (modulo the records loaded), as the daemon reads it.
    func factUpdate(_ i: Int) -> [UInt8] {
        let r = facts[i % facts.count]
        let e: [String: Any] = [
            "id": UUID().uuidString.lowercased(), "model": ["name": modelName, "revision": "main"], "subject": r.subject,
            "prompt": r.prompt, "target_new": ["str": r.targetNew], "target_true": ["str": r.targetTrue], "method": "ROME",
            "issued_by": ["principal": "bench"], "issued_at": "2026-12-05T00:00:00Z",
            "paraphrase_prompts": Array(r.paraphrasePrompts.prefix(2)), "neighborhood_prompts": Array(r.neighborhoodPrompts.prefix(2)),
        ]
        return Array(try! JSONSerialization.data(withJSONObject: e, options: [.sortedKeys]))
    }

    /// Processes `payload` on `topic` (the fact-updates topic by default) as the daemon's worker does.
    func process(_ payload: [UInt8], topic: String? = nil) throws -> Outcome {
        defer { offset += 1 }
        return try pipeline.process(KafkaMessage(topic: topic ?? config.topics.factUpdates, partition: 0, offset: offset, key: nil, payload: payload))
    }

    /// The weight-delta records of `outcome`.
    func deltas(_ outcome: Outcome) -> [[UInt8]] {
        outcome.records.filter { $0.topic == config.topics.weightDeltas }.map(\.payload)
    }

    func remove() { try? FileManager.default.removeItem(at: dir) }
}

/// A follower's cost per edit: the real editor edits (ROME on the model, the daemon's pipeline) and
/// a follower over a store of its own applies the weight-delta records those edits published, with
/// `Follower.apply`, the code `mesa follow` runs per record (decode, checks, apply, weight hash,
/// snapshot commit with fsync). Reported beside the editor's seconds for the same edits.
struct FollowBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "follow",
        abstract: "Time a follower applying each edit's weight-delta record, against the editor's time for the same edits.")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "Edits (CounterFact val records, ROME).") var edits = 50
    @Option(help: "Rollbacks after the edits (to random earlier snapshots), timed separately.") var rollbacks = 5
    @Option(help: "BLAS threads.") var threads = 2
    @Option(help: "Results file.") var out = "ops/bench/results/follow.json"

    func run() throws {
        BLAS.setThreads(threads)
        let editor = try BenchEditor(label: "follow", model: model, threads: threads, facts: edits)
        defer { editor.remove() }
        print("editor: \(editor.modelName), ROME, \(edits) edits")
        var records: [[UInt8]] = []
        var editorSeconds: [Double] = [], editMath: [Double] = []
        for i in 0..<edits {
            var outcome: Outcome?
            let payload = editor.factUpdate(i)
            editorSeconds.append(try timed { outcome = try editor.process(payload) })
            guard let o = outcome, case .applied = o.kind, let r = editor.deltas(o).first else {
                throw ValidationError("edit \(i) was not applied: \(outcome?.summary ?? "?")")
            }
            editMath.append(o.editSeconds)
            records.append(r)
            print(String(format: "  edit %2d: %.2f s", i + 1, editorSeconds.last!))
        }
        var rng = Xoshiro256(seed: 11)
        var rollbackRecords: [[UInt8]] = []
        for _ in 0..<rollbacks {
            let head = editor.pipeline.host.head
            guard head > 1 else { break }
            let target = Int(head - 1 - rng.next() % min(head - 1, 5))
            let c: [String: Any] = ["id": UUID().uuidString.lowercased(), "command": "rollback", "to": target, "model": ["name": editor.modelName],
                                    "issued_by": ["principal": "bench"], "issued_at": "2026-12-05T00:00:00Z"]
            let o = try editor.process(Array(try JSONSerialization.data(withJSONObject: c)), topic: editor.config.topics.control)
            guard o.kind == .rolledBack, let r = editor.deltas(o).first else { throw ValidationError("rollback to \(target): \(o.summary)") }
            rollbackRecords.append(r)
        }

        // The follower: the base model loaded again, a store of its own, the records in topic order.
        let m = try ModelLoader.load(path: editor.modelPath)
        let store = try SnapshotStore(path: editor.dir.appendingPathComponent("follower-lmdb").path)
        let follower = try Follower(model: m, modelName: editor.modelName, store: store)
        var applySeconds: [Double] = [], decodeSeconds: [Double] = [], bytes: [Int] = []
        for (i, r) in records.enumerated() {
            decodeSeconds.append(try timed { _ = try WeightDelta(decoding: r) })
            var step: Follower.Step?
            applySeconds.append(try timed { step = try follower.apply(r, source: EventSource(topic: editor.config.topics.weightDeltas, partition: 0, offset: Int64(i))) })
            guard step == .applied else { throw ValidationError("record \(i): \(String(describing: step))") }
            bytes.append(r.count)
        }
        var rollbackSeconds: [Double] = []
        for (j, r) in rollbackRecords.enumerated() {
            var step: Follower.Step?
            rollbackSeconds.append(try timed { step = try follower.apply(r, source: EventSource(topic: editor.config.topics.weightDeltas, partition: 0, offset: Int64(records.count + j))) })
            guard step == .applied else { throw ValidationError("rollback record \(j): \(String(describing: step))") }
        }
        let identical = follower.head == editor.pipeline.host.head && m.weightHash == editor.pipeline.host.model.weightHash
        guard identical else { throw ValidationError("the follower ended at snapshot \(follower.head), \(m.weightHash.prefix(16)); the editor at \(editor.pipeline.host.head)") }

        // The floor under an apply, in the same run: SHA-256 of the edited tensor (the weight hash
        // rehashes only the tensors an edit touched) and an fsynced LMDB commit of a record's size.
        let edited = try WeightDelta(decoding: records[0]).updates.map(\.parameter)
        let tensors = m.weights.all.filter { edited.contains($0.name) }
        let hashSeconds = (0..<20).map { _ in
            timed { for t in tensors { var h = SHA256(); h.update(UnsafeRawBufferPointer(start: t.pointer, count: t.count * 4)); _ = h.finalize() } }
        }
        let floorStore = try SnapshotStore(path: editor.dir.appendingPathComponent("floor-lmdb").path)
        let db = try floorStore.environment.database("floor")
        let value = [UInt8](repeating: 7, count: bytes.max() ?? 0)
        let commitSeconds = try (0..<20).map { i in try timed { try floorStore.environment.write { try $0.put(db, key: Array("k\(i)".utf8), value: value) } } }
        let hashMB = Double(tensors.reduce(0) { $0 + $1.count * 4 }) / 1_048_576

        let a = summary(applySeconds), e = summary(editorSeconds)
        let ratio = e["p50_ms"]! / a["p50_ms"]!
        let mean = applySeconds.reduce(0, +) / Double(applySeconds.count)
        print(String(format: "follower apply per edit: p50 %.2f ms, p99 %.2f ms, max %.2f ms, mean %.2f ms (target ≤ 20 ms); decode p50 %.3f ms; record %d bytes",
                     a["p50_ms"]!, a["p99_ms"]!, a["max_ms"]!, mean * 1e3, percentile(decodeSeconds, 50) * 1e3, bytes.max() ?? 0))
        print(String(format: "floor: SHA-256 of the edited tensor (%.1f MiB) p50 %.2f ms, fsynced LMDB commit of a record p50 %.2f ms",
                     hashMB, percentile(hashSeconds, 50) * 1e3, percentile(commitSeconds, 50) * 1e3))
        print(String(format: "editor per edit: p50 %.2f s, max %.2f s (edit math p50 %.2f s); editor p50 / follower p50 = %.0f×",
                     e["p50_ms"]! / 1e3, e["max_ms"]! / 1e3, percentile(editMath, 50), ratio))
        if !rollbackSeconds.isEmpty {
            print(String(format: "follower rollback: p50 %.2f ms, max %.2f ms (%d)", percentile(rollbackSeconds, 50) * 1e3, (rollbackSeconds.max() ?? 0) * 1e3, rollbackSeconds.count))
        }
        print("the follower ends at snapshot \(follower.head) with the editor's weight hash \(m.weightHash.prefix(16))")
        try writeResults([
            "benchmark": "follow", "model": editor.modelName, "method": "ROME", "edits": edits, "quality_guard": false,
            "follower_apply": a.merging(["mean_ms": mean * 1e3]) { x, _ in x }, "follower_decode": summary(decodeSeconds),
            "follower_rollback": summary(rollbackSeconds), "editor": e, "editor_edit_math": summary(editMath),
            "editor_p50_over_follower_p50": ratio, "target_apply_ms": 20, "target_met_p99": a["p99_ms"]! <= 20,
            "floor": ["sha256_edited_tensor": summary(hashSeconds), "sha256_mib": hashMB, "lmdb_commit": summary(commitSeconds)],
            "record_bytes": ["min": bytes.min() ?? 0, "max": bytes.max() ?? 0], "follower_ends_bit_identical": identical,
            "blas": BLAS.configuration.description, "date": ISO8601DateFormatter().string(from: Date()),
            "timed": "Follower.apply(record, source:) per record, as mesa follow calls it: decode, checks, apply, weight hash, LMDB commit (fsync); the Kafka fetch and offset commit are not included",
        ], to: out)
    }
}

/// The query API's latency and throughput on the model, in process (the daemon's HTTP server and
/// `QueryAPI` over the editor's pipeline, requests over loopback TCP), beside the generation loop
/// `mesa generate` runs (`LanguageModel.generate`) on the same prompt in the same run.
struct QueryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "p50/p99 of a completion with and without an edit in flight, throughput with 1 and N clients, against mesa generate's loop.")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "Completions per measurement.") var requests = 40
    @Option(help: "Tokens per completion.") var maxTokens = 16
    @Option(help: "Concurrent clients for the throughput measurement.") var clients = 4
    @Option(help: "BLAS threads.") var threads = 2
    @Option(help: "Results file.") var out = "ops/bench/results/query.json"

    /// A prompt the model continues past `maxTokens` without an end-of-text token (checked).
    static let prompt = "The history of the city begins in the early Middle Ages, when a small settlement grew up around"

    func run() throws {
        BLAS.setThreads(threads)
        let editor = try BenchEditor(label: "query", model: model, threads: threads, facts: 200)
        defer { editor.remove() }
        let host = editor.pipeline.host
        let api = try QueryAPI(limits: QueryLimits(maxTokens: maxTokens, maxConcurrent: clients + 1, timeout: 300),
                               catalog: try paths.schemaCatalog(), logger: MesaLogging.discarding(), host: { host })
        let router = HealthEndpoints.router(exposition: { "" }, readiness: { .ready }, query: api)
        let port = LockedBox(0)
        let http = HealthEndpoints.service(address: HTTPListenAddress(host: "127.0.0.1", port: 0), router: router,
                                           logger: MesaLogging.discarding()) { port.set($0) }
        let server = Task { try await http.run() }
        defer { server.cancel() }
        let deadline = Date().addingTimeInterval(30)
        while port.get() == 0, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        guard port.get() != 0 else { throw ValidationError("the HTTP server did not start") }
        let client = BenchHTTPClient(port: UInt16(port.get()))
        let body = try JSONSerialization.data(withJSONObject: ["prompt": Self.prompt, "max_tokens": maxTokens, "temperature": 0])

        /// One completion: seconds and completion tokens.
        @Sendable func complete() throws -> (Double, Int) {
            var tokens = 0
            let s = try timed {
                let (status, json) = try client.post("/v1/completions", body)
                guard status == 200, let usage = json["usage"] as? [String: Any], let n = usage["completion_tokens"] as? Int else {
                    throw ValidationError("completion: \(status) \(json)")
                }
                guard n == maxTokens else { throw ValidationError("a completion of \(n) tokens; \(maxTokens) are timed") }
                tokens = n
            }
            return (s, tokens)
        }

        // The loop `mesa generate` runs, on the same prompt and weights.
        let m = host.model
        let ids = m.tokenizer.encode(Self.prompt, addSpecial: true)
        var generated = 0
        _ = try m.generate(prompt: ids, maxTokens: maxTokens, sampling: .greedy)
        _ = try complete()
        // One client, idle editor: each completion right after the same generation in this process,
        // alternating, so both see the same load on the machine.
        var direct: [Double] = [], idle: [Double] = [], idleTokens = 0
        for _ in 0..<requests {
            direct.append(try timed { generated = try m.generate(prompt: ids, maxTokens: maxTokens, sampling: .greedy).tokens.count })
            guard generated == maxTokens else { throw ValidationError("the prompt ends after \(generated) tokens; \(maxTokens) are timed") }
            let (s, n) = try complete()
            idle.append(s)
            idleTokens += n
        }
        let idleWall = idle.reduce(0, +)
        print(String(format: "mesa generate loop: %d tokens, p50 %.1f ms, p99 %.1f ms", generated, percentile(direct, 50) * 1e3, percentile(direct, 99) * 1e3))
        print(String(format: "completions, idle, 1 client: p50 %.1f ms, p99 %.1f ms, %.1f tokens/s", percentile(idle, 50) * 1e3, percentile(idle, 99) * 1e3,
                     Double(idleTokens) / idleWall))

        // N clients at once, each sending its share.
        let per = max(1, requests / clients)
        let results = LockedBox<[(Double, Int)]>([])
        let failures = LockedBox<[String]>([])
        let group = DispatchGroup()
        let concurrentWall = timed {
            for _ in 0..<clients {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    for _ in 0..<per {
                        do { let r = try complete(); results.update { $0.append(r) } } catch { failures.update { $0.append("\(error)") } }
                    }
                }
            }
            group.wait()
        }
        guard failures.get().isEmpty else { throw ValidationError("concurrent completions failed: \(failures.get().prefix(3))") }
        let concurrent = results.get().map(\.0), concurrentTokens = results.get().reduce(0) { $0 + $1.1 }
        print(String(format: "completions, %d clients: p50 %.1f ms, p99 %.1f ms, %.1f tokens/s", clients, percentile(concurrent, 50) * 1e3,
                     percentile(concurrent, 99) * 1e3, Double(concurrentTokens) / concurrentWall))

        // An edit in flight: the editor edits one fact after another on a thread of its own while one client queries.
        let stop = LockedBox(false), editsDone = LockedBox(0), editFailure = LockedBox<String?>(nil)
        let editing = DispatchSemaphore(value: 0)
        let editorThread = Thread {
            var i = 0
            while !stop.get() {
                do {
                    let o = try editor.process(editor.factUpdate(i))
                    if case .applied = o.kind { editsDone.update { $0 += 1 } } else { editFailure.set(o.summary) }
                } catch { editFailure.set("\(error)"); break }
                i += 1
            }
            editing.signal()
        }
        editorThread.stackSize = 8 << 20
        editorThread.start()
        Thread.sleep(forTimeInterval: 0.5)
        var busy: [Double] = [], busyTokens = 0
        let busyWall = try timed { for _ in 0..<requests { let (s, n) = try complete(); busy.append(s); busyTokens += n } }
        stop.set(true)
        editing.wait()
        if let f = editFailure.get() { throw ValidationError("the editor failed while queries ran: \(f)") }
        print(String(format: "completions while the editor edits (%d edits meanwhile): p50 %.1f ms, p99 %.1f ms, %.1f tokens/s", editsDone.get(),
                     percentile(busy, 50) * 1e3, percentile(busy, 99) * 1e3, Double(busyTokens) / busyWall))

        func stats(_ xs: [Double], tokens: Int, wall: Double) -> [String: Double] {
            summary(xs).merging(["tokens_per_s": Double(tokens) / wall]) { a, _ in a }
        }
        let directTokensPerS = Double(generated) / percentile(direct, 50)
        let ratios: [String: Double] = [
            "idle_p50_over_generate_p50": percentile(idle, 50) / percentile(direct, 50),
            "in_flight_p50_over_idle_p50": percentile(busy, 50) / percentile(idle, 50),
            "in_flight_p99_over_idle_p99": percentile(busy, 99) / percentile(idle, 99),
            "clients_\(clients)_over_1_tokens_per_s": (Double(concurrentTokens) / concurrentWall) / (Double(idleTokens) / idleWall),
            "clients_1_over_generate_tokens_per_s": (Double(idleTokens) / idleWall) / directTokensPerS,
            "clients_\(clients)_over_generate_tokens_per_s": (Double(concurrentTokens) / concurrentWall) / directTokensPerS,
        ]
        for (k, v) in ratios.sorted(by: { $0.key < $1.key }) { print(String(format: "  %@ = %.2f", k, v)) }
        try writeResults([
            "benchmark": "query", "model": editor.modelName, "prompt": Self.prompt, "max_tokens": maxTokens, "requests": requests,
            "generate_loop": summary(direct).merging(["tokens_per_s": directTokensPerS, "tokens": Double(generated)]) { a, _ in a },
            "completions_idle_1_client": stats(idle, tokens: idleTokens, wall: idleWall),
            "completions_idle_\(clients)_clients": stats(concurrent, tokens: concurrentTokens, wall: concurrentWall),
            "completions_edit_in_flight_1_client": stats(busy, tokens: busyTokens, wall: busyWall).merging(["edits_meanwhile": Double(editsDone.get())]) { a, _ in a },
            "ratios": ratios, "editor": "ROME edits, one after another, by the daemon's pipeline on a thread of its own (quality guard off)",
            "blas": BLAS.configuration.description, "date": ISO8601DateFormatter().string(from: Date()),
        ], to: out)
    }
}

/// A value shared between threads.
final class LockedBox<T>: @unchecked Sendable {  // `value` is guarded by `lock`
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func update(_ body: (inout T) -> Void) { lock.lock(); body(&value); lock.unlock() }
}

/// HTTP/1.1 POSTs over a new loopback connection each (closed after the response).
struct BenchHTTPClient: Sendable {
    let port: UInt16

    func post(_ path: String, _ body: Data) throws -> (Int, [String: Any]) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw ValidationError("connect: \(String(cString: strerror(errno)))") }
        let head = "POST \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        let bytes = Array(head.utf8) + Array(body)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw ValidationError("send failed") }
            sent += n
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { received += chunk[..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        guard let split = received.firstRange(of: Array("\r\n\r\n".utf8)) else { throw ValidationError("no response") }
        let statusLine = String(decoding: received[..<split.lowerBound], as: UTF8.self).prefix { $0 != "\r" }
        let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
        let json = (try? JSONSerialization.jsonObject(with: Data(received[split.upperBound...]))) as? [String: Any] ?? [:]
        return (status, json)
    }
}
