import CLMDB
import Foundation
import Tensor

/// A failure of the snapshot store, with a code a caller can act on.
public struct SnapshotStoreError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        /// The store belongs to another base model.
        case baseMismatch
        /// No snapshot with that sequence number.
        case notFound
        /// A record failed its checksum or does not parse: it is refused, never used.
        case corrupted
        /// The event id is already recorded (a redelivery).
        case duplicateEvent
        /// The store has no base yet, or an argument does not fit the store.
        case state
        /// The store's data file is damaged (cut short, or its meta pages are unreadable): the store
        /// is not opened, so LMDB never maps it.
        case damaged
    }

    public var code: Code
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }
    public var description: String { "snapshot store (\(code.rawValue)): \(message)" }
    /// Equal when the code and message are: the cause is not Equatable, and the message quotes it.
    public static func == (a: SnapshotStoreError, b: SnapshotStoreError) -> Bool { a.code == b.code && a.message == b.message }
}

/// Where an event came from on the log.
public struct EventSource: Codable, Sendable, Equatable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}

/// The BLAS configuration an edit was computed with: results are bitwise reproducible only for the
/// same library version, core type and thread count.
public struct BLASInfo: Codable, Sendable, Equatable {
    public var library: String
    public var core: String
    public var threads: Int
    public init(library: String, core: String, threads: Int) {
        self.library = library
        self.core = core
        self.threads = threads
    }
}

/// An event edited together with a snapshot's first event (a batch of consecutive fact updates
/// solved jointly), with its own result document.
public struct BatchMember: Codable, Sendable, Equatable {
    public var eventId: String
    public var source: EventSource?
    /// The event's result document as published (JSON text); empty in a draft, filled at commit.
    public var result: String
    public init(eventId: String, source: EventSource?, result: String = "") {
        self.eventId = eventId
        self.source = source
        self.result = result
    }
}

/// What the caller supplies for one applied edit; the store assigns the sequence number and parent.
public struct SnapshotDraft: Sendable {
    public var eventId: String
    public var source: EventSource?
    public var method: String
    /// The effective hyperparameters, as JSON text.
    public var hyperparameters: String
    public var hashBefore: String
    public var hashAfter: String
    public var blas: BLASInfo
    public var factors: [LowRankUpdate]
    /// Method state the edit adds (AlphaEdit's keys), replayed with the factors.
    public var state: [StateBlock]
    /// The other events of a batch edit, after `eventId` in log order (empty for a single edit).
    public var batch: [BatchMember]

    public init(eventId: String, source: EventSource?, method: String, hyperparameters: String,
                hashBefore: String, hashAfter: String, blas: BLASInfo, factors: [LowRankUpdate], state: [StateBlock] = [],
                batch: [BatchMember] = []) {
        self.eventId = eventId
        self.source = source
        self.method = method
        self.hyperparameters = hyperparameters
        self.hashBefore = hashBefore
        self.hashAfter = hashAfter
        self.blas = blas
        self.factors = factors
        self.state = state
        self.batch = batch
    }

    /// Every event the edit applies, `eventId` first.
    public var eventIds: [String] { [eventId] + batch.map(\.eventId) }
}

/// A stored snapshot: the weights after edit `seq`, reached from snapshot `parent` by `factors`.
public struct SnapshotRecord: Sendable, Equatable {
    public var seq: UInt64
    /// The snapshot the edit was applied on (0 = the base model).
    public var parent: UInt64
    public var eventId: String
    public var source: EventSource?
    public var method: String
    public var hyperparameters: String
    /// The edit's result document (metrics, timings) as published, JSON text: a redelivered event
    /// republishes it.
    public var result: String
    public var hashBefore: String
    public var hashAfter: String
    public var blas: BLASInfo
    public var createdAt: String
    public var factors: [LowRankUpdate]
    /// Method state the edit added (empty for ROME and MEMIT).
    public var state: [StateBlock] = []
    /// The other events of a batch edit, with their result documents (empty for a single edit).
    public var batch: [BatchMember] = []
    /// Size of the stored record in bytes.
    public var storedBytes: Int

