import Foundation
import Storage
import Tensor
import Testing

@Suite struct SnapshotStoreTests {
    static func temporaryDirectory() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-snap-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d.path
    }

    /// A ROME-sized draft: one rank-one factor of a [576, 1536] down projection.
    static func draft(_ id: String, before: String, after: String, rows: Int = 576, cols: Int = 1536) -> SnapshotDraft {
        SnapshotDraft(eventId: id, source: EventSource(topic: "mesa.fact-updates", partition: 0, offset: 7), method: "ROME",
                      hyperparameters: #"{"layer":7,"v_lr":0.5}"#,
                      hashBefore: before, hashAfter: after, blas: BLASInfo(library: "OpenBLAS 0.3.21", core: "Zen", threads: 2),
                      factors: [LowRankUpdate(parameter: "blk.7.ffn_down.weight", layer: 7, rows: rows, cols: cols, rank: 1,
                                             left: (0..<rows).map { Float($0) * 0.5 - 3 }, right: (0..<cols).map { Float.ulpOfOne * Float($0) })])
    }

    /// Method state (AlphaEdit's keys) is stored after the factors and comes back exactly; a record
    /// without state decodes with none, and a block that does not match its shape is refused.
    @Test func stateBlocksRoundTrip() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        var d = Self.draft("e1", before: "base", after: "h1", rows: 8, cols: 12)
        d.state = [StateBlock(name: "alphaedit.keys", layer: 3, rows: 2, cols: 12, values: (0..<24).map { Float($0) / 7 }),
                   StateBlock(name: "alphaedit.keys", layer: 4, rows: 1, cols: 12, values: (0..<12).map { -Float($0) })]
        _ = try store.commitEdit(d, expectedHead: 0)
        let back = try store.record(1)
        #expect(back.state == d.state && back.factors == d.factors)
        _ = try store.commitEdit(Self.draft("e2", before: "h1", after: "h2", rows: 8, cols: 12), expectedHead: 1)
        #expect(try store.record(2).state.isEmpty)
        var bad = Self.draft("e3", before: "h2", after: "h3", rows: 8, cols: 12)
        bad.state = [StateBlock(name: "alphaedit.keys", layer: 3, rows: 2, cols: 12, values: [1, 2, 3])]
        #expect { try store.commitEdit(bad, expectedHead: 2) } throws: { ($0 as? SnapshotStoreError)?.code == .state }
        #expect(try store.head() == 2)
    }

    /// A replica stores snapshots under the editor's numbers (not below the next free one) and its
    /// topic position with them; a refused commit writes neither.
    @Test func aReplicaCommitsTheEditorsNumbersWithItsPosition() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        let at = { (offset: Int) in ["follow.offset": Array(String(offset).utf8)] }
        let r = try store.commitEdit(Self.draft("e1", before: "base", after: "h3", rows: 8, cols: 12), expectedHead: 0, seq: 3, meta: at(0)) { _ in ["{}"] }
        #expect(r.seq == 3)
        #expect(try store.head() == 3)
        #expect(try store.metaValue("follow.offset") == Array("0".utf8))
        #expect {
            try store.commitEdit(Self.draft("e2", before: "h3", after: "h2", rows: 8, cols: 12), expectedHead: 3, seq: 2, meta: at(1)) { _ in ["{}"] }
        } throws: { ($0 as? SnapshotStoreError)?.code == .state }
        #expect(try store.metaValue("follow.offset") == Array("0".utf8))
        #expect(try store.head() == 3)
        try store.commitRollback(to: 0, commandId: "back", meta: at(2))
        #expect(try store.head() == 0)
        #expect(try store.metaValue("follow.offset") == Array("2".utf8))
        #expect(try store.commitEdit(Self.draft("e3", before: "base", after: "h4", rows: 8, cols: 12), expectedHead: 0).seq == 4)
    }

    /// A batch edit is one snapshot that indexes every event of the batch, each with its own result;
    /// an id already recorded (in the batch, or twice in it) refuses the whole batch.
    @Test func batchEditIndexesEveryEventWithItsResult() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        _ = try store.commitEdit(Self.draft("solo", before: "base", after: "h1", rows: 8, cols: 12), expectedHead: 0)
        var d = Self.draft("b1", before: "h1", after: "h2", rows: 8, cols: 12)
        d.batch = [BatchMember(eventId: "b2", source: EventSource(topic: "mesa.fact-updates", partition: 0, offset: 8)),
                   BatchMember(eventId: "b3", source: EventSource(topic: "mesa.fact-updates", partition: 0, offset: 9))]
        #expect(d.eventIds == ["b1", "b2", "b3"])
        let r = try store.commitEdit(d, expectedHead: 1) { seq in (1...3).map { #"{"seq":\#(seq),"n":\#($0)}"# } }
        #expect(r.seq == 2 && r.eventIds == ["b1", "b2", "b3"])
        for (i, id) in ["b1", "b2", "b3"].enumerated() {
            #expect(try store.outcome(ofEvent: id) == .snapshot(2))
            #expect(r.result(ofEvent: id) == #"{"seq":2,"n":\#(i + 1)}"#)
        }
        let back = try store.record(2)
        #expect(back == r)
        #expect(back.batch.map(\.source?.offset) == [8, 9])
        #expect(try store.record(1).batch.isEmpty && store.record(1).result(ofEvent: "b2") == nil)

        var again = Self.draft("b4", before: "h2", after: "h3", rows: 8, cols: 12)
        again.batch = [BatchMember(eventId: "b2", source: nil)]
        #expect { try store.commitEdit(again, expectedHead: 2) { _ in ["{}", "{}"] } } throws: { ($0 as? SnapshotStoreError)?.code == .duplicateEvent }
        again.batch = [BatchMember(eventId: "b4", source: nil)]
        #expect { try store.commitEdit(again, expectedHead: 2) { _ in ["{}", "{}"] } } throws: { ($0 as? SnapshotStoreError)?.code == .state }
        again.batch = [BatchMember(eventId: "b5", source: nil)]
        #expect { try store.commitEdit(again, expectedHead: 2) { _ in ["{}"] } } throws: { ($0 as? SnapshotStoreError)?.code == .state }
        #expect(try store.head() == 2 && store.outcome(ofEvent: "b4") == nil && store.outcome(ofEvent: "b5") == nil)
    }

    @Test func editsRoundTripWithLineageJournalAndDedupe() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        try store.attachBase(modelHash: "base", modelName: "tiny")
        #expect(throws: SnapshotStoreError.self) { try store.attachBase(modelHash: "other", modelName: "tiny") }
        #expect(try store.head() == 0)

        let d1 = Self.draft("e1", before: "base", after: "h1")
        let r1 = try store.commitEdit(d1, expectedHead: 0) { #"{"snapshot":\#($0),"metrics":{"es":1,"ps":1,"ns":0.9}}"# }
        #expect(r1.result == #"{"snapshot":1,"metrics":{"es":1,"ps":1,"ns":0.9}}"#)
        #expect(r1.seq == 1 && r1.parent == 0)
        #expect(r1.storedBytes <= 16 * 1024, "a ROME snapshot must fit in 16 KiB, got \(r1.storedBytes)")
        let r2 = try store.commitEdit(Self.draft("e2", before: "h1", after: "h2"), expectedHead: 1)
        #expect(try r2.parent == 1 && store.head() == 2)

        // A redelivered event writes nothing; a stale head is refused.
        #expect { try store.commitEdit(Self.draft("e1", before: "h2", after: "x"), expectedHead: 2) } throws: {
            ($0 as? SnapshotStoreError)?.code == .duplicateEvent
        }
        #expect { try store.commitEdit(Self.draft("e3", before: "h1", after: "x"), expectedHead: 1) } throws: {
            ($0 as? SnapshotStoreError)?.code == .state
        }
        #expect(try store.outcome(ofEvent: "e1") == .snapshot(1))
        #expect(try store.outcome(ofEvent: "nope") == nil)

        let back = try store.record(1)
        #expect(back.factors == d1.factors && back.eventId == "e1" && back.hashAfter == "h1" && back.blas == d1.blas && back.result == r1.result)

        // Rollback to 1, then a new edit branches from 1.
        let rb = try store.commitRollback(to: 1, commandId: "c1")
        #expect(rb.headBefore == 2 && rb.headAfter == 1 && rb.hash == "h1")
        #expect(try store.outcome(ofEvent: "c1") == .journal(rb.id))
        #expect { try store.commitRollback(to: 0, commandId: "c1") } throws: { ($0 as? SnapshotStoreError)?.code == .duplicateEvent }
        let r3 = try store.commitEdit(Self.draft("e3", before: "h1", after: "h3"), expectedHead: 1)
        #expect(r3.seq == 3 && r3.parent == 1)
        #expect(try store.lineage(to: 3).map(\.seq) == [1, 3])
        #expect(try store.lineage(to: 2).map(\.seq) == [1, 2])
        #expect(try store.hash(at: 0) == "base")
        #expect(try store.journal().map(\.kind) == [.base, .edit, .edit, .rollback, .edit])

        // Reopening sees the same state.
        let again = try SnapshotStore(path: dir)
        #expect(try again.head() == 3 && again.records().count == 3)
    }

    @Test func corruptedRecordIsRefusedByItsChecksum() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        try store.commitEdit(Self.draft("e1", before: "base", after: "h1", rows: 8, cols: 16), expectedHead: 0)
        let db = try store.environment.database("snapshots")
        let key: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1]
        var bytes = try #require(try store.environment.read { try $0.get(db, key: key) })
        for position in [20, bytes.count - 40, bytes.count - 1] {
            var bad = bytes
            bad[position] ^= 0x01
            try store.environment.write { try $0.put(db, key: key, value: bad) }
            #expect { try store.record(1) } throws: { ($0 as? SnapshotStoreError)?.code == .corrupted }
            #expect(throws: SnapshotStoreError.self) { try store.lineage(to: 1) }
        }
        bytes.removeLast(5)
        try store.environment.write { try $0.put(db, key: key, value: bytes) }
        #expect { try store.record(1) } throws: { ($0 as? SnapshotStoreError)?.code == .corrupted }
    }

    /// A scan lists every record it can verify and marks each one it cannot, in sequence order,
    /// where `records()` stops at the first.
    @Test func scanListsGoodRecordsAndMarksCorruptOnes() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        var written: [SnapshotRecord] = []
        for i in 1...4 {
            written.append(try store.commitEdit(Self.draft("e\(i)", before: i == 1 ? "base" : "h\(i - 1)", after: "h\(i)", rows: 8, cols: 16),
                                                expectedHead: UInt64(i - 1)))
        }
        let db = try store.environment.database("snapshots")
        let key2: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 2], key4: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 4]
        var bytes = try #require(try store.environment.read { try $0.get(db, key: key2) })
        bytes[bytes.count / 2] ^= 0x40
        try store.environment.write { t in
            try t.put(db, key: key2, value: bytes)
            try t.put(db, key: key4, value: Array("not a record".utf8))
        }

        let scanned = try store.scan()
        #expect(scanned.map(\.seq) == [1, 2, 3, 4])
        #expect(try scanned[0].result.get() == written[0])
        #expect(try scanned[2].result.get() == written[2])
        guard case .failure(let e2) = scanned[1].result, case .failure(let e4) = scanned[3].result else {
            Issue.record("records 2 and 4 were not reported corrupt: \(scanned.map(\.result))")
            return
        }
        #expect(e2.code == .corrupted && e2.message.contains("snapshot 2: checksum mismatch"))
        #expect(e4.code == .corrupted && e4.message.contains("snapshot 4: not a snapshot record"))
        #expect { try store.records() } throws: { ($0 as? SnapshotStoreError) == e2 }
    }
}
