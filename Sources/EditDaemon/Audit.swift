import Foundation
import ModelRuntime
import Storage

/// Schemas/audit-report.schema.json.
public struct AuditReport: Codable, Sendable {
    public struct Snapshot: Codable, Sendable {
        public var seq: UInt64
        public var parent: UInt64
        public var eventId: String
        /// A batch edit: every event it applied, `eventId` first.
        public var batchEventIds: [String]?
        public var method: String
        public var source: EventSource?
        public var recordedHash: String
        public var replayedHash: String?
        /// match | mismatch | corrupted (the record fails its checksum) | unverifiable (an ancestor is corrupted)
        public var status: String
        public var blasMatches: Bool?
        public var error: String?
    }
    public struct Journal: Codable, Sendable {
        public var id: UInt64
        public var kind: String
        public var headAfter: UInt64
        public var hash: String
        public var eventId: String?
        public var status: String
    }
    public var model: String
    public var baseHash: String
    public var baseHashMatches: Bool
    public var verified: Bool
    public var head: UInt64
    public var snapshots: [Snapshot]
    public var journal: [Journal]
    public var blas: BLASInfo
    public var seconds: Double
    public var createdAt: String
}

/// `mesa replay --verify`: rebuilds every snapshot from the base model by re-applying the recorded
/// deltas along its lineage, and compares every recorded weight hash. Reads the store only.
public enum Auditor {
    public static func verify(model: LanguageModel, modelName: String, store: SnapshotStore,
                              progress: ((Int, Int) -> Void)? = nil) throws -> AuditReport {
        let t0 = Date()
        let host = try ModelHost(model: model, modelName: modelName, store: store, attach: false)
        guard let base = try store.baseHash() else { throw SetupError("the snapshot store is empty: no base model recorded") }
        let blas = ModelHost.blasInfo
        var rows: [AuditReport.Snapshot] = []
        var ok = base == host.baseHash
        // Snapshots are numbered in commit order and a parent always precedes its child, so most
        // records extend the state just built; a branch (after a rollback) is rebuilt from the base.
        let sequence = try store.sequenceNumbers()
        var built: UInt64? = 0
        _ = try host.rebuild([])
        for (i, seq) in sequence.enumerated() {
            progress?(i + 1, sequence.count)
            let r: SnapshotRecord
            do { r = try store.record(seq) } catch {
                ok = false
                built = nil
                rows.append(.init(seq: seq, parent: 0, eventId: "", method: "", source: nil, recordedHash: "", replayedHash: nil,
                                  status: "corrupted", blasMatches: nil, error: "\(error)"))
                continue
            }
            var row = AuditReport.Snapshot(seq: seq, parent: r.parent, eventId: r.eventId, batchEventIds: r.batch.isEmpty ? nil : r.eventIds,
                                           method: r.method, source: r.source, recordedHash: r.hashAfter, replayedHash: nil,
                                           status: "unverifiable", blasMatches: r.blas == blas, error: nil)
            do {
                let hash: String
                if built == r.parent {
                    for f in r.factors { try host.apply(f) }
                    hash = model.weightHash
                } else {
                    hash = try host.rebuild(try store.lineage(to: seq))
                }
                built = seq
                let match = hash == r.hashAfter
                ok = ok && match
                row.replayedHash = hash
                row.status = match ? "match" : "mismatch"
            } catch {
                // The record is sound but an ancestor is not: it cannot be rebuilt.
                ok = false
                built = nil
                row.error = "\(error)"
            }
            rows.append(row)
        }
        _ = try host.rebuild([])

        var journal: [AuditReport.Journal] = []
        let replayed = Dictionary(rows.compactMap { r in r.replayedHash.map { (r.seq, $0) } }, uniquingKeysWith: { a, _ in a })
        for e in try store.journal() {
            let expected = e.headAfter == 0 ? host.baseHash : replayed[e.headAfter]
            let match = expected == e.hash
            ok = ok && match
            journal.append(.init(id: e.id, kind: e.kind.rawValue, headAfter: e.headAfter, hash: e.hash, eventId: e.eventId,
                                 status: match ? "match" : "mismatch"))
        }
        return AuditReport(model: modelName, baseHash: base, baseHashMatches: base == host.baseHash, verified: ok, head: try store.head(),
                           snapshots: rows, journal: journal, blas: blas, seconds: Date().timeIntervalSince(t0),
                           createdAt: Timestamp.now())
    }

    public static func encode(_ r: AuditReport) throws -> Data { try JSONCoding.encoder().encode(r) }
}
