import Contracts
import Editing
import Evaluation
import Foundation
import Logging
import Messaging
import ModelRuntime
import SparseAutoencoder
import Storage
import Tensor

extension Pipeline {
    // MARK: control

    func control(_ m: KafkaMessage) throws -> Outcome {
        let value = try EventReader.body(m, expectedType: EventTypes.control, maxBytes: maxEventBytes)
        try validate(value, controlSchema, name: "control-command v1")
        let c = try EventReader.decode(ControlCommand.self, from: value, what: "control command")
        try checkModel(c.model.name, eventId: c.id)
        switch try host.store.outcome(ofEvent: c.id) {
        case .journal(let j):
            let entry = try host.store.journalEntry(j)
            var doc = commandResult(c, entry: entry, source: m)
            doc.redelivery = true
            // The rollback's weight delta again while the weights are still where it put them (as for an edit's redelivery).
            let delta = entry.kind == .rollback && entry.headAfter == host.head
                ? [deltaRecord(rollback: entry, hashBefore: try host.store.hash(at: entry.headBefore), commandId: c.id)] : []
            return Outcome(kind: .redelivery, records: [resultRecord(doc)] + delta, editSeconds: 0, eventId: c.id,
                           summary: "command \(c.id) already done (journal \(j))")
        case .snapshot:
            throw Rejection(.schema, "command id \(c.id) was already used by a fact update", eventId: c.id)
        case nil:
            break
        }
        switch c.command {
        case .rollback:
            let to = c.to ?? 0
            if to != 0 {
                do { _ = try host.store.record(to) } catch let err as SnapshotStoreError {
                    throw Rejection(err.code == .notFound ? .unknownSnapshot : .rollbackFailed, err.message, eventId: c.id, cause: err)
                }
            }
            let t0 = Date()
            let hashBefore = host.model.weightHash
            let entry: JournalEntry
            do { entry = try host.rollback(to: to, commandId: c.id) } catch let err as WeightStateError {
                throw Rejection(.rollbackFailed, err.message, eventId: c.id, cause: err)
            } catch let err as SnapshotStoreError where err.code == .corrupted || err.code == .notFound {
                throw Rejection(.rollbackFailed, err.message, eventId: c.id, cause: err)
            }
            try rebuildEditState()
            var doc = commandResult(c, entry: entry, source: m)
            doc.timings = ["rollback_seconds": Date().timeIntervalSince(t0)]
            let canary = try qualityGuard.map { try $0.measure(host.model) }
            doc.canary = canaryDocument(canary)
            return Outcome(kind: .rolledBack, records: [resultRecord(doc), deltaRecord(rollback: entry, hashBefore: hashBefore, commandId: c.id)],
                           editSeconds: 0, eventId: c.id,
                           summary: "rolled back from \(entry.headBefore) to \(entry.headAfter)", canary: canary)
        case .snapshot:
            let entry = try host.store.commitLabel(c.label ?? "", commandId: c.id)
            return Outcome(kind: .labelled, records: [resultRecord(commandResult(c, entry: entry, source: m))], editSeconds: 0,
                           eventId: c.id, summary: "labelled snapshot \(entry.headAfter) \(c.label ?? "")")
        }
    }

    func commandResult(_ c: ControlCommand, entry: JournalEntry, source m: KafkaMessage) -> EditResultDocument {
        EditResultDocument(
            eventId: c.id, kind: c.command == .rollback ? "rollback" : "snapshot", status: c.command == .rollback ? "rolled_back" : "labelled",
            redelivery: nil, model: .init(name: host.modelName, baseHash: host.baseHash), snapshot: nil, parent: entry.headBefore,
            head: entry.headAfter, hashBefore: nil, weightHash: entry.hash, method: nil, subject: nil, targetNew: nil, targetTrue: nil,
            targetTrueInferred: nil, metrics: nil, timings: nil, snapshotBytes: nil, label: entry.label,
            source: .init(topic: m.topic, partition: Int(m.partition), offset: Int(m.offset)), refinement: nil, processedAt: Timestamp.now())
    }
}
