import CoreMetrics
import EditDaemon
import Foundation
import Prometheus
import Testing

@Suite struct DaemonMetricsTests {
    @Test func exposesTheAgreedNamesWithInitialSeries() {
        let metrics = DaemonMetrics(version: "1.2.3", methods: ["rome"], topics: ["edits"])
        let text = metrics.exposition()
        let families = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { String($0.dropFirst(7)) }.sorted()
        // The canary, offset and lag families appear with their first series (a guard, a commit, an assigned partition).
        #expect(families == [
            "mesa_build_info gauge",
            "mesa_dead_letters_total counter",
            "mesa_edit_duration_seconds histogram",
            "mesa_edits_applied_total counter",
            "mesa_edits_skipped_total counter",
            "mesa_event_attempts gauge",
            "mesa_event_duration_seconds histogram",
            "mesa_event_overhead_seconds histogram",
            "mesa_events_committed_total counter",
            "mesa_events_consumed_total counter",
            "mesa_processing_retries_total counter",
            "mesa_publish_failures_total counter",
            "mesa_ready gauge",
            "mesa_rollbacks_total counter",
            "mesa_snapshot_head gauge",
        ])
        for line in ["mesa_build_info{version=\"1.2.3\"} 1.0", "mesa_ready 0.0", "mesa_snapshot_head 0.0",
                     "mesa_rollbacks_total 0", "mesa_publish_failures_total 0",
                     "mesa_edits_applied_total{method=\"rome\"} 0", "mesa_events_consumed_total{topic=\"edits\"} 0",
                     "mesa_edits_skipped_total{reason=\"dry_run\"} 0", "mesa_edits_skipped_total{reason=\"duplicate\"} 0",
                     "mesa_dead_letters_total{reason=\"malformed_json\"} 0", "mesa_dead_letters_total{reason=\"schema\"} 0",
                     "mesa_dead_letters_total{reason=\"too_large\"} 0", "mesa_dead_letters_total{reason=\"unknown_model\"} 0",
                     "mesa_dead_letters_total{reason=\"edit_failed\"} 0",
                     "mesa_dead_letters_total{reason=\"unsupported_method\"} 0",
                     "mesa_dead_letters_total{reason=\"processing_failed\"} 0",
                     "mesa_events_committed_total{topic=\"edits\"} 0", "mesa_processing_retries_total 0", "mesa_event_attempts 0.0",
                     "mesa_event_duration_seconds_count 0"] {
            #expect(text.contains("\n" + line + "\n"), "missing \(line)")
        }
    }

    @Test func recordsEventsAndLag() {
        let metrics = DaemonMetrics(version: "dev")
        metrics.eventConsumed(topic: "edits")
        metrics.eventConsumed(topic: "edits")
        metrics.editApplied(method: "rome")
        metrics.editSkipped(.duplicate)
        metrics.deadLettered(.tooLarge)
        metrics.rollbacks.increment()
        metrics.snapshotHead.set(to: 42)
        metrics.setReady(true)
        metrics.recordEvent(total: 2.0, edit: 1.5)
        metrics.recordEvent(total: 0.00390625, edit: nil)
        metrics.setConsumerLagSource { [ConsumerLag(topic: "edits", partition: 1, lag: 5),
                                        ConsumerLag(topic: "edits", partition: 0, lag: 12)] }
        metrics.committed(topic: "edits", partition: 0, nextOffset: 7, events: 2)
        metrics.setCanary(CanaryFigures(accuracy: 87.5, perplexity: 12.25), weights: "head")
        // Families come in no fixed order: any line may be the first.
        let text = "\n" + metrics.exposition()
        for line in ["mesa_events_consumed_total{topic=\"edits\"} 2", "mesa_edits_applied_total{method=\"rome\"} 1",
                     "mesa_edits_skipped_total{reason=\"duplicate\"} 1", "mesa_dead_letters_total{reason=\"too_large\"} 1",
                     "mesa_rollbacks_total 1", "mesa_snapshot_head 42.0", "mesa_ready 1.0",
                     "mesa_consumer_lag{topic=\"edits\",partition=\"0\"} 12.0", "mesa_consumer_lag{topic=\"edits\",partition=\"1\"} 5.0",
                     "mesa_events_committed_total{topic=\"edits\"} 2", "mesa_committed_offset{topic=\"edits\",partition=\"0\"} 7.0",
                     "mesa_canary_accuracy{weights=\"head\"} 87.5", "mesa_canary_perplexity{weights=\"head\"} 12.25",
                     "# HELP mesa_consumer_lag Messages between the committed offset and the high watermark.",
                     "mesa_edit_duration_seconds_count 1", "mesa_edit_duration_seconds_sum 1.5",
                     "mesa_event_duration_seconds_count 2", "mesa_event_overhead_seconds_count 2",
                     "mesa_event_overhead_seconds_sum 0.50390625", "mesa_event_overhead_seconds_bucket{le=\"0.005\"} 1"] {
            #expect(text.contains("\n" + line + "\n"), "missing \(line)")
        }
        // A partition no longer assigned loses its lag series.
        metrics.setConsumerLagSource { [ConsumerLag(topic: "edits", partition: 0, lag: 3)] }
        let later = metrics.exposition()
        #expect(later.contains("\nmesa_consumer_lag{topic=\"edits\",partition=\"0\"} 3.0\n"))
        #expect(!later.contains("partition=\"1\"}"), "\(later)")
        metrics.setConsumerLagSource { [] }
        #expect(!metrics.exposition().contains("mesa_consumer_lag"))
    }

    @Test func concurrentUpdatesAreExact() {
        let metrics = DaemonMetrics(version: "dev")
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            for k in 0..<500 {
                metrics.eventConsumed(topic: "t\(i % 2)")
                metrics.recordEvent(total: Double(k % 7) * 0.01, edit: k % 2 == 0 ? 0.001 : nil)
            }
        }
        let text = "\n" + metrics.exposition()
        #expect(text.contains("\nmesa_events_consumed_total{topic=\"t0\"} 2000\n") && text.contains("\nmesa_events_consumed_total{topic=\"t1\"} 2000\n"))
        #expect(text.contains("\nmesa_event_duration_seconds_count 4000\n") && text.contains("\nmesa_edit_duration_seconds_count 2000\n"))
    }

    /// The duration histograms keep the bounds the dashboards' quantiles were read with, 1 ms to 2 min.
    @Test func durationHistogramsSpanOneMillisecondToTwoMinutes() {
        let metrics = DaemonMetrics(version: "dev")
        metrics.recordEvent(total: 200, edit: 0.0005)
        let text = "\n" + metrics.exposition()
        let bounds = text.split(separator: "\n").filter { $0.hasPrefix("mesa_edit_duration_seconds_bucket{") }
            .compactMap { $0.split(separator: "\"").dropFirst().first.map(String.init) }
        #expect(bounds.dropLast().compactMap(Double.init) == DaemonMetrics.durationBuckets && bounds.last == "+Inf", "\(bounds)")
        #expect(text.contains("\nmesa_edit_duration_seconds_bucket{le=\"0.001\"} 1\n"))
        #expect(text.contains("\nmesa_event_duration_seconds_bucket{le=\"120.0\"} 0\n") && text.contains("\nmesa_event_duration_seconds_bucket{le=\"+Inf\"} 1\n"))
    }

    /// What a library emits through swift-metrics lands on the same /metrics once the factory uses the
    /// daemon's registry (as `mesa serve` bootstraps it).
    @Test func swiftMetricsEmittersShareTheRegistry() {
        let metrics = DaemonMetrics(version: "dev")
        let factory = PrometheusMetricsFactory(registry: metrics.registry)
        CoreMetrics.Counter(label: "hb_requests_total", dimensions: [("method", "GET")], factory: factory).increment(by: 3)
        CoreMetrics.Timer(label: "hb_request_duration_seconds", factory: factory).recordSeconds(0.02)
        let text = "\n" + metrics.exposition()
        #expect(text.contains("\nhb_requests_total{method=\"GET\"} 3\n"), "\(text)")
        #expect(text.contains("\nhb_request_duration_seconds_count 1\n"))
        #expect(text.contains("\nmesa_ready 0.0\n"))
    }
}

