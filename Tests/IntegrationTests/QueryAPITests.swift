import Contracts
import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import Messaging
import ModelRuntime
import ServiceLifecycle
import Storage
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The query API on the daemon's HTTP server, over a pipeline on the tiny model (no broker): the
/// answers are the generator's and the evaluation scorer's, they name the snapshot they came from,
/// the limits hold, and queries that run while edits, dry runs, batches and rollbacks change the
/// weights only ever see the weights of a recorded snapshot.
///
/// The tests are async so that stopping a server suspends instead of holding a thread of the
/// concurrency pool (two here) that the server's shutdown may need, while other suites block theirs.
@Suite(.serialized) struct QueryAPITests {
    static func api(_ host: ModelHost?, _ catalog: SchemaCatalog, limits: QueryLimits = QueryLimits()) throws -> QueryAPI {
        try QueryAPI(limits: limits, catalog: catalog, logger: MesaLogging.discarding(), host: { host }, notLoaded: { "loading model" })
    }

    @Test func completionsAreTheGeneratorsAndRepeatWithASeed() async throws {
        let s = try PipelineTests.Setup(label: "query-completions")
        defer { s.remove() }
        let p = try s.pipeline()
        try await QueryServer.with(Self.api(p.host, s.catalog)) { server in try Self.completions(p, server) }
    }

