import Editing
import Foundation
import ModelRuntime
import Storage
import TestSupport
import Testing

/// The verbs that open a snapshot store, as processes, on a damaged data.mdb and on a corrupt record.
/// No broker: the store is opened before the daemon connects to Kafka.
@Suite(.serialized) struct DamagedStoreTests {
    /// A harness whose state directory holds a store for its model with `count` snapshots.
    static func harness(_ label: String, snapshots count: Int) throws -> (DaemonHarness, lmdb: URL) {
        let h = try DaemonHarness(bootstrap: "127.0.0.1:9", label: label)
        let base = try ModelLoader.load(path: h.modelPath).weightHash
        let lmdb = EditState(directory: h.stateDir, baseHash: base).snapshotStore
        let store = try SnapshotStore(path: lmdb.path)
        try store.attachBase(modelHash: base, modelName: DaemonHarness.modelName)
        var before = base
        for i in 1...count {
            let d = SnapshotDraft(eventId: "e\(i)", source: nil, method: "ROME", hyperparameters: "{}", hashBefore: before, hashAfter: "h\(i)",
                                  blas: BLASInfo(library: "test", core: "test", threads: 1), factors: [])
            try store.commitEdit(d, expectedHead: UInt64(i - 1))
            before = "h\(i)"
        }
        return (h, lmdb)
    }

    @Test func aDataFileCutShortIsRefusedByEveryVerbWithExitOne() throws {
        let (h, lmdb) = try Self.harness("damaged", snapshots: 40)
        defer { h.cleanup() }
        let file = lmdb.appendingPathComponent("data.mdb").path
        let size = try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64)
        let handle = try #require(FileHandle(forWritingAtPath: file))
        try handle.truncate(atOffset: size / 2)
        try handle.close()

        let (listed, listing) = try h.mesa(["snapshots", "--state-dir", h.stateDir.path])
        #expect(listed == 1 && listing.contains("error: snapshot store (damaged): \(file) is damaged"), "\(listing)")
        let (replayed, replay) = try h.mesa(["replay", "--verify", "--model", h.modelPath, "--state-dir", h.stateDir.path,
                                             "--report", h.dir.appendingPathComponent("audit.json").path])
        #expect(replayed == 1 && replay.contains("\(file) is damaged") && replay.contains("needs \(size)"), "\(replay)")
        #expect { try h.start(timeout: 120) } throws: { e in
            let text = "\(e)"
            return text.contains("mesa serve exited with 1") && text.contains("\(file) is damaged")
        }
    }

    @Test func aCorruptRecordIsListedAndTheListingExitsTwo() throws {
        let (h, lmdb) = try Self.harness("corrupt", snapshots: 3)
        defer { h.cleanup() }
        do {
            let store = try SnapshotStore(path: lmdb.path)
            let db = try store.environment.database("snapshots")
            try store.environment.write { try $0.put(db, key: [0, 0, 0, 0, 0, 0, 0, 2], value: Array("garbage".utf8)) }
        }
        let (status, out) = try h.mesa(["snapshots", "--state-dir", h.stateDir.path])
        let lines = out.split(separator: "\n").map(String.init)
        #expect(status == 2, "\(out)")
        #expect(lines.contains { $0.hasPrefix("      1      0  e1 ") } && lines.contains { $0.hasPrefix("*     3      2  e3 ") }, "\(out)")
        #expect(lines.contains("      2      ?  CORRUPT  snapshot 2: not a snapshot record"), "\(out)")
        #expect(lines.contains("error: 1 corrupt snapshot record(s), listed as CORRUPT: they are refused, never used (ops/runbooks/replay.md)"))

        let (jsonStatus, json) = try h.mesa(["snapshots", "--state-dir", h.stateDir.path, "--json"])
        let line = try #require(json.split(separator: "\n").first { $0.hasPrefix("{") })
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(jsonStatus == 2)
        #expect((doc["snapshots"] as? [[String: Any]])?.compactMap { $0["seq"] as? Int } == [1, 3])
        let corrupt = try #require(doc["corrupt"] as? [[String: Any]])
        #expect(corrupt.count == 1 && corrupt.first?["seq"] as? Int == 2 && (corrupt.first?["error"] as? String)?.contains("not a snapshot record") == true)
    }
}
