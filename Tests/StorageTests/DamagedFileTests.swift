import Foundation
import Storage
import Testing

/// A damaged data.mdb is refused before LMDB maps it: LMDB opens a file cut short without complaint
/// and raises SIGBUS at the first read of a page past its end.
@Suite struct DamagedFileTests {
    /// A store with three ROME-sized snapshots (overflow pages, so the file spans many pages), closed.
    static func writtenStore() throws -> (dir: String, file: String) {
        let dir = try SnapshotStoreTests.temporaryDirectory()
        let store = try SnapshotStore(path: dir)
        try store.attachBase(modelHash: "base", modelName: "tiny")
        var before = "base"
        for i in 1...3 {
            try store.commitEdit(SnapshotStoreTests.draft("e\(i)", before: before, after: "h\(i)"), expectedHead: UInt64(i - 1))
            before = "h\(i)"
        }
        return (dir, dir + "/data.mdb")
    }

    static func size(_ file: String) throws -> UInt64 {
        try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64)
    }

    static func overwrite(_ file: String, at offset: UInt64, with bytes: [UInt8]) throws {
        let h = try #require(FileHandle(forUpdatingAtPath: file))
        defer { try? h.close() }
        try h.seek(toOffset: offset)
        h.write(Data(bytes))
    }

    static func damage(_ error: any Error) -> SnapshotStoreError? {
        (error as? SnapshotStoreError).flatMap { $0.code == .damaged ? $0 : nil }
    }

    /// The offsets the check reads agree with what LMDB reports for the same file.
    @Test func checkReadsTheMetaPageLMDBUses() throws {
        let dir = try SnapshotStoreTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let info: (pageSize: Int, lastPage: UInt64, lastTransaction: UInt64)
        do {
            let env = try LMDBEnvironment(path: dir, mapSize: 1 << 22)
            let db = try env.database("snapshots")
            for i in 0..<40 as Range<UInt8> { try env.write { try $0.put(db, key: [i], value: [UInt8](repeating: i, count: 3000)) } }
            info = env.fileInfo
        }
        let meta = try #require(try LMDBFileCheck.verify(directory: dir))
        #expect(meta.pageSize == info.pageSize && meta.lastPage == info.lastPage && meta.txnid == info.lastTransaction)
        #expect(meta.txnid == 41 && meta.lastPage > 40)
        #expect(meta.requiredSize == (info.lastPage + 1) * UInt64(info.pageSize))
        #expect(try meta.requiredSize <= Self.size(dir + "/data.mdb"))
    }

    @Test func healthyMissingAndEmptyFilesOpen() throws {
        let (dir, file) = try Self.writtenStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let meta = try #require(try LMDBFileCheck.verify(file: file))
        #expect(try meta.requiredSize == Self.size(file))
        let store = try SnapshotStore(path: dir)
        #expect(try store.head() == 3 && store.records().map(\.hashAfter) == ["h1", "h2", "h3"])

        let fresh = try SnapshotStoreTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: fresh) }
        #expect(try LMDBFileCheck.verify(directory: fresh) == nil)
        #expect(FileManager.default.createFile(atPath: fresh + "/data.mdb", contents: Data()))
        #expect(try LMDBFileCheck.verify(directory: fresh) == nil)
        let empty = try SnapshotStore(path: fresh)
        try empty.attachBase(modelHash: "base", modelName: "tiny")
        #expect(try empty.head() == 0 && empty.baseHash() == "base")
    }

    @Test func fileTruncatedToHalfIsRefused() throws {
        let (dir, file) = try Self.writtenStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let full = try Self.size(file)
        let half = full / 2
        let h = try #require(FileHandle(forWritingAtPath: file))
        try h.truncate(atOffset: half)
        try h.close()

        #expect { try LMDBEnvironment(path: dir) } throws: { e in
            guard let d = e as? LMDBFileDamage else { return false }
            return d.size == half && d.requiredSize == full && d.file == file
        }
        #expect { try SnapshotStore(path: dir) } throws: { e in
            guard let d = Self.damage(e) else { return false }
            return d.message.contains(file) && d.message.contains("\(half) bytes") && d.message.contains("needs \(full)")
                && d.message.contains("backup") && d.message.contains("move it aside")
        }
        // Shorter than a meta page.
        let h2 = try #require(FileHandle(forWritingAtPath: file))
        try h2.truncate(atOffset: 100)
        try h2.close()
        #expect { try SnapshotStore(path: dir) } throws: { Self.damage($0)?.message.contains("shorter than an LMDB meta page") == true }
    }

    @Test func overwrittenMetaMagicIsRefused() throws {
        let (dir, file) = try Self.writtenStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pageSize = try #require(try LMDBFileCheck.verify(file: file)).pageSize
        // One meta page: LMDB itself refuses the file (MDB_INVALID); the check names the page.
        try Self.overwrite(file, at: UInt64(pageSize) + 16, with: [0, 0, 0, 0])
        #expect { try SnapshotStore(path: dir) } throws: { Self.damage($0)?.message.contains("meta page 1 is not an LMDB meta page") == true }
        try Self.overwrite(file, at: 16, with: [0xDE, 0xAD, 0xBE, 0xEF])
        #expect { try SnapshotStore(path: dir) } throws: { e in
            guard let d = Self.damage(e) else { return false }
            return d.message.contains("meta page 0 is not an LMDB meta page (magic 0xefbeadde") && d.message.contains(file)
        }
        #expect(throws: LMDBFileDamage.self) { try LMDBFileCheck.verify(directory: dir) }
    }

    @Test func implausiblePageSizeIsRefused() throws {
        let (dir, file) = try Self.writtenStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.overwrite(file, at: 40, with: [0x00, 0x30, 0, 0])
        #expect { try SnapshotStore(path: dir) } throws: { Self.damage($0)?.message.contains("page size of 12288") == true }
    }
}
