import Contracts
import Editing
import Foundation
import Logging
import Messaging
import ModelRuntime
import ServiceLifecycle
import Storage
import Tensor
import UnixSignals

/// `mesa serve`: the model host, the consumer (fact updates and control commands), the producer
/// (results and dead letters), the snapshot store and the HTTP endpoint, composed as Services in one
/// swift-service-lifecycle `ServiceGroup`.
///
/// The group starts with the HTTP server (so liveness and "not ready: loading" are visible during a
/// long start) and the startup, which loads the model, the quality guard, the snapshot store and the
/// editor, connects to Kafka, and then adds, in dependency order, the producer, the topic keeper, the
/// edit worker and the intake. A graceful shutdown (SIGTERM / SIGINT in `mesa serve`, or `stop()`)
/// runs in reverse: the intake stops handing out events, the worker finishes the edit in flight and
/// commits its offset, the topic keeper and the producer stop, then the HTTP server; the consumer and
/// the stores close when the group has finished.
///
/// One worker thread processes one event, or one batch of consecutive events of a partition
/// (`batch.max_events` > 1, MEMIT and AlphaEdit), at a time; the consumer polls on its own thread and
/// keeps the partition paused while an edit runs. Per event or batch: process (decode → validate →
/// dedupe → edit → evaluate → snapshot), publish the records, then commit the last offset+1.
public final class Daemon: @unchecked Sendable {  // mutable state is guarded by `lock`; the worker's own (failing, counted) is touched by its thread only
    public let config: DaemonConfiguration
    public let paths: Paths
    public let metrics = DaemonMetrics(version: Daemon.version, methods: ["ROME"])
    public static let version = "0.5.0"
    let logger: Logger
    private let lock = NSLock()
    private var readiness = "starting"
    private var group: ServiceGroup?
    private var intake: Intake?
    private var workerStopped = false
    /// The model host once the startup has loaded the model (the query API answers from it).
    private var loadedHost: ModelHost?
    /// Called after each event with its outcome and total seconds (benchmarks).
    public var onEvent: (@Sendable (Outcome, Double) -> Void)?

    init(config: DaemonConfiguration, paths: Paths, logger: Logger) {
        self.config = config
        self.paths = paths
        self.logger = logger
    }

    /// Shuts a running daemon down gracefully, as SIGTERM does.
    public func stop() {
        lock.lock()
        let g = group
        lock.unlock()
        if let g { Task { await g.triggerGracefulShutdown() } }
    }

    /// True once the intake is closed or the worker was told to stop: the edit in flight finishes,
    /// its records are published if the broker takes them now, and its offset is committed.
    var stopping: Bool {
        lock.lock(); defer { lock.unlock() }
        return workerStopped || !(intake?.isOpen ?? true)
    }

    private func setGroup(_ g: ServiceGroup?) {
        lock.lock(); group = g; lock.unlock()
    }

    func stopWorker() {
        lock.lock(); workerStopped = true; lock.unlock()
    }

    func setReadiness(_ s: String) {
        lock.lock(); readiness = s; lock.unlock()
        metrics.setReady(s == "ready")
    }

    func currentReadiness() -> String {
        lock.lock(); defer { lock.unlock() }
        return readiness
    }

    /// Whether the daemon takes events now (what /readyz answers).
    public var isReady: Bool { currentReadiness() == "ready" }

