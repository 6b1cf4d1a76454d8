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
public final class LMDBEnvironment: @unchecked Sendable {
    let env: OpaquePointer
    public let path: String
    private var databases: [String: MDB_dbi] = [:]
    private let lock = NSLock()

    /// Opens (creating if needed) the environment at `path` (a directory).
    public init(path: String, mapSize: Int = 1 << 30, maxDatabases: Int = 16) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
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

public enum LMDB {
    /// The linked LMDB version string.
    public static var version: String { String(cString: mdb_version(nil, nil, nil)) }
}
