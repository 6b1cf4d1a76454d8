import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// `mesa serve` as a process against a real Tansu broker, on the tiny model.
@Suite(.serialized) struct DaemonTests {
    static func schema(_ name: String) throws -> CompiledSchema {
        try SchemaCatalog(directory: TestPaths.repoRoot.appendingPathComponent("Schemas")).schema(name)
    }

    @Test func endToEndEditWithResultMetricsAndSnapshot() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "e2e")
        defer { h.cleanup() }
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        let results = try h.results(for: [id])
        let r = try #require(results[id], "no result; daemon log:\n\(h.tail())")
        #expect(try Self.schema("edit-result.schema.json").validate(r).valid, "\(r)")
        #expect(r["status"]?.stringValue == "applied")
        #expect(r["snapshot"]?.intValue == 1)
        let before = try #require(r["hash_before"]?.stringValue), after = try #require(r["weight_hash"]?.stringValue)
        #expect(before != after && before == r["model"]?["base_hash"]?.stringValue)
        #expect(r["metrics"]?["post"]?["es"] != nil && r["metrics"]?["pre"]?["ps"] != nil)
        let store = try h.store()
        #expect(try store.head() == 1 && store.record(1).hashAfter == after && store.record(1).storedBytes < 16 * 1024)

        let metrics = try h.http("/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.body.contains(#"mesa_edits_applied_total{method="ROME"} 1"#), "\(metrics.body)")
        #expect(try h.http("/healthz").status == 200)
        #expect(h.terminate() == 0, "SIGTERM must exit cleanly:\n\(h.tail())")
    }

    @Test func badInputBecomesDeadLettersAndTheDaemonKeepsRunning() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "dlq")
        defer { h.cleanup() }
        try h.start(maxEventBytes: 4096)
        let cases: [(Data, String?, String)] = [
            (Data("{not json".utf8), nil, "malformed_json"),
            (Data([0xFF, 0xFE, 0x00, 0xC3, 0x28, 0xE2, 0x82]), nil, "malformed_json"),
            (Data("{\"id\": \"x\", \"subject\": 42}".utf8), nil, "schema"),
            (Data(String(repeating: "a", count: 5000).utf8), nil, "too_large"),
            (DaemonHarness.factUpdate(model: "some-other-model"), EventTypes.factUpdate, "unknown_model"),
            (DaemonHarness.factUpdate(subject: "Paris", prompt: "Paris is in"), EventTypes.factUpdate, "schema"),
            (DaemonHarness.factUpdate(subject: "Paris", prompt: "{} and {} are in"), EventTypes.factUpdate, "invalid_edit"),
            (DaemonHarness.factUpdate(subject: "Paris", prompt: "The city {} is in", targetNew: "is", targetTrue: "is"), EventTypes.factUpdate, "invalid_edit"),
            (DaemonHarness.factUpdate(extra: ["method": "MEND"]), EventTypes.factUpdate, "unsupported_method"),
            (DaemonHarness.factUpdate(extra: ["hyperparameters": ["layers": [1, 2]]]), EventTypes.factUpdate, "invalid_hyperparameters"),
            (DaemonHarness.factUpdate(), "dev.example.unknown", "unknown_type"),
            (Data("\u{202E}\u{0000}😀\u{FFFD}".utf8), nil, "malformed_json"),
        ]
        var expected: [Int64: String] = [:]
        for (payload, type, reason) in cases {
            let (_, offset) = try h.publish(payload, cloudEvent: type)
            expected[offset] = reason
        }
        let good = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: good))
        #expect(try h.results(for: [good])[good]?["status"]?.stringValue == "applied", "daemon log:\n\(h.tail())")
        let dead = try h.collect(h.topics.deadLetters, timeout: 30) { $0.count >= expected.count }
        let schema = try Self.schema("dead-letter.schema.json")
        for d in dead { #expect(schema.validate(d).valid, "\(d)") }
        var got: [Int64: String] = [:]
        for d in dead { if let o = d["original"]?["offset"]?.intValue, let r = d["reason"]?.stringValue { got[Int64(o)] = r } }
        for (offset, reason) in expected { #expect(got[offset] == reason, "offset \(offset): \(got[offset] ?? "none"), want \(reason)") }
        #expect(h.isRunning)
        #expect(try h.http("/metrics").body.contains("mesa_dead_letters_total{reason=\"malformed_json\"}"))
    }

    @Test func rollbackToEverySnapshotRestoresTheRecordedHashAndCorruptionIsRefused() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "rollback")
        defer { h.cleanup() }
        try h.start()
        let edits = [("Paris", "Rome"), ("Rome", "Paris"), ("Paris", "is")]
        var ids: [String] = []
        for (s, t) in edits {
            let id = UUID().uuidString.lowercased()
            ids.append(id)
            try h.publish(DaemonHarness.factUpdate(id: id, subject: s, prompt: "{} is in", targetNew: t, targetTrue: nil))
        }
        let applied = try h.results(for: Set(ids))
        #expect(applied.count == 3, "daemon log:\n\(h.tail())")
        let store = try h.store()
        var recorded: [Int: String] = [0: try #require(try store.baseHash())]
        for seq in 1...3 { recorded[seq] = try store.record(UInt64(seq)).hashAfter }
        for target in [2, 0, 3, 1, 1] {
            let cid = UUID().uuidString.lowercased()
            try h.publish(DaemonHarness.rollback(to: target, id: cid), topic: h.topics.control, cloudEvent: EventTypes.control)
            let r = try #require(try h.results(for: [cid])[cid], "no rollback result:\n\(h.tail())")
            #expect(r["status"]?.stringValue == "rolled_back" && r["head"]?.intValue == target)
            #expect(r["weight_hash"]?.stringValue == recorded[target], "rollback to \(target)")
        }
        // An edit after rolling back to 1 branches from 1.
        let branch = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: branch, subject: "Rome", targetNew: "Lyon", targetTrue: nil))
        let b = try #require(try h.results(for: [branch])[branch])
        #expect(b["parent"]?.intValue == 1 && b["snapshot"]?.intValue == 4 && b["hash_before"]?.stringValue == recorded[1])

        // Corrupt snapshot 2 on disk: a rollback to it is refused with a dead letter, the weights stay.
        let db = try store.environment.database("snapshots")
        let key: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 2]
        var bytes = try #require(try store.environment.read { try $0.get(db, key: key) })
        bytes[bytes.count / 2] ^= 0x40
        try store.environment.write { try $0.put(db, key: key, value: bytes) }
        let bad = UUID().uuidString.lowercased()
        let (_, offset) = try h.publish(DaemonHarness.rollback(to: 2, id: bad), topic: h.topics.control, cloudEvent: EventTypes.control)
        let dead = try h.collect(h.topics.deadLetters, timeout: 60) { $0.contains { $0["event_id"]?.stringValue == bad } }
        let d = try #require(dead.first { $0["event_id"]?.stringValue == bad }, "daemon log:\n\(h.tail())")
        #expect(d["reason"]?.stringValue == "rollback_failed" && d["original"]?["offset"]?.intValue == Int(offset))
        #expect(d["message"]?.stringValue?.contains("checksum") == true)
        #expect(try store.head() == 4)

        // The audit finds the corrupted record, cannot rebuild its child 3, and fails; 1 and 4 match.
        #expect(h.terminate() == 0, "\(h.tail())")
        let (status, out, audit) = try h.replayVerify()
        #expect(status == 1, "\(out)")
        #expect(try Self.schema("audit-report.schema.json").validate(audit).valid)
        #expect(audit["verified"] == false)
        let statuses = audit["snapshots"]?.arrayValue?.compactMap { $0["status"]?.stringValue } ?? []
        #expect(statuses == ["match", "corrupted", "unverifiable", "match"], "\(out)")
    }

    @Test func replayVerifyReproducesEveryRecordedHashInAFreshProcess() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "replay")
        defer { h.cleanup() }
        try h.start()
        var ids: Set<String> = []
        for (s, t) in [("Paris", "Rome"), ("Rome", "Lyon")] {
            let id = UUID().uuidString.lowercased()
            ids.insert(id)
            try h.publish(DaemonHarness.factUpdate(id: id, subject: s, targetNew: t, targetTrue: nil))
        }
        #expect(try h.results(for: ids).count == 2, "daemon log:\n\(h.tail())")
        let cid = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.rollback(to: 1, id: cid), topic: h.topics.control, cloudEvent: EventTypes.control)
        #expect(try h.results(for: [cid]).count == 1)
        #expect(h.terminate() == 0, "\(h.tail())")
        let (status, out, audit) = try h.replayVerify()
        #expect(status == 0, "\(out)")
        #expect(try Self.schema("audit-report.schema.json").validate(audit).valid)
        #expect(audit["verified"] == true && audit["head"]?.intValue == 1)
        #expect(audit["journal"]?.arrayValue?.map { $0["kind"]?.stringValue ?? "" } == ["base", "edit", "edit", "rollback"])
        let (ls, listing) = try h.mesa(["snapshots", "--state-dir", h.stateDir.path])
        #expect(ls == 0 && listing.contains("rollback 2 → 1"), "\(listing)")
    }
}
