import CLMDB
import Foundation

/// An LMDB failure with its return code and LMDB's message.
public struct StorageError: Error, CustomStringConvertible, Equatable, Sendable {
    public var code: Int32
    public var operation: String
    public var message: String
    public init(code: Int32, operation: String) {
        self.code = code
        self.operation = operation
        self.message = String(cString: mdb_strerror(code))
    }
    public var isMapFull: Bool { code == MDB_MAP_FULL }
    public var isNotFound: Bool { code == MDB_NOTFOUND }
    public var description: String { "lmdb \(operation): \(message) (\(code))" }
}

@inline(__always) func check(_ rc: Int32, _ op: String) throws {
    if rc != 0 { throw StorageError(code: rc, operation: op) }
}

/// An LMDB environment (one directory), opened with MDB_NOTLS so transactions are not tied to threads.
///
/// Write transactions are serialized by LMDB. Do not hold a read transaction across writes: the
/// file cannot reuse pages a reader still sees, so it grows.
public final class LMDBEnvironment: @unchecked Sendable {  // an MDB_NOTLS environment may be used from any thread (LMDB serializes writers); `databases` is guarded by `lock`
    let env: OpaquePointer
    public let path: String
    private var databases: [String: MDB_dbi] = [:]
    private let lock = NSLock()

    /// Opens (creating if needed) the environment at `path` (a directory).
    /// An existing data file is checked first (`LMDBFileCheck`): a damaged one throws
    /// `LMDBFileDamage` before LMDB maps it.
    public init(path: String, mapSize: Int = 1 << 30, maxDatabases: Int = 16) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try LMDBFileCheck.verify(directory: path)
        var e: OpaquePointer?
        try check(mdb_env_create(&e), "env_create")
        guard let e else { throw StorageError(code: EINVAL, operation: "env_create") }
        do {
            try check(mdb_env_set_mapsize(e, mapSize), "env_set_mapsize")
            try check(mdb_env_set_maxdbs(e, MDB_dbi(maxDatabases)), "env_set_maxdbs")
            try check(mdb_env_open(e, path, UInt32(MDB_NOTLS), 0o644), "env_open \(path)")
        } catch {
            mdb_env_close(e)
            throw error
        }
        env = e
        self.path = path
    }

    deinit { mdb_env_close(env) }

    /// Current map size in bytes.
    public var mapSize: Int {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        return info.me_mapsize
    }

    /// The data file as LMDB sees it: page size, last used page, last committed transaction.
    public var fileInfo: (pageSize: Int, lastPage: UInt64, lastTransaction: UInt64) {
        var info = MDB_envinfo(), stat = MDB_stat()
        mdb_env_info(env, &info)
        mdb_env_stat(env, &stat)
        return (Int(stat.ms_psize), UInt64(info.me_last_pgno), UInt64(info.me_last_txnid))
    }

    /// Grows the map (after MDB_MAP_FULL). No transaction may be active in this process.
    public func setMapSize(_ bytes: Int) throws { try check(mdb_env_set_mapsize(env, bytes), "env_set_mapsize") }

    /// Flushes to disk (a no-op for the default durable mode, where every commit syncs).
    public func sync() throws { try check(mdb_env_sync(env, 1), "env_sync") }

    /// Opens or creates a named database.
    public func database(_ name: String) throws -> MDB_dbi {
        lock.lock(); defer { lock.unlock() }
        if let d = databases[name] { return d }
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn), "txn_begin")
        var dbi = MDB_dbi()
        let rc = mdb_dbi_open(txn, name, UInt32(MDB_CREATE), &dbi)
        if rc != 0 { mdb_txn_abort(txn); throw StorageError(code: rc, operation: "dbi_open \(name)") }
        try check(mdb_txn_commit(txn), "txn_commit")
        databases[name] = dbi
        return dbi
    }

    /// Runs `body` in a write transaction; commits if it returns, aborts if it throws.
    public func write<R>(_ body: (LMDBTransaction) throws -> R) throws -> R {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn), "txn_begin")
        let t = LMDBTransaction(txn: txn!)
        do {
            let r = try body(t)
            try check(mdb_txn_commit(txn), "txn_commit")
            return r
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
    }

    /// Runs `body` in a read-only transaction.
    public func read<R>(_ body: (LMDBTransaction) throws -> R) throws -> R {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "txn_begin")
        defer { mdb_txn_abort(txn) }
        return try body(LMDBTransaction(txn: txn!))
    }
}

