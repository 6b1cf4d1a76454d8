import EditDaemon
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
        let text = metrics.exposition()
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
}
