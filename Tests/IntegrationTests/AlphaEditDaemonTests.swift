import Contracts
import EditDaemon
import Editing
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// `mesa serve --method alphaedit` (and `encore`) on the tiny model: the accumulated keys are stored
/// with every snapshot, rebuilt after a restart and rolled back with the weights, so an edit after a
/// rollback (or after kill -9) is bit-for-bit the edit a daemon that never saw the undone edits makes.
@Suite(.serialized) struct AlphaEditDaemonTests {
    static func update(_ name: String, _ label: String, subject: String, prompt: String = "{} is in", target: String) -> Data {
        DaemonHarness.factUpdate(id: tid(name), subject: subject, prompt: prompt, targetNew: target, extra: ["method": label])
    }

    func edit(_ h: DaemonHarness, _ payload: Data, _ id: String) throws -> JSONValue {
        try h.publish(payload)
        return try #require(try h.results(for: [id])[id], "no result for \(id); daemon log:\n\(h.tail())")
    }

    @Test(arguments: [EditMethod.alphaedit, .encore])
    func stateFollowsSnapshotsRollbacksAndRestarts(_ method: EditMethod) throws {
        let p = method.rawValue, label = method.name
        let a = Self.update("\(p)-a", label, subject: "Paris", target: "Rome")
        let b = Self.update("\(p)-b", label, subject: "Rome", target: "Paris")
        let c = Self.update("\(p)-c", label, subject: "Paris", prompt: "The city of {} lies in", target: "Italy")
        let d = Self.update("\(p)-d", label, subject: "Rome", prompt: "{} is the capital of", target: "France")
        let bootstrap = try SharedBroker.get().bootstrapServers
        let x = try DaemonHarness(bootstrap: bootstrap, label: "\(p)-x")
        defer { x.cleanup() }
        x.method = p
        try x.start()
        let ra = try edit(x, a, tid("\(p)-a"))
        #expect(ra["method"]?.stringValue == label && ra["status"]?.stringValue == "applied", "\(ra)")
        #expect(try DaemonTests.schema("edit-result.schema.json").validate(ra).valid)
        _ = try edit(x, b, tid("\(p)-b"))
        let store = try x.store()
        let r1 = try store.record(1)
        #expect(r1.method == label && r1.factors.count == 2 && r1.factors.allSatisfy { $0.rank == 1 })
        #expect(r1.state.map(\.layer) == [0, 1] && r1.state.allSatisfy { $0.name == "\(p).keys" && $0.rows == 1 })
        // Undo B, then edit C: the accumulated keys must be A's only.
        try x.publish(DaemonHarness.rollback(to: 1, id: tid("\(p)-rb")), topic: x.topics.control, cloudEvent: EventTypes.control)
        #expect(try x.results(for: [tid("\(p)-rb")])[tid("\(p)-rb")]?["head"]?.intValue == 1)
        _ = try edit(x, c, tid("\(p)-c"))
        // A crash and a restart: the state is rebuilt from the snapshots of the head's lineage.
        x.kill9()
        try x.start()
        #expect(x.tail(60).contains("accumulated the keys of 2 edit(s) up to snapshot 3"), "\(x.tail())")
        _ = try edit(x, d, tid("\(p)-d"))
        let sx = try x.store()
        #expect(try sx.record(3).parent == 1 && sx.record(4).parent == 3)
        #expect(x.terminate() == 0, "\(x.tail())")

        // A daemon that only ever saw A, C, D.
        let y = try DaemonHarness(bootstrap: bootstrap, label: "\(p)-y")
        defer { y.cleanup() }
        y.method = p
        try y.start()
        for (e, id) in [(a, tid("\(p)-a")), (c, tid("\(p)-c")), (d, tid("\(p)-d"))] { _ = try edit(y, e, id) }
        let sy = try y.store()
        #expect(try sx.record(3).hashAfter == sy.record(2).hashAfter, "the edit after the rollback used B's keys")
        #expect(try sx.record(4).hashAfter == sy.record(3).hashAfter, "the edit after the restart used other keys")
        // And one that saw A, B, C: B's keys change C's update, so the checks above can fail.
        #expect(y.terminate() == 0, "\(y.tail())")
        let z = try DaemonHarness(bootstrap: bootstrap, label: "\(p)-z")
        defer { z.cleanup() }
        z.method = p
        try z.start()
        for (e, id) in [(a, tid("\(p)-a")), (b, tid("\(p)-b")), (c, tid("\(p)-c"))] { _ = try edit(z, e, id) }
        let sz = try z.store()
        #expect(try sz.record(3).factors != sx.record(3).factors, "\(label)'s accumulated keys must shape the update")
        #expect(z.terminate() == 0, "\(z.tail())")
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
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
