import ArgumentParser
import EditDaemon
import Editing
import Foundation
import Logging
import Messaging
import Metrics
import ModelRuntime
import Prometheus
import UnixSignals

/// Where the daemon and the operator verbs find their configuration.
struct DaemonOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file (JSON, Schemas/serve-config.schema.json; default: $MESA_CONFIG).")
    var config: String?

    @Option(name: .long, help: "Kafka bootstrap servers (default: $MESA_KAFKA_BOOTSTRAP_SERVERS, the file's, or 127.0.0.1:9092).")
    var bootstrapServers: String?

    @Option(name: .long, help: "State directory: snapshots (lmdb/) and the model's edit state (default: $MESA_STATE_DIR, the file's, or $MESA_HOME/state).")
    var stateDir: String?

    @Option(name: .customLong("kafka-property"), help: "A librdkafka setting KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL.")
    var kafkaProperties: [String] = []

    /// File, then environment, then these flags.
    func resolve() throws -> DaemonConfiguration {
        let env = ProcessInfo.processInfo.environment
        var c = try DaemonConfiguration.resolve(file: config ?? env["MESA_CONFIG"].flatMap { $0.isEmpty ? nil : $0 },
                                                environment: env, catalog: try paths.schemaCatalog())
        if let b = bootstrapServers { c.setKafka { $0.bootstrapServers = b } }
        if let s = stateDir { c.stateDir = s }
        for kv in kafkaProperties {
            guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else {
                // Without "=" there is no telling the key from the value: show nothing that may be a secret.
                throw fail("--kafka-property wants KEY=VALUE, got \(Kafka.isSecret(kv) ? "an argument without \"=\" (not shown: it may hold a secret)" : kv)")
            }
            let key = String(kv[..<eq]), value = String(kv[kv.index(after: eq)...])
            c.setKafka { k in
                var p = k.properties ?? [:]
                p[key] = value
                k.properties = p
            }
        }
        return c
    }
}

struct Serve: AsyncParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the edit daemon: consume fact updates and control commands, edit, snapshot, publish results.",
        discussion: """
        Per event: decode → validate → dedupe → edit → evaluate → snapshot (LMDB) → publish → commit \
        offset+1. Invalid events go to the dead-letter topic with the reason. SIGTERM stops intake, \
        finishes the edit in flight, commits and exits. Precedence: flags > environment > file > \
        defaults (deploy/README.md lists every setting).
        """)

    @OptionGroup var daemonOptions: DaemonOptions
    @OptionGroup var logOptions: LogOptions

    @Option(name: .long, help: "Model (default: $MESA_MODEL, the file's, or the installed SmolLM2-135M-Instruct).")
    var model: String?

    @Option(name: .long, help: "Consumer group id (default: $MESA_KAFKA_GROUP_ID, the file's, or mesa).")
    var groupId: String?

    @Option(name: .long, help: "HTTP listen address for /healthz, /readyz, /metrics and the query API /v1/... (default: 127.0.0.1:9464).")
    var httpListen: String?

    @Option(name: .long, help: "Query API: a file with the bearer token every /v1 request must carry (default: $MESA_QUERY_TOKEN_FILE, the file's, or the token in $MESA_QUERY_TOKEN; none: no token).")
    var queryTokenFile: String?

    @Option(name: .long, help: "Query API: requests served at once; more are answered 429 (default: $MESA_QUERY_MAX_CONCURRENT, the file's, or 4).")
    var queryMaxConcurrent: Int?

    @Option(name: .long, help: "Query API: the most new tokens a completion may ask for (default: $MESA_QUERY_MAX_TOKENS, the file's, or 512).")
    var queryMaxTokens: Int?

    @Option(name: .long, help: "Query API: a request's time limit in ms (default: $MESA_QUERY_TIMEOUT_MS, the file's, or 30000).")
    var queryTimeoutMs: Int?

    @Flag(name: .long, help: "Serve no query API (/v1/completions, /v1/score, /v1/model).")
    var noQuery = false

    @Option(name: .long, help: "BLAS threads (0 = one per core).")
    var threads: Int?

    @Option(name: .long, help: "Editing method: rome, memit, alphaedit or encore (default: $MESA_METHOD, the file's, or encore).")
    var method: EditMethod?

    @Option(name: .long, help: "MESA: refine ROME's v* through this SAE (a directory, or a name under <state>/<hash16>/sae/; default: $MESA_SAE, the file's).")
    var mesa: String?

    @Flag(name: .long, help: "MESA: if the SAE cannot be loaded, serve plain ROME and say so in every result (default: refuse to start).")
    var mesaFallback = false

    @Option(name: .long, help: "MEMIT/AlphaEdit: edit up to this many consecutive fact updates together, as one snapshot (default: $MESA_BATCH_MAX_EVENTS, the file's, or 1).")
    var batchMaxEvents: Int?

    @Option(name: .long, help: "How long the first event of a batch waits for more, in ms (default: $MESA_BATCH_LINGER_MS, the file's, or 50).")
    var batchLingerMs: Int?

    func run() async throws {
        try await reportingErrors {
            var c = try daemonOptions.resolve()
            if let model { c.model = model }
            if let groupId { c.setKafka { $0.groupId = groupId } }
            if let httpListen { c.http = .init(listen: httpListen) }
            if let threads { c.threads = threads }
            if queryTokenFile != nil || queryMaxConcurrent != nil || queryMaxTokens != nil || queryTimeoutMs != nil || noQuery {
                var q = c.query ?? .init()
                if let queryTokenFile { q.tokenFile = queryTokenFile }
                if let queryMaxConcurrent { q.maxConcurrent = queryMaxConcurrent }
                if let queryMaxTokens { q.maxTokens = queryMaxTokens }
                if let queryTimeoutMs { q.timeoutMs = queryTimeoutMs }
                if noQuery { q.enabled = false }
                c.query = q
            }
            if let method { c.method = method.rawValue }
            if let mesa { c.mesa = .init(sae: mesa, fallback: c.mesa?.fallback, l1: c.mesa?.l1) }
            if mesaFallback { c.mesa = .init(sae: c.mesa?.sae, fallback: true, l1: c.mesa?.l1) }
            if batchMaxEvents != nil || batchLingerMs != nil {
                c.batch = .init(maxEvents: batchMaxEvents ?? c.batch?.maxEvents, lingerMs: batchLingerMs ?? c.batch?.lingerMs)
            }
            c.model = try c.model ?? paths.defaultModel()
            try logOptions.configure(format: try c.logFormat, level: try c.logLevel)
            let daemon = try buildDaemon(config: c, paths: paths, logger: Logger(label: "mesa serve"))
            // Metrics emitted through swift-metrics (by libraries) land in the daemon's registry, on the same /metrics.
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: daemon.metrics.registry))
            try await daemon.run(signals: [.sigterm, .sigint])
        }
    }
}