    /// Every event the snapshot applies, `eventId` first.
    public var eventIds: [String] { [eventId] + batch.map(\.eventId) }

    /// The result document recorded for `id`, one of `eventIds`.
    public func result(ofEvent id: String) -> String? {
        id == eventId ? result : batch.first { $0.eventId == id }?.result
    }
}

/// One journal entry: every change of the head (an edit, a rollback) in order.
public struct JournalEntry: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case base, edit, rollback, label }
    public var id: UInt64
    public var kind: Kind
    public var time: String
    public var headBefore: UInt64
    public var headAfter: UInt64
    /// The weight hash at `headAfter`.
    public var hash: String
    /// The fact update or control command that caused it.
    public var eventId: String?
    /// A `label` entry's text.
    public var label: String?
}

/// The durable edit history of one model, in one LMDB environment:
/// - `meta`: the base model's hash and name, the head (the snapshot the live weights equal), counters;
/// - `snapshots`: sequence number (big-endian u64) → a checksummed record with the compact delta;
/// - `events`: event id → what it produced (`s` + seq for an edit, `j` + journal id for a command),
///   so a redelivered event is recognized and never applied twice;
/// - `journal`: every head change (edits and rollbacks) in order.
///
/// Every edit is one write transaction: record, event index, head and journal entry commit together or
/// not at all. The live weights at snapshot N are the base weights plus the factors of N's ancestry
/// (parent links, so an edit after a rollback starts a new branch), applied from the root down.
public final class SnapshotStore: Sendable {
    public let environment: LMDBEnvironment
    let meta: MDB_dbi, snapshots: MDB_dbi, events: MDB_dbi, journalDB: MDB_dbi

    static let magic = Array("MESASNP1".utf8)

    /// Opens (creating if needed) the store in directory `path`. Throws `damaged` when its data file
    /// is damaged (`LMDBFileCheck`).
    public init(path: String, mapSize: Int = 1 << 30) throws {
        do {
            environment = try LMDBEnvironment(path: path, mapSize: mapSize)
        } catch let damage as LMDBFileDamage {
            throw SnapshotStoreError(.damaged, """
                \(damage). The snapshot store is not opened. Restore \(path) from a backup \
                (one that passes `mesa replay --verify`), or move it aside to start an empty history: \
                the edited weights can then be rebuilt by replaying the fact updates from the event log.
                """)
        }
        meta = try environment.database("meta")
        snapshots = try environment.database("snapshots")
        events = try environment.database("events")
        journalDB = try environment.database("journal")
    }

    // MARK: base and head

    /// Records the base model on first use; afterwards checks that `modelHash` is the recorded base.
    public func attachBase(modelHash: String, modelName: String) throws {
        try environment.write { t in
            if let existing = try t.get(meta, key: Self.key("base_hash")) {
                let base = String(decoding: existing, as: UTF8.self)
                guard base == modelHash else {
                    throw SnapshotStoreError(.baseMismatch, "this store belongs to base model \(base), not \(modelHash)")
                }
                return
            }
            try t.put(meta, key: Self.key("base_hash"), value: Array(modelHash.utf8))
            try t.put(meta, key: Self.key("model_name"), value: Array(modelName.utf8))
            try t.put(meta, key: Self.key("head"), value: Self.be(0))
            try journal(t, kind: .base, headBefore: 0, headAfter: 0, hash: modelHash, eventId: nil)
        }
    }

    /// The base model's weight hash, or nil before `attachBase`.
    public func baseHash() throws -> String? {
        try environment.read { t in try t.get(meta, key: Self.key("base_hash")).map { String(decoding: $0, as: UTF8.self) } }
    }

    public func modelName() throws -> String? {
        try environment.read { t in try t.get(meta, key: Self.key("model_name")).map { String(decoding: $0, as: UTF8.self) } }
    }

    /// The snapshot the live weights equal (0 = the base model).
    public func head() throws -> UInt64 {
        try environment.read { t in try t.get(meta, key: Self.key("head")).map(Self.u64) ?? 0 }
    }

    /// The weight hash recorded for snapshot `seq` (the base hash for 0).
    public func hash(at seq: UInt64) throws -> String {
        if seq == 0 {
            guard let b = try baseHash() else { throw SnapshotStoreError(.state, "the store has no base model") }
            return b
        }
        return try record(seq).hashAfter
    }

