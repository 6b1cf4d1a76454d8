import Contracts
import Editing
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import ModelRuntime
import NIOCore
import Tensor

/// The limits and the credential of the query API (`query.*` in the configuration).
public struct QueryLimits: Sendable, Equatable {
    /// The largest request body, in bytes (413 beyond).
    public var maxBodyBytes: Int
    /// The most new tokens one completion may ask for (400 beyond).
    public var maxTokens: Int
    /// New tokens when a completion request does not say.
    public var defaultMaxTokens: Int
    /// Requests served at once (429 beyond).
    public var maxConcurrent: Int
    /// Seconds a request may take, waiting for an edit included (504 beyond).
    public var timeout: Double
    /// When set, every /v1 request must carry `Authorization: Bearer <token>` (401 otherwise).
    public var bearerToken: String?

    public init(maxBodyBytes: Int = 65_536, maxTokens: Int = 512, defaultMaxTokens: Int = 16, maxConcurrent: Int = 4,
                timeout: Double = 30, bearerToken: String? = nil) {
        self.maxBodyBytes = maxBodyBytes
        self.maxTokens = maxTokens
        self.defaultMaxTokens = defaultMaxTokens
        self.maxConcurrent = maxConcurrent
        self.timeout = timeout
        self.bearerToken = bearerToken
    }
}

/// A counting gate for model work: `acquire(until:)` waits for one of `count` slots, or gives up at
/// the deadline.
final class ComputeSlots: Sendable {
    let count: Int
    private let semaphore: DispatchSemaphore

    init(_ count: Int) {
        self.count = max(1, count)
        semaphore = DispatchSemaphore(value: self.count)
    }

    /// One slot per set of BLAS threads the machine's cores hold (at least one). `blasThreads`: the
    /// configured count (0: one per core, as `BLAS.setThreads`), else the BLAS library's current one.
    static func forMachine(blasThreads: Int? = nil) -> Int {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let threads = blasThreads.map { $0 > 0 ? $0 : cores } ?? BLAS.configuration.threads
        return max(1, cores / max(1, threads))
    }

    /// Takes a slot, waiting until `deadline` at most; false when none freed in time.
    func acquire(until deadline: Date) -> Bool {
        semaphore.wait(wallTimeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .success
    }

    func release() { semaphore.signal() }
}

/// A refused or failed query, answered in OpenAI's error shape:
/// `{"error": {"message", "type", "param", "code"}}`.
struct QueryError: Error, CustomStringConvertible {
    var status: HTTPResponse.Status
    var type: String
    var code: String
    var message: String
    var param: String?

    var description: String { "\(status.code) \(code): \(message)" }

    static func invalid(_ message: String, param: String? = nil, code: String = "invalid_value") -> QueryError {
        QueryError(status: .badRequest, type: "invalid_request_error", code: code, message: message, param: param)
    }

    static func contextLength(_ message: String, param: String) -> QueryError {
        invalid(message, param: param, code: "context_length_exceeded")
    }

    static let unauthorized = QueryError(status: .unauthorized, type: "invalid_request_error", code: "invalid_api_key",
                                         message: "this endpoint needs Authorization: Bearer <token> with the daemon's query token")

