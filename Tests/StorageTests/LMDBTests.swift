import Foundation
import Storage
import Testing

@Suite struct LMDBTests {
    func tempDir() throws -> String {
        let p = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-lmdb-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    @Test func putGetDeleteAcrossReopen() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let env = try LMDBEnvironment(path: dir, mapSize: 1 << 20)
            let db = try env.database("snapshots")
            try env.write { t in
                try t.put(db, key: Array("a".utf8), value: [1, 2, 3])
                try t.put(db, key: Array("b".utf8), value: [4])
            }
            #expect(try env.read { try $0.get(db, key: Array("a".utf8)) } == [1, 2, 3])
            #expect(try env.write { try $0.delete(db, key: Array("b".utf8)) })
            #expect(try env.write { try $0.delete(db, key: Array("zz".utf8)) } == false)
        }
        let env = try LMDBEnvironment(path: dir, mapSize: 1 << 20)
        let db = try env.database("snapshots")
        #expect(try env.read { try $0.entries(db) }.map { $0.key } == [Array("a".utf8)])
        #expect(try env.read { try $0.get(db, key: Array("b".utf8)) } == nil)
    }

    @Test func abortedTransactionLeavesNothing() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = try LMDBEnvironment(path: dir, mapSize: 1 << 20)
        let db = try env.database("journal")
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try env.write { t in
                try t.put(db, key: [1], value: [1])
                throw Boom()
            }
        }
        #expect(try env.read { try $0.get(db, key: [1]) } == nil)
    }

    @Test func mapFullIsRecoverable() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = try LMDBEnvironment(path: dir, mapSize: 64 * 4096)
        let db = try env.database("big")
        let value = [UInt8](repeating: 7, count: 1 << 20)
        var sawMapFull = false
        do { try env.write { try $0.put(db, key: [1], value: value) } } catch let e as StorageError {
            sawMapFull = e.isMapFull
        }
        #expect(sawMapFull)
        try env.setMapSize(8 << 20)
        try env.write { try $0.put(db, key: [1], value: value) }
        #expect(try env.read { try $0.get(db, key: [1]) }?.count == value.count)
        #expect(LMDB.version.contains("LMDB"))
    }

    @Test func duplicateKeyWithNoOverwriteIsAnError() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = try LMDBEnvironment(path: dir, mapSize: 1 << 20)
        let db = try env.database("ids")
        try env.write { try $0.put(db, key: [9], value: [1], noOverwrite: true) }
        #expect(throws: StorageError.self) { try env.write { try $0.put(db, key: [9], value: [2], noOverwrite: true) } }
        #expect(try env.read { try $0.get(db, key: [9]) } == [1])
    }
}
