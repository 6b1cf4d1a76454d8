import Contracts
import Editing
import Foundation
import Logging
import Messaging
import ModelRuntime
import Prometheus
import ServiceLifecycle
import Storage
import Tensor
import UnixSignals

/// What `mesa follow` adds to the daemon's configuration.
public struct FollowSettings: Sendable {
    /// The follower's consumer group (its position in the deltas topic).
    public var groupId: String
    /// The HTTP listener for /healthz, /readyz, /metrics and the query API.
    public var httpListen: String
    /// /readyz reports not ready while more records than this wait to be applied.
    public var maxLag: Int64
    /// Fault injection for tests: seconds to pause at each crash point of an apply (the weights
    /// changed and the snapshot not stored; the snapshot stored and the offset not committed), each
    /// pause announced in the log first. 0 (the default): no pause.
    public var pauseInApply: Double = 0

    public static let defaultListen = "127.0.0.1:9465"
    public static let defaultMaxLag: Int64 = 0

    /// `mesa-follower-<hostname>`.
    public static var defaultGroupId: String { "mesa-follower-\(ProcessInfo.processInfo.hostName)" }

    public init(groupId: String = FollowSettings.defaultGroupId, httpListen: String = FollowSettings.defaultListen,
                maxLag: Int64 = FollowSettings.defaultMaxLag) {
        self.groupId = groupId
        self.httpListen = httpListen
        self.maxLag = maxLag
    }
}

/// `mesa follow`: a read-only replica. It loads the configured base model, rebuilds the weights from
/// its own snapshot store (`<state>/follower/<hash16>/lmdb`), consumes the weight-deltas topic in its
/// own consumer group (from where it stopped; a new group from the start), applies each record
/// (`Follower`) and commits its offset after the snapshot is durable, and serves the daemon's query
/// API, /healthz, /readyz and /metrics on its own listener. /readyz says not ready until the lag is
/// known and at most `maxLag`, and states the lag. A record it refuses stops the applying (logged as
/// an error, and /readyz says why and how to recover); the last verified snapshot stays served.
public final class FollowerDaemon: @unchecked Sendable {  // mutable state is guarded by `lock`
    public let config: DaemonConfiguration
    public let settings: FollowSettings
    public let paths: Paths
    public let metrics = DaemonMetrics(version: Daemon.version)
    /// What the follower adds to the daemon's metrics (in the same registry).
    public let followerMetrics: FollowerMetrics
    let logger: Logger
    private let lock = NSLock()
    private var status = "starting"
    private var follower: Follower?
    private var consumer: KafkaConsumer?
    private var refusal: String?
    private var group: ServiceGroup?
    private let stopFlag = StopFlag()

    public init(config: DaemonConfiguration, settings: FollowSettings, paths: Paths, logger: Logger) {
        self.config = config
        self.settings = settings
        self.paths = paths
        self.logger = logger
        followerMetrics = FollowerMetrics(registry: metrics.registry)
    }

    /// Shuts a running follower down gracefully, as SIGTERM does.
    public func stop() {
        lock.lock()
        let g = group
        lock.unlock()
        if let g { Task { await g.triggerGracefulShutdown() } }
    }

    private func setGroup(_ g: ServiceGroup?) {
        lock.lock(); group = g; lock.unlock()
    }

    private func set(_ s: String) {
        lock.lock(); status = s; lock.unlock()
    }

    /// Ready when a record refusal has not stopped it and the lag is known and at most `maxLag`.
    public func readiness() -> Readiness {
        lock.lock()
        let (s, c, refused) = (status, consumer, refusal)
        lock.unlock()
        if let refused { return .notReady(refused) }
        guard let c, s == "following" else { return .notReady(s) }
        return Self.readiness(lag: c.lag(), maxLag: settings.maxLag, topic: config.topics.weightDeltas)
    }

    /// Ready when the lag of every partition is known (`KafkaConsumer.lag`) and their sum is at most `maxLag`.
    public static func readiness(lag: [String: Int64], maxLag: Int64, topic: String) -> Readiness {
        guard !lag.isEmpty else { return .notReady("catching up: lag unknown (nothing fetched from \(topic) yet)") }
        let total = lag.values.reduce(0, +)
        let figure = "lag \(total) record\(total == 1 ? "" : "s") (at most \(maxLag) for ready)"
        return total <= maxLag ? Readiness(isReady: true, reason: figure) : .notReady("catching up: \(figure)")
    }