    // MARK: events

    /// What an event id already produced: an edit's snapshot, or a command's journal entry.
    public enum EventOutcome: Equatable, Sendable {
        case snapshot(UInt64)
        case journal(UInt64)
    }

    public func outcome(ofEvent id: String) throws -> EventOutcome? {
        try environment.read { t in try t.get(events, key: Array(id.utf8)).flatMap(Self.decodeOutcome) }
    }

    // MARK: writes

    /// Stores an applied edit on top of the current head, in one transaction with its event index
    /// entry, the new head and a journal entry. Throws `duplicateEvent` (writing nothing) when an
    /// event id is already recorded, and `state` when the head moved since `hashBefore` was taken.
    /// `result` makes the result document for the assigned sequence number, inside the transaction.
    @discardableResult
    public func commitEdit(_ draft: SnapshotDraft, expectedHead: UInt64, result: (UInt64) throws -> String = { _ in "{}" }) throws -> SnapshotRecord {
        try commitEdit(draft, expectedHead: expectedHead, results: { seq in [try result(seq)] })
    }

    /// `commitEdit` for a batch edit: `results` makes one result document per event of
    /// `draft.eventIds`, in that order. Every event id is indexed to the one snapshot.
    ///
    /// A replica (`mesa follow`) gives the number the editor assigned as `seq` (it must not be below
    /// the next free one) and its position in the deltas topic as `meta`, written in the same transaction.
    @discardableResult
    public func commitEdit(_ draft: SnapshotDraft, expectedHead: UInt64, seq assigned: UInt64? = nil, meta extra: [String: [UInt8]] = [:],
                           results: (UInt64) throws -> [String]) throws -> SnapshotRecord {
        let ids = draft.eventIds
        guard Set(ids).count == ids.count else { throw SnapshotStoreError(.state, "a batch edit names an event twice: \(ids)") }
        return try environment.write { t in
            guard try t.get(meta, key: Self.key("base_hash")) != nil else { throw SnapshotStoreError(.state, "the store has no base model") }
            for id in ids where try t.get(events, key: Array(id.utf8)) != nil {
                throw SnapshotStoreError(.duplicateEvent, "event \(id) is already recorded")
            }
            let head = try t.get(meta, key: Self.key("head")).map(Self.u64) ?? 0
            guard head == expectedHead else {
                throw SnapshotStoreError(.state, "the head is \(head), the edit was computed on \(expectedHead)")
            }
            let next = try t.get(meta, key: Self.key("next_seq")).map(Self.u64) ?? 1
            if let assigned, assigned < next {
                throw SnapshotStoreError(.state, "snapshot \(assigned) is below the next free number \(next)")
            }
            let seq = assigned ?? next
            let docs = try results(seq)
            guard docs.count == ids.count else { throw SnapshotStoreError(.state, "\(docs.count) result documents for \(ids.count) events") }
            var batch = draft.batch
            for i in batch.indices { batch[i].result = docs[i + 1] }
            var rec = SnapshotRecord(seq: seq, parent: head, eventId: draft.eventId, source: draft.source, method: draft.method,
                                     hyperparameters: draft.hyperparameters, result: docs[0], hashBefore: draft.hashBefore,
                                     hashAfter: draft.hashAfter, blas: draft.blas, createdAt: Timestamp.now(), factors: draft.factors,
                                     state: draft.state, batch: batch, storedBytes: 0)
            let bytes = try Self.encode(rec)
            rec.storedBytes = bytes.count
            try t.put(snapshots, key: Self.be(seq), value: bytes, noOverwrite: true)
            for id in ids { try t.put(events, key: Array(id.utf8), value: [UInt8(ascii: "s")] + Self.be(seq)) }
            try t.put(meta, key: Self.key("next_seq"), value: Self.be(seq + 1))
            try t.put(meta, key: Self.key("head"), value: Self.be(seq))
            try journal(t, kind: .edit, headBefore: head, headAfter: seq, hash: draft.hashAfter, eventId: draft.eventId)
            for (k, v) in extra { try t.put(meta, key: Self.key(k), value: v) }
            return rec
        }
    }

