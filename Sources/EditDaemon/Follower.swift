import Foundation
import ModelRuntime
import Storage

/// A weight-delta record a follower will not apply, and why. The follower stops there and keeps
/// serving the last snapshot it verified; `description` says how to recover.
public struct FollowerError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        /// The record's bytes do not decode (`WeightDelta(decoding:)`).
        case undecodable
        /// The record is for another base model.
        case otherModel
        /// The record was published without its factors (larger than the broker accepts).
        case omitted
        /// The record does not start at the follower's head: records between are missing.
        case gap
        /// The weights do not have the hash the record says they must.
        case hashMismatch
    }

    public var kind: Kind
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?

    public init(_ kind: Kind, _ message: String, cause: (any Error)? = nil) {
        self.kind = kind
        self.message = message
        self.cause = cause
    }

    public static let recovery = """
        The follower stops applying records here and keeps serving its last verified snapshot. To recover, \
        stop it and start it again with an empty state directory (--state-dir) and a new consumer group \
        (--group-id): it then reads the deltas topic from its beginning and rebuilds the editor's weights \
        (the topic must keep every record: retention.ms=-1).
        """

    public var description: String { "refused (\(kind.rawValue)): \(message). \(Self.recovery)" }
}

/// A read-only replica of the editor's weights: the base model, and the snapshots of the weight-deltas
/// topic applied in order, kept in its own snapshot store (the same format as the editor's, with the
/// editor's snapshot numbers) so that a restart rebuilds the weights from the stored lineage and checks
/// their hash (`ModelHost`).
///
/// Each record is applied as the editor applied it (`ModelHost.apply`, the same code path, so the same
/// bits): an edit adds its factors to the head's weights; a rollback restores the base values and
/// re-applies the target's lineage. After each, the weights must have the record's hash. A redelivery
/// (a record whose snapshot the follower holds, or an offset it already applied) is skipped; a record
/// that does not start at the head, is for another model, carries no factors or gives another hash is
/// refused (`FollowerError`) and changes nothing. The topic position of each applied record is written
/// in the same transaction as the snapshot and the head.
public final class Follower: @unchecked Sendable {  // applied from one thread; queries read through `host.reading`
    public let host: ModelHost

    /// What `apply` did with a record.
    public enum Step: Equatable, Sendable {
        case applied
        case skipped(String)
    }

    /// Called at the point inside `apply` where a crash leaves the most to recover: an edit's factors
    /// added to the weights and their hash checked, the snapshot not yet stored. Fault-injection
    /// tests pause here (`mesa follow --pause-in-apply-ms`) to kill the process inside an apply.
    public var atCrashPoint: ((String) -> Void)?

    /// A follower over `host` (attached to its store: its weights are at the store's head).
    public init(host: ModelHost) {
        self.host = host
    }

    /// A follower of `model` (freshly loaded: the base weights) over `store`: the weights are rebuilt
    /// from the stored lineage and their hash checked.
    public convenience init(model: LanguageModel, modelName: String, store: SnapshotStore) throws {
        self.init(host: try ModelHost(model: model, modelName: modelName, store: store))
    }

    /// The snapshot the weights are at.
    public var head: UInt64 { host.head }

    static func offsetKey(topic: String, partition: Int32) -> String { "follow.offset.\(topic)/\(partition)" }

    /// The offset of the last record applied from `topic`/`partition`, if any.
    public func lastOffset(topic: String, partition: Int32) throws -> Int64? {
        try host.store.metaValue(Self.offsetKey(topic: topic, partition: partition)).flatMap { Int64(String(decoding: $0, as: UTF8.self)) }
    }