/// A transaction handle, valid only inside `write` / `read`.
public struct LMDBTransaction {
    let txn: OpaquePointer

    public func put(_ db: MDB_dbi, key: [UInt8], value: [UInt8], noOverwrite: Bool = false) throws {
        var k = key, v = value
        try k.withUnsafeMutableBytes { kb in
            try v.withUnsafeMutableBytes { vb in
                var mk = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
                var mv = MDB_val(mv_size: vb.count, mv_data: vb.baseAddress)
                try check(mdb_put(txn, db, &mk, &mv, noOverwrite ? UInt32(MDB_NOOVERWRITE) : 0), "put")
            }
        }
    }

    /// The value for `key`, or nil.
    public func get(_ db: MDB_dbi, key: [UInt8]) throws -> [UInt8]? {
        var k = key
        return try k.withUnsafeMutableBytes { kb in
            var mk = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
            var mv = MDB_val()
            let rc = mdb_get(txn, db, &mk, &mv)
            if rc == MDB_NOTFOUND { return nil }
            try check(rc, "get")
            return Array(UnsafeRawBufferPointer(start: mv.mv_data, count: mv.mv_size))
        }
    }

    /// Deletes `key`; returns false if it was absent.
    @discardableResult
    public func delete(_ db: MDB_dbi, key: [UInt8]) throws -> Bool {
        var k = key
        return try k.withUnsafeMutableBytes { kb in
            var mk = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
            let rc = mdb_del(txn, db, &mk, nil)
            if rc == MDB_NOTFOUND { return false }
            try check(rc, "del")
            return true
        }
    }

    /// All (key, value) pairs in key order.
    public func entries(_ db: MDB_dbi) throws -> [(key: [UInt8], value: [UInt8])] {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, db, &cursor), "cursor_open")
        defer { mdb_cursor_close(cursor) }
        var out: [([UInt8], [UInt8])] = []
        var k = MDB_val(), v = MDB_val()
        var op = MDB_FIRST
        while true {
            let rc = mdb_cursor_get(cursor, &k, &v, op)
            if rc == MDB_NOTFOUND { break }
            try check(rc, "cursor_get")
            out.append((Array(UnsafeRawBufferPointer(start: k.mv_data, count: k.mv_size)),
                        Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))))
            op = MDB_NEXT
        }
        return out
    }
}

/// A data file LMDB must not open: it would refuse it, or map it and fault on a page past its end.
public struct LMDBFileDamage: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var size: UInt64
    /// The size the newest intact meta page needs (its last page's end), when a meta page was read.
    public var requiredSize: UInt64?
    public var reason: String

    public var description: String {
        "\(file) is damaged: \(reason); the file is \(size) bytes" + (requiredSize.map { ", its meta page needs \($0)" } ?? "")
    }
}

/// Checks an LMDB data file with plain reads before LMDB maps it.
///
/// LMDB maps the whole file and trusts its newest meta page: in a file cut short (a full disk, a
/// partial copy) the pages that meta page points at lie past the end, and the first read of one
/// raises SIGBUS, which no error handling can catch. LMDB itself opens such a file without
/// complaint. The check reads the two meta pages (page 0 at offset 0, page 1 at offset page size)
/// as LMDB does, takes the one with the larger transaction id, and requires the file to reach the
/// end of that meta page's last page. LMDB refuses a file with either meta page damaged
/// (MDB_INVALID), so that is reported here too, with the file's name.
///
/// Layout (64-bit, little-endian): a 16-byte page header (mp_pgno u64, mp_pad u16, mp_flags u16,
/// mp_lower u16, mp_upper u16), then MDB_meta: mm_magic u32 at 16, mm_version u32 at 20,
/// mm_address at 24, mm_mapsize at 32, mm_dbs[2] (48 bytes each; the free DB's md_pad, at 40, is
/// the page size) at 40, mm_last_pg u64 at 136, mm_txnid u64 at 144.
public enum LMDBFileCheck {
    /// The meta page LMDB would use.
    public struct Meta: Equatable, Sendable {
        /// 0 or 1.
        public var page: Int
        public var pageSize: Int
        public var lastPage: UInt64
        public var txnid: UInt64
        /// The bytes the file needs: pages 0 through `lastPage`.
        public var requiredSize: UInt64
    }

    static let magic: UInt32 = 0xBEEF_C0DE
    /// P_META in mp_flags.
    static let metaFlag: UInt16 = 0x08
    /// What LMDB reads of a meta page: the page header and MDB_meta.
    static let metaBytes = 152

