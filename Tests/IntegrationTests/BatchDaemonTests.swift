import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// `mesa serve --method alphaedit` with `batch.max_events`: consecutive fact updates are edited
/// together in one computation and stored as one snapshot, every event still gets its own result,
/// bad events in between are dead-lettered, a repeated event waits for the pending batch and is
/// recognized as a redelivery, and a rollback undoes the batch as a whole.
@Suite(.serialized) struct BatchDaemonTests {
    static var ae: [String: Any] { ["method": "AlphaEdit"] }
    static let a = DaemonHarness.factUpdate(id: tid("bt-a"), subject: "Paris", targetNew: "Rome", extra: ae)
    static let b = DaemonHarness.factUpdate(id: tid("bt-b"), subject: "Rome", targetNew: "Paris", extra: ae)
    static let c = DaemonHarness.factUpdate(id: tid("bt-c"), subject: "Paris", prompt: "The city of {} lies in", targetNew: "Italy", extra: ae)

    @Test func consecutiveEventsAreEditedTogetherAsOneSnapshot() throws {
        let bootstrap = try SharedBroker.get().bootstrapServers
        let x = try DaemonHarness(bootstrap: bootstrap, label: "bt-x")
        defer { x.cleanup() }
        x.method = "alphaedit"
        x.batch = ["max_events": 8, "linger_ms": 3000]
        try x.start()
        // One burst: A and B edit together; the garbage is dead-lettered without splitting them; A
        // again waits for the batch and is a redelivery; C follows alone.
        try x.publish(Self.a)
        try x.publish(Self.b)
        let (_, garbage) = try x.publish(Data("{ not json".utf8), cloudEvent: nil)
        try x.publish(Self.a)
        try x.publish(Self.c)
        let results = try x.collect(x.topics.results, timeout: 120) { rs in
            rs.contains { $0["event_id"]?.stringValue == tid("bt-c") } && rs.filter { $0["event_id"]?.stringValue == tid("bt-a") }.count >= 2
        }
        let schema = try DaemonTests.schema("edit-result.schema.json")
        for r in results { #expect(schema.validate(r).valid, "\(r)") }
        let ra = try #require(results.first { $0["event_id"]?.stringValue == tid("bt-a") }, "daemon log:\n\(x.tail())")
        let rb = try #require(results.first { $0["event_id"]?.stringValue == tid("bt-b") })
        let again = try #require(results.last { $0["event_id"]?.stringValue == tid("bt-a") })
        let rc = try #require(results.first { $0["event_id"]?.stringValue == tid("bt-c") })
        for (r, i) in [(ra, 0), (rb, 1)] {
            #expect(r["status"]?.stringValue == "applied" && r["snapshot"]?.intValue == 1 && r["parent"]?.intValue == 0, "\(r)")
            #expect(r["batch"]?["size"]?.intValue == 2 && r["batch"]?["index"]?.intValue == i, "\(r)")
            #expect(r["batch"]?["event_ids"] == .array([.string(tid("bt-a")), .string(tid("bt-b"))]))
            #expect(r["metrics"]?["post"]?["es"] != nil && r["metrics"]?["pre"]?["es"] != nil)
        }
        #expect(ra["target_new"]?.stringValue == "Rome" && rb["target_new"]?.stringValue == "Paris")
        #expect(again["redelivery"] == .bool(true) && again["snapshot"]?.intValue == 1 && again["batch"]?["index"]?.intValue == 0)
        #expect(rc["snapshot"]?.intValue == 2 && rc["parent"]?.intValue == 1 && rc["batch"] == nil, "\(rc)")
        let dead = try x.collect(x.topics.deadLetters, timeout: 30) { $0.contains { $0["original"]?["offset"]?.intValue == Int(garbage) } }
        #expect(dead.first { $0["original"]?["offset"]?.intValue == Int(garbage) }?["reason"]?.stringValue == "malformed_json")

        // One snapshot for the batch: both events indexed, rank-2 factors, both requests' keys kept.
        let store = try x.store()
        let r1 = try store.record(1)
        #expect(r1.eventIds == [tid("bt-a"), tid("bt-b")] && r1.factors.count == 2 && r1.factors.allSatisfy { $0.rank == 2 })
        #expect(r1.state.count == 2 && r1.state.allSatisfy { $0.rows == 2 })
        #expect(try store.outcome(ofEvent: tid("bt-b")) == .snapshot(1))

        // A crash and a restart: the state of the batch is rebuilt; a rollback undoes A and B together.
        x.kill9()
        try x.start()
        #expect(x.tail(60).contains("accumulated the keys of 2 edit(s) up to snapshot 2"), "\(x.tail())")
        try x.publish(DaemonHarness.rollback(to: 0, id: tid("bt-rb")), topic: x.topics.control, cloudEvent: EventTypes.control)
        let rolled = try #require(try x.results(for: [tid("bt-rb")])[tid("bt-rb")])
        let base = try store.hash(at: 0)
        #expect(rolled["head"]?.intValue == 0 && rolled["weight_hash"]?.stringValue == base)
        #expect(x.terminate() == 0, "\(x.tail())")
        // The audit rebuilds the batch snapshot in a fresh process and names every event it applied.
        let (status, out, audit) = try x.replayVerify()
        #expect(status == 0, "\(out)")
        #expect(try DaemonTests.schema("audit-report.schema.json").validate(audit).valid)
        let rows = audit["snapshots"]?.arrayValue ?? []
        #expect(rows.map { $0["status"]?.stringValue } == ["match", "match"], "\(out)")
        #expect(rows.first?["batch_event_ids"] == .array([.string(tid("bt-a")), .string(tid("bt-b"))]) && rows.last?["batch_event_ids"] == nil)

        // Edited together is not edited one after the other: a daemon without batches gets other weights.
        let y = try DaemonHarness(bootstrap: bootstrap, label: "bt-y")
        defer { y.cleanup() }
        y.method = "alphaedit"
        try y.start()
        try y.publish(Self.a)
        try y.publish(Self.b)
        let ry = try y.results(for: [tid("bt-a"), tid("bt-b")])
        #expect(ry[tid("bt-b")]?["snapshot"]?.intValue == 2 && ry[tid("bt-b")]?["batch"] == nil, "\(ry)")
        #expect(ry[tid("bt-b")]?["weight_hash"] != rb["weight_hash"] && ry[tid("bt-b")]?["weight_hash"] != nil)
        #expect(y.terminate() == 0, "\(y.tail())")
    }

    /// ROME with batches: the facts' δ optimizations share their passes, the rank-one updates are
    /// applied in order and stored as one snapshot (one rank-one factor per fact), and the audit
    /// rebuilds it.
    @Test func romeEditsABatchTogetherAsOneSnapshot() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "bt-rome")
        defer { h.cleanup() }
        h.batch = ["max_events": 4, "linger_ms": 3000]
        try h.start()
        let a = DaemonHarness.factUpdate(id: tid("bt-ra"), subject: "Paris", targetNew: "Rome")
        let b = DaemonHarness.factUpdate(id: tid("bt-rb2"), subject: "Berlin", targetNew: "Madrid")
        try h.publish(a)
        try h.publish(b)
        let rs = try h.results(for: [tid("bt-ra"), tid("bt-rb2")])
        for (id, i) in [(tid("bt-ra"), 0), (tid("bt-rb2"), 1)] {
            let r = try #require(rs[id], "daemon log:\n\(h.tail())")
            #expect(r["status"]?.stringValue == "applied" && r["snapshot"]?.intValue == 1 && r["batch"]?["index"]?.intValue == i, "\(r)")
            #expect(r["method"]?.stringValue == "ROME", "\(r)")
        }
        let record = try h.store().record(1)
        #expect(record.eventIds == [tid("bt-ra"), tid("bt-rb2")] && record.factors.count == 2 && record.factors.allSatisfy { $0.rank == 1 })
        #expect(h.terminate() == 0, "\(h.tail())")
        let (status, out, _) = try h.replayVerify()
        #expect(status == 0, "\(out)")
    }
}
