import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// An editor and three `mesa follow` processes against the real broker, over a stream of 50 edits
/// and 5 rollbacks; one follower is killed -9 twice inside an apply (held there by
/// `--pause-in-apply-ms`): once with an edit in its weights and not yet stored, once with the
/// snapshot stored and its Kafka offset not yet committed. All three end with the editor's snapshot
/// and weight hash.
@Suite(.serialized) struct FollowerFleetTests {
    static func count(_ text: String, _ needle: String) -> Int { text.components(separatedBy: needle).count - 1 }

    /// The number after `prefix` in the last line of `text` that contains `marker`.
    static func number(in text: String, marker: String, after prefix: String) -> Int? {
        guard let line = text.split(separator: "\n").last(where: { $0.contains(marker) }), let r = line.range(of: prefix) else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }

    /// The value of the sample `name` (without labels) in a Prometheus exposition.
    static func sample(_ exposition: String, _ name: String) -> Double? {
        exposition.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    @Test func threeFollowersOfFiftyEditsAndFiveRollbacksEndWithTheEditorsWeights() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "fleet")
        defer { h.cleanup() }
        try h.start()
        let followers = try ["steady", "other", "killed"].map { try FollowerProcess(h, name: $0) }
        defer { for f in followers { f.kill9() } }
        let killed = followers[2]
        killed.extraArguments = ["--pause-in-apply-ms", "400"]
        for f in followers { try f.start() }

        // The editor's stream: 5 blocks of 10 edits, each followed by a rollback 3 snapshots back.
        let subjects = ["Paris", "Lyon", "Bern", "Oslo", "Riga", "Kyiv", "Rome", "Nice", "Graz", "Lille"]
        let stream = Thread.detachedResult { () throws -> [Int] in
            var targets: [Int] = []
            for _ in 0..<5 {
                try FollowerTests.edit(h, subjects)
                guard let head = FollowerTests.model(h)?.snapshot else { throw HarnessError("no /v1/model from the daemon") }
                targets.append(head - 3)
                try FollowerTests.rollback(h, to: head - 3)
            }
            return targets
        }

        // Kill 1: after a few records, at the next pause with an edit in the weights and not stored.
        let unstored = "is in the weights and not yet stored"
        #expect(killed.wait(timeout: 120) { Self.count(killed.launchLog, "applied in") >= 6 }, "\(killed.log)")
        let before1 = Self.count(killed.launchLog, unstored)
        #expect(killed.wait(timeout: 60) { Self.count(killed.launchLog, unstored) > before1 }, "\(killed.log)")
        killed.kill9()
        let lost = try #require(Self.number(in: killed.launchLog, marker: unstored, after: "snapshot "), "\(killed.log)")
        try killed.start()
        // It rebuilds the weights from its store (the head before the lost snapshot) and applies the record again.
        #expect(killed.wait { killed.launchLog.contains("snapshot \(lost) applied in") }, "\(killed.log)")
        let restartedAt = try #require(Self.number(in: killed.launchLog, marker: "model: ", after: "head "), "\(killed.log)")
        #expect(restartedAt < lost, "launch 2 started at snapshot \(restartedAt), the lost apply was \(lost)")

        // Kill 2: at a pause with the snapshot stored and its offset not yet committed.
        let uncommitted = "not yet committed"
        #expect(killed.wait(timeout: 120) { Self.count(killed.launchLog, "applied in") >= 4 }, "\(killed.log)")
        let before2 = Self.count(killed.launchLog, uncommitted)
        #expect(killed.wait(timeout: 60) { Self.count(killed.launchLog, uncommitted) > before2 }, "\(killed.log)")
        killed.kill9()
        let stored = try #require(Self.number(in: killed.launchLog, marker: uncommitted, after: "snapshot "), "\(killed.log)")
        let offset = try #require(Self.number(in: killed.launchLog, marker: uncommitted, after: "and offset "), "\(killed.log)")
        killed.extraArguments = []
        try killed.start()
        // The record is delivered again and skipped: the store holds it.
        #expect(killed.wait { killed.launchLog.contains("@\(offset): skipped") }, "\(killed.log)")
        #expect(Self.number(in: killed.launchLog, marker: "model: ", after: "head ") == stored, "\(killed.launchLog)")

        let targets = try stream.wait()
        #expect(targets.count == 5)
        let editor = try #require(FollowerTests.model(h))
        let store = try h.store()
        let head = try store.head(), recorded = try store.hash(at: head)
        #expect(editor.snapshot == Int(head) && editor.weightHash == recorded)
        #expect(editor.snapshot == targets.last!, "the stream ends with a rollback")
        for f in followers {
            let same = f.wait(timeout: 120) { FollowerTests.model(h, port: f.port).map { $0.snapshot == editor.snapshot && $0.weightHash == editor.weightHash } ?? false }
            #expect(same, "\(f.stateDir.lastPathComponent): \(String(describing: FollowerTests.model(h, port: f.port))) vs \(editor); log:\n\(f.log.suffix(3000))")
            #expect(f.wait { f.http("/readyz")?.status == 200 }, "\(f.log.suffix(2000))")
            let metrics = f.http("/metrics")?.body ?? ""
            #expect(Self.sample(metrics, "mesa_follower_refused") == 0, "\(metrics)")
            #expect(Self.sample(metrics, "mesa_snapshot_head") == Double(editor.snapshot))
            #expect(metrics.contains("mesa_consumer_lag{topic=\"\(h.topics.weightDeltas)\",partition=\"0\"} 0.0"), "\(metrics)")
            #expect((Self.sample(metrics, "mesa_follower_last_apply_seconds") ?? 0) > 0, "\(metrics)")
            #expect(metrics.contains("mesa_follower_apply_seconds_count"), "\(metrics)")
        }
        // The steady followers applied every record once: 50 edits and 5 rollbacks.
        for f in followers.prefix(2) {
            #expect(Self.sample(f.http("/metrics")?.body ?? "", "mesa_follower_records_applied_total") == 55, "\(f.http("/metrics")?.body ?? "")")
        }
        #expect(killed.launches == 3)
        for f in followers { #expect(f.terminate() == 0, "\(f.log.suffix(2000))") }
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