    /// Checks `data.mdb` in the environment directory `directory`.
    @discardableResult
    public static func verify(directory: String) throws -> Meta? {
        try verify(file: URL(fileURLWithPath: directory).appendingPathComponent("data.mdb").path)
    }

    /// The meta page LMDB would use, or nil for a missing or empty file (a new environment).
    /// Throws `LMDBFileDamage` for a file LMDB must not open, `StorageError` when it cannot be read.
    @discardableResult
    public static func verify(file: String) throws -> Meta? {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw StorageError(code: errno, operation: "open \(file)")
        }
        defer { close(fd) }
        func read(at offset: Int) throws -> [UInt8]? {
            var b = [UInt8](repeating: 0, count: metaBytes)
            let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, metaBytes, off_t(offset)) }
            if n < 0 { throw StorageError(code: errno, operation: "read \(file)") }
            return n == metaBytes ? b : nil
        }
        // The meta pages first, then the size: a writer extends the file before it writes the meta
        // page that points into the extension, so a store in use is never mistaken for a short one.
        let page0 = try read(at: 0)
        let meta0 = page0.flatMap { parse($0, page: 0) }
        let page1 = try meta0.flatMap { m in validPageSize(m.pageSize) ? try read(at: m.pageSize) : nil }
        let meta1 = page1.flatMap { parse($0, page: 1) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StorageError(code: errno, operation: "stat \(file)") }
        let size = UInt64(st.st_size)
        if size == 0 { return nil }
        func damaged(_ reason: String, needs: UInt64? = nil) -> LMDBFileDamage {
            LMDBFileDamage(file: file, size: size, requiredSize: needs, reason: reason)
        }

        guard let page0 else { throw damaged("it is shorter than an LMDB meta page (\(metaBytes) bytes)") }
        guard let meta0 else { throw damaged("meta page 0 is not an LMDB meta page (\(describe(page0)))") }
        guard validPageSize(meta0.pageSize) else {
            throw damaged("meta page 0 gives a page size of \(meta0.pageSize), not a power of two from 512 to 65536")
        }
        let twoPages = 2 * UInt64(meta0.pageSize)
        guard let page1 else { throw damaged("it ends before meta page 1 at offset \(meta0.pageSize)", needs: twoPages) }
        guard let meta1 else { throw damaged("meta page 1 is not an LMDB meta page (\(describe(page1)))", needs: max(twoPages, meta0.requiredSize)) }
        guard meta1.pageSize == meta0.pageSize else {
            throw damaged("the meta pages give different page sizes (\(meta0.pageSize) and \(meta1.pageSize))")
        }
        let newest = meta1.txnid > meta0.txnid ? meta1 : meta0
        guard newest.lastPage >= 1, newest.requiredSize > 0 else {
            throw damaged("meta page \(newest.page) (transaction \(newest.txnid)) gives an impossible last page \(newest.lastPage)")
        }
        guard size >= newest.requiredSize else {
            throw damaged("it was cut short: meta page \(newest.page) (transaction \(newest.txnid)) uses pages 0...\(newest.lastPage) "
                          + "of \(newest.pageSize) bytes", needs: newest.requiredSize)
        }
        return newest
    }

    /// The meta in a page's first bytes, or nil when the page is not a meta page.
    static func parse(_ b: [UInt8], page: Int) -> Meta? {
        guard u16(b, 10) & metaFlag != 0, u32(b, 16) == magic else { return nil }
        let pageSize = Int(u32(b, 40)), lastPage = u64(b, 136)
        let (pages, o1) = lastPage.addingReportingOverflow(1)
        let (required, o2) = pages.multipliedReportingOverflow(by: UInt64(pageSize))
        return Meta(page: page, pageSize: pageSize, lastPage: lastPage, txnid: u64(b, 144), requiredSize: o1 || o2 ? 0 : required)
    }

    static func validPageSize(_ n: Int) -> Bool { (512...65536).contains(n) && n & (n - 1) == 0 }

    static func describe(_ b: [UInt8]) -> String {
        "magic 0x" + String(u32(b, 16), radix: 16) + ", flags 0x" + String(u16(b, 10), radix: 16)
    }

    static func u16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[i + $1]) << (8 * $1) } }
    static func u64(_ b: [UInt8], _ i: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * $1) } }
}

public enum LMDB {
    /// The linked LMDB version string.
    public static var version: String { String(cString: mdb_version(nil, nil, nil)) }
}