    /// Moves the head to snapshot `seq` (0 = base) and journals it, indexing `commandId` so a
    /// redelivered command is recognized. The caller has already restored the weights and checked
    /// their hash against `hash(at: seq)`. `meta` is written in the same transaction (a replica's
    /// position in the deltas topic).
    @discardableResult
    public func commitRollback(to seq: UInt64, commandId: String?, meta extra: [String: [UInt8]] = [:]) throws -> JournalEntry {
        let target = try hash(at: seq)
        return try environment.write { t in
            if let id = commandId, try t.get(events, key: Array(id.utf8)) != nil {
                throw SnapshotStoreError(.duplicateEvent, "command \(id) is already recorded")
            }
            let head = try t.get(meta, key: Self.key("head")).map(Self.u64) ?? 0
            try t.put(meta, key: Self.key("head"), value: Self.be(seq))
            let entry = try journal(t, kind: .rollback, headBefore: head, headAfter: seq, hash: target, eventId: commandId)
            if let id = commandId { try t.put(events, key: Array(id.utf8), value: [UInt8(ascii: "j")] + Self.be(entry.id)) }
            for (k, v) in extra { try t.put(meta, key: Self.key(k), value: v) }
            return entry
        }
    }

    /// A value written with a commit's `meta` (nil when none was).
    public func metaValue(_ key: String) throws -> [UInt8]? {
        try environment.read { t in try t.get(meta, key: Self.key(key)) }
    }

    /// Journals a label for the current head (the `snapshot` control command), indexing `commandId`.
    @discardableResult
    public func commitLabel(_ label: String, commandId: String?) throws -> JournalEntry {
        let seq = try head()
        let h = try hash(at: seq)
        return try environment.write { t in
            if let id = commandId, try t.get(events, key: Array(id.utf8)) != nil {
                throw SnapshotStoreError(.duplicateEvent, "command \(id) is already recorded")
            }
            let entry = try journal(t, kind: .label, headBefore: seq, headAfter: seq, hash: h, eventId: commandId, label: label)
            if let id = commandId { try t.put(events, key: Array(id.utf8), value: [UInt8(ascii: "j")] + Self.be(entry.id)) }
            return entry
        }
    }

    /// Journal entry `id`.
    public func journalEntry(_ id: UInt64) throws -> JournalEntry {
        guard let v = try environment.read({ t in try t.get(journalDB, key: Self.be(id)) }) else {
            throw SnapshotStoreError(.notFound, "no journal entry \(id)")
        }
        return try Self.decoder().decode(JournalEntry.self, from: Data(v))
    }

    // MARK: reads

    /// The record of snapshot `seq`, its checksum verified.
    public func record(_ seq: UInt64) throws -> SnapshotRecord {
        guard let bytes = try environment.read({ t in try t.get(snapshots, key: Self.be(seq)) }) else {
            throw SnapshotStoreError(.notFound, "no snapshot \(seq)")
        }
        return try Self.decode(bytes, seq: seq)
    }

    /// The sequence numbers of all stored snapshots, ascending (records not decoded or verified).
    public func sequenceNumbers() throws -> [UInt64] {
        try environment.read { t in try t.entries(snapshots) }.map { Self.u64($0.key) }
    }

    /// Every snapshot in sequence order, each verified; throws the first record's failure.
    public func records() throws -> [SnapshotRecord] {
        try scan().map { try $0.result.get() }
    }

    /// Every stored snapshot in sequence order, each decoded and verified on its own: a record that
    /// fails its checksum or does not parse is in its place with its `corrupted` error, and the
    /// records after it are still read.
    public func scan() throws -> [(seq: UInt64, result: Result<SnapshotRecord, SnapshotStoreError>)] {
        try environment.read { t in try t.entries(snapshots) }.map { entry in
            let seq = Self.u64(entry.key)
            return (seq, Result { try Self.decode(entry.value, seq: seq) }.mapError {
                $0 as? SnapshotStoreError ?? SnapshotStoreError(.corrupted, "snapshot \(seq): \($0)")
            })
        }
    }

