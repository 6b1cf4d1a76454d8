import Foundation

/// Why an event was not applied although it was well-formed (`mesa_edits_skipped_total{reason}`).
public enum SkipReason: String, CaseIterable, Sendable {
    /// The edit's id was applied before.
    case duplicate
    /// The fact update asked for a dry run.
    case dryRun = "dry_run"
}

/// One partition's consumer lag (messages behind the high watermark).
public struct ConsumerLag: Equatable, Sendable {
    public var topic: String
    public var partition: Int32
    public var lag: Int64

    public init(topic: String, partition: Int32, lag: Int64) {
        self.topic = topic
        self.partition = partition
        self.lag = lag
    }
}

/// The daemon's metrics. Their names are used by the Prometheus alert rules and the Grafana
/// dashboard, so they are fixed here:
///
/// - `mesa_events_consumed_total{topic}`, `mesa_edits_applied_total{method}`,
///   `mesa_edits_skipped_total{reason}`, `mesa_dead_letters_total{reason}`;
/// - `mesa_edit_duration_seconds` (the edit math), `mesa_event_duration_seconds` (the whole
///   pipeline per event), `mesa_event_overhead_seconds` (pipeline minus edit math): histograms;
/// - `mesa_consumer_lag{topic,partition}`, computed at scrape time from `setConsumerLagSource`;
/// - `mesa_rollbacks_total`, `mesa_publish_failures_total`, `mesa_snapshot_head`, `mesa_ready`,
///   `mesa_build_info{version}` (always 1);
/// - progress: `mesa_events_committed_total{topic}` (events settled: their offset committed),
///   `mesa_committed_offset{topic,partition}` (the next offset to read), `mesa_processing_retries_total`
///   (failed attempts that will be retried) and `mesa_event_attempts` (failed attempts of the event at
///   the head of the line, 0 when none is failing);
/// - the quality guard: `mesa_canary_accuracy{weights}` and `mesa_canary_perplexity{weights}` for the
///   "base" and the "head" weights.
///
/// Every known skip and dead-letter reason starts at 0, so rates and alerts see the series
/// before the first occurrence.
public final class DaemonMetrics: @unchecked Sendable {
    /// The registry the metrics live in (serve it with `HealthEndpoints`).
    public let registry: MetricsRegistry
    /// `mesa_events_consumed_total{topic}`.
    public let eventsConsumed: Counter
    /// `mesa_edits_applied_total{method}`.
    public let editsApplied: Counter
    /// `mesa_edits_skipped_total{reason}`, reason a `SkipReason`.
    public let editsSkipped: Counter
    /// `mesa_dead_letters_total{reason}`, reason a `DeadLetterReason` or another short code.
    public let deadLetters: Counter
    /// `mesa_edit_duration_seconds`.
    public let editDuration: Histogram
    /// `mesa_event_duration_seconds`.
    public let eventDuration: Histogram
    /// `mesa_event_overhead_seconds`.
    public let eventOverhead: Histogram
    /// `mesa_rollbacks_total`.
    public let rollbacks: Counter
    /// `mesa_snapshot_head`.
    public let snapshotHead: Gauge
    /// `mesa_publish_failures_total`.
    public let publishFailures: Counter
    /// `mesa_ready` (0 or 1).
    public let ready: Gauge
    /// `mesa_build_info{version}` (1).
    public let buildInfo: Gauge
    /// `mesa_events_committed_total{topic}`.
    public let eventsCommitted: Counter
    /// `mesa_committed_offset{topic,partition}`.
    public let committedOffset: Gauge
    /// `mesa_processing_retries_total`.
    public let processingRetries: Counter
    /// `mesa_event_attempts`.
    public let eventAttempts: Gauge
    /// `mesa_canary_accuracy{weights}` and `mesa_canary_perplexity{weights}`, weights "base" or "head".
    public let canaryAccuracy: Gauge
    public let canaryPerplexity: Gauge

    private let lagLock = NSLock()
    private var lagSource: @Sendable () -> [ConsumerLag] = { [] }

