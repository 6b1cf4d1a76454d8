import Contracts
import Editing
import Foundation
import Logging
import Messaging

/// `mesa serve` configuration (Schemas/serve-config.schema.json). Precedence: flags > environment >
/// file > defaults; `resolve` applies the file and the environment, the executable applies flags.
public struct DaemonConfiguration: Codable, Sendable, Equatable {
    /// Printing it (or a configuration holding it) never shows a secret property's value (`Kafka.redacted`).
    public struct Kafka: Codable, Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
        public var bootstrapServers: String?
        public var groupId: String?
        public var createTopics: Bool?
        public var topics: TopicNames?
        public var properties: [String: String]?
        /// The operator's statement that every producer keys fact updates by model name, so that a
        /// fact-update topic with several partitions still delivers one model's edits in order.
        public var keyedByModel: Bool?
        public init(bootstrapServers: String? = nil, groupId: String? = nil, createTopics: Bool? = nil, topics: TopicNames? = nil,
                    properties: [String: String]? = nil, keyedByModel: Bool? = nil) {
            self.bootstrapServers = bootstrapServers
            self.groupId = groupId
            self.createTopics = createTopics
            self.topics = topics
            self.properties = properties
            self.keyedByModel = keyedByModel
        }

        public var customMirror: Mirror {
            Mirror(self, children: [
                "bootstrapServers": bootstrapServers as Any, "groupId": groupId as Any, "createTopics": createTopics as Any,
                "topics": topics as Any, "properties": properties.map { Messaging.Kafka.redacted($0) } as Any,
                "keyedByModel": keyedByModel as Any,
            ], displayStyle: .struct)
        }

        public var description: String {
            "Kafka(" + customMirror.children.map { "\($0.label!): \(String(describing: $0.value))" }.joined(separator: ", ") + ")"
        }