    /// The snapshots whose factors, applied in order to the base weights, give snapshot `seq`.
    public func lineage(to seq: UInt64) throws -> [SnapshotRecord] {
        var chain: [SnapshotRecord] = []
        var s = seq
        while s != 0 {
            let r = try record(s)
            guard r.parent < r.seq else { throw SnapshotStoreError(.corrupted, "snapshot \(s) has parent \(r.parent)") }
            chain.append(r)
            s = r.parent
        }
        return chain.reversed()
    }

    /// Whether snapshot `seq` is on the lineage of `head` (`head` itself included; 0, the base, always
    /// is). Reads only the records between them: parents are older than their children.
    public func lineage(to head: UInt64, contains seq: UInt64) throws -> Bool {
        var s = head
        while s > seq {
            let r = try record(s)
            guard r.parent < r.seq else { throw SnapshotStoreError(.corrupted, "snapshot \(s) has parent \(r.parent)") }
            s = r.parent
        }
        return s == seq
    }

    public func journal() throws -> [JournalEntry] {
        let dec = Self.decoder()
        return try environment.read { t in try t.entries(journalDB) }.map { try dec.decode(JournalEntry.self, from: Data($0.value)) }
    }

    // MARK: encoding

    struct Header: Codable {
        var seq: UInt64
        var parent: UInt64
        var eventId: String
        var source: EventSource?
        var method: String
        var hyperparameters: String
        var result: String
        var hashBefore: String
        var hashAfter: String
        var blas: BLASInfo
        var createdAt: String
        var factors: [FactorHeader]
        /// Absent in records written before method state existed.
        var state: [StateHeader]?
        /// Absent for single edits.
        var batch: [BatchMember]?
    }

    struct StateHeader: Codable {
        var name: String
        var layer: Int
        var rows: Int
        var cols: Int
    }

    struct FactorHeader: Codable {
        var parameter: String
        var layer: Int
        var rows: Int
        var cols: Int
        var rank: Int
    }

    /// "MESASNP1" | u32 header length | header JSON | u32 float count | Float32 LE payload | SHA-256 of
    /// everything before it.
    static func encode(_ r: SnapshotRecord) throws -> [UInt8] {
        for f in r.factors where f.left.count != f.rows * f.rank || f.right.count != f.rank * f.cols {
            throw SnapshotStoreError(.state, "factor of \(f.parameter) does not match its shape")
        }
        for s in r.state where s.values.count != s.rows * s.cols || s.rows <= 0 || s.cols <= 0 {
            throw SnapshotStoreError(.state, "state block \(s.name) does not match its shape")
        }
        let header = Header(seq: r.seq, parent: r.parent, eventId: r.eventId, source: r.source, method: r.method,
                            hyperparameters: r.hyperparameters, result: r.result, hashBefore: r.hashBefore, hashAfter: r.hashAfter,
                            blas: r.blas, createdAt: r.createdAt,
                            factors: r.factors.map { FactorHeader(parameter: $0.parameter, layer: $0.layer, rows: $0.rows, cols: $0.cols, rank: $0.rank) },
                            state: r.state.isEmpty ? nil : r.state.map { StateHeader(name: $0.name, layer: $0.layer, rows: $0.rows, cols: $0.cols) },
                            batch: r.batch.isEmpty ? nil : r.batch)
        let h = try encoder().encode(header)
        let floats = r.factors.flatMap { $0.left + $0.right } + r.state.flatMap(\.values)
        var out = magic
        out += le32(UInt32(h.count)) + Array(h) + le32(UInt32(floats.count))
        out.reserveCapacity(out.count + floats.count * 4 + 32)
        for f in floats { out += le32(f.bitPattern) }
        out += SHA256.hash(out)
        return out
    }