    static func timeout(_ seconds: Double) -> QueryError {
        QueryError(status: .gatewayTimeout, type: "server_error", code: "timeout",
                   message: String(format: "the request took longer than the %.1f s limit (query.timeout_ms)", seconds))
    }
}

/// The query API on the daemon's HTTP listener: `POST /v1/completions` (OpenAI's completions
/// subset), `POST /v1/score` (a target's probability after a prompt, by the CounterFact scorer) and
/// `GET /v1/model` (the served model and the snapshot its weights are at).
///
/// Every answer is computed as a reader of the weights (`ModelHost.reading`): the request waits
/// while an edit, batch or rollback is between its first change of the weights and its commit (or
/// undo), and no edit starts changing them while the request runs, so an answer comes from the weights
/// of one recorded snapshot, whose number and weight hash the response carries (read under the same
/// hold). Model work runs on a thread per request, off the HTTP server's threads; requests beyond
/// `maxConcurrent` are refused with 429, bodies beyond `maxBodyBytes` with 413, and a request still
/// running at its time limit (checked while waiting for the weights and between generated tokens)
/// ends with 504. Bad JSON, a field of the wrong type or range, or an unknown field is a 400.
public final class QueryAPI: @unchecked Sendable {  // `inFlight` is guarded by `lock`; the rest is immutable
    public let limits: QueryLimits
    let completionSchema: CompiledSchema
    let scoreSchema: CompiledSchema
    let logger: Logger
    /// The model host once the model is loaded (nil before: 503).
    let host: @Sendable () -> ModelHost?
    /// Why there is no host yet (e.g. "loading model").
    let notLoaded: @Sendable () -> String
    private let lock = NSLock()
    private var inFlight = 0
    /// Admitted requests take turns at the model: at most `computeSlots` (by default one per set of
    /// BLAS threads the cores hold) run model work at once, so that concurrent requests do not each start a full set of BLAS threads on
    /// the same cores (4 clients with 2 BLAS threads on 2 cores served 0.23× the tokens/s of one:
    /// ops/bench/results/query.json).
    let compute: ComputeSlots

    /// The routes this API adds, with their methods.
    public static let routes: [String: [HTTPRequest.Method]] = [
        "/v1/completions": [.post], "/v1/score": [.post], "/v1/model": [.get],
    ]

    public init(limits: QueryLimits, catalog: SchemaCatalog, logger: Logger, host: @escaping @Sendable () -> ModelHost?,
                notLoaded: @escaping @Sendable () -> String = { "model not loaded" }, blasThreads: Int? = nil) throws {
        self.limits = limits
        completionSchema = try catalog.schema("completion-request.schema.json")
        scoreSchema = try catalog.schema("score-request.schema.json")
        self.logger = logger
        self.host = host
        self.notLoaded = notLoaded
        compute = ComputeSlots(ComputeSlots.forMachine(blasThreads: blasThreads))
    }

    /// Adds the routes to `router`.
    func register(on router: Router<BasicRequestContext>) {
        router.post("/v1/completions") { [self] request, _ in
            await answer(request) { try await self.decode(request, self.completionSchema, as: CompletionRequest.self) }
                work: { r, host, deadline in try self.complete(r, host, deadline) }
        }
        router.post("/v1/score") { [self] request, _ in
            await answer(request) { try await self.decode(request, self.scoreSchema, as: ScoreRequest.self) }
                work: { r, host, deadline in try self.score(r, host, deadline) }
        }
        router.get("/v1/model") { [self] request, _ in
            await answer(request, usesModel: false) { () } work: { _, host, deadline in try self.describe(host, deadline) }
        }
    }

    // MARK: the request's way: token, body, slot, model, work

    /// Checks the token, reads the request's input (`body`), takes a slot, and runs `work` on a
    /// thread of its own with the input, the model host and the request's deadline; work that
    /// `usesModel` waits for its turn at the model first.
    func answer<Body: Sendable, Answer: Encodable & Sendable>(
        _ request: Request, usesModel: Bool = true, body: () async throws -> Body,
        work: @escaping @Sendable (Body, ModelHost, Date) throws -> Answer
    ) async -> Response {
        let deadline = Date().addingTimeInterval(limits.timeout)
        do {
            try authorize(request)
            let input = try await body()
            try enter()
            defer { leave() }
            guard let host = host() else {
                throw QueryError(status: .serviceUnavailable, type: "server_error", code: "model_not_loaded",
                                 message: "the model is not loaded yet (\(notLoaded()))")
            }
            let result = try await onThread("mesa-query") { [limits, compute] () throws -> Answer in
                guard !usesModel || compute.acquire(until: deadline) else { throw QueryError.timeout(limits.timeout) }
                defer { if usesModel { compute.release() } }
                do { return try work(input, host, deadline) } catch is WeightGate.Timeout { throw QueryError.timeout(limits.timeout) }
            }
            return try Self.json(.ok, result)
        } catch let e as QueryError {
            if e.status == .gatewayTimeout { logger.warning("query: \(request.uri.path): \(e)") }
            return Self.errorResponse(e)
        } catch {
            logger.error("query: \(request.uri.path) failed", metadata: ["error": "\(error)"])
            return Self.errorResponse(QueryError(status: .internalServerError, type: "server_error", code: "internal_error", message: "\(error)"))
        }
    }

