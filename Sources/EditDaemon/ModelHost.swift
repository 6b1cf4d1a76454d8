import Editing
import Foundation
import ModelRuntime
import Storage
import Tensor

/// A failure to bring the weights to a recorded state: a snapshot whose replay does not give its
/// recorded hash, or a factor that does not fit the model.
public struct WeightStateError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The resident model and its recorded edit history: the one place that changes the weights.
///
/// Rollback and restart restore the base values of every tensor an edit touched (kept once, when it
/// is first touched) and re-apply the factors of the target snapshot's lineage in order, so the
/// weights are bit-for-bit those recorded (the applying code is the same each time). Not thread-safe:
/// the daemon calls it from its one worker thread.
public final class ModelHost: @unchecked Sendable {  // not thread-safe (see above): used from the daemon's one worker thread only
    public let model: LanguageModel
    public let modelName: String
    public let store: SnapshotStore
    public let baseHash: String
    /// Base values of every tensor touched so far, by name.
    private var base: [String: [Float]] = [:]
    /// The snapshot the live weights equal.
    public private(set) var head: UInt64 = 0

    /// Attaches `model` (freshly loaded: the base weights) to `store` and brings the weights to the
    /// store's head, checking the recorded hash. With `attach: false` (audits) the store is only read
    /// and the weights stay at the base.
    public init(model: LanguageModel, modelName: String, store: SnapshotStore, attach: Bool = true) throws {
        self.model = model
        self.modelName = modelName
        self.store = store
        baseHash = model.weightHash
        guard attach else { return }
        try store.attachBase(modelHash: baseHash, modelName: modelName)
        let target = try store.head()
        if target != 0 { try materialize(target) }
        head = target
    }

    /// The BLAS configuration edits are applied with (recorded in every snapshot).
    public static var blasInfo: BLASInfo {
        let c = BLAS.configuration
        return BLASInfo(library: c.build, core: c.coreName, threads: c.threads)
    }

    /// ΔW = L·R added to the update's tensor, by the same code that applies edits everywhere
    /// (`LanguageModel.apply(LowRankUpdate)`), so a replay reproduces the recorded weights bit for bit.
    public func apply(_ u: LowRankUpdate) throws {
        guard let p = model.weights.all.first(where: { $0.name == u.parameter }) else {
            throw WeightStateError("the model has no tensor \(u.parameter)")
        }
        if base[u.parameter] == nil { base[u.parameter] = p.data }
        do { try model.apply(u) } catch let e as EditError {
            throw WeightStateError("update of \(u.parameter): \(e.message)")
        }
    }

    /// The base values of tensor `name` (the loaded model's), known once an edit touched it.
    public func baseValues(_ name: String) -> [Float]? { base[name] }

    /// Restores the base values of every touched tensor.
    private func restoreBase() {
        for (name, values) in base {
            guard let p = model.weights.all.first(where: { $0.name == name }) else { continue }
            p.mutate { w in values.withUnsafeBufferPointer { w.baseAddress!.update(from: $0.baseAddress!, count: $0.count) } }
        }
    }

    /// Makes the live weights those of snapshot `seq`. The resulting hash must equal the recorded
    /// one; otherwise the previous state is restored and the call throws.
    public func materialize(_ seq: UInt64) throws {
        let previous = head
        do {
            let lineage = try store.lineage(to: seq)
            let got = try rebuild(lineage)
            let want = lineage.last?.hashAfter ?? baseHash
            guard got == want else { throw WeightStateError("replaying snapshot \(seq) gives weight hash \(got), recorded \(want)") }
        } catch {
            _ = try rebuild(try store.lineage(to: previous))
            throw error
        }
        head = seq
    }

    /// Restores the base values of the touched tensors and applies `lineage`'s factors in order.
    /// Returns the resulting weight hash, unchecked (the audit compares it itself).
    public func rebuild(_ lineage: [SnapshotRecord]) throws -> String {
        restoreBase()
        for r in lineage { for f in r.factors { try apply(f) } }
        return model.weightHash
    }

    /// Moves the live weights to snapshot `seq` and journals the rollback (atomically with the
    /// command's id in the event index).
    @discardableResult
    public func rollback(to seq: UInt64, commandId: String?) throws -> JournalEntry {
        let previous = head
        try materialize(seq)
        do { return try store.commitRollback(to: seq, commandId: commandId) } catch {
            try materialize(previous)
            throw error
        }
    }

    /// Records an applied edit. If the store refuses it, the weights go back to the head.
    public func commit(_ draft: SnapshotDraft, result: (UInt64) throws -> String) throws -> SnapshotRecord {
        try commit(draft, results: { seq in [try result(seq)] })
    }

    /// Records an applied batch edit, one result document per event of `draft.eventIds`.
    public func commit(_ draft: SnapshotDraft, results: (UInt64) throws -> [String]) throws -> SnapshotRecord {
        do {
            let r = try store.commitEdit(draft, expectedHead: head, results: results)
            head = r.seq
            return r
        } catch {
            try materialize(head)
            throw error
        }
    }

    /// Undoes an applied but unrecorded edit (a dry run, or a failure before the commit).
    public func discardUncommitted() throws { try materialize(head) }
}