    static func decode(_ b: [UInt8], seq: UInt64) throws -> SnapshotRecord {
        func bad(_ m: String, cause: (any Error)? = nil) -> SnapshotStoreError { SnapshotStoreError(.corrupted, "snapshot \(seq): \(m)", cause: cause) }
        guard b.count >= magic.count + 8 + 32, Array(b[0..<8]) == magic else { throw bad("not a snapshot record") }
        let body = Array(b[0..<(b.count - 32)])
        guard SHA256.hash(body) == Array(b[(b.count - 32)...]) else { throw bad("checksum mismatch; the record is refused") }
        let hl = Int(u32(b, 8))
        guard 12 + hl + 4 <= body.count else { throw bad("truncated header") }
        let header: Header
        do { header = try decoder().decode(Header.self, from: Data(b[12..<(12 + hl)])) } catch { throw bad("header: \(error)", cause: error) }
        let n = Int(u32(b, 12 + hl)), p0 = 16 + hl
        guard p0 + 4 * n == body.count, header.seq == seq else { throw bad("payload size or sequence number does not match") }
        var floats = [Float](repeating: 0, count: n)
        for i in 0..<n { floats[i] = Float(bitPattern: u32(b, p0 + 4 * i)) }
        var factors: [LowRankUpdate] = []
        var at = 0
        for f in header.factors {
            let nl = f.rows * f.rank, nr = f.rank * f.cols
            guard f.rows > 0, f.cols > 0, f.rank > 0, at + nl + nr <= n else { throw bad("factor \(f.parameter) exceeds the payload") }
            factors.append(LowRankUpdate(parameter: f.parameter, layer: f.layer, rows: f.rows, cols: f.cols, rank: f.rank,
                                        left: Array(floats[at..<(at + nl)]), right: Array(floats[(at + nl)..<(at + nl + nr)])))
            at += nl + nr
        }
        var state: [StateBlock] = []
        for s in header.state ?? [] {
            let m = s.rows * s.cols
            guard s.rows > 0, s.cols > 0, at + m <= n else { throw bad("state block \(s.name) exceeds the payload") }
            state.append(StateBlock(name: s.name, layer: s.layer, rows: s.rows, cols: s.cols, values: Array(floats[at..<(at + m)])))
            at += m
        }
        guard at == n else { throw bad("payload has \(n - at) unclaimed values") }
        return SnapshotRecord(seq: header.seq, parent: header.parent, eventId: header.eventId, source: header.source, method: header.method,
                              hyperparameters: header.hyperparameters, result: header.result, hashBefore: header.hashBefore,
                              hashAfter: header.hashAfter, blas: header.blas, createdAt: header.createdAt, factors: factors,
                              state: state, batch: header.batch ?? [], storedBytes: b.count)
    }

    @discardableResult
    private func journal(_ t: LMDBTransaction, kind: JournalEntry.Kind, headBefore: UInt64, headAfter: UInt64, hash: String,
                         eventId: String?, label: String? = nil) throws -> JournalEntry {
        let id = try t.get(meta, key: Self.key("next_journal")).map(Self.u64) ?? 1
        let entry = JournalEntry(id: id, kind: kind, time: Timestamp.now(), headBefore: headBefore, headAfter: headAfter, hash: hash, eventId: eventId, label: label)
        try t.put(journalDB, key: Self.be(id), value: Array(try Self.encoder().encode(entry)))
        try t.put(meta, key: Self.key("next_journal"), value: Self.be(id + 1))
        return entry
    }

    static func decodeOutcome(_ v: [UInt8]) -> EventOutcome? {
        guard v.count == 9 else { return nil }
        let n = u64(Array(v[1...]))
        switch v[0] {
        case UInt8(ascii: "s"): return .snapshot(n)
        case UInt8(ascii: "j"): return .journal(n)
        default: return nil
        }
    }

    static func key(_ s: String) -> [UInt8] { Array(s.utf8) }
    static func be(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
    static func u64(_ b: [UInt8]) -> UInt64 { b.prefix(8).reduce(0) { $0 << 8 | UInt64($1) } }
    static func le32(_ v: UInt32) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24)] }
    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 { UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24 }

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys]
        return e
    }

    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

}

/// RFC 3339 timestamps with milliseconds, from one shared formatter (creating one per call costs
/// more than the rest of a snapshot write).
public enum Timestamp {
    nonisolated(unsafe) private static let formatter: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
    private static let lock = NSLock()

    public static func now(_ date: Date = Date()) -> String {
        lock.lock(); defer { lock.unlock() }
        return formatter.string(from: date)
    }
}
