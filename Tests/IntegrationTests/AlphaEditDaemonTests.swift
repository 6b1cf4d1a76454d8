import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// `mesa serve --method alphaedit` on the tiny model: AlphaEdit's accumulated keys are stored with
/// every snapshot, rebuilt after a restart and rolled back with the weights, so an edit after a
/// rollback (or after kill -9) is bit-for-bit the edit a daemon that never saw the undone edits makes.
@Suite(.serialized) struct AlphaEditDaemonTests {
    static let ae: [String: Any] = ["method": "AlphaEdit"]
    static let a = DaemonHarness.factUpdate(id: tid("ae-a"), subject: "Paris", targetNew: "Rome", extra: ae)
    static let b = DaemonHarness.factUpdate(id: tid("ae-b"), subject: "Rome", targetNew: "Paris", extra: ae)
    static let c = DaemonHarness.factUpdate(id: tid("ae-c"), subject: "Paris", prompt: "The city of {} lies in", targetNew: "Italy", extra: ae)
    static let d = DaemonHarness.factUpdate(id: tid("ae-d"), subject: "Rome", prompt: "{} is the capital of", targetNew: "France", extra: ae)

    func edit(_ h: DaemonHarness, _ payload: Data, _ id: String) throws -> JSONValue {
        try h.publish(payload)
        return try #require(try h.results(for: [id])[id], "no result for \(id); daemon log:\n\(h.tail())")
    }

    @Test func stateFollowsSnapshotsRollbacksAndRestarts() throws {
        let bootstrap = try SharedBroker.get().bootstrapServers
        let x = try DaemonHarness(bootstrap: bootstrap, label: "ae-x")
        defer { x.cleanup() }
        x.method = "alphaedit"
        try x.start()
        let ra = try edit(x, Self.a, tid("ae-a"))
        #expect(ra["method"]?.stringValue == "AlphaEdit" && ra["status"]?.stringValue == "applied", "\(ra)")
        #expect(try DaemonTests.schema("edit-result.schema.json").validate(ra).valid)
        _ = try edit(x, Self.b, tid("ae-b"))
        let store = try x.store()
        let r1 = try store.record(1)
        #expect(r1.method == "AlphaEdit" && r1.factors.count == 2 && r1.factors.allSatisfy { $0.rank == 1 })
        #expect(r1.state.map(\.layer) == [0, 1] && r1.state.allSatisfy { $0.name == "alphaedit.keys" && $0.rows == 1 })
        // Undo B, then edit C: the accumulated keys must be A's only.
        try x.publish(DaemonHarness.rollback(to: 1, id: tid("ae-rb")), topic: x.topics.control, cloudEvent: EventTypes.control)
        #expect(try x.results(for: [tid("ae-rb")])[tid("ae-rb")]?["head"]?.intValue == 1)
        _ = try edit(x, Self.c, tid("ae-c"))
        // A crash and a restart: the state is rebuilt from the snapshots of the head's lineage.
        x.kill9()
        try x.start()
        #expect(x.tail(60).contains("accumulated the keys of 2 edit(s) up to snapshot 3"), "\(x.tail())")
        _ = try edit(x, Self.d, tid("ae-d"))
        let sx = try x.store()
        #expect(try sx.record(3).parent == 1 && sx.record(4).parent == 3)
        #expect(x.terminate() == 0)

        // A daemon that only ever saw A, C, D.
        let y = try DaemonHarness(bootstrap: bootstrap, label: "ae-y")
        defer { y.cleanup() }
        y.method = "alphaedit"
        try y.start()
        for (p, id) in [(Self.a, tid("ae-a")), (Self.c, tid("ae-c")), (Self.d, tid("ae-d"))] { _ = try edit(y, p, id) }
        let sy = try y.store()
        #expect(try sx.record(3).hashAfter == sy.record(2).hashAfter, "the edit after the rollback used B's keys")
        #expect(try sx.record(4).hashAfter == sy.record(3).hashAfter, "the edit after the restart used other keys")
        // And one that saw A, B, C: B's keys change C's update, so the checks above can fail.
        #expect(y.terminate() == 0)
        let z = try DaemonHarness(bootstrap: bootstrap, label: "ae-z")
        defer { z.cleanup() }
        z.method = "alphaedit"
        try z.start()
        for (p, id) in [(Self.a, tid("ae-a")), (Self.b, tid("ae-b")), (Self.c, tid("ae-c"))] { _ = try edit(z, p, id) }
        let sz = try z.store()
        #expect(try sz.record(3).factors != sx.record(3).factors, "AlphaEdit's accumulated keys must shape the update")
        #expect(z.terminate() == 0)
    }

    @Test func memitDaemonEditsAndRefusesOtherMethods() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "memit")
        defer { h.cleanup() }
        h.method = "memit"
        try h.start()
        let r = try edit(h, DaemonHarness.factUpdate(id: tid("m-1"), extra: ["method": "MEMIT", "hyperparameters": ["mom2_update_weight": 50]]), tid("m-1"))
        #expect(r["method"]?.stringValue == "MEMIT" && r["status"]?.stringValue == "applied", "\(r)")
        let (_, offset) = try h.publish(DaemonHarness.factUpdate(id: tid("m-2")))  // method ROME
        let dead = try h.collect(h.topics.deadLetters, timeout: 30) { $0.contains { $0["original"]?["offset"]?.intValue == Int(offset) } }
        let d = try #require(dead.first { $0["original"]?["offset"]?.intValue == Int(offset) })
        #expect(d["reason"]?.stringValue == "unsupported_method")
        #expect(h.terminate() == 0)
    }
}