    /// 401 unless the request carries the configured token (when one is configured).
    func authorize(_ request: Request) throws {
        guard let token = limits.bearerToken else { return }
        guard let header = request.headers[.authorization] else { throw QueryError.unauthorized }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer",
              Self.sameBytes(Array(parts[1].trimmingCharacters(in: .whitespaces).utf8), Array(token.utf8)) else { throw QueryError.unauthorized }
    }

    /// Compares in time that depends on the lengths only, not on where the bytes differ.
    static func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = a.count == b.count ? 0 : 1
        for i in 0..<max(a.count, b.count) { diff |= Int((i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)) }
        return diff == 0
    }

    /// The body, at most `maxBodyBytes`, parsed (duplicate keys refused), checked against `schema`
    /// and decoded.
    func decode<Body: Decodable>(_ request: Request, _ schema: CompiledSchema, as: Body.Type) async throws -> Body {
        let max = limits.maxBodyBytes
        let tooLarge = QueryError(status: .contentTooLarge, type: "invalid_request_error", code: "request_too_large",
                                  message: "the request body is larger than \(max) bytes (query.max_body_bytes)")
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > max { throw tooLarge }
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: max) } catch is NIOTooManyBytesError { throw tooLarge }
        let value: JSONValue
        do {
            value = try JSONValue.parse(buffer.readableBytesView, limits: JSONParseLimits(maxDepth: 16, maxInputBytes: max, rejectDuplicateKeys: true))
        } catch {
            throw QueryError.invalid("the body is not valid JSON: \(error)", code: "invalid_json")
        }
        let result = schema.validate(value)
        guard result.valid else {
            // A failing oneOf is reported with its alternatives' errors first: those say more.
            let errors = result.errors.filter { $0.keyword != "oneOf" }.isEmpty ? result.errors : result.errors.filter { $0.keyword != "oneOf" }
            guard let first = errors.first else { throw QueryError.invalid("the body could not be checked (\(result.limitExceeded.map { "\($0)" } ?? "invalid"))") }
            let param = first.instanceLocation.split(separator: "/").first.map(String.init)
            throw QueryError.invalid(errors.prefix(3).map(\.description).joined(separator: "; "), param: param)
        }
        do { return try JSONValueDecoder(keyStrategy: .convertFromSnakeCase).decode(Body.self, from: value) } catch {
            throw QueryError.invalid("the body does not decode: \(error)")
        }
    }

    /// Takes a slot, or refuses with 429 when every slot is taken.
    func enter() throws {
        lock.lock(); defer { lock.unlock() }
        guard inFlight < limits.maxConcurrent else {
            throw QueryError(status: .tooManyRequests, type: "rate_limit_error", code: "too_many_requests",
                             message: "\(limits.maxConcurrent) requests are running (query.max_concurrent); try again shortly")
        }
        inFlight += 1
    }

    func leave() {
        lock.lock(); inFlight -= 1; lock.unlock()
    }

    /// Requests running now.
    public var running: Int {
        lock.lock(); defer { lock.unlock() }
        return inFlight
    }

    /// A request naming another model than the one served: 404.
    func checkModel(_ name: String?, _ host: ModelHost) throws {
        guard let name else { return }
        let short = name.split(separator: "/").last.map(String.init) ?? name
        guard short.caseInsensitiveCompare(host.modelName) == .orderedSame else {
            throw QueryError(status: .notFound, type: "invalid_request_error", code: "model_not_found",
                             message: "this daemon serves \(host.modelName), not \(name)", param: "model")
        }
    }

    // MARK: responses

    static func json(_ status: HTTPResponse.Status, _ value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    struct ErrorBody: Encodable {
        struct Detail: Encodable {
            var message: String
            var type: String
            var param: String?
            var code: String
            func encode(to encoder: Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(message, forKey: .message)
                try c.encode(type, forKey: .type)
                try c.encode(param, forKey: .param)  // null when absent, as OpenAI writes it
                try c.encode(code, forKey: .code)
            }
            enum CodingKeys: String, CodingKey { case message, type, param, code }
        }
        var error: Detail
    }

    static func errorResponse(_ e: QueryError) -> Response {
        var response = (try? json(e.status, ErrorBody(error: .init(message: e.message, type: e.type, param: e.param, code: e.code))))
            ?? Response(status: e.status)
        if e.status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer realm=\"mesa\"" }
        if e.status == .tooManyRequests { response.headers[.retryAfter] = "1" }
        return response
    }

    /// 405 for another method on one of the API's paths, in the API's error shape.
    static func methodNotAllowed(_ allowed: [HTTPRequest.Method]) -> Response {
        let list = allowed.map(\.rawValue).joined(separator: ", ")
        var response = errorResponse(QueryError(status: .methodNotAllowed, type: "invalid_request_error", code: "method_not_allowed",
                                                message: "this path answers \(list) only"))
        response.headers[.allow] = list
        return response
    }
}

