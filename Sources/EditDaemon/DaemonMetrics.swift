import Contracts
import Foundation
import Prometheus

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

/// The daemon's metrics, kept in a swift-prometheus `PrometheusCollectorRegistry` (the registry
/// `mesa serve` also bootstraps swift-metrics with, so any swift-metrics emitter lands on the same
/// /metrics). Their names are used by the Prometheus alert rules and the Grafana dashboard, so they
/// are fixed here:
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
public final class DaemonMetrics: @unchecked Sendable {  // the lag state is guarded by lagLock; the rest is the registry's (thread-safe)
    /// The registry the metrics live in; `exposition()` renders it for a scrape.
    public let registry: PrometheusCollectorRegistry
    /// `mesa_rollbacks_total`.
    public let rollbacks: Prometheus.Counter
    /// `mesa_snapshot_head`.
    public let snapshotHead: Gauge
    /// `mesa_publish_failures_total`.
    public let publishFailures: Prometheus.Counter
    /// `mesa_ready` (0 or 1).
    public let ready: Gauge
    /// `mesa_processing_retries_total`.
    public let processingRetries: Prometheus.Counter
    /// `mesa_event_attempts`.
    public let eventAttempts: Gauge
    /// `mesa_edit_duration_seconds`.
    public let editDuration: ValueHistogram
    /// `mesa_event_duration_seconds`.
    public let eventDuration: ValueHistogram
    /// `mesa_event_overhead_seconds`.
    public let eventOverhead: ValueHistogram

    /// The upper bounds of the duration histograms, in seconds (`+Inf` is implicit).
    public static let durationBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

    /// The help text of every series, by name.
    static let help: [String: String] = [
        "mesa_events_consumed_total": "Events read from the input topic.",
        "mesa_edits_applied_total": "Edits applied to the model, by editing method.",
        "mesa_edits_skipped_total": "Well-formed edits not applied (duplicate, dry_run).",
        "mesa_dead_letters_total": "Events sent to the dead-letter topic, by reason.",
        "mesa_edit_duration_seconds": "Time spent in the edit math per applied edit.",
        "mesa_event_duration_seconds": "Time spent on one event, from receipt to commit.",
        "mesa_event_overhead_seconds": "Time spent on one event outside the edit math.",
        "mesa_rollbacks_total": "Rollbacks to an earlier snapshot.",
        "mesa_snapshot_head": "Sequence number of the current snapshot.",
        "mesa_publish_failures_total": "Failures to publish a result or dead letter.",
        "mesa_ready": "1 when the daemon is ready to take events, else 0.",
        "mesa_build_info": "Always 1; the version is a label.",
        "mesa_events_committed_total": "Events settled: processed (applied, skipped or dead-lettered) and their offset committed.",
        "mesa_committed_offset": "The next offset to read, as last committed.",
        "mesa_processing_retries_total": "Failed processing attempts that were retried (not rejections of the event).",
        "mesa_event_attempts": "Failed attempts of the event at the head of the line; 0 when none is failing.",
        "mesa_canary_accuracy": "Percent of the quality guard's canary facts answered, on the base or the head weights.",
        "mesa_canary_perplexity": "Perplexity of the quality guard's text sample, on the base or the head weights.",
        "mesa_consumer_lag": "Messages between the committed offset and the high watermark.",
    ]

    private let lagLock = NSLock()
    private var lagSource: @Sendable () -> [ConsumerLag] = { [] }
    /// The lag series of the last scrape, by "topic/partition" (guarded by `lagLock`).
    private var lagGauges: [String: Gauge] = [:]

