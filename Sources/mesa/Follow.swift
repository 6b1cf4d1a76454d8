import ArgumentParser
import EditDaemon
import Foundation
import Logging
import Metrics
import Prometheus

struct Follow: AsyncParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a read-only replica: apply the weight-deltas topic to the base model and serve the query API.",
        discussion: """
        Loads the same base model as `mesa serve`, rebuilds the weights from its own snapshot store \
        (<state-dir>/follower/), consumes the weight-deltas topic in its own consumer group (from where \
        it stopped; a new group reads from the start), applies each edit and rollback and checks the \
        weight hash after each. It serves /healthz, /readyz (not ready while it lags; states the lag), \
        /metrics and the query API on its own listener. A gap, a record from another model or a hash \
        mismatch stops the applying and says how to recover. Reads the same configuration as `mesa serve`.
        """)

    @OptionGroup var daemonOptions: DaemonOptions
    @OptionGroup var logOptions: LogOptions

    @Option(name: .long, help: "Model (default: $MESA_MODEL, the file's, or the installed SmolLM2-135M-Instruct): the editor's base model.")
    var model: String?

    @Option(name: .long, help: "Consumer group id (default: mesa-follower-<hostname>).")
    var groupId: String?

    @Option(name: .long, help: "HTTP listen address for /healthz, /readyz, /metrics and the query API (default: 127.0.0.1:9465).")
    var httpListen: String?

    @Option(name: .long, help: "/readyz reports not ready while more records than this wait to be applied (default: 0).")
    var maxLag: Int64?

    @Option(name: .long, help: "Query API: a file with the bearer token every /v1 request must carry (default: $MESA_QUERY_TOKEN_FILE, the file's, or the token in $MESA_QUERY_TOKEN; none: no token).")
    var queryTokenFile: String?

    @Flag(name: .long, help: "Serve no query API (/v1/completions, /v1/score, /v1/model).")
    var noQuery = false

    @Option(name: .long, help: ArgumentHelp("Fault injection for tests: pause this many milliseconds at each crash point of an apply.", visibility: .hidden))
    var pauseInApplyMs: Int = 0

    @Option(name: .long, help: "BLAS threads (0 = one per core).")
    var threads: Int?

    func run() async throws {
        try await reportingErrors {
            var c = try daemonOptions.resolve()
            if let model { c.model = model }
            if let threads { c.threads = threads }
            if queryTokenFile != nil || noQuery {
                var q = c.query ?? .init()
                if let queryTokenFile { q.tokenFile = queryTokenFile }
                if noQuery { q.enabled = false }
                c.query = q
            }
            c.model = try c.model ?? paths.defaultModel()
            var s = FollowSettings()
            if let groupId { s.groupId = groupId }
            if let httpListen { s.httpListen = httpListen }
            if let maxLag {
                guard maxLag >= 0 else { throw fail("--max-lag must be 0 or more") }
                s.maxLag = maxLag
            }
            guard pauseInApplyMs >= 0 else { throw fail("--pause-in-apply-ms must be 0 or more") }
            s.pauseInApply = Double(pauseInApplyMs) / 1000
            try logOptions.configure(format: try c.logFormat, level: try c.logLevel)
            let follower = FollowerDaemon(config: c, settings: s, paths: paths, logger: Logger(label: "mesa follow"))
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: follower.metrics.registry))
            try await follower.run(signals: [.sigterm, .sigint])
        }
    }
}