    static func completions(_ p: Pipeline, _ server: QueryServer) throws {
        let model = p.host.model
        let prompt = "Paris is in"
        let ids = model.tokenizer.encode(prompt, addSpecial: true)

        // Temperature 0: greedy, as `mesa generate` decodes, the same every time.
        let greedy = try model.generate(prompt: ids, maxTokens: 8)
        let request: [String: Any] = ["prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 2]
        let first = try server.post("/v1/completions", request)
        let again = try server.post("/v1/completions", request)
        #expect(first.status == 200, "\(first.text)")
        let j = first.json
        #expect(j["object"] as? String == "text_completion" && j["model"] as? String == DaemonHarness.modelName)
        #expect((j["id"] as? String)?.hasPrefix("cmpl-") == true && j["id"] as? String != again.json["id"] as? String)
        #expect(j["snapshot"] as? Int == 0 && j["weight_hash"] as? String == model.weightHash && j["seed"] is NSNull)
        #expect((j["system_fingerprint"] as? String)?.hasPrefix("mesa-0-") == true)
        let choice = try #require((j["choices"] as? [[String: Any]])?.first)
        #expect(choice["text"] as? String == greedy.text && choice["index"] as? Int == 0)
        #expect(choice["finish_reason"] as? String == (greedy.stoppedAtEOS ? "stop" : "length"))
        #expect(Self.choice(again)["text"] as? String == greedy.text)
        let usage = try #require(j["usage"] as? [String: Any])
        #expect(usage["prompt_tokens"] as? Int == ids.count && usage["completion_tokens"] as? Int == greedy.tokens.count)
        #expect(usage["total_tokens"] as? Int == ids.count + greedy.tokens.count)
        let logprobs = try #require(choice["logprobs"] as? [String: Any])
        let tokenLogprobs = try #require(logprobs["token_logprobs"] as? [Double])
        #expect((logprobs["tokens"] as? [String])?.count == greedy.tokens.count && tokenLogprobs.count == greedy.tokens.count)
        #expect((logprobs["text_offset"] as? [Int])?.first == 0)
        #expect((logprobs["top_logprobs"] as? [[String: Double]])?.allSatisfy { (1...2).contains($0.count) } == true)
        // The first token's log-probability is the teacher-forced one.
        let scored = try model.score(prompt: ids, target: [greedy.tokens[0]])
        #expect(abs(-tokenLogprobs[0] - scored.tokenNLL[0]) < 1e-4, "\(tokenLogprobs[0]) vs \(-scored.tokenNLL[0])")

        // Sampling with a seed: the same text every time, the generator's text for that seed.
        let sampled = try model.generate(prompt: ids, maxTokens: 16, sampling: .topK(k: model.config.vocabSize, temperature: 0.9), seed: 1234)
        let seeded: [String: Any] = ["prompt": prompt, "max_tokens": 16, "temperature": 0.9, "seed": 1234]
        let a = try server.post("/v1/completions", seeded), b = try server.post("/v1/completions", seeded)
        #expect(Self.choice(a)["text"] as? String == sampled.text && Self.choice(b)["text"] as? String == sampled.text, "\(a.text)")
        #expect(a.json["seed"] as? Int == 1234)
        let topK = try model.generate(prompt: ids, maxTokens: 16, sampling: .topK(k: 3, temperature: 0.9), seed: 99)
        let k3 = try server.post("/v1/completions", ["prompt": prompt, "max_tokens": 16, "temperature": 0.9, "top_k": 3, "seed": 99])
        #expect(Self.choice(k3)["text"] as? String == topK.text)

        // A stop sequence (a printable token the sampler produced) ends the text before its first occurrence.
        let bytes = sampled.tokens.flatMap { model.tokenizer.tokenBytes($0) }
        let stopToken = try #require(sampled.tokens.dropFirst().first { t in
            let b = model.tokenizer.tokenBytes(t)
            return !b.isEmpty && b.allSatisfy { (0x21...0x7e).contains($0) }
        }, "no printable token in \(sampled.tokens)")
        let stop = model.tokenizer.tokenBytes(stopToken)
        let cut = try #require((0...(bytes.count - stop.count)).first { Array(bytes[$0..<($0 + stop.count)]) == stop })
        let stopped = try server.post("/v1/completions", seeded.merging(["stop": ["\u{1}never", String(decoding: stop, as: UTF8.self)]]) { a, _ in a })
        #expect(Self.choice(stopped)["text"] as? String == String(decoding: bytes[..<cut], as: UTF8.self), "\(stopped.text)")
        #expect(Self.choice(stopped)["finish_reason"] as? String == "stop")
    }

    @Test func scoreIsTheEvaluationScorers() async throws {
        let s = try PipelineTests.Setup(label: "query-score")
        defer { s.remove() }
        let p = try s.pipeline()
        try await QueryServer.with(Self.api(p.host, s.catalog)) { server in try Self.scores(p, server) }
    }

    static func scores(_ p: Pipeline, _ server: QueryServer) throws {
        let model = p.host.model
        let targets = ["Rome", "is", "Paris and more"]
        let expected = try CounterFactScorer.make(model)("Paris is in", targets)
        let r = try server.post("/v1/score", ["prompt": "Paris is in", "targets": targets])
        #expect(r.status == 200, "\(r.text)")
        let scores = try #require(r.json["scores"] as? [[String: Any]])
        #expect(scores.count == 3 && r.json["object"] as? String == "score" && r.json["snapshot"] as? Int == 0)
        #expect(r.json["prompt_tokens"] as? Int == EditTokenizer(model: model).prompt("Paris is in").count)
        for (j, score) in scores.enumerated() {
            let nll = try #require(score["nll"] as? Double)
            #expect(score["target"] as? String == targets[j])
            #expect(abs(nll - expected[j]) < 1e-5, "\(targets[j]): \(nll) vs \(expected[j])")
            #expect(abs((score["probability"] as? Double ?? 0) - exp(-nll)) < 1e-9)
            let n = try EditTokenizer(model: model).target(targets[j]).count
            #expect(score["target_tokens"] as? Int == n && abs((score["logprob"] as? Double ?? 0) + nll * Double(n)) < 1e-9)
        }
        let one = try server.post("/v1/score", ["prompt": "Paris is in", "target": "Rome"])
        let only = try #require((one.json["scores"] as? [[String: Any]])?.first?["nll"] as? Double)
        #expect(abs(only - expected[0]) < 1e-5)
    }

    @Test func theModelEndpointFollowsEditsAndRollbacks() async throws {
        let s = try PipelineTests.Setup(label: "query-model")
        defer { s.remove() }
        let p = try s.pipeline()
        try await QueryServer.with(Self.api(p.host, s.catalog)) { server in try Self.followsEdits(s, p, server) }
    }

    static func followsEdits(_ s: PipelineTests.Setup, _ p: Pipeline, _ server: QueryServer) throws {
        let base = p.host.baseHash
        let before = try server.get("/v1/model").json
        #expect(before["id"] as? String == DaemonHarness.modelName && before["object"] as? String == "model")
        #expect(before["base_hash"] as? String == base && before["snapshot"] as? Int == 0 && before["weight_hash"] as? String == base)
        #expect(before["context_length"] as? Int == p.host.model.config.contextLength)
        let scoreBefore = try server.post("/v1/score", ["prompt": "Paris is in", "target": "Rome"]).json

        let applied = try p.process(s.message(DaemonHarness.factUpdate(), offset: 0))
        #expect(applied.kind == .applied(method: "ROME"), "\(applied.summary)")
        let after = try server.get("/v1/model").json
        let edited = try p.host.store.hash(at: 1)
        #expect(after["snapshot"] as? Int == 1 && after["weight_hash"] as? String == edited && edited != base && after["base_hash"] as? String == base)
        let scoreAfter = try server.post("/v1/score", ["prompt": "Paris is in", "target": "Rome"]).json
        #expect(scoreAfter["snapshot"] as? Int == 1 && scoreAfter["weight_hash"] as? String == edited)
        #expect(Self.nll(scoreAfter) < Self.nll(scoreBefore), "the edit made Rome more likely after \"Paris is in\"")

        let back = try p.process(s.message(DaemonHarness.rollback(to: 0), topic: s.config.topics.control, offset: 0))
        #expect(back.kind == .rolledBack)
        let rolledBack = try server.get("/v1/model").json
        #expect(rolledBack["snapshot"] as? Int == 0 && rolledBack["weight_hash"] as? String == base)
        #expect(abs(Self.nll(try server.post("/v1/score", ["prompt": "Paris is in", "target": "Rome"]).json) - Self.nll(scoreBefore)) < 1e-12)
    }

    /// 401 without the token, 413 past the body limit, 400 for bad JSON, unknown fields and values
    /// out of range, 404 for another model, 405 for another method, 503 before the model is loaded,
    /// and 429 and 504 while an edit holds the weights: each in OpenAI's error shape.
    @Test func refusesWhatIsOutOfBoundsWithOpenAIErrors() async throws {
        let s = try PipelineTests.Setup(label: "query-limits")
        defer { s.remove() }
        let p = try s.pipeline()
        let limits = QueryLimits(maxBodyBytes: 1_024, maxTokens: 32, maxConcurrent: 1, timeout: 1, bearerToken: "s3cret-token")
        let api = try Self.api(p.host, s.catalog, limits: limits)
        try await QueryServer.with(api) { server in try Self.refuses(p, api, server) }
        try await QueryServer.with(Self.api(nil, s.catalog)) { loading in
            let notYet = try loading.get("/v1/model")
            Self.expectError(notYet, 503, "model_not_loaded")
            #expect(Self.message(notYet).contains("loading model"))
        }
    }

    static func refuses(_ p: Pipeline, _ api: QueryAPI, _ server: QueryServer) throws {
        let auth = ["Authorization": "Bearer s3cret-token"]
        let ok: [String: Any] = ["prompt": "Paris is in", "max_tokens": 4, "temperature": 0]

        let first = try server.post("/v1/completions", ok, headers: auth)
        let model = try server.get("/v1/model", headers: auth)
        #expect(first.status == 200 && model.status == 200)

        let missing = try server.post("/v1/completions", ok)
        Self.expectError(missing, 401, "invalid_api_key")
        #expect(missing.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
        Self.expectError(try server.post("/v1/completions", ok, headers: ["Authorization": "Bearer s3cret-tokeN"]), 401, "invalid_api_key")
        Self.expectError(try server.get("/v1/model"), 401, "invalid_api_key")
        #expect(try server.post("/v1/completions", ok, headers: auth).status == 200)
        #expect(try server.post("/v1/completions", ok, headers: ["Authorization": "bearer s3cret-token"]).status == 200)
        #expect(try server.get("/healthz").status == 200, "the probes need no token")

        Self.expectError(try server.post("/v1/completions", ["prompt": String(repeating: "a", count: 2_000)], headers: auth), 413, "request_too_large")
        Self.expectError(try server.send("POST", "/v1/completions", body: Data("{\"prompt\": \"x\"".utf8), headers: auth), 400, "invalid_json")
        Self.expectError(try server.send("POST", "/v1/score", body: Data("{\"prompt\": \"x\", \"prompt\": \"y\", \"target\": \"z\"}".utf8), headers: auth),
                         400, "invalid_json")
        let unknown = try server.post("/v1/completions", ["prompt": "x", "best_of": 2], headers: auth)
        Self.expectError(unknown, 400, "invalid_value")
        #expect(Self.message(unknown).contains("best_of"), "\(unknown.text)")
        Self.expectError(try server.post("/v1/completions", ["prompt": 3], headers: auth), 400, "invalid_value", param: "prompt")
        Self.expectError(try server.post("/v1/completions", ["prompt": "x", "max_tokens": 33], headers: auth), 400, "invalid_value", param: "max_tokens")
        Self.expectError(try server.post("/v1/completions", ["prompt": "x", "temperature": 2.5], headers: auth), 400, "invalid_value", param: "temperature")
        Self.expectError(try server.post("/v1/completions", ["prompt": "x", "stream": true], headers: auth), 400, "invalid_value", param: "stream")
        Self.expectError(try server.post("/v1/completions", ["prompt": String(repeating: "b ", count: 200)], headers: auth), 400, "context_length_exceeded")
        Self.expectError(try server.post("/v1/score", ["prompt": "x", "target": "a", "targets": ["b"]], headers: auth), 400, "invalid_value")
        Self.expectError(try server.post("/v1/score", ["prompt": "x", "target": "   "], headers: auth), 400, "invalid_value", param: "target")
        Self.expectError(try server.post("/v1/completions", ["prompt": "x", "model": "gpt-4"], headers: auth), 404, "model_not_found", param: "model")
        #expect(try server.post("/v1/completions", ["prompt": "x", "model": "org/\(DaemonHarness.modelName)", "max_tokens": 1], headers: auth).status == 200)
        let wrongMethod = try server.send("GET", "/v1/completions", headers: auth)
        Self.expectError(wrongMethod, 405, "method_not_allowed")
        #expect(wrongMethod.headers["allow"] == "POST")
        #expect(try server.send("POST", "/v1/model", headers: auth).headers["allow"] == "GET")

        // The refusals changed nothing: the same weights answer the same completion.
        #expect(try server.get("/v1/model", headers: auth).json["weight_hash"] as? String == model.json["weight_hash"] as? String)
        #expect(Self.choice(try server.post("/v1/completions", ok, headers: auth))["text"] as? String == Self.choice(first)["text"] as? String)

        // An edit holds the weights: the one slot's request waits for them, a second is refused.
        let gate = p.host.model.weightGate
        gate.beginWriting()
        let waiting = Thread.detachedResult { try server.post("/v1/score", ["prompt": "Paris is in", "target": "Rome"], headers: auth) }
        let deadline = Date().addingTimeInterval(5)
        while api.running == 0, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(api.running == 1)
        let refused = try server.get("/v1/model", headers: auth)
        Self.expectError(refused, 429, "too_many_requests")
        #expect(refused.headers["retry-after"] == "1")
        Thread.sleep(forTimeInterval: 0.2)
        gate.endWriting()
        let answered = try waiting.wait()
        #expect(answered.status == 200 && answered.json["snapshot"] as? Int == 0, "\(answered.text)")

        // Held past the time limit: 504.
        gate.beginWriting()
        let started = Date()
        let late = try server.post("/v1/completions", ok, headers: auth)
        let waited = Date().timeIntervalSince(started)
        gate.endWriting()
        Self.expectError(late, 504, "timeout")
        #expect(waited >= 0.9 && waited < 5, "\(waited) s")
        #expect(try server.post("/v1/completions", ok, headers: auth).status == 200)
    }

    /// Clients query while the pipeline edits, dry-runs (edits, scores, undoes), rolls back and, for
    /// AlphaEdit, edits a batch (whose MEMIT spread also changes the weights before the update is
    /// applied). Every answer must name a recorded snapshot with its recorded weight hash, and its
    /// scores must be the scores of that snapshot's weights, recomputed afterwards: an answer from
    /// weights half applied, not yet committed or about to be undone matches no snapshot.
    @Test(arguments: ["rome", "alphaedit"])
    func queriesDuringEditsSeeOnlyRecordedSnapshots(method: String) async throws {
        let s = try PipelineTests.Setup(label: "query-concurrent-\(method)", method: method)
        defer { s.remove() }
        let p = try s.pipeline()
        try await QueryServer.with(Self.api(p.host, s.catalog, limits: QueryLimits(maxConcurrent: 16))) { server in
            try Self.concurrent(s, p, server, method: method)
        }
    }

    static func concurrent(_ s: PipelineTests.Setup, _ p: Pipeline, _ server: QueryServer, method: String) throws {
        let prompt = "Paris is in", targets = ["Rome", "is"]

        struct Seen { var snapshot: Int; var hash: String; var nlls: [Double] }
        let seen = LockedValue<[Seen]>([]), failures = LockedValue<[String]>([]), done = LockedValue(false)
        let clients = (0..<3).map { _ in
            Thread.detachedResult {
                while !done.value {
                    let r = try server.post("/v1/score", ["prompt": prompt, "targets": targets])
                    guard r.status == 200, let snap = r.json["snapshot"] as? Int, let hash = r.json["weight_hash"] as? String,
                          let nlls = (r.json["scores"] as? [[String: Any]])?.compactMap({ $0["nll"] as? Double }) else {
                        failures.update { $0.append("\(r.status) \(r.text)") }
                        continue
                    }
                    seen.update { $0.append(Seen(snapshot: snap, hash: hash, nlls: nlls)) }
                }
            }
        }

        let name = method == "rome" ? "ROME" : "AlphaEdit"
        var offset: Int64 = 0
        func fact(_ subject: String, dryRun: Bool = false) -> KafkaMessage {
            var extra: [String: Any] = ["method": name]
            if dryRun { extra["dry_run"] = true }
            defer { offset += 1 }
            return s.message(DaemonHarness.factUpdate(subject: subject, extra: extra), offset: offset)
        }
        for (i, subject) in ["Paris", "Lyon", "Nice", "Rome", "Oslo", "Bern"].enumerated() {
            let o = try p.process(fact(subject))
            #expect(o.kind == .applied(method: name), "\(o.summary)")
            let dry = try p.process(fact(subject + " city", dryRun: true))
            #expect(dry.kind == .dryRun, "\(dry.summary)")
            if i == 2 {
                let back = try p.process(s.message(DaemonHarness.rollback(to: 1), topic: s.config.topics.control, offset: Int64(i)))
                #expect(back.kind == .rolledBack, "\(back.summary)")
            }
        }
        if method == "alphaedit" {
            let batch = try p.process(batch: [fact("Kyiv"), fact("Riga")])
            #expect(batch.map(\.kind) == [.applied(method: name), .applied(method: name)], "\(batch.map(\.summary))")
        }
        Thread.sleep(forTimeInterval: 0.2)
        done.value = true
        for c in clients { try c.wait() }
        #expect(failures.value.isEmpty, "\(failures.value.prefix(3))")

        // Each recorded snapshot's hash and scores, recomputed on its rebuilt weights.
        let scorer = CounterFactScorer.make(p.host.model)
        var recorded: [Int: (hash: String, nlls: [Double])] = [:]
        for seq in [0] + (try p.host.store.sequenceNumbers()) {
            try p.host.materialize(seq)
            recorded[Int(seq)] = (p.host.model.weightHash, try scorer(prompt, targets))
        }
        let answers = seen.value
        #expect(answers.count >= 20, "only \(answers.count) answers")
        #expect(Set(answers.map(\.snapshot)).count >= 3, "the answers saw \(Set(answers.map(\.snapshot)).sorted()) only")
        var wrong: [String] = []
        for a in answers {
            guard let r = recorded[a.snapshot] else { wrong.append("snapshot \(a.snapshot) does not exist"); continue }
            if a.hash != r.hash { wrong.append("snapshot \(a.snapshot) answered with hash \(a.hash.prefix(12)), recorded \(r.hash.prefix(12))") }
            if zip(a.nlls, r.nlls).contains(where: { abs($0 - $1) > 1e-9 }) || a.nlls.count != r.nlls.count {
                wrong.append("snapshot \(a.snapshot) answered \(a.nlls), its weights give \(r.nlls)")
            }
        }
        #expect(wrong.isEmpty, "\(wrong.count) of \(answers.count) answers came from weights no snapshot holds: \(wrong.prefix(3))")
    }

    // MARK: helpers

    static func choice(_ r: HTTPReply) -> [String: Any] { (r.json["choices"] as? [[String: Any]])?.first ?? [:] }

    static func nll(_ json: [String: Any]) -> Double { ((json["scores"] as? [[String: Any]])?.first?["nll"] as? Double) ?? .nan }

    static func message(_ r: HTTPReply) -> String { ((r.json["error"] as? [String: Any])?["message"] as? String) ?? "" }

    /// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
    static func expectError(_ r: HTTPReply, _ status: Int, _ code: String, param: String? = nil,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "\(r.text)", sourceLocation: sourceLocation)
        #expect(r.headers["content-type"] == "application/json", sourceLocation: sourceLocation)
        let e = r.json["error"] as? [String: Any] ?? [:]
        #expect(e["code"] as? String == code, "\(r.text)", sourceLocation: sourceLocation)
        #expect(!(e["message"] as? String ?? "").isEmpty && e["type"] is String && e.keys.contains("param"), sourceLocation: sourceLocation)
        if let param { #expect(e["param"] as? String == param, "\(r.text)", sourceLocation: sourceLocation) }
    }
}