    /// Runs the daemon's services until a graceful shutdown (one of `signals`, or `stop()`) has
    /// drained them, or one of them failed (then that error is thrown).
    public func run(signals: [UnixSignal] = []) async throws {
        let c = config
        let catalog = try paths.schemaCatalog()
        let address = try HTTPListenAddress(parsing: c.httpListen)
        let query = try makeQueryAPI(catalog: catalog, address: address)
        let router = HealthEndpoints.router(exposition: metrics.exposition, readiness: { [self] in
            let r = currentReadiness()
            return r == "ready" ? .ready : .notReady(r)
        }, query: query)
        let paths = "/healthz /readyz /metrics" + (query == nil ? "" : " /v1/completions /v1/score /v1/model")
        let http = HealthEndpoints.service(address: address, router: router, logger: logger) { [logger] port in
            logger.info("http: listening on \(HTTPListenAddress(host: address.host, port: UInt16(port))) (\(paths))")
        }
        let startup = StartupService(daemon: self, catalog: catalog)
        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: http, serviceName: "http"),
                .init(service: startup, successTerminationBehavior: .ignore, serviceName: "startup"),
            ],
            gracefulShutdownSignals: signals, logger: logger))
        startup.group = group
        setGroup(group)
        // The consumer and the stores close last, whatever stopped the group.
        do { try await group.run() } catch {
            setGroup(nil)
            startup.closeAll()
            throw error
        }
        setGroup(nil)
        startup.closeAll()
        if let failure = startup.failure { throw failure }
        logger.info("stopped: intake closed, no edit in flight, consumer and producer closed")
    }

    /// The query API over the host the startup loads (nil when `query.enabled` is false).
    func makeQueryAPI(catalog: SchemaCatalog, address: HTTPListenAddress) throws -> QueryAPI? {
        guard config.queryEnabled else { return nil }
        let limits = try config.queryLimits(environment: ProcessInfo.processInfo.environment)
        if limits.bearerToken == nil, !address.isLoopback {
            logger.warning("http: the query API listens on \(address) without a token: anyone who reaches it can query the model (set query.token_file or MESA_QUERY_TOKEN)")
        }
        return try QueryAPI(limits: limits, catalog: catalog, logger: logger, host: { [self] in
            lock.lock(); defer { lock.unlock() }
            return loadedHost
        }, notLoaded: { [self] in currentReadiness() }, blasThreads: config.threads)
    }

    /// Builds the pipeline (`buildPipeline`) and connects to Kafka, on the startup's thread
    /// (`shouldStop` interrupts a key-statistics computation). Each part is handed to `started` as
    /// soon as it exists, so that a failure further on still closes it.
    func assemble(catalog: SchemaCatalog, shouldStop: @escaping () -> Bool, started: (Part) -> Void) throws -> Parts {
        let c = config
        let pipeline = try buildPipeline(config: c, paths: paths, catalog: catalog, logger: logger, metrics: metrics,
                                         shouldStop: shouldStop, status: setReadiness)
        lock.lock(); loadedHost = pipeline.host; lock.unlock()
        let topics = c.topics

        setReadiness("connecting to Kafka")
        let props = c.kafkaProperties
        if c.createTopics {
            let admin = try KafkaAdmin(properties: props)
            defer { admin.close() }
            try admin.createTopics(topics.all, partitions: 1, replicationFactor: 1, timeout: 30)
        }
        try checkInputPartitions(properties: props, topics: topics, keyedByModel: c.keyedByModel)
        let producer = try ProducerSlot(properties: props, logger: logger)
        started(.producer(producer))
        let keeper = c.createTopics ? TopicKeeper(properties: props, topics: topics.all, logger: logger) : nil
        if let keeper { started(.keeper(keeper)) }
        var consumerProps = props
        consumerProps["group.id"] = c.groupId
        // Notice re-created topics (after a broker lost them) in seconds, not at the 5-minute default.
        if consumerProps["topic.metadata.refresh.interval.ms"] == nil { consumerProps["topic.metadata.refresh.interval.ms"] = "10000" }
        // Events are prefetched (up to 64 per partition, ≤ 4 MiB at the default event limit): with only the
        // event in flight held, every event waited for a fetch round trip after its commit (a flood of
        // 2,000 bad records settled 5× slower). A batch needs its events buffered while the first waits.
        let consumer = try KafkaConsumer(properties: consumerProps, topics: topics.inputs, logger: logger,
                                         maxBufferedPerPartition: max(64, c.batchMaxEvents + 1))
        let intake = Intake(consumer: consumer)
        started(.intake(intake))
        lock.lock(); self.intake = intake; lock.unlock()
        metrics.setConsumerLagSource {
            consumer.lag().map { key, lag in
                let cut = key.lastIndex(of: "/")
                return ConsumerLag(topic: cut.map { String(key[..<$0]) } ?? key, partition: cut.flatMap { Int32(key[key.index(after: $0)...]) } ?? 0, lag: lag)
            }
        }
        return Parts(pipeline: pipeline, producer: producer, keeper: keeper, intake: intake)
    }

    /// The edit worker's loop (on its own thread): batches from the intake until the worker is told to stop.
    func work(_ parts: Parts) {
        let c = config
        setReadiness("ready")
        let batching = c.batchMaxEvents > 1 ? "; batch edits of up to \(c.batchMaxEvents) events (linger \(Int(c.batchLinger * 1000)) ms)" : ""
        logger.info("consuming \(c.topics.inputs.joined(separator: ", ")) as group \(c.groupId) from \(c.bootstrapServers)\(batching)")
        while true {
            lock.lock()
            let stop = workerStopped
            lock.unlock()
            if stop { break }
            let batch = parts.intake.nextBatch(max: c.batchMaxEvents, linger: c.batchLinger, timeout: 0.25)
            guard !batch.isEmpty else { continue }
            handle(batch, pipeline: parts.pipeline, producer: parts.producer, consumer: parts.intake.consumer)
            metrics.snapshotHead.set(to: Double(parts.pipeline.host.head))
        }
        setReadiness("stopping")
    }

    /// The event at the head of the line whose processing keeps failing, and how often it failed.
    private var failing: (key: String, attempts: Int)?
    /// Per "topic/partition", the highest offset counted as consumed (retries are not counted again).
    private var counted: [String: Int64] = [:]

    /// Processes, publishes and commits one event or one batch of consecutive events of a partition.
    ///
    /// A failure that is not the event's fault (the snapshot store, a bug) releases the events
    /// uncommitted and retries them after a backoff that doubles, the failing event alone; after
    /// `retry.max_attempts` attempts it is dead-lettered (reason `processing_failed`, with the error
    /// and the attempts) and the offset moves on, so no single record can stop the daemon. Records
    /// that could not be published are retried until the broker takes them (a dead letter too large
    /// for the broker is replaced by one without the original bytes); the dedupe index makes the
    /// second pass of an edit publish without editing again.
    func handle(_ batch: [KafkaMessage], pipeline: Pipeline, producer: ProducerSlot, consumer: KafkaConsumer) {
        let t0 = Date()
        var batch = batch
        let first = batch[0]
        let key = "\(first.topic)/\(first.partition)@\(first.offset)"
        let earlier = failing?.key == key ? failing!.attempts : 0
        if earlier > 0, batch.count > 1 {
            // Retried alone, so that one bad event cannot hold the others of its batch.
            consumer.release(Array(batch.dropFirst()))
            batch = [first]
        }
        for m in batch where m.offset > counted[m.partitionKey, default: -1] {
            counted[m.partitionKey] = m.offset
            metrics.eventConsumed(topic: m.topic)
        }
        var outcomes: [Outcome]
        do { outcomes = try pipeline.process(batch: batch) } catch {
            let attempts = earlier + 1
            let more = batch.count > 1 ? " and \(batch.count - 1) more" : ""
            if attempts < config.retryMaxAttempts {
                let delay = config.retryDelay(after: attempts)
                failing = (key, attempts)
                metrics.processingRetries.increment()
                metrics.eventAttempts.set(to: Double(attempts))
                setReadiness("not making progress: \(key) failed \(attempts) of \(config.retryMaxAttempts) attempts (\(error)); retrying")
                logger.error("\(key)\(more) not processed (attempt \(attempts) of \(config.retryMaxAttempts); retrying in \(String(format: "%.1f", delay)) s)",
                             metadata: ["event": "\(key)", "attempt": "\(attempts)", "error": "\(error)"])
                consumer.release(batch)
                sleepUnlessStopping(delay)
                return
            }
            logger.error("\(key) failed \(attempts) attempts; dead-lettering it (processing_failed)",
                         metadata: ["event": "\(key)", "attempt": "\(attempts)", "error": "\(error)"])
            if batch.count > 1 {
                consumer.release(Array(batch.dropFirst()))
                batch = [first]
            }
            let r = Rejection(.processingFailed, "processing failed \(attempts) times; the last error: \(error)",
                              details: ["attempts: \(attempts)", "error: \(error)"], eventId: pipeline.eventIdHint(first), cause: error)
            outcomes = [pipeline.deadLetter(first, r)]
        }
        let tPublish = Date()
        for record in outcomes.flatMap(\.records) {
            guard publish(record, producer: producer) else {
                consumer.release(batch)
                return
            }
        }
        let publishSeconds = Date().timeIntervalSince(tPublish)
        let tCommit = Date()
        // The snapshots are durable and the results acknowledged: commit without waiting for the broker
        // (a lost commit only redelivers the events, which the dedupe index turns into republishes);
        // the last commit before a shutdown waits.
        let last = batch[batch.count - 1]
        do {
            try consumer.commit(last, wait: stopping)
            metrics.committed(topic: last.topic, partition: last.partition, nextOffset: last.offset + 1, events: batch.count)
        } catch {
            logger.warning("commit of \(last.topic)/\(last.partition)@\(last.offset) failed (it will be redelivered and deduplicated)",
                           metadata: ["error": "\(error)"])
        }
        if failing != nil {
            failing = nil
            metrics.eventAttempts.set(to: 0)
            if !stopping { setReadiness("ready") }
        }
        let commitSeconds = Date().timeIntervalSince(tCommit)
        // Every event of a batch waited for the whole batch.
        let total = Date().timeIntervalSince(t0)
        for var outcome in outcomes {
            outcome.steps["publish"] = publishSeconds
            outcome.steps["commit"] = commitSeconds
            record(outcome, total: total)
        }
    }

    /// Publishes one record, retrying until the broker takes it; false when stopping first. A dead
    /// letter the broker refuses as too large is replaced by one without the original bytes.
    func publish(_ record: OutboundRecord, producer: ProducerSlot) -> Bool {
        var r = record
        var attempt = 0
        while true {
            do {
                try producer.send(r)
                return true
            } catch {
                metrics.publishFailures.increment()
                attempt += 1
                logger.error("publishing to \(r.topic) failed (attempt \(attempt))",
                             metadata: ["topic": "\(r.topic)", "error": "\(error)", "retriable": "\((error as? KafkaError)?.retriable ?? false)"])
                if let smaller = r.smaller, (error as? KafkaError)?.code == KafkaError.Code.messageTooLarge {
                    logger.warning("publishing the dead letter without the original bytes instead")
                    r = smaller()
                    continue
                }
                if stopping { return false }
                sleepUnlessStopping(min(5, 0.2 * Double(attempt)))
            }
        }
    }

    /// Sleeps up to `seconds`, waking early when a stop was asked for.
    func sleepUnlessStopping(_ seconds: Double) {
        let until = Date().addingTimeInterval(seconds)
        while !stopping, Date() < until { Thread.sleep(forTimeInterval: min(0.05, max(0, until.timeIntervalSinceNow))) }
    }

    func record(_ outcome: Outcome, total: Double) {
        onEvent?(outcome, total)
        if let c = outcome.canary, outcome.kind != .dryRun { metrics.setCanary(c, weights: "head") }
        switch outcome.kind {
        case .applied(let method):
            metrics.editApplied(method: method)
            metrics.recordEvent(total: total, edit: outcome.editSeconds)
        case .dryRun:
            metrics.editSkipped(.dryRun)
            metrics.recordEvent(total: total, edit: outcome.editSeconds)
        case .redelivery:
            metrics.editSkipped(.duplicate)
            metrics.recordEvent(total: total, edit: nil)
        case .rolledBack:
            metrics.rollbacks.increment()
            metrics.recordEvent(total: total, edit: nil)
        case .labelled:
            metrics.recordEvent(total: total, edit: nil)
        case .deadLetter(let reason):
            metrics.deadLettered(reason)
            metrics.recordEvent(total: total, edit: nil)
        }
        logger.info("\(outcome.summary)", metadata: outcome.logMetadata(total: total))
    }
}