    /// Runs the HTTP server and the follower until a graceful shutdown (one of `signals`, or `stop()`),
    /// or until one of them failed (then that error is thrown).
    public func run(signals: [UnixSignal] = []) async throws {
        let catalog = try paths.schemaCatalog()
        let address = try HTTPListenAddress(parsing: settings.httpListen)
        var query: QueryAPI?
        if config.queryEnabled {
            let limits = try config.queryLimits(environment: ProcessInfo.processInfo.environment)
            if limits.bearerToken == nil, !address.isLoopback {
                logger.warning("http: the query API listens on \(address) without a token: anyone who reaches it can query the model (set query.token_file or MESA_QUERY_TOKEN)")
            }
            query = try QueryAPI(limits: limits, catalog: catalog, logger: logger, host: { [self] in
                lock.lock(); defer { lock.unlock() }
                return follower?.host
            }, notLoaded: { [self] in
                lock.lock(); defer { lock.unlock() }
                return status
            }, blasThreads: config.threads)
        }
        let router = HealthEndpoints.router(exposition: { [metrics] in metrics.exposition() }, readiness: { [self] in
            let r = readiness()
            metrics.setReady(r.isReady)
            return r
        }, query: query)
        let routes = "/healthz /readyz /metrics" + (query == nil ? "" : " /v1/completions /v1/score /v1/model")
        let http = HealthEndpoints.service(address: address, router: router, logger: logger) { [logger] port in
            logger.info("http: listening on \(HTTPListenAddress(host: address.host, port: UInt16(port))) (\(routes))")
        }
        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: http, serviceName: "http"),
                .init(service: FollowWorkerService(daemon: self), serviceName: "follower"),
            ],
            gracefulShutdownSignals: signals, logger: logger))
        setGroup(group)
        defer { setGroup(nil) }
        try await group.run()
        logger.info("stopped: the follower's consumer is closed")
    }

    /// Loads the model, rebuilds the weights from the store, connects and applies records until
    /// stopped (on a thread of its own).
    func work() throws {
        let c = config
        if let t = c.threads { BLAS.setThreads(t) }
        set("loading model")
        let modelPath = try c.model ?? paths.defaultModel()
        let model = try ModelLoader.load(path: modelPath)
        let name = Installation.modelName(modelPath)
        set("rebuilding the weights from the snapshot store")
        let lmdb = EditState(directory: c.stateDirectory(paths).appendingPathComponent("follower"), baseHash: model.weightHash).snapshotStore
        let store = try SnapshotStore(path: lmdb.path, mapSize: c.mapBytes)
        let f = try Follower(model: model, modelName: name, store: store)
        let pause = settings.pauseInApply
        if pause > 0 {
            f.atCrashPoint = { [logger] stage in
                logger.warning("fault injection: pausing \(Int(pause * 1000)) ms inside an apply: \(stage)")
                Thread.sleep(forTimeInterval: pause)
            }
        }
        lock.lock(); follower = f; lock.unlock()
        metrics.snapshotHead.set(to: Double(f.head))
        logger.info("model: \(name), base hash \(f.host.baseHash.prefix(16)); snapshots \(lmdb.path), head \(f.head), weights \(model.weightHash.prefix(16))",
                    metadata: ["head": "\(f.head)", "weight_hash": "\(model.weightHash)"])

        set("connecting to Kafka")
        let topic = c.topics.weightDeltas
        var props = c.kafkaProperties
        if c.createTopics {
            let admin = try KafkaAdmin(properties: props)
            defer { admin.close() }
            try admin.createTopics([topic], partitions: 1, replicationFactor: 1, timeout: 30)
        }
        props["group.id"] = settings.groupId
        props["auto.offset.reset"] = "earliest"
        if props["topic.metadata.refresh.interval.ms"] == nil { props["topic.metadata.refresh.interval.ms"] = "10000" }
        let consumer = try KafkaConsumer(properties: props, topics: [topic], logger: logger, maxBufferedPerPartition: 64)
        defer { consumer.close() }
        metrics.setConsumerLagSource {
            consumer.lag().map { key, lag in
                let cut = key.lastIndex(of: "/")
                return ConsumerLag(topic: cut.map { String(key[..<$0]) } ?? key, partition: cut.flatMap { Int32(key[key.index(after: $0)...]) } ?? 0, lag: lag)
            }
        }
        lock.lock(); self.consumer = consumer; status = "following"; lock.unlock()
        logger.info("following \(topic) as group \(settings.groupId) from \(c.bootstrapServers)")
        while !stopFlag.isRaised {
            guard let m = consumer.next(timeout: 0.25) else { continue }
            let source = EventSource(topic: m.topic, partition: m.partition, offset: m.offset)
            let t0 = Date()
            let step: Follower.Step
            do { step = try f.apply(m.payload, source: source) } catch {
                consumer.release(m)
                followerMetrics.refused.set(to: 1)
                let why = "\(error)"
                lock.lock(); refusal = "stopped at \(m.topic)/\(m.partition)@\(m.offset): \(why)"; lock.unlock()
                logger.error("\(m.topic)/\(m.partition)@\(m.offset) not applied; following stopped at snapshot \(f.head)",
                             metadata: ["error": "\(why)", "head": "\(f.head)"])
                while !stopFlag.isRaised { Thread.sleep(forTimeInterval: 0.1) }
                break
            }
            switch step {
            case .applied:
                let seconds = Date().timeIntervalSince(t0)
                followerMetrics.applied(seconds: seconds)
                metrics.snapshotHead.set(to: Double(f.head))
                logger.info("\(m.topic)/\(m.partition)@\(m.offset): snapshot \(f.head) applied in \(String(format: "%.1f", 1000 * seconds)) ms",
                            metadata: ["head": "\(f.head)", "weight_hash": "\(f.host.model.weightHash)"])
                if pause > 0 {
                    logger.warning("fault injection: pausing \(Int(pause * 1000)) ms inside an apply: snapshot \(f.head) is stored and offset \(m.offset) not yet committed")
                    Thread.sleep(forTimeInterval: pause)
                }
            case .skipped(let why):
                followerMetrics.skipped.increment()
                logger.info("\(m.topic)/\(m.partition)@\(m.offset): skipped (\(why))")
            }
            do { try consumer.commit(m, wait: false) } catch {
                logger.warning("commit of \(m.topic)/\(m.partition)@\(m.offset) failed (it will be redelivered and skipped)", metadata: ["error": "\(error)"])
            }
        }
        set("stopping")
        lock.lock(); self.consumer = nil; lock.unlock()
    }

    fileprivate func stopWorking() { stopFlag.raise() }
}

