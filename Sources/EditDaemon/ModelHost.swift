import Editing
import Foundation
import ModelRuntime
import Storage
import Tensor

/// A failure to bring the weights to a recorded state: a snapshot whose replay does not give its
/// recorded hash, or a factor that does not fit the model.
public struct WeightStateError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ message: String, cause: (any Error)? = nil) { self.message = message; self.cause = cause }
    public var description: String { message }
}

/// The resident model and its recorded edit history: the one place that changes the weights.
///
/// Rollback and restart restore the base values of every tensor an edit touched (kept once, when it
/// is first touched) and re-apply the factors of the target snapshot's lineage in order, so the
/// weights are bit-for-bit those recorded (the applying code is the same each time). Its changes are
/// made from the daemon's one worker thread; queries read the weights from other threads through
/// `reading`, and the weights' gate (`LanguageModel.weightGate`) keeps them apart: the worker holds it
/// as the writer from the first `apply` of an edit until `commit`, `discardUncommitted` or `settle`,
/// and for the whole of a `materialize` or `rollback`, so a reader sees the weights of a recorded
/// snapshot (`head`) and never an edit half applied, scored or undone.
public final class ModelHost: @unchecked Sendable {  // changed from the one worker thread only; other threads only read, through `reading`, under the weights' gate
    public let model: LanguageModel
    public let modelName: String
    public let store: SnapshotStore
    public let baseHash: String
    /// Base values of every tensor touched so far, by name.
    private var base: [String: [Float]] = [:]
    /// The snapshot the live weights equal (changed only while the worker holds the weights' gate).
    public private(set) var head: UInt64 = 0
    /// Whether an applied, unrecorded edit holds the weights' gate (worker thread only).
    private var editHold = false

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
    /// The first `apply` of an edit takes the weights' gate as the writer until the edit is recorded
    /// or undone.
    public func apply(_ u: LowRankUpdate) throws {
        if !editHold {
            model.weightGate.beginWriting()
            editHold = true
        }
        guard let p = model.weights.all.first(where: { $0.name == u.parameter }) else {
            throw WeightStateError("the model has no tensor \(u.parameter)")
        }
        if base[u.parameter] == nil { base[u.parameter] = p.data }
        do { try model.apply(u) } catch let e as EditError {
            throw WeightStateError("update of \(u.parameter): \(e.message)", cause: e)
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
    /// Either way the weights are a recorded state again, and an edit's hold on the gate ends.
    public func materialize(_ seq: UInt64) throws {
        try model.weightGate.writing {
            defer { releaseEditHold() }
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
    }

    /// Ends an edit's hold on the weights' gate, if one is open.
    private func releaseEditHold() {
        guard editHold else { return }
        editHold = false
        model.weightGate.endWriting()
    }

    /// Restores the base values of the touched tensors and applies `lineage`'s factors in order.
    /// Returns the resulting weight hash, unchecked (the audit compares it itself). Holds the weights'
    /// gate while it runs and ends an edit's hold (the caller checks what state the weights are in).
    public func rebuild(_ lineage: [SnapshotRecord]) throws -> String {
        try model.weightGate.writing {
            defer { releaseEditHold() }
            restoreBase()
            for r in lineage { for f in r.factors { try apply(f) } }
            return model.weightHash
        }
    }

    /// Moves the live weights to snapshot `seq` and journals the rollback (atomically with the
    /// command's id in the event index). Readers wait until the rollback is journalled (or undone).
    @discardableResult
    public func rollback(to seq: UInt64, commandId: String?, meta: [String: [UInt8]] = [:]) throws -> JournalEntry {
        try model.weightGate.writing {
            let previous = head
            try materialize(seq)
            do { return try store.commitRollback(to: seq, commandId: commandId, meta: meta) } catch {
                try materialize(previous)
                throw error
            }
        }
    }

    /// Records an applied edit. If the store refuses it, the weights go back to the head.
    public func commit(_ draft: SnapshotDraft, result: (UInt64) throws -> String) throws -> SnapshotRecord {
        try commit(draft, results: { seq in [try result(seq)] })
    }

    /// Records an applied batch edit, one result document per event of `draft.eventIds`.
    /// Readers see the new head and its weights together, once the snapshot is durable. A replica
    /// passes the editor's snapshot number as `seq` and its topic position as `meta` (`SnapshotStore.commitEdit`).
    public func commit(_ draft: SnapshotDraft, seq: UInt64? = nil, meta: [String: [UInt8]] = [:],
                       results: (UInt64) throws -> [String]) throws -> SnapshotRecord {
        try model.weightGate.writing {
            do {
                let r = try store.commitEdit(draft, expectedHead: head, seq: seq, meta: meta, results: results)
                head = r.seq
                releaseEditHold()
                return r
            } catch {
                try materialize(head)
                throw error
            }
        }
    }

    /// Undoes an applied but unrecorded edit (a dry run, or a failure before the commit).
    public func discardUncommitted() throws { try materialize(head) }

    /// Undoes an edit left applied but neither recorded nor undone (a failure between the two), so
    /// that the weights are the head's again and readers may enter. Nothing to do otherwise.
    public func settle() throws {
        if editHold { try materialize(head) }
    }

    /// The recorded state the live weights are in, as a reader of the weights: `body` runs while no
    /// edit, batch or rollback changes them, with the head and the weight hash read under the same
    /// hold. Waits for an edit in progress until `deadline` (then throws `WeightGate.Timeout`).
    public func reading<T>(until deadline: Date = .distantFuture, _ body: (WeightState) throws -> T) throws -> T {
        try model.weightGate.reading(until: deadline) { try body(WeightState(head: head, weightHash: model.weightHash)) }
    }
}

/// The snapshot the weights equal and their hash, read together.
public struct WeightState: Sendable, Equatable {
    public var head: UInt64
    public var weightHash: String
}