/// A value shared between threads.
final class LockedValue<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
    func update(_ body: (inout T) -> Void) { lock.lock(); body(&stored); lock.unlock() }
}

extension Thread {
    /// Runs `body` on a new thread; `wait()` returns its result or throws its error.
    static func detachedResult<T>(_ body: @escaping @Sendable () throws -> T) -> PendingResult<T> {
        let pending = PendingResult<T>()
        let t = Thread { pending.finish(Result { try body() }) }
        t.start()
        return pending
    }
}

final class PendingResult<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?
    func finish(_ r: Result<T, Error>) { result = r; done.signal() }
    func wait() throws -> T {
        done.wait()
        done.signal()
        return try result!.get()
    }
}

/// A response as a raw HTTP/1.1 client saw it.
struct HTTPReply {
    var status: Int
    var headers: [String: String]
    var body: Data
    var text: String { String(decoding: body, as: UTF8.self) }
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
}

/// The daemon's HTTP server with a query API, on a free loopback port, in a service group of its own.
final class QueryServer: @unchecked Sendable {
    let port: UInt16
    private let group: ServiceGroup
    private let finished = DispatchSemaphore(value: 0)

    init(api: QueryAPI) throws {
        let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        let port = LockedValue(0), failure = LockedValue<Error?>(nil)
        let router = HealthEndpoints.router(exposition: { "" }, readiness: { .ready }, query: api)
        let http = HealthEndpoints.service(address: HTTPListenAddress(host: "127.0.0.1", port: 0), router: router, logger: logger) { port.value = $0 }
        group = ServiceGroup(configuration: .init(services: [http], logger: logger))
        let g = group, finished = finished
        Task(executorPreference: HTTPExecutor()) {
            do { try await g.run() } catch { failure.value = error }
            finished.signal()
        }
        let deadline = Date().addingTimeInterval(10)
        while port.value == 0, failure.value == nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        if let e = failure.value { throw e }
        guard port.value != 0 else { throw SetupError("the query server did not start") }
        self.port = UInt16(port.value)
    }