    /// Registers the metrics in `registry`. `methods` and `topics` (if known) get their series at 0.
    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), version: String,
                methods: [String] = [], topics: [String] = []) {
        self.registry = registry
        func help(_ name: String) -> String { Self.help[name]! }
        rollbacks = registry.makeCounter(name: "mesa_rollbacks_total", help: help("mesa_rollbacks_total"))
        snapshotHead = registry.makeGauge(name: "mesa_snapshot_head", help: help("mesa_snapshot_head"))
        publishFailures = registry.makeCounter(name: "mesa_publish_failures_total", help: help("mesa_publish_failures_total"))
        ready = registry.makeGauge(name: "mesa_ready", help: help("mesa_ready"))
        processingRetries = registry.makeCounter(name: "mesa_processing_retries_total", help: help("mesa_processing_retries_total"))
        eventAttempts = registry.makeGauge(name: "mesa_event_attempts", help: help("mesa_event_attempts"))
        editDuration = registry.makeValueHistogram(name: "mesa_edit_duration_seconds", buckets: Self.durationBuckets,
                                                   help: help("mesa_edit_duration_seconds"))
        eventDuration = registry.makeValueHistogram(name: "mesa_event_duration_seconds", buckets: Self.durationBuckets,
                                                    help: help("mesa_event_duration_seconds"))
        eventOverhead = registry.makeValueHistogram(name: "mesa_event_overhead_seconds", buckets: Self.durationBuckets,
                                                    help: help("mesa_event_overhead_seconds"))
        gauge("mesa_build_info", ["version": version]).set(to: 1)
        for reason in SkipReason.allCases { _ = counter("mesa_edits_skipped_total", ["reason": reason.rawValue]) }
        for reason in DeadLetterReason.allCases { _ = counter("mesa_dead_letters_total", ["reason": reason.rawValue]) }
        for method in methods { _ = counter("mesa_edits_applied_total", ["method": method]) }
        for topic in topics {
            _ = counter("mesa_events_consumed_total", ["topic": topic])
            _ = counter("mesa_events_committed_total", ["topic": topic])
        }
    }

    /// The series of counter `name` with `labels` (registered at 0 the first time).
    func counter(_ name: String, _ labels: KeyValuePairs<String, String>) -> Prometheus.Counter {
        registry.makeCounter(name: name, labels: labels.map { ($0.key, $0.value) }, help: Self.help[name]!)
    }

    /// The series of gauge `name` with `labels` (registered at 0 the first time).
    func gauge(_ name: String, _ labels: KeyValuePairs<String, String>) -> Gauge {
        registry.makeGauge(name: name, labels: labels.map { ($0.key, $0.value) }, help: Self.help[name]!)
    }

    /// Sets where `mesa_consumer_lag` comes from; `source` is called at every scrape.
    public func setConsumerLagSource(_ source: @escaping @Sendable () -> [ConsumerLag]) {
        lagLock.lock(); defer { lagLock.unlock() }
        lagSource = source
    }

    /// The Prometheus text exposition of every metric, the consumer lag computed now. A partition no
    /// longer assigned loses its lag series.
    public func exposition() -> String {
        lagLock.lock()
        let source = lagSource
        lagLock.unlock()
        let lags = source()
        lagLock.lock()
        var seen: Set<String> = []
        for l in lags {
            let key = "\(l.topic)/\(l.partition)"
            seen.insert(key)
            let g = lagGauges[key] ?? gauge("mesa_consumer_lag", ["topic": l.topic, "partition": String(l.partition)])
            lagGauges[key] = g
            g.set(to: Double(l.lag))
        }
        for (key, g) in lagGauges where !seen.contains(key) {
            registry.unregisterGauge(g)
            lagGauges[key] = nil
        }
        lagLock.unlock()
        return registry.emitToString()
    }

    /// Counts one event read from `topic`.
    public func eventConsumed(topic: String) { counter("mesa_events_consumed_total", ["topic": topic]).increment() }

    /// Counts the events of a committed batch and the partition's next offset.
    public func committed(topic: String, partition: Int32, nextOffset: Int64, events: Int) {
        counter("mesa_events_committed_total", ["topic": topic]).increment(by: Int64(events))
        gauge("mesa_committed_offset", ["topic": topic, "partition": String(partition)]).set(to: Double(nextOffset))
    }

    /// Sets the canary figures of the "base" or "head" weights.
    public func setCanary(_ f: CanaryFigures, weights: String) {
        gauge("mesa_canary_accuracy", ["weights": weights]).set(f.accuracy)
        gauge("mesa_canary_perplexity", ["weights": weights]).set(f.perplexity)
    }

    /// Counts one edit applied with `method`.
    public func editApplied(method: String) { counter("mesa_edits_applied_total", ["method": method]).increment() }

    /// Counts one skipped edit.
    public func editSkipped(_ reason: SkipReason) { counter("mesa_edits_skipped_total", ["reason": reason.rawValue]).increment() }

    /// Counts one dead letter.
    public func deadLettered(_ reason: DeadLetterReason) { counter("mesa_dead_letters_total", ["reason": reason.rawValue]).increment() }

    /// Records one event's timings: `total` seconds for the whole pipeline, of which `edit` seconds
    /// of edit math (nil when no edit ran, e.g. for a duplicate or a dead letter: then only the
    /// event duration and the overhead, which is all of it, are recorded). The overhead is
    /// `total - edit`, at least 0.
    public func recordEvent(total: Double, edit: Double?) {
        eventDuration.record(total)
        if let edit {
            editDuration.record(edit)
            eventOverhead.record(max(0, total - edit))
        } else {
            eventOverhead.record(total)
        }
    }

    /// Sets `mesa_ready` to 1 or 0.
    public func setReady(_ isReady: Bool) { ready.set(to: isReady ? 1 : 0) }
}
