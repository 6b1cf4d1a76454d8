import Contracts
import EditDaemon
import Editing
import Foundation
import Messaging
import ModelRuntime
import Storage
import Tensor
import TestSupport
import Testing

/// The weight-deltas topic: one record per edit, batch and rollback, enough for a replica with the
/// same base model to reach the editor's weights bit for bit without recomputing anything; damaged
/// records are refused before they touch a replica's weights.
@Suite(.serialized) struct WeightDeltaTests {
    /// A follower (`Follower`, what `mesa follow` applies records with) of the model at `modelPath`,
    /// over a fresh snapshot store under `directory`.
    static func follower(modelPath: String, directory: URL) throws -> Follower {
        let model = try ModelLoader.load(path: modelPath)
        let store = try SnapshotStore(path: EditState(directory: directory, baseHash: model.weightHash).snapshotStore.path)
        return try Follower(model: model, modelName: DaemonHarness.modelName, store: store)
    }

    /// Applies one record through `follower`, its header checked against the schema first; the weights
    /// must then have the record's hash.
    static func follow(_ follower: Follower, _ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let header = try DaemonTests.schema("weight-delta.schema.json")
        let length = Int(bytes[4]) | Int(bytes[5]) << 8 | Int(bytes[6]) << 16 | Int(bytes[7]) << 24
        let json = try JSONValue.parse(Array(bytes[8..<(8 + length)]))
        #expect(header.validate(json).valid, "\(header.validate(json).errors.prefix(3))", sourceLocation: sourceLocation)
        try follower.apply(bytes)
        let d = try WeightDelta(decoding: bytes)
        #expect(follower.host.model.weightHash == d.header.weightHash, "after snapshot \(d.header.snapshot)", sourceLocation: sourceLocation)
    }

    static func deltas(_ outcomes: [Outcome], _ topics: Topics) -> [[UInt8]] {
        outcomes.flatMap(\.records).filter { $0.topic == topics.weightDeltas }.map(\.payload)
    }