// MARK: - /v1/completions

/// One or several stop sequences (`"stop": "x"` or `"stop": ["x", "y"]`).
struct StopSequences: Decodable, Sendable {
    var values: [String]
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let one = try? c.decode(String.self) { values = [one] } else { values = try c.decode([String].self) }
    }
}

struct CompletionRequest: Decodable, Sendable {
    var model: String?
    var prompt: String
    var maxTokens: Int?
    var temperature: Double?
    var topK: Int?
    var seed: UInt64?
    var stop: StopSequences?
    var logprobs: Int?
    var n: Int?
    var stream: Bool?
    var echo: Bool?
    var user: String?
}

/// OpenAI's completion object, plus the snapshot and weight hash the answer came from.
struct CompletionResponse: Encodable, Sendable {
    struct Logprobs: Encodable, Sendable {
        var tokens: [String]
        var tokenLogprobs: [Float]
        /// Per token, the most likely tokens and their log-probabilities (null without logprobs ≥ 1).
        var topLogprobs: [[String: Float]]?
        /// Per token, the UTF-8 byte offset where it starts in `text`.
        var textOffset: [Int]
        enum CodingKeys: String, CodingKey {
            case tokens, tokenLogprobs = "token_logprobs", topLogprobs = "top_logprobs", textOffset = "text_offset"
        }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(tokens, forKey: .tokens)
            try c.encode(tokenLogprobs, forKey: .tokenLogprobs)
            try c.encode(topLogprobs, forKey: .topLogprobs)
            try c.encode(textOffset, forKey: .textOffset)
        }
    }
    struct Choice: Encodable, Sendable {
        var text: String
        var index: Int
        var logprobs: Logprobs?
        var finishReason: String
        enum CodingKeys: String, CodingKey { case text, index, logprobs, finishReason = "finish_reason" }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(text, forKey: .text)
            try c.encode(index, forKey: .index)
            try c.encode(logprobs, forKey: .logprobs)
            try c.encode(finishReason, forKey: .finishReason)
        }
    }
    struct Usage: Encodable, Sendable {
        var promptTokens: Int
        var completionTokens: Int
        var totalTokens: Int
        enum CodingKeys: String, CodingKey { case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens" }
    }
    var id: String
    var object = "text_completion"
    var created: Int
    var model: String
    var choices: [Choice]
    var usage: Usage
    var systemFingerprint: String
    var snapshot: UInt64
    var weightHash: String
    /// The sampler's seed (null for greedy decoding).
    var seed: UInt64?
    enum CodingKeys: String, CodingKey {
        case id, object, created, model, choices, usage, snapshot, seed
        case systemFingerprint = "system_fingerprint", weightHash = "weight_hash"
    }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(model, forKey: .model)
        try c.encode(choices, forKey: .choices)
        try c.encode(usage, forKey: .usage)
        try c.encode(systemFingerprint, forKey: .systemFingerprint)
        try c.encode(snapshot, forKey: .snapshot)
        try c.encode(weightHash, forKey: .weightHash)
        try c.encode(seed, forKey: .seed)
    }
}

extension QueryAPI {
    /// `mesa-<snapshot>-<first 16 hex of the weight hash>`: two answers with the same fingerprint
    /// came from the same weights.
    static func fingerprint(_ s: WeightState) -> String { "mesa-\(s.head)-\(s.weightHash.prefix(16))" }