        public var debugDescription: String { description }
    }
    public struct TopicNames: Codable, Sendable, Equatable {
        public var factUpdates: String?
        public var control: String?
        public var results: String?
        public var deadLetters: String?
        public var weightDeltas: String?
    }
    /// MESA refinement for the ROME editor (overrides the hyperparameter file's "mesa" block).
    public struct Mesa: Codable, Sendable, Equatable {
        /// SAE directory, or a name under <state>/<hash16>/sae/.
        public var sae: String?
        /// Serve plain ROME (saying so in every result) when the SAE cannot be loaded, instead of refusing to start.
        public var fallback: Bool?
        public var l1: Double?
        public init(sae: String? = nil, fallback: Bool? = nil, l1: Double? = nil) { self.sae = sae; self.fallback = fallback; self.l1 = l1 }
    }
    /// Batch edits (MEMIT, AlphaEdit): consecutive fact updates edited together in one computation.
    public struct Batch: Codable, Sendable, Equatable {
        /// At most this many events per edit (1: every event alone, the default).
        public var maxEvents: Int?
        /// How long the first event waits for more to arrive, in milliseconds.
        public var lingerMs: Int?
        public init(maxEvents: Int? = nil, lingerMs: Int? = nil) { self.maxEvents = maxEvents; self.lingerMs = lingerMs }
    }
    /// Failures that are not the event's fault (the snapshot store, a bug, a resource): the event is
    /// tried again with exponential backoff, then dead-lettered with reason `processing_failed`.
    public struct Retry: Codable, Sendable, Equatable {
        /// Attempts in all before the event is dead-lettered (default 5).
        public var maxAttempts: Int?
        /// The wait after the first failure, in milliseconds (default 500); it doubles after each.
        public var backoffMs: Int?
        /// The longest wait, in milliseconds (default 30000).
        public var maxBackoffMs: Int?
        public init(maxAttempts: Int? = nil, backoffMs: Int? = nil, maxBackoffMs: Int? = nil) {
            self.maxAttempts = maxAttempts
            self.backoffMs = backoffMs
            self.maxBackoffMs = maxBackoffMs
        }
    }
    /// The quality guard: a canary set scored after every edit or batch; an edit that crosses a
    /// threshold against the base model is undone and dead-lettered (`quality_gate`).
    public struct QualityGuard: Codable, Sendable, Equatable {
        /// On by default.
        public var enabled: Bool?
        /// A canary file ({"facts": [{"prompt", "answer"}], "text"}); default: built once from the data
        /// directory's known facts and WikiText-2 and kept in the state directory.
        public var canaryFile: String?
        /// Canary facts drawn for the default set (default 16: the guard costs 4–9% of a median edit, ops/bench/results/guard*.json).
        public var facts: Int?
        /// Tokens of the text sample whose perplexity is measured (default 32).
        public var perplexityTokens: Int?
        /// Refuse an edit that lowers canary accuracy by more than this many points (default 2).
        public var maxAccuracyDrop: Double?
        /// Refuse an edit that raises canary perplexity by more than this fraction (default 0.03).
        public var maxPerplexityRise: Double?
        public init(enabled: Bool? = nil, canaryFile: String? = nil, facts: Int? = nil, perplexityTokens: Int? = nil,
                    maxAccuracyDrop: Double? = nil, maxPerplexityRise: Double? = nil) {
            self.enabled = enabled
            self.canaryFile = canaryFile
            self.facts = facts
            self.perplexityTokens = perplexityTokens
            self.maxAccuracyDrop = maxAccuracyDrop
            self.maxPerplexityRise = maxPerplexityRise
        }
    }
    public struct HTTP: Codable, Sendable, Equatable {
        public var listen: String?
        public init(listen: String? = nil) { self.listen = listen }
    }
    /// Log lines: the lowest level written and the line format.
    public struct Log: Codable, Sendable, Equatable {
        /// trace, debug, info (default), notice, warning, error or critical.
        public var level: String?
        /// text (default) or json.
        public var format: String?
        public init(level: String? = nil, format: String? = nil) { self.level = level; self.format = format }
    }

    public var model: String?
    /// rome, memit, alphaedit or encore (default): the method and its `<hparams_dir>/<method>/<model>.json`.
    public var method: String?
    public var stateDir: String?
    public var hparamsDir: String?
    public var corpus: String?
    public var threads: Int?
    public var maxEventBytes: Int?
    public var lmdbMapBytes: Int?
    public var kafka: Kafka?
    public var http: HTTP?
    /// The query API (QueryConfiguration.swift).
    public var query: Query?
    public var log: Log?
    public var mesa: Mesa?
    public var batch: Batch?
    public var retry: Retry?
    public var qualityGuard: QualityGuard?
    /// The shared data directory (known facts, WikiText-2) for the default canary set.
    public var dataDir: String?

    public init() {}

    // MARK: effective values (defaults applied)

    public static let defaultBootstrap = "127.0.0.1:9092"
    public static let defaultListen = "127.0.0.1:9464"

    public var bootstrapServers: String { kafka?.bootstrapServers ?? Self.defaultBootstrap }
    public var groupId: String { kafka?.groupId ?? "mesa" }
    public var createTopics: Bool { kafka?.createTopics ?? true }
    /// Whether fact updates are keyed by model name (`kafka.keyed_by_model`, default false): allows a
    /// fact-update topic with more than one partition (`checkInputPartitions`).
    public var keyedByModel: Bool { kafka?.keyedByModel ?? false }
    public var httpListen: String { http?.listen ?? Self.defaultListen }
    /// The lowest level logged (`log.level`, default info).
    public var logLevel: Logger.Level { get throws { try log?.level.map(Logger.Level.init(parsing:)) ?? .info } }
    /// The log line format (`log.format`, default text).
    public var logFormat: LogFormat { get throws { try log?.format.map(LogFormat.init(parsing:)) ?? .text } }
    public var eventLimit: Int { maxEventBytes ?? 65_536 }
    public var mapBytes: Int { lmdbMapBytes ?? (1 << 32) }
    public var batchMaxEvents: Int { batch?.maxEvents ?? 1 }
    public var batchLinger: Double { Double(batch?.lingerMs ?? 50) / 1000 }
    public var retryMaxAttempts: Int { retry?.maxAttempts ?? 5 }
    public var guardEnabled: Bool { qualityGuard?.enabled ?? true }
    public var guardFacts: Int { qualityGuard?.facts ?? 16 }
    public var guardPerplexityTokens: Int { qualityGuard?.perplexityTokens ?? 32 }
    public var guardMaxAccuracyDrop: Double { qualityGuard?.maxAccuracyDrop ?? 2 }
    public var guardMaxPerplexityRise: Double { qualityGuard?.maxPerplexityRise ?? 0.03 }
    /// The data directory: the configured one, or `paths.data` (../shared/data beside the working directory).
    public func dataDirectory(_ paths: Paths) -> URL {
        dataDir.map { URL(fileURLWithPath: $0) } ?? paths.data
    }
    /// Seconds to wait after failed attempt `n` (from 1): the backoff doubling up to its maximum.
    public func retryDelay(after n: Int) -> Double {
        let base = Double(retry?.backoffMs ?? 500) / 1000, cap = Double(retry?.maxBackoffMs ?? 30_000) / 1000
        return min(cap, base * pow(2, Double(min(max(n - 1, 0), 30))))
    }

    /// Checks the settings that depend on one another (the schema checks each one alone).
    public func validate() throws {
        guard (1...256).contains(batchMaxEvents) else { throw SetupError("batch.max_events \(batchMaxEvents) is outside 1...256") }
        guard (0...60_000).contains(batch?.lingerMs ?? 0) else { throw SetupError("batch.linger_ms is outside 0...60000") }
        guard (1...10_000).contains(guardFacts), (0...4_096).contains(guardPerplexityTokens), guardMaxAccuracyDrop >= 0, guardMaxPerplexityRise >= 0 else {
            throw SetupError("quality_guard: facts must be in 1...10000, perplexity_tokens in 0...4096, the limits at least 0")
        }
        guard (1...100).contains(retryMaxAttempts) else { throw SetupError("retry.max_attempts \(retryMaxAttempts) is outside 1...100") }
        guard (0...600_000).contains(retry?.backoffMs ?? 0), (0...600_000).contains(retry?.maxBackoffMs ?? 0) else {
            throw SetupError("retry.backoff_ms and retry.max_backoff_ms must be within 0...600000")
        }
        try validateQuery()
        _ = try editMethod
    }

    public var topics: Topics {
        var t = Topics()
        if let v = kafka?.topics?.factUpdates { t.factUpdates = v }
        if let v = kafka?.topics?.control { t.control = v }
        if let v = kafka?.topics?.results { t.results = v }
        if let v = kafka?.topics?.deadLetters { t.deadLetters = v }
        if let v = kafka?.topics?.weightDeltas { t.weightDeltas = v }
        return t
    }

    /// librdkafka properties for every client: the file's pass-through settings and the bootstrap servers.
    public var kafkaProperties: [String: String] {
        var p = kafka?.properties ?? [:]
        p["bootstrap.servers"] = bootstrapServers
        return p
    }

    /// The editing method (`method`, default rome).
    public var editMethod: EditMethod {
        get throws {
            do { return try EditMethod(parsing: method ?? EditMethod.daemonDefault.rawValue) } catch { throw SetupError("", cause: error) }
        }
    }

    /// The configured MESA settings applied over a hyperparameter file's "mesa" block.
    public func mesaSettings(over file: MesaHyperparameters?) -> MesaHyperparameters? {
        .overriding(file, sae: mesa?.sae, l1: mesa?.l1.map(Float.init), fallback: mesa?.fallback)
    }

    /// The state directory: the configured one, or `paths.state` ($MESA_HOME/state).
    public func stateDirectory(_ paths: Paths) -> URL {
        stateDir.map { URL(fileURLWithPath: $0) } ?? paths.state
    }

    // MARK: loading

    /// Reads the file at `path` (checked against its schema), then applies the environment.
    public static func resolve(file path: String?, environment env: [String: String], catalog: SchemaCatalog) throws -> DaemonConfiguration {
        var c = DaemonConfiguration()
        if let path {
            guard let data = FileManager.default.contents(atPath: path) else { throw SetupError("cannot read configuration \(path)") }
            do { try catalog.check(data, against: "serve-config.schema.json", what: path) } catch let e as SchemaCatalogError { throw SetupError(e) }
            do { c = try JSONCoding.decoder().decode(DaemonConfiguration.self, from: data) } catch {
                throw SetupError(path, cause: error)
            }
        }
        try c.applyEnvironment(env)
        return c
    }

    /// MESA_MODEL, MESA_STATE_DIR, MESA_HPARAMS_DIR, MESA_CORPUS, MESA_THREADS, MESA_KAFKA_BOOTSTRAP_SERVERS,
    /// MESA_KAFKA_GROUP_ID, MESA_KAFKA_KEYED_BY_MODEL, MESA_HTTP_LISTEN, MESA_SAE, MESA_SAE_FALLBACK, MESA_METHOD,
    /// MESA_BATCH_MAX_EVENTS, MESA_BATCH_LINGER_MS, MESA_RETRY_MAX_ATTEMPTS, MESA_RETRY_BACKOFF_MS, MESA_QUALITY_GUARD,
    /// MESA_CANARY_FILE, MESA_DATA_DIR, MESA_LOG_LEVEL, MESA_LOG_FORMAT, and the query API's (`applyQueryEnvironment`).
    public mutating func applyEnvironment(_ env: [String: String]) throws {
        func value(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        if let v = value("MESA_MODEL") { model = v }
        if let v = value("MESA_METHOD") { method = v }
        if let v = value("MESA_STATE_DIR") { stateDir = v }
        if let v = value("MESA_HPARAMS_DIR") { hparamsDir = v }
        if let v = value("MESA_CORPUS") { corpus = v }
        if let v = value("MESA_THREADS") {
            guard let n = Int(v), n >= 0 else { throw SetupError("MESA_THREADS=\(v) is not a thread count") }
            threads = n
        }
        if let v = value("MESA_KAFKA_BOOTSTRAP_SERVERS") { setKafka { $0.bootstrapServers = v } }
        if let v = value("MESA_KAFKA_GROUP_ID") { setKafka { $0.groupId = v } }
        if let v = value("MESA_KAFKA_KEYED_BY_MODEL") {
            guard let b = Bool(v) else { throw SetupError("MESA_KAFKA_KEYED_BY_MODEL=\(v) is not true or false") }
            setKafka { $0.keyedByModel = b }
        }
        if let v = value("MESA_HTTP_LISTEN") { http = HTTP(listen: v) }
        if let v = value("MESA_LOG_LEVEL") { log = Log(level: try Logger.Level(parsing: v).rawValue, format: log?.format) }
        if let v = value("MESA_LOG_FORMAT") { log = Log(level: log?.level, format: try LogFormat(parsing: v).rawValue) }
        if let v = value("MESA_SAE") { mesa = Mesa(sae: v, fallback: mesa?.fallback, l1: mesa?.l1) }
        func count(_ key: String) throws -> Int? {
            guard let v = value(key) else { return nil }
            guard let n = Int(v), n >= 0 else { throw SetupError("\(key)=\(v) is not a count") }
            return n
        }
        if let n = try count("MESA_BATCH_MAX_EVENTS") { batch = Batch(maxEvents: n, lingerMs: batch?.lingerMs) }
        if let n = try count("MESA_BATCH_LINGER_MS") { batch = Batch(maxEvents: batch?.maxEvents, lingerMs: n) }
        if let v = value("MESA_QUALITY_GUARD") {
            guard let b = Bool(v) else { throw SetupError("MESA_QUALITY_GUARD=\(v) is not true or false") }
            var g = qualityGuard ?? QualityGuard()
            g.enabled = b
            qualityGuard = g
        }
        if let v = value("MESA_CANARY_FILE") {
            var g = qualityGuard ?? QualityGuard()
            g.canaryFile = v
            qualityGuard = g
        }
        if let v = value("MESA_DATA_DIR") { dataDir = v }
        if let n = try count("MESA_RETRY_MAX_ATTEMPTS") { retry = Retry(maxAttempts: n, backoffMs: retry?.backoffMs, maxBackoffMs: retry?.maxBackoffMs) }
        if let n = try count("MESA_RETRY_BACKOFF_MS") { retry = Retry(maxAttempts: retry?.maxAttempts, backoffMs: n, maxBackoffMs: retry?.maxBackoffMs) }
        if let v = value("MESA_SAE_FALLBACK") {
            guard let b = Bool(v) else { throw SetupError("MESA_SAE_FALLBACK=\(v) is not true or false") }
            mesa = Mesa(sae: mesa?.sae, fallback: b, l1: mesa?.l1)
        }
        try applyQueryEnvironment(env)
    }

    public mutating func setKafka(_ body: (inout Kafka) -> Void) {
        var k = kafka ?? Kafka()
        body(&k)
        kafka = k
    }
}