    /// Applies one record of the deltas topic read from `source` (recorded with the snapshot).
    @discardableResult
    public func apply(_ bytes: [UInt8], source: EventSource? = nil) throws -> Step {
        let at = source.map { "the record at \($0.topic)/\($0.partition)@\($0.offset)" } ?? "the record"
        let d: WeightDelta
        do { d = try WeightDelta(decoding: bytes) } catch { throw FollowerError(.undecodable, "\(at) cannot be read: \(error)", cause: error) }
        let h = d.header
        guard h.model.baseHash == host.baseHash else {
            throw FollowerError(.otherModel, "\(at) is for base model \(h.model.name) (\(h.model.baseHash.prefix(16))); "
                                + "this follower holds \(host.modelName) (\(host.baseHash.prefix(16)))")
        }
        if let source, let last = try lastOffset(topic: source.topic, partition: source.partition), source.offset <= last {
            return .skipped("offset \(source.offset) was applied before")
        }
        let store = host.store
        let head = host.head
        let held = h.snapshot == head || (h.kind == "edit" && (try? store.record(h.snapshot)) != nil)
        if held {
            let recorded = try store.hash(at: h.snapshot)
            guard recorded == h.weightHash else {
                throw FollowerError(.hashMismatch, "\(at) gives snapshot \(h.snapshot) weight hash \(h.weightHash.prefix(16)); "
                                    + "this follower recorded \(recorded.prefix(16)) for it")
            }
            return .skipped("snapshot \(h.snapshot) is held")
        }
        if let why = h.omitted { throw FollowerError(.omitted, "\(at) (snapshot \(h.snapshot)) carries no factors: \(why)") }
        guard h.parent == head else {
            throw FollowerError(.gap, "\(at) moves snapshot \(h.parent) to \(h.snapshot); this follower is at \(head): "
                                + "the records between are missing from the topic, or its state belongs to another topic or editor")
        }
        let before = try store.hash(at: head)
        guard h.hashBefore == before else {
            throw FollowerError(.hashMismatch, "\(at) starts from weight hash \(h.hashBefore.prefix(16)); snapshot \(head) here has \(before.prefix(16))")
        }
        let meta = source.map { [Self.offsetKey(topic: $0.topic, partition: $0.partition): Array(String($0.offset).utf8)] } ?? [:]
        switch h.kind {
        case "edit":
            do {
                for u in d.updates { try host.apply(u) }
            } catch {
                try host.discardUncommitted()
                throw FollowerError(.otherModel, "\(at) does not fit the model: \(error)", cause: error)
            }
            let got = host.model.weightHash
            guard got == h.weightHash else {
                try host.discardUncommitted()
                throw FollowerError(.hashMismatch, "\(at) (snapshot \(h.snapshot)) gives weight hash \(got.prefix(16)); the editor's is \(h.weightHash.prefix(16))")
            }
            atCrashPoint?("snapshot \(h.snapshot) is in the weights and not yet stored")
            let ids = h.eventIds.isEmpty ? ["snapshot-\(h.snapshot)"] : h.eventIds
            let draft = SnapshotDraft(eventId: ids[0], source: source, method: h.method ?? "", hyperparameters: "{}", hashBefore: h.hashBefore,
                                      hashAfter: h.weightHash, blas: ModelHost.blasInfo, factors: d.updates,
                                      batch: ids.dropFirst().map { BatchMember(eventId: $0, source: nil) })
            _ = try host.commit(draft, seq: h.snapshot, meta: meta) { _ in Array(repeating: "{}", count: ids.count) }
        default:
            guard h.snapshot == 0 || (try? store.record(h.snapshot)) != nil else {
                throw FollowerError(.gap, "\(at) rolls back to snapshot \(h.snapshot), which this follower never applied")
            }
            let target = try store.hash(at: h.snapshot)
            guard target == h.weightHash else {
                throw FollowerError(.hashMismatch, "\(at) rolls back to snapshot \(h.snapshot) with weight hash \(h.weightHash.prefix(16)); "
                                    + "this follower recorded \(target.prefix(16)) for it")
            }
            try host.rollback(to: h.snapshot, commandId: h.eventIds.first, meta: meta)
        }
        return .applied
    }
}