/// The producer, replaced by a fresh one after a fatal error or a delivery timeout: an idempotent
/// producer whose id the broker lost (a broker restarted with empty storage) retries
/// UNKNOWN_PRODUCER_ID until the message times out and never recovers by itself.
final class ProducerSlot: @unchecked Sendable {  // `producer` is read and replaced only under `lock`; the producer itself is thread-safe
    private var producer: KafkaProducer
    private let properties: [String: String]
    private let logger: Logger
    private let lock = NSLock()

    init(properties: [String: String], logger: Logger) throws {
        var properties = properties
        if properties["message.timeout.ms"] == nil { properties["message.timeout.ms"] = "30000" }
        // One record at a time, waited for: batching would only add its linger (5 ms by default) to every event.
        if properties["linger.ms"] == nil { properties["linger.ms"] = "0" }
        self.properties = properties
        self.logger = logger
        producer = try KafkaProducer(properties: properties, logger: logger)
    }

    func send(_ r: OutboundRecord) throws {
        lock.lock()
        let p = producer
        lock.unlock()
        do { _ = try p.send(topic: r.topic, key: r.key, payload: r.payload, headers: r.headers, timeout: 35) } catch let e as KafkaError {
            if p.isFatal || e.code == KafkaError.Code.fatal || e.code == KafkaError.Code.messageTimedOut || e.code == KafkaError.Code.timedOut {
                logger.warning("producer: \(e); starting a new producer")
                let fresh = try KafkaProducer(properties: properties, logger: logger)
                lock.lock()
                producer = fresh
                lock.unlock()
                p.close(flushTimeout: 0)
            }
            throw e
        }
    }