    /// A server for the time `body` runs, stopped after it either way.
    static func with(_ api: QueryAPI, _ body: (QueryServer) throws -> Void) async throws {
        let server = try QueryServer(api: api)
        do { try body(server) } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// Shuts the server down gracefully and waits until it has stopped, suspended (not blocking a thread of the pool).
    func stop() async {
        await group.triggerGracefulShutdown()
        let finished = finished
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                finished.wait()
                finished.signal()
                done.resume()
            }
        }
    }

    func post(_ path: String, _ json: [String: Any], headers: [String: String] = [:]) throws -> HTTPReply {
        try send("POST", path, body: try JSONSerialization.data(withJSONObject: json), headers: headers)
    }

    func get(_ path: String, headers: [String: String] = [:]) throws -> HTTPReply { try send("GET", path, headers: headers) }

    /// One request on a new connection (closed after the response), read to the end.
    func send(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) throws -> HTTPReply {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SetupError("socket") }
        defer { close(fd) }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw SetupError("connect: \(String(cString: strerror(errno)))") }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        let bytes = Array((head + "\r\n").utf8) + Array(body ?? Data())
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            sent += n
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { received += chunk[..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        guard let split = received.firstRange(of: Array("\r\n\r\n".utf8)) else {
            throw SetupError("no response head in \(String(decoding: received, as: UTF8.self).debugDescription)")
        }
        let lines = String(decoding: received[..<split.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw SetupError("bad status line \(lines[0])") }
        var fields: [String: String] = [:]
        for line in lines.dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            if pair.count == 2 { fields[pair[0].lowercased()] = pair[1].trimmingCharacters(in: .whitespaces) }
        }
        return HTTPReply(status: status, headers: fields, body: Data(received[split.upperBound...]))
    }
}