    /// Registers the metrics in `registry`. `methods` and `topics` (if known) get their series at 0.
    public init(registry: MetricsRegistry = MetricsRegistry(), version: String,
                methods: [String] = [], topics: [String] = []) {
        self.registry = registry
        eventsConsumed = registry.counter(name: "mesa_events_consumed_total",
                                          help: "Events read from the input topic.", labels: ["topic"])
        editsApplied = registry.counter(name: "mesa_edits_applied_total",
                                        help: "Edits applied to the model, by editing method.", labels: ["method"])
        editsSkipped = registry.counter(name: "mesa_edits_skipped_total",
                                        help: "Well-formed edits not applied (duplicate, dry_run).", labels: ["reason"])
        deadLetters = registry.counter(name: "mesa_dead_letters_total",
                                       help: "Events sent to the dead-letter topic, by reason.", labels: ["reason"])
        editDuration = registry.histogram(name: "mesa_edit_duration_seconds",
                                          help: "Time spent in the edit math per applied edit.")
        eventDuration = registry.histogram(name: "mesa_event_duration_seconds",
                                           help: "Time spent on one event, from receipt to commit.")
        eventOverhead = registry.histogram(name: "mesa_event_overhead_seconds",
                                           help: "Time spent on one event outside the edit math.")
        rollbacks = registry.counter(name: "mesa_rollbacks_total", help: "Rollbacks to an earlier snapshot.")
        snapshotHead = registry.gauge(name: "mesa_snapshot_head", help: "Sequence number of the current snapshot.")
        publishFailures = registry.counter(name: "mesa_publish_failures_total",
                                           help: "Failures to publish a result or dead letter.")
        ready = registry.gauge(name: "mesa_ready", help: "1 when the daemon is ready to take events, else 0.")
        buildInfo = registry.gauge(name: "mesa_build_info", help: "Always 1; the version is a label.", labels: ["version"])
        buildInfo.set(1, labels: ["version": version])
        eventsCommitted = registry.counter(name: "mesa_events_committed_total",
                                           help: "Events settled: processed (applied, skipped or dead-lettered) and their offset committed.",
                                           labels: ["topic"])
        committedOffset = registry.gauge(name: "mesa_committed_offset", help: "The next offset to read, as last committed.",
                                         labels: ["topic", "partition"])
        processingRetries = registry.counter(name: "mesa_processing_retries_total",
                                             help: "Failed processing attempts that were retried (not rejections of the event).")
        eventAttempts = registry.gauge(name: "mesa_event_attempts",
                                       help: "Failed attempts of the event at the head of the line; 0 when none is failing.")
        canaryAccuracy = registry.gauge(name: "mesa_canary_accuracy",
                                        help: "Percent of the quality guard's canary facts answered, on the base or the head weights.", labels: ["weights"])
        canaryPerplexity = registry.gauge(name: "mesa_canary_perplexity",
                                          help: "Perplexity of the quality guard's text sample, on the base or the head weights.", labels: ["weights"])

        for reason in SkipReason.allCases { editsSkipped.inc(0, labels: ["reason": reason.rawValue]) }
        for reason in DeadLetterReason.allCases { deadLetters.inc(0, labels: ["reason": reason.rawValue]) }
        for method in methods { editsApplied.inc(0, labels: ["method": method]) }
        for topic in topics {
            eventsConsumed.inc(0, labels: ["topic": topic])
            eventsCommitted.inc(0, labels: ["topic": topic])
        }

        registry.registerGaugeFunction(name: "mesa_consumer_lag",
                                       help: "Messages between the committed offset and the high watermark.",
                                       labels: ["topic", "partition"]) { [weak self] in
            guard let self else { return [] }
            return self.currentLagSource()().map { (["topic": $0.topic, "partition": String($0.partition)], Double($0.lag)) }
        }
    }

    /// Sets where `mesa_consumer_lag` comes from; `source` is called at every scrape.
    public func setConsumerLagSource(_ source: @escaping @Sendable () -> [ConsumerLag]) {
        lagLock.lock(); defer { lagLock.unlock() }
        lagSource = source
    }

    private func currentLagSource() -> @Sendable () -> [ConsumerLag] {
        lagLock.lock(); defer { lagLock.unlock() }
        return lagSource
    }

    /// Counts one event read from `topic`.
    public func eventConsumed(topic: String) { eventsConsumed.inc(labels: ["topic": topic]) }

    /// Counts the events of a committed batch and the partition's next offset.
    public func committed(topic: String, partition: Int32, nextOffset: Int64, events: Int) {
        eventsCommitted.inc(Double(events), labels: ["topic": topic])
        committedOffset.set(Double(nextOffset), labels: ["topic": topic, "partition": String(partition)])
    }

    /// Sets the canary figures of the "base" or "head" weights.
    public func setCanary(_ f: CanaryFigures, weights: String) {
        canaryAccuracy.set(f.accuracy, labels: ["weights": weights])
        canaryPerplexity.set(f.perplexity, labels: ["weights": weights])
    }

    /// Counts one edit applied with `method`.
    public func editApplied(method: String) { editsApplied.inc(labels: ["method": method]) }

    /// Counts one skipped edit.
    public func editSkipped(_ reason: SkipReason) { editsSkipped.inc(labels: ["reason": reason.rawValue]) }

    /// Counts one dead letter.
    public func deadLettered(_ reason: DeadLetterReason) { deadLetters.inc(labels: ["reason": reason.rawValue]) }

    /// Records one event's timings: `total` seconds for the whole pipeline, of which `edit` seconds
    /// of edit math (nil when no edit ran, e.g. for a duplicate or a dead letter: then only the
    /// event duration and the overhead, which is all of it, are recorded). The overhead is
    /// `total - edit`, at least 0.
    public func recordEvent(total: Double, edit: Double?) {
        eventDuration.observe(total)
        if let edit {
            editDuration.observe(edit)
            eventOverhead.observe(max(0, total - edit))
        } else {
            eventOverhead.observe(total)
        }
    }

    /// Sets `mesa_ready` to 1 or 0.
    public func setReady(_ isReady: Bool) { ready.set(isReady ? 1 : 0) }
}