    func close() {
        lock.lock(); defer { lock.unlock() }
        producer.close()
    }
}

/// Re-creates missing topics every few seconds on its own thread (a broker that restarts with empty
/// storage loses them; producing to or consuming from a missing topic would stall forever).
final class TopicKeeper: @unchecked Sendable {  // `stopped` is guarded by `condition`; `thread` is set once, in init
    private let condition = NSCondition()
    private var stopped = false
    private var thread: Thread?

    init(properties: [String: String], topics: [String], logger: Logger, interval: Double = 3) {
        let t = Thread { [self] in
            var lastError = Date.distantPast
            var admin: KafkaAdmin?
            defer { admin?.close() }
            while !self.waitStopped(interval) {
                do {
                    if admin == nil { admin = try KafkaAdmin(properties: properties) }
                    try admin?.createTopics(topics, partitions: 1, replicationFactor: 1, timeout: 5)
                } catch {
                    if Date().timeIntervalSince(lastError) > 60 { logger.warning("topics: cannot ensure \(topics)", metadata: ["error": "\(error)"]) }
                    lastError = Date()
                }
            }
        }
        t.name = "mesa-topic-keeper"
        thread = t
        t.start()
    }

    /// Waits up to `seconds`; true once `stop` was called.
    private func waitStopped(_ seconds: Double) -> Bool {
        condition.lock(); defer { condition.unlock() }
        if !stopped { _ = condition.wait(until: Date().addingTimeInterval(seconds)) }
        return stopped
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}

/// The composition seam of `mesa serve`: a daemon for `config` (checked here) and `paths` (the
/// defaults of what the configuration leaves out: model, state, corpus, data, hyperparameters; and
/// the schemas), not yet running (`Daemon.run`).
public func buildDaemon(config: DaemonConfiguration, paths: Paths, logger: Logger) throws -> Daemon {
    try config.validate()
    return Daemon(config: config, paths: paths, logger: logger)
}

/// Everything an edit needs, without Kafka: the model, the quality guard (measured on the base
/// weights), the snapshot store, the editor of the configured method, and the pipeline over them with
/// the weights brought to the store's head. `status` hears each step (the daemon's readiness);
/// `shouldStop` interrupts a key-statistics computation.
public func buildPipeline(config c: DaemonConfiguration, paths: Paths, catalog: SchemaCatalog, logger: Logger,
                          metrics: DaemonMetrics? = nil, shouldStop: @escaping () -> Bool = { false },
                          status: (String) -> Void = { _ in }) throws -> Pipeline {
    if let t = c.threads { BLAS.setThreads(t) }
    status("loading model")
    let t0 = Date()
    let modelPath = try c.model ?? paths.defaultModel()
    let model = try ModelLoader.load(path: modelPath)
    let name = Installation.modelName(modelPath)
    let stateDir = c.stateDirectory(paths)
    logger.info("model: \(name) loaded in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s, base hash \(model.weightHash.prefix(16)); BLAS \(BLAS.configuration.description)",
                metadata: ["model": "\(name)", "base_hash": "\(model.weightHash)"])

    // The guard's base figures need the base weights: measured before the host brings them to the head.
    var qualityGuard: QualityGuard?
    if c.guardEnabled {
        status("measuring the canary set")
        let g = try QualityGuard.make(model: model, config: c, paths: paths, logger: logger)
        qualityGuard = g
        metrics?.setCanary(g.base, weights: "base")
        let summary = String(format: "quality guard: %d canary facts, perplexity over %d tokens; base accuracy %.1f%%, perplexity %.3f; "
                             + "an edit may cost %.1f points of accuracy and %.1f%% of perplexity",
                             g.canary.facts.count, c.guardPerplexityTokens, g.base.accuracy, g.base.perplexity,
                             c.guardMaxAccuracyDrop, 100 * c.guardMaxPerplexityRise)
        logger.info("\(summary)")
    } else {
        logger.info("quality guard: off (quality_guard.enabled=false)")
    }

    // The store first: a damaged one is reported at once, not after minutes of key statistics.
    status("opening the snapshot store")
    let lmdbDir = EditState(directory: stateDir, baseHash: model.weightHash).snapshotStore
    let store = try SnapshotStore(path: lmdbDir.path, mapSize: c.mapBytes)

    status("preparing the editor")
    let hparamsDirs = c.hparamsDir.map { [URL(fileURLWithPath: $0)] } ?? paths.hparams
    var registry = EditorRegistry(stateDirectory: stateDir, corpusPath: c.corpus ?? paths.corpus, logger: logger, shouldStop: shouldStop)
    registry.anchorRecords = c.dataDirectory(paths).appendingPathComponent("counterfact/counterfact-train.json")
    let method = try c.editMethod
    let hparamsFile = try Installation.hparamsFile(method: method, modelName: name, directories: hparamsDirs)
    var hparams = try EditorRegistry.hyperparameters(method, at: hparamsFile, catalog: catalog)
    hparams.mesa = c.mesaSettings(over: hparams.mesa)
    let editor = try registry.editor(model: model, hparams: hparams)
    if let sae = editor.mesaSetup.settings?.sae {
        logger.info("editor: \(editor.method) (\(hparamsFile.path)) with MESA refinement through \(sae)")
    } else if let why = editor.mesaSetup.fallbackReason {
        logger.warning("editor: \(editor.method) (\(hparamsFile.path)); MESA refinement is off: \(why)")
    } else {
        logger.info("editor: \(editor.method) (\(hparamsFile.path))")
    }

    let modelHost = try ModelHost(model: model, modelName: name, store: store)
    metrics?.snapshotHead.set(to: Double(modelHost.head))
    logger.info("snapshots: \(lmdbDir.path), head \(modelHost.head), weights \(model.weightHash.prefix(16))",
                metadata: ["head": "\(modelHost.head)", "weight_hash": "\(model.weightHash)"])
    let pipeline = try Pipeline(host: modelHost, catalog: catalog, topics: c.topics, maxEventBytes: c.eventLimit, registry: registry,
                                hyperparameters: hparams, editor: editor, logger: logger)
    if let g = qualityGuard {
        // The canary pass skips the layers below the first one the method edits while they are unchanged.
        g.startLayer = hparams.lowestLayer
        pipeline.qualityGuard = g
        metrics?.setCanary(modelHost.head == 0 ? g.base : try g.measure(model), weights: "head")
    }
    return pipeline
}
