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
    // MARK: fact updates

    /// A fact update that passed every check and is ready to edit: its editor, request, evaluation
    /// record and scores on the weights before the edit.
    struct PendingEdit {
        var message: KafkaMessage
        var event: FactUpdate
        var editor: FactEditor
        var request: EditRequest
        var record: CounterFactRecord
        var inferred: Bool
        var pre: CaseScores
        var preSeconds: Double
    }

    enum Prepared {
        /// Nothing to edit (a redelivery): the outcome is final.
        case done(Outcome)
        case edit(PendingEdit)
    }

    func factUpdate(_ m: KafkaMessage) throws -> Outcome {
        switch try prepareFactUpdate(m) {
        case .done(let o): return o
        case .edit(let p): return try edit(p)
        }
    }

    /// decode → validate → dedupe → the editor and the pre-edit scores. Throws `Rejection`.
    func prepareFactUpdate(_ m: KafkaMessage) throws -> Prepared {
        let value = try EventReader.body(m, expectedType: EventTypes.factUpdate, maxBytes: maxEventBytes)
        try validate(value, factSchema, name: "fact-update v1")
        let e = try EventReader.decode(FactUpdate.self, from: value, what: "fact update")
        try checkModel(e.model.name, eventId: e.id)
        if e.model.revision.range(of: "^[0-9a-f]{8,64}$", options: .regularExpression) != nil, !host.baseHash.hasPrefix(e.model.revision) {
            throw Rejection(.unknownModel, "revision \(e.model.revision) is not this daemon's base model \(host.baseHash.prefix(16))", eventId: e.id)
        }
        guard hyperparameters.method.accepts(e.method, refined: defaultEditor.mesaSetup.settings != nil) else {
            throw Rejection(.unsupportedMethod, "method \(e.method) is not available in this daemon (it runs \(defaultEditor.method))", eventId: e.id)
        }

        // Dedupe: a redelivered event republishes its recorded result and changes nothing.
        switch try host.store.outcome(ofEvent: e.id) {
        case .snapshot(let seq):
            let rec = try host.store.record(seq)
            guard let text = rec.result(ofEvent: e.id) else { throw SnapshotStoreError(.corrupted, "snapshot \(seq) does not hold event \(e.id)") }
            var result = try JSONCoding.decoder().decode(EditResultDocument.self, from: Data(text.utf8))
            result.redelivery = true
            result.processedAt = Timestamp.now()
            // The record this result answers (the same offset after a crash, another one when the id was published again).
            result.source = .init(topic: m.topic, partition: Int(m.partition), offset: Int(m.offset))
            // Where the weights are now, not where they were when the event was applied.
            let head = host.head
            result.head = head
            result.weightHash = try host.store.hash(at: head)
            let live = try host.store.lineage(to: head, contains: seq)
            result.onHeadLineage = live
            if !live {
                result.note = "snapshot \(seq), which applied this event, is not on the lineage of the head (snapshot \(head)): a rollback undid it, "
                    + "so the live weights do not hold this edit; publish the fact again with a new id to apply it again"
            }
            // The snapshot's weight delta again, with its first event, when it is still the head: a crash after the
            // result and before the delta loses at most the last one, and a replica that holds it skips it. An older
            // snapshot's record would only look like a gap to a replica.
            let delta = rec.eventId == e.id && seq == head ? [deltaRecord(of: rec)] : []
            return .done(Outcome(kind: .redelivery, records: [resultRecord(result)] + delta, editSeconds: 0, eventId: e.id,
                                 summary: "event \(e.id) already applied as snapshot \(seq)" + (live ? "" : " (since rolled back; the head is \(head))")))
        case .journal:
            throw Rejection(.schema, "event id \(e.id) was already used by a control command", eventId: e.id)
        case nil:
            break
        }

        let editor = try editor(for: e)
        let request = EditRequest(subject: e.subject, prompt: e.prompt, targetNew: e.targetNew.str, targetTrue: e.targetTrue?.str)
        try checkFits(e, request, editor)
        let t0 = Date()
        let record: CounterFactRecord, inferred: Bool, pre: CaseScores
        do {
            (record, inferred) = try evaluationRecord(e)
            pre = try CounterFactEval.score(record, with: scorer)
        } catch let err as EditError {
            throw rejection(err, eventId: e.id)
        } catch let err as ModelError {
            throw rejection(err, eventId: e.id)
        }
        return .edit(PendingEdit(message: m, event: e, editor: editor, request: request, record: record, inferred: inferred, pre: pre,
                                 preSeconds: Date().timeIntervalSince(t0)))
    }

    /// edit → evaluate → snapshot, for one prepared fact update. Throws `Rejection`.
    func edit(_ p: PendingEdit) throws -> Outcome {
        let e = p.event, editor = p.editor
        let t0 = Date()
        let hashBefore = host.model.weightHash
        let parent = host.head
        let updates: [LowRankUpdate], phases: [String: Double]
        do {
            (updates, phases) = try editor.computeUpdates(for: p.request)
        } catch let err as EditError {
            throw rejection(err, eventId: e.id)
        } catch let err as ModelError {
            throw rejection(err, eventId: e.id)
        }
        let applied = try applyAndScore(updates, [p.record], eventId: e.id)
        let editSeconds = p.preSeconds + applied.scoredAt.timeIntervalSince(t0)
        var timings = phases.merging(["edit_seconds": editSeconds], uniquingKeysWith: { a, _ in a })
        if let s = applied.canarySeconds { timings["canary_seconds"] = s }
        var doc = resultDocument(p, parent: parent, hashBefore: hashBefore, hashAfter: applied.hashAfter, post: applied.posts[0],
                                 timings: timings, refinement: Self.refinement(editor))
        doc.canary = canaryDocument(applied.canary)
        doc.signals = editor.lastSignals.isEmpty ? nil : editor.lastSignals

        if e.dryRun == true {
            try host.discardUncommitted()
            doc.weightHash = host.model.weightHash
            if let why = applied.canary.flatMap({ qualityGuard?.violation($0) }) { doc.note = "as an edit it would be refused: \(why)" }
            return Outcome(kind: .dryRun, records: [resultRecord(doc)], editSeconds: editSeconds, eventId: e.id,
                           summary: "dry run of \(e.id): ES \(applied.posts[0].es) (not applied)")
        }
        try gate(applied.canary, eventId: e.id)

        let t2 = Date()
        let stored = try commit([p], docs: [doc], updates: updates, hashBefore: hashBefore, hashAfter: applied.hashAfter)[0]
        let delta = deltaRecord(.edit(model: deltaModel, parent: parent, snapshot: stored.snapshot ?? 0, hashBefore: hashBefore,
                                      hashAfter: applied.hashAfter, eventIds: [e.id], method: editor.method, updates: updates))
        return Outcome(kind: .applied(method: editor.method), records: [resultRecord(stored), delta], editSeconds: editSeconds, eventId: e.id,
                       summary: "applied \(e.id) as snapshot \(stored.snapshot ?? 0): \(e.subject) → \(e.targetNew.str)",
                       steps: ["hash": applied.hashSeconds, "snapshot": Date().timeIntervalSince(t2)], canary: applied.canary)
    }

    /// The quality gate: edited weights whose canary figures cross a threshold go back to the head
    /// (bit-exactly: the touched tensors are restored and the head's lineage re-applied) and the
    /// event is refused with the figures.
    func gate(_ canary: CanaryFigures?, eventId: String?, what: String = "the edit") throws {
        guard let g = qualityGuard, let f = canary, let why = g.violation(f) else { return }
        try host.discardUncommitted()
        throw Rejection(.qualityGate, "\(what) was undone: \(why)", details: g.details(f), eventId: eventId)
    }

    func canaryDocument(_ f: CanaryFigures?) -> EditResultDocument.Canary? {
        guard let f, let g = qualityGuard else { return nil }
        return .init(accuracy: f.accuracy, perplexity: f.perplexity, baseAccuracy: g.base.accuracy, basePerplexity: g.base.perplexity)
    }

    /// Applies `updates` and scores `records` on the edited weights, hashing the weights on another
    /// core meanwhile (both only read them). On failure the weights go back to the head and the
    /// error is an `editFailed` rejection. `scoredAt`: when scoring ended, before waiting for the hash.
    func applyAndScore(_ updates: [LowRankUpdate], _ records: [CounterFactRecord], eventId: String?) throws
        -> (posts: [CaseScores], hashAfter: String, hashSeconds: Double, scoredAt: Date, canary: CanaryFigures?, canarySeconds: Double?) {
        do { for u in updates { try host.apply(u) } } catch {
            try host.discardUncommitted()
            throw Rejection(.editFailed, "applying the update failed: \(error)", eventId: eventId, cause: error)
        }
        let hashing = DispatchGroup()
        let model = host.model
        DispatchQueue.global().async(group: hashing) { _ = model.weightHash }
        let posts: [CaseScores]
        do { posts = try records.map { try CounterFactEval.score($0, with: scorer) } } catch {
            hashing.wait()
            try host.discardUncommitted()
            throw Rejection(.editFailed, "scoring the edited model failed: \(error)", eventId: eventId, cause: error)
        }
        let scoredAt = Date()
        // The canary set, while the hash is still being computed.
        var canary: CanaryFigures?, canarySeconds: Double?
        if let g = qualityGuard {
            do { canary = try g.measure(model) } catch {
                hashing.wait()
                try host.discardUncommitted()
                throw Rejection(.editFailed, "scoring the canary set on the edited model failed: \(error)", eventId: eventId, cause: error)
            }
            canarySeconds = Date().timeIntervalSince(scoredAt)
        }
        hashing.wait()
        let hashAfter = host.model.weightHash
        return (posts, hashAfter, Date().timeIntervalSince(scoredAt), scoredAt, canary, canarySeconds)
    }

    /// Stores the applied updates of `edits` as one snapshot (a batch when there are several) with
    /// each event's result document, finalized with the sequence number the store assigns inside the
    /// same transaction (the documents are what redeliveries republish), and keeps the method state.
    func commit(_ edits: [PendingEdit], docs: [EditResultDocument], updates: [LowRankUpdate], hashBefore: String,
                hashAfter: String) throws -> [EditResultDocument] {
        let editor = edits[0].editor
        func source(_ m: KafkaMessage) -> EventSource { EventSource(topic: m.topic, partition: m.partition, offset: m.offset) }
        let draft = SnapshotDraft(
            eventId: edits[0].event.id, source: source(edits[0].message), method: editor.method,
            hyperparameters: try Self.hyperparameters(editor), hashBefore: hashBefore, hashAfter: hashAfter, blas: ModelHost.blasInfo,
            factors: updates, state: editor.pendingState(),
            batch: edits.dropFirst().map { BatchMember(eventId: $0.event.id, source: source($0.message)) })
        var stored = docs
        let rec = try host.commit(draft) { seq in
            try stored.indices.map { j in
                stored[j].snapshot = seq
                stored[j].head = seq
                return String(decoding: try JSONCoding.encoder().encode(stored[j]), as: UTF8.self)
            }
        }
        editor.keep()
        for j in stored.indices { stored[j].snapshotBytes = rec.storedBytes }
        return stored
    }

    func resultDocument(_ p: PendingEdit, parent: UInt64, hashBefore: String, hashAfter: String, post: CaseScores,
                        timings: [String: Double], refinement: EditResultDocument.Refinement?) -> EditResultDocument {
        let e = p.event, m = p.message
        return EditResultDocument(
            eventId: e.id, kind: "edit", status: e.dryRun == true ? "dry_run" : "applied", redelivery: nil,
            model: .init(name: host.modelName, baseHash: host.baseHash), snapshot: nil, parent: parent, head: parent,
            hashBefore: hashBefore, weightHash: hashAfter, method: p.editor.method, subject: e.subject, targetNew: e.targetNew.str,
            targetTrue: p.record.targetTrue, targetTrueInferred: p.inferred ? true : nil,
            metrics: .init(pre: .init(p.pre), post: .init(post)), timings: timings,
            snapshotBytes: nil, label: nil, source: .init(topic: m.topic, partition: Int(m.partition), offset: Int(m.offset)),
            refinement: refinement, processedAt: Timestamp.now())
    }

    static func refinement(_ editor: FactEditor) -> EditResultDocument.Refinement? {
        if let sae = editor.mesaSetup.settings?.sae {
            return .init(sae: sae, coverage: editor.lastCoverage?.coverage, outside: editor.lastCoverage?.outside, fallback: nil)
        }
        if let why = editor.mesaSetup.fallbackReason { return .init(sae: nil, coverage: nil, outside: nil, fallback: why) }
        return nil
    }

    /// The editor's effective hyperparameters as JSON text (stored with the snapshot).
    static func hyperparameters(_ editor: FactEditor) throws -> String {
        let enc = JSONCoding.encoder()
        if let r = editor as? RomeEditor { return String(decoding: try enc.encode(r.hparams), as: UTF8.self) }
        if let m = editor as? MemitEditor { return String(decoding: try enc.encode(m.hparams), as: UTF8.self) }
        return "{}"
    }

    /// The event as a CounterFact record for scoring. Without target_true, the unedited model's
    /// greedy answer (up to 4 tokens, to the first word boundary) stands in for it.
    func evaluationRecord(_ e: FactUpdate) throws -> (CounterFactRecord, inferred: Bool) {
        var truth = e.targetTrue?.str
        var inferred = false
        if truth == nil {
            let prompt = e.prompt.replacingOccurrences(of: "{}", with: e.subject)
            let tok = EditTokenizer(model: host.model)
            let g = try host.model.generate(prompt: tok.prompt(prompt), maxTokens: 4, sampling: .greedy, seed: 0, stopAtEOS: true)
            let words = g.text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "." || $0 == "," })
            truth = words.first.map(String.init) ?? g.text
            inferred = true
            if truth?.trimmingCharacters(in: .whitespaces).isEmpty ?? true || truth == e.targetNew.str {
                truth = nil
            }
        }
        let record = CounterFactRecord(caseId: 0, subject: e.subject, prompt: e.prompt, targetNew: e.targetNew.str,
                                       targetTrue: truth ?? "", paraphrasePrompts: e.paraphrasePrompts ?? [],
                                       neighborhoodPrompts: e.neighborhoodPrompts ?? [])
        if truth == nil { throw Rejection(.invalidEdit, "no target_true given and the model's own answer equals target_new", eventId: e.id) }
        return (record, inferred)
    }

    /// Checks the event's texts against the model's context before any model work.
    func checkFits(_ e: FactUpdate, _ request: EditRequest, _ editor: FactEditor) throws {
        let scored = [("the prompt", request.filledPrompt)]
            + (e.paraphrasePrompts ?? []).enumerated().map { ("paraphrase_prompts[\($0)]", $1) }
            + (e.neighborhoodPrompts ?? []).enumerated().map { ("neighborhood_prompts[\($0)]", $1) }
        do {
            try request.validate()
            try EditTokenizer(model: host.model).checkFits(request, prefixes: editor.templates.prefixes, scoredPrompts: scored,
                                                           candidates: e.targetTrue.map { [$0.str] } ?? [], generated: e.targetTrue == nil ? 4 : 0)
        } catch let err as EditError {
            throw rejection(err, eventId: e.id)
        }
    }

    /// A model failure on this event's input: too long or unusable input is the event's fault.
    func rejection(_ err: ModelError, eventId: String) -> Rejection {
        switch err.code {
        case .contextOverflow, .invalidInput: return Rejection(.invalidEdit, err.description, eventId: eventId, cause: err)
        default: return Rejection(.editFailed, err.description, eventId: eventId, cause: err)
        }
    }

    func rejection(_ err: EditError, eventId: String) -> Rejection {
        switch err.code {
        case .promptPlaceholder, .subjectNotFound, .emptyTarget, .targetUnchanged, .tooLong:
            return Rejection(.invalidEdit, err.message, eventId: eventId, cause: err)
        case .hyperparameters:
            return Rejection(.invalidHyperparameters, err.message, eventId: eventId, cause: err)
        default:
            return Rejection(.editFailed, "\(err.code): \(err.message)", eventId: eventId, cause: err)
        }
    }
}