    /// Generates as `mesa generate` does (the prompt tokenized with the model's special tokens, a
    /// KV cache, greedy at temperature 0, else seeded sampling), on the weights of one snapshot.
    func complete(_ r: CompletionRequest, _ host: ModelHost, _ deadline: Date) throws -> CompletionResponse {
        try checkModel(r.model, host)
        let model = host.model
        let maxTokens = r.maxTokens ?? min(limits.defaultMaxTokens, limits.maxTokens)
        guard maxTokens <= limits.maxTokens else {
            throw QueryError.invalid("max_tokens \(maxTokens) is more than this daemon's limit of \(limits.maxTokens) (query.max_tokens)",
                                     param: "max_tokens")
        }
        let ids = model.tokenizer.encode(r.prompt, addSpecial: true)
        guard ids.count < model.config.contextLength else {
            throw QueryError.contextLength("the prompt has \(ids.count) tokens; the model's context is \(model.config.contextLength)", param: "prompt")
        }
        let temperature = r.temperature ?? 1
        let vocab = model.config.vocabSize
        let sampling: Sampling = temperature == 0 ? .greedy : .topK(k: min(r.topK.flatMap { $0 > 0 ? $0 : nil } ?? vocab, vocab),
                                                                     temperature: Float(temperature))
        let seed = sampling == .greedy ? nil : (r.seed ?? UInt64.random(in: 0...UInt64.max))
        let stops = (r.stop?.values ?? []).map { Array($0.utf8) }
        return try host.reading(until: deadline) { state in
            // The completion's bytes so far and where each token starts in them.
            var bytes: [UInt8] = [], offsets: [Int] = []
            var cut: Int?
            let g = try model.generate(prompt: ids, maxTokens: maxTokens, sampling: sampling, seed: seed ?? 0, stopAtEOS: true,
                                       logprobs: r.logprobs, shouldStop: { tokens in
                let from = bytes.count
                offsets.append(from)
                bytes += model.tokenizer.tokenBytes(tokens[tokens.count - 1])
                cut = Self.firstStop(stops, in: bytes, newFrom: from)
                return cut != nil || Date() >= deadline
            })
            if g.stoppedByCaller, cut == nil { throw QueryError.timeout(limits.timeout) }
            let end = cut ?? bytes.count
            // Tokens that start before the cut (a stop sequence's first token may start inside the text).
            let kept = offsets.prefix { $0 < end }.count
            var logprobs: CompletionResponse.Logprobs?
            if let n = r.logprobs {
                let piece = { (id: Int32) in String(decoding: model.tokenizer.tokenBytes(id), as: UTF8.self) }
                logprobs = .init(
                    tokens: g.tokens.prefix(kept).map(piece), tokenLogprobs: Array(g.tokenLogprobs.prefix(kept)),
                    topLogprobs: n == 0 ? nil : g.topLogprobs.prefix(kept).map { top in
                        Dictionary(top.map { (piece($0.token), $0.logprob) }, uniquingKeysWith: { a, _ in a })
                    },
                    textOffset: Array(offsets.prefix(kept)))
            }
            let finish = cut != nil || g.stoppedAtEOS ? "stop" : "length"
            return CompletionResponse(
                id: "cmpl-\(UUID().uuidString.lowercased())", created: Int(Date().timeIntervalSince1970), model: host.modelName,
                choices: [.init(text: String(decoding: bytes[..<end], as: UTF8.self), index: 0, logprobs: logprobs, finishReason: finish)],
                usage: .init(promptTokens: ids.count, completionTokens: g.tokens.count, totalTokens: ids.count + g.tokens.count),
                systemFingerprint: Self.fingerprint(state), snapshot: state.head, weightHash: state.weightHash, seed: seed)
        }
    }

    /// The byte offset of the earliest stop sequence in `bytes` that ends in the bytes from `newFrom`
    /// on (the earlier bytes were searched before).
    static func firstStop(_ stops: [[UInt8]], in bytes: [UInt8], newFrom: Int) -> Int? {
        var best: Int?
        for s in stops where s.count <= bytes.count {
            var start = max(0, newFrom - s.count + 1)
            while start + s.count <= bytes.count {
                if bytes[start..<(start + s.count)].elementsEqual(s) {
                    best = min(best ?? start, start)
                    break
                }
                start += 1
            }
        }
        return best
    }
}

