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
    // MARK: batches

    /// Processes consecutive messages of one partition. Fact updates for the default editor of a
    /// method that edits several facts in one computation (MEMIT, AlphaEdit), other than dry runs,
    /// are edited together and stored as one snapshot that indexes all their ids; a fact that repeats
    /// a pending one (same id, or same subject and prompt) waits for the pending edit, so the later
    /// update wins as it would one at a time. Everything else is processed alone, in order. One
    /// outcome per message, in order; throws only for failures of the daemon's own resources.
    public func process(batch ms: [KafkaMessage]) throws -> [Outcome] {
        defer { settle() }
        guard ms.count > 1, defaultEditor.editsTogether else { return try ms.map(process) }
        var outcomes = [Outcome?](repeating: nil, count: ms.count)
        var group: [(index: Int, edit: PendingEdit)] = []
        func flush() throws {
            let g = group
            group = []
            for (i, o) in try editTogether(g) { outcomes[i] = o }
        }
        func prepare(_ m: KafkaMessage) throws -> Prepared {
            do { return try prepareFactUpdate(m) } catch let r as Rejection { return .done(deadLetter(m, r)) }
        }
        for (i, m) in ms.enumerated() {
            guard m.topic == topics.factUpdates else {
                try flush()
                outcomes[i] = try process(m)
                continue
            }
            var prepared = try prepare(m)
            if case .edit(let p) = prepared, !group.isEmpty, !batchable(p) || conflicts(p, group.map(\.edit)) {
                // It is edited after the pending group: dedupe and score it on the weights that follow.
                try flush()
                prepared = try prepare(m)
            }
            switch prepared {
            case .done(let o):
                outcomes[i] = o
            case .edit(let p):
                if batchable(p) {
                    group.append((i, p))
                } else {
                    do { outcomes[i] = try edit(p) } catch let r as Rejection { outcomes[i] = deadLetter(m, r) }
                }
            }
        }
        try flush()
        return outcomes.map { $0! }
    }

    /// Whether `p` can be part of a batch edit: the default editor (no overrides), not a dry run.
    func batchable(_ p: PendingEdit) -> Bool { p.editor === defaultEditor && p.event.dryRun != true }

    /// Whether `p` repeats an event or a fact (subject and prompt) of `group`.
    func conflicts(_ p: PendingEdit, _ group: [PendingEdit]) -> Bool {
        group.contains { $0.event.id == p.event.id || ($0.request.subject == p.request.subject && $0.request.prompt == p.request.prompt) }
    }

    /// One computation for the group's requests, one snapshot for its events. If the methods cannot
    /// edit them together (one request fails, the system is singular), each event is processed alone.
    func editTogether(_ g: [(index: Int, edit: PendingEdit)]) throws -> [(Int, Outcome)] {
        guard g.count > 1 else {
            // A failure of the daemon's own resources (the store) propagates: the batch is released uncommitted.
            return try g.map { i, p in
                do { return (i, try edit(p)) } catch let r as Rejection { return (i, deadLetter(p.message, r)) }
            }
        }
        let editor = defaultEditor, n = g.count
        let t0 = Date()
        let hashBefore = host.model.weightHash
        let parent = host.head
        let updates: [LowRankUpdate], phases: [String: Double], coverages: [SAECoverage]
        let applied: (posts: [CaseScores], hashAfter: String, hashSeconds: Double, scoredAt: Date, canary: CanaryFigures?, canarySeconds: Double?)
        do {
            (updates, phases, coverages) = try editor.computeUpdates(together: g.map(\.edit.request))
            applied = try applyAndScore(updates, g.map(\.edit.record), eventId: nil)
        } catch {
            logger.warning("a batch of \(n) fact updates could not be edited together; editing them one at a time", metadata: ["error": "\(error)"])
            return try g.map { ($0.index, try process($0.edit.message)) }
        }
        do { try gate(applied.canary, eventId: nil, what: "the batch of \(n)") } catch let r as Rejection {
            // The batch crossed the guard's thresholds and was undone. Its halves are edited (and gated)
            // apart, in order, down to single events: the events that do the damage are refused with
            // the figures, the others are applied (one snapshot per half that passes).
            logger.info("a batch of \(n) fact updates crossed the quality guard; editing its halves apart", metadata: ["reason": "\(r.message)"])
            return try editTogether(Array(g[..<(n / 2)])) + editTogether(Array(g[(n / 2)...]))
        }
        let editSeconds = g.map(\.edit.preSeconds).reduce(0, +) + applied.scoredAt.timeIntervalSince(t0)
        let ids = g.map(\.edit.event.id)
        var timings = phases.merging(["edit_seconds": editSeconds], uniquingKeysWith: { a, _ in a })
        timings["batch_size"] = Double(n)
        if let s = applied.canarySeconds { timings["canary_seconds"] = s }
        let docs = g.enumerated().map { j, member -> EditResultDocument in
            var refinement = Self.refinement(editor)
            if refinement?.sae != nil, j < coverages.count {
                refinement?.coverage = coverages[j].coverage
                refinement?.outside = coverages[j].outside
                refinement?.subjectError = coverages[j].subjectError
                refinement?.crowding = coverages[j].crowding
            }
            var doc = resultDocument(member.edit, parent: parent, hashBefore: hashBefore, hashAfter: applied.hashAfter, post: applied.posts[j],
                                     timings: timings, refinement: refinement)
            doc.batch = .init(size: n, index: j, eventIds: ids)
            doc.canary = canaryDocument(applied.canary)
            return doc
        }
        let t2 = Date()
        let stored = try commit(g.map(\.edit), docs: docs, updates: updates, hashBefore: hashBefore, hashAfter: applied.hashAfter)
        let snapshotSeconds = Date().timeIntervalSince(t2)
        // One weight delta for the batch, published with its first event's result.
        let delta = deltaRecord(.edit(model: deltaModel, parent: parent, snapshot: stored[0].snapshot ?? 0, hashBefore: hashBefore,
                                      hashAfter: applied.hashAfter, eventIds: ids, method: editor.method, updates: updates))
        return g.enumerated().map { j, member in
            let e = member.edit.event
            let records = [resultRecord(stored[j])] + (j == 0 ? [delta] : [])
            return (member.index, Outcome(kind: .applied(method: editor.method), records: records, editSeconds: editSeconds, eventId: e.id,
                                          summary: "applied \(e.id) as snapshot \(stored[j].snapshot ?? 0) (batch edit \(j + 1) of \(n)): \(e.subject) → \(e.targetNew.str)",
                                          steps: ["hash": applied.hashSeconds, "snapshot": snapshotSeconds], canary: applied.canary))
        }
    }
}