    /// Edits, a dry run (no record), a rollback, an edit on the rolled-back branch, redeliveries of
    /// the rollback and of the edit while they are the head (their records again, which a replica
    /// skips) and of the rollback after a later edit (no record: it would look like a gap), and for
    /// AlphaEdit a batch (one record of rank 2): a replica that follows the records ends with the
    /// pipeline's weights.
    @Test(arguments: ["rome", "alphaedit"])
    func aReplicaFollowingTheRecordsHasTheEditorsWeights(method: String) throws {
        let s = try PipelineTests.Setup(label: "deltas-\(method)", method: method)
        defer { s.remove() }
        let p = try s.pipeline()
        let name = method == "rome" ? "ROME" : "AlphaEdit"
        var offset: Int64 = 0
        func fact(_ subject: String, id: String = UUID().uuidString.lowercased(), dryRun: Bool = false) -> KafkaMessage {
            defer { offset += 1 }
            return s.message(DaemonHarness.factUpdate(id: id, subject: subject, extra: ["method": name].merging(dryRun ? ["dry_run": true] : [:]) { a, _ in a }),
                             offset: offset)
        }
        var outcomes: [Outcome] = []
        outcomes.append(try p.process(fact("Paris")))
        outcomes.append(try p.process(fact("Lyon")))
        outcomes.append(try p.process(fact("Nice", dryRun: true)))
        #expect(Self.deltas([outcomes[2]], s.config.topics).isEmpty, "a dry run changes nothing")
        let rollbackId = UUID().uuidString.lowercased()
        let rollback = s.message(DaemonHarness.rollback(to: 1, id: rollbackId), topic: s.config.topics.control, offset: 0)
        outcomes.append(try p.process(rollback))
        outcomes.append(try p.process(s.message(DaemonHarness.rollback(to: 1, id: rollbackId), topic: s.config.topics.control, offset: 1)))
        let again = UUID().uuidString.lowercased()
        outcomes.append(try p.process(fact("Bern", id: again)))
        outcomes.append(try p.process(fact("Bern", id: again)))
        #expect(outcomes.suffix(3).map(\.kind) == [.redelivery, .applied(method: name), .redelivery])
        let late = try p.process(s.message(DaemonHarness.rollback(to: 1, id: rollbackId), topic: s.config.topics.control, offset: 2))
        #expect(late.kind == .redelivery && Self.deltas([late], s.config.topics).isEmpty)
        if method == "alphaedit" {
            let batch = try p.process(batch: [fact("Oslo"), fact("Riga")])
            #expect(batch.map(\.kind) == [.applied(method: name), .applied(method: name)], "\(batch.map(\.summary))")
            outcomes += batch
            let record = try WeightDelta(decoding: try #require(Self.deltas(batch, s.config.topics).first))
            #expect(record.header.eventIds.count == 2 && record.updates.allSatisfy { $0.rank == 2 } && record.updates.count == 2)
        }
        let records = Self.deltas(outcomes, s.config.topics)
        // Paris, Lyon, the rollback and its redelivery, Bern and its redelivery (+ the batch).
        #expect(records.count == (method == "alphaedit" ? 7 : 6))
        #expect(outcomes.flatMap(\.records).filter { $0.topic == s.config.topics.weightDeltas }.allSatisfy { $0.key == Array(DaemonHarness.modelName.utf8) })

        let replica = try Self.follower(modelPath: try #require(s.config.model), directory: s.dir.appendingPathComponent("follower"))
        for r in records { try Self.follow(replica, r) }
        #expect(replica.head == p.host.head && replica.host.model.weightHash == p.host.model.weightHash)
        #expect(replica.head == (method == "alphaedit" ? 4 : 3), "\(replica.head)")
    }

    /// A follower refuses a gap, a damaged record, one without its factors, a record for another base
    /// model and one whose weight hash differs, changing nothing; a follower reopened over its store rebuilds the same weights, skips what it
    /// holds (by snapshot and by offset) and goes on from its head.
    @Test func aFollowerRefusesGapsAndResumesFromItsStore() throws {
        let s = try PipelineTests.Setup(label: "deltas-follower")
        defer { s.remove() }
        let p = try s.pipeline()
        var records: [[UInt8]] = []
        for (i, subject) in ["Paris", "Lyon", "Bern"].enumerated() {
            records += Self.deltas([try p.process(s.message(DaemonHarness.factUpdate(subject: subject), offset: Int64(i)))], s.config.topics)
        }
        records += Self.deltas([try p.process(s.message(DaemonHarness.rollback(to: 1), topic: s.config.topics.control, offset: 0))], s.config.topics)
        #expect(records.count == 4)
        let modelPath = try #require(s.config.model)
        let directory = s.dir.appendingPathComponent("follower")
        func source(_ i: Int) -> EventSource { EventSource(topic: "deltas", partition: 0, offset: Int64(i)) }
        func refusal(_ body: () throws -> Void) -> FollowerError.Kind? {
            do { try body() } catch let e as FollowerError { return e.kind } catch { return nil }
            return nil
        }

        var f: Follower? = try Self.follower(modelPath: modelPath, directory: directory)
        #expect(try f!.apply(records[0], source: source(0)) == .applied)
        let atOne = f!.host.model.weightHash
        #expect(refusal { try f!.apply(records[2], source: source(2)) } == .gap)
        var damaged = records[1]
        damaged[damaged.count - 3] ^= 0x40
        #expect(refusal { try f!.apply(damaged, source: source(1)) } == .undecodable)
        #expect(refusal { try f!.apply(try WeightDelta(decoding: records[1]).withoutFactors("too large").encoded(), source: source(1)) } == .omitted)
        var other = try WeightDelta(decoding: records[1])
        other.header.model.baseHash = String(repeating: "0", count: 64)
        #expect(refusal { try f!.apply(other.encoded()) } == .otherModel)
        var wrong = try WeightDelta(decoding: records[1])
        wrong.header.weightHash = String(repeating: "f", count: 64)
        let e = try #require(throws: FollowerError.self) { try f!.apply(wrong.encoded()) }
        #expect(e.kind == .hashMismatch && "\(e)".contains("--state-dir") && "\(e)".contains("--group-id"))
        #expect(f!.head == 1 && f!.host.model.weightHash == atOne)
        #expect(try f!.apply(records[1], source: source(1)) == .applied)
        f = nil

        f = try Self.follower(modelPath: modelPath, directory: directory)
        let atTwo = try WeightDelta(decoding: records[1]).header.weightHash
        #expect(f!.head == 2 && f!.host.model.weightHash == atTwo)
        #expect(try f!.lastOffset(topic: "deltas", partition: 0) == 1)
        #expect(try f!.apply(records[1], source: source(1)) == .skipped("offset 1 was applied before"))
        #expect(try f!.apply(records[0]) == .skipped("snapshot 1 is held"))
        #expect(try f!.apply(records[2], source: source(2)) == .applied)
        #expect(try f!.apply(records[3], source: source(3)) == .applied)
        #expect(f!.head == p.host.head && f!.host.model.weightHash == p.host.model.weightHash)
    }

    /// A damaged record is refused with the reason; a record without its factors (the form sent
    /// when the broker refuses the whole one) says so and carries none.
    @Test func damagedRecordsAreRefused() throws {
        let s = try PipelineTests.Setup(label: "deltas-damaged")
        defer { s.remove() }
        let p = try s.pipeline()
        let outcome = try p.process(s.message(DaemonHarness.factUpdate(), offset: 0))
        let record = try #require(outcome.records.first { $0.topic == s.config.topics.weightDeltas })
        let good = record.payload
        let d = try WeightDelta(decoding: good)
        #expect(d.header.kind == "edit" && d.header.parent == 0 && d.header.snapshot == 1 && d.updates.count == 1)
        #expect(d.header.weightHash == p.host.model.weightHash && d.header.hashBefore == p.host.baseHash)
        #expect(d.updates == (try p.host.store.record(1)).factors)

        var flipped = good
        flipped[flipped.count - 3] ^= 0x40
        #expect { try WeightDelta(decoding: flipped) } throws: { "\($0)".contains("SHA-256") }
        #expect(throws: WeightDeltaError.self) { try WeightDelta(decoding: Array(good.dropLast(4))) }
        #expect(throws: WeightDeltaError.self) { try WeightDelta(decoding: Array(good.prefix(20))) }
        var magic = good
        magic[0] = UInt8(ascii: "X")
        #expect(throws: WeightDeltaError.self) { try WeightDelta(decoding: magic) }
        var header = good
        header[12] = UInt8(ascii: "}")
        #expect(throws: WeightDeltaError.self) { try WeightDelta(decoding: header) }

        let smaller = try #require(record.smaller)
        let bare = try WeightDelta(decoding: smaller().payload)
        #expect(bare.updates.isEmpty && bare.header.omitted?.contains("message.max.bytes") == true && bare.header.snapshot == 1)
    }

    /// Against a real broker: the daemon publishes the records in order, keyed by the model, and a
    /// replica reading the topic from the start reaches the daemon's weights.
    @Test func theDaemonPublishesRecordsAReplicaCanFollow() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "deltas")
        defer { h.cleanup() }
        try h.start()
        let ids = (0..<2).map { _ in UUID().uuidString.lowercased() }
        for (id, subject) in zip(ids, ["Paris", "Lyon"]) { try h.publish(DaemonHarness.factUpdate(id: id, subject: subject)) }
        _ = try h.results(for: Set(ids))
        let back = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.rollback(to: 1, id: back), topic: h.topics.control, cloudEvent: EventTypes.control)
        _ = try h.results(for: [back])
        let messages = try Self.read(h.topics.weightDeltas, bootstrap: h.bootstrap, count: 3)
        #expect(messages.count == 3, "log:\n\(h.tail())")
        #expect(messages.allSatisfy { $0.key == Array(DaemonHarness.modelName.utf8) })
        #expect(messages.map(\.offset) == [0, 1, 2])
        let replica = try Self.follower(modelPath: h.modelPath, directory: h.dir.appendingPathComponent("follower"))
        for m in messages { try Self.follow(replica, m.payload) }
        let store = try h.store()
        let head = try store.head()
        let recorded = try store.hash(at: head)
        #expect(head == 1 && replica.head == head && replica.host.model.weightHash == recorded)
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// Up to `count` records of `topic` from its start.
    static func read(_ topic: String, bootstrap: String, count: Int, timeout: Double = 60) throws -> [KafkaMessage] {
        let c = try KafkaConsumer(properties: ["bootstrap.servers": bootstrap, "group.id": "deltas-reader-\(UUID().uuidString.prefix(6))",
                                               "auto.offset.reset": "earliest", "session.timeout.ms": "6000", "heartbeat.interval.ms": "1000",
                                               "topic.metadata.refresh.interval.ms": "1000"],
                                  topics: [topic], maxBufferedPerPartition: 1000)
        defer { c.close() }
        var out: [KafkaMessage] = []
        let end = Date().addingTimeInterval(timeout)
        while out.count < count, Date() < end {
            let ms = c.nextBatch(max: 100, linger: 0, timeout: 0.2)
            guard let last = ms.last else { continue }
            try? c.commit(last, wait: false)
            out += ms
        }
        return out
    }
}