// MARK: - /v1/score

struct ScoreRequest: Decodable, Sendable {
    var model: String?
    var prompt: String
    var target: String?
    var targets: [String]?
}

struct ScoreResponse: Encodable, Sendable {
    struct Score: Encodable, Sendable {
        var target: String
        /// Tokens of `" " + target`.
        var targetTokens: Int
        /// Token-averaged negative log-likelihood of the target after the prompt, in nats.
        var nll: Double
        /// exp(−nll): the geometric mean of the target tokens' probabilities (as `mesa score` reports).
        var probability: Double
        /// log P(target | prompt) = −nll · targetTokens.
        var logprob: Double
        enum CodingKeys: String, CodingKey { case target, nll, probability, logprob, targetTokens = "target_tokens" }
    }
    var object = "score"
    var created: Int
    var model: String
    var promptTokens: Int
    var scores: [Score]
    var systemFingerprint: String
    var snapshot: UInt64
    var weightHash: String
    enum CodingKeys: String, CodingKey {
        case object, created, model, scores, snapshot
        case promptTokens = "prompt_tokens", systemFingerprint = "system_fingerprint", weightHash = "weight_hash"
    }
}

extension QueryAPI {
    /// The CounterFact scorer (`CounterFactScorer`, the one edit results and `mesa eval` use) on the
    /// weights of one snapshot.
    func score(_ r: ScoreRequest, _ host: ModelHost, _ deadline: Date) throws -> ScoreResponse {
        try checkModel(r.model, host)
        let targets = r.targets ?? r.target.map { [$0] } ?? []
        let param = r.targets == nil ? "target" : "targets"
        let tok = EditTokenizer(model: host.model)
        let prompt = tok.prompt(r.prompt)
        let lengths: [Int]
        do { lengths = try targets.map { try tok.target($0).count } } catch let e as EditError {
            throw QueryError.invalid(e.message, param: param)
        }
        let context = host.model.config.contextLength
        guard prompt.count + (lengths.max() ?? 0) <= context else {
            throw QueryError.contextLength("the prompt and the longest target have \(prompt.count + (lengths.max() ?? 0)) tokens; "
                                           + "the model's context is \(context)", param: "prompt")
        }
        let scorer = CounterFactScorer.make(host.model)
        return try host.reading(until: deadline) { state in
            let nlls = try scorer(r.prompt, targets)
            let scores = zip(targets, zip(lengths, nlls)).map { target, s in
                ScoreResponse.Score(target: target, targetTokens: s.0, nll: s.1, probability: exp(-s.1), logprob: -s.1 * Double(s.0))
            }
            return ScoreResponse(created: Int(Date().timeIntervalSince1970), model: host.modelName, promptTokens: prompt.count, scores: scores,
                                 systemFingerprint: Self.fingerprint(state), snapshot: state.head, weightHash: state.weightHash)
        }
    }
}

// MARK: - /v1/model

struct ModelDescription: Encodable, Sendable {
    var id: String
    var object = "model"
    var ownedBy = "mesa"
    var name: String
    var baseHash: String
    var snapshot: UInt64
    var weightHash: String
    var contextLength: Int
    var vocabSize: Int
    var systemFingerprint: String
    enum CodingKeys: String, CodingKey {
        case id, object, name, snapshot
        case ownedBy = "owned_by", baseHash = "base_hash", weightHash = "weight_hash", contextLength = "context_length"
        case vocabSize = "vocab_size", systemFingerprint = "system_fingerprint"
    }
}

extension QueryAPI {
    func describe(_ host: ModelHost, _ deadline: Date) throws -> ModelDescription {
        try host.reading(until: deadline) { state in
            ModelDescription(id: host.modelName, name: host.modelName, baseHash: host.baseHash, snapshot: state.head,
                             weightHash: state.weightHash, contextLength: host.model.config.contextLength,
                             vocabSize: host.model.config.vocabSize, systemFingerprint: Self.fingerprint(state))
        }
    }
}