/// The follower's own series, beside the daemon's (`mesa_snapshot_head`, `mesa_consumer_lag` of the
/// deltas topic, `mesa_ready`):
///
/// - `mesa_follower_records_applied_total`, `mesa_follower_records_skipped_total` (redeliveries of
///   what it holds);
/// - `mesa_follower_apply_seconds` (histogram) and `mesa_follower_last_apply_seconds`: a record's
///   decode, checks, apply, weight hash and snapshot commit;
/// - `mesa_follower_last_apply_timestamp_seconds` (Unix time of the last apply; 0 before the first);
/// - `mesa_follower_refused`: 1 once a record was refused and the applying stopped, else 0.
public struct FollowerMetrics: Sendable {
    public let applied: Prometheus.Counter
    public let skipped: Prometheus.Counter
    public let applySeconds: ValueHistogram
    public let lastApplySeconds: Gauge
    public let lastApplyTimestamp: Gauge
    public let refused: Gauge

    public static let applyBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    public init(registry: PrometheusCollectorRegistry) {
        applied = registry.makeCounter(name: "mesa_follower_records_applied_total", help: "Weight-delta records applied (edits and rollbacks).")
        skipped = registry.makeCounter(name: "mesa_follower_records_skipped_total", help: "Weight-delta records skipped: snapshots or offsets already held.")
        applySeconds = registry.makeValueHistogram(name: "mesa_follower_apply_seconds", buckets: Self.applyBuckets,
                                                   help: "Time to apply one record: decode, checks, apply, weight hash, snapshot commit.")
        lastApplySeconds = registry.makeGauge(name: "mesa_follower_last_apply_seconds", help: "Time the last applied record took.")
        lastApplyTimestamp = registry.makeGauge(name: "mesa_follower_last_apply_timestamp_seconds", help: "Unix time of the last applied record; 0 before the first.")
        refused = registry.makeGauge(name: "mesa_follower_refused", help: "1 when a record was refused and the applying stopped, else 0.")
    }

    /// Records one applied record that took `seconds`.
    func applied(seconds: Double) {
        applied.increment()
        applySeconds.record(seconds)
        lastApplySeconds.set(to: seconds)
        lastApplyTimestamp.set(to: Date().timeIntervalSince1970)
    }
}

/// The follower's loop on a thread of its own; a graceful shutdown stops it after the record in flight.
struct FollowWorkerService: Service {
    let daemon: FollowerDaemon
    func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await onThread("mesa-follower") { [daemon] in try daemon.work() }
        } onCancelOrGracefulShutdown: { [daemon] in daemon.stopWorking() }
    }
}
