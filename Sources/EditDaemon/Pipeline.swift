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

/// The topics the daemon reads and writes.
public struct Topics: Codable, Sendable, Equatable {
    public var factUpdates = "mesa.fact-updates"
    public var control = "mesa.control"
    public var results = "mesa.edit-results"
    public var deadLetters = "mesa.dead-letters"
    public init() {}
    public var inputs: [String] { [factUpdates, control] }
    public var all: [String] { [factUpdates, control, results, deadLetters] }
}

/// A record to publish.
public struct OutboundRecord: Sendable {
    public var topic: String
    public var key: [UInt8]?
    public var payload: [UInt8]
    public var headers: [KafkaHeader]
    /// A smaller record to send instead when the broker refuses this one as too large (dead letters).
    public var smaller: (@Sendable () -> OutboundRecord)?
}

/// What processing one event produced: records to publish before its offset is committed, and what
/// happened, for metrics and logs.
public struct Outcome: Sendable {
    public enum Kind: Sendable, Equatable {
        case applied(method: String)
        case dryRun
        case redelivery
        case rolledBack
        case labelled
        case deadLetter(DeadLetterReason)
    }
    public var kind: Kind
    public var records: [OutboundRecord]
    /// Seconds spent in the edit math (update computation and scoring), excluded from the overhead.
    public var editSeconds: Double
    public var eventId: String?
    public var summary: String
    /// Seconds of the daemon's own steps (e.g. "hash", "snapshot"; the daemon adds "publish" and
    /// "commit"), for metrics and benchmarks.
    public var steps: [String: Double] = [:]
    /// The canary figures of the weights after the event (when a quality guard runs).
    public var canary: CanaryFigures?

    /// The outcome as log fields: `outcome`, `event_id`, `seconds` (the whole event) and `edit_seconds`.
    public func logMetadata(total: Double) -> Logger.Metadata {
        var m: Logger.Metadata = ["outcome": "\(kind.label)", "seconds": "\(String(format: "%.4f", total))"]
        if let eventId { m["event_id"] = "\(eventId)" }
        if editSeconds > 0 { m["edit_seconds"] = "\(String(format: "%.4f", editSeconds))" }
        return m
    }
}

extension Outcome.Kind {
    /// A short name: applied, dry_run, redelivery, rolled_back, labelled, dead_letter.
    public var label: String {
        switch self {
        case .applied: return "applied"
        case .dryRun: return "dry_run"
        case .redelivery: return "redelivery"
        case .rolledBack: return "rolled_back"
        case .labelled: return "labelled"
        case .deadLetter: return "dead_letter"
        }
    }
}

/// decode → validate → dedupe → edit → evaluate → snapshot, for one consumed message. Publishing and
/// committing are the caller's (the daemon publishes `Outcome.records`, then commits offset+1).
///
/// Anything wrong with the event itself is a dead letter; `process` throws only for failures of the
/// daemon's own resources (the snapshot store), after which the event must not be committed.
public final class Pipeline: @unchecked Sendable {
    public let host: ModelHost
    let catalog: SchemaCatalog
    let factSchema: CompiledSchema
    let controlSchema: CompiledSchema
    public let topics: Topics
    public let maxEventBytes: Int
    /// How much of a rejected record its dead letter carries.
    public var deadLetterLimits = DeadLetterDocument.Limits()
    /// Scores the canary set after every edit or batch; an edit that crosses its thresholds is undone
    /// and its events dead-lettered (`quality_gate`). Nil: no guard.
    public var qualityGuard: QualityGuard?
    let registry: EditorRegistry
    let hyperparameters: MethodHyperparameters
    let defaultEditor: FactEditor
    private var editors: [String: FactEditor] = [:]
    let scorer: CandidateScorer
    let logger: Logger

    /// `editor` is the default editor for `hyperparameters`; its method state (AlphaEdit's accumulated keys)
    /// is rebuilt here from the snapshots the weights hold.
    public init(host: ModelHost, catalog: SchemaCatalog, topics: Topics, maxEventBytes: Int, registry: EditorRegistry,
                hyperparameters: MethodHyperparameters, editor: FactEditor, logger: Logger) throws {
        self.host = host
        self.catalog = catalog
        factSchema = try catalog.schema("fact-update.schema.json")
        controlSchema = try catalog.schema("control-command.schema.json")
        self.topics = topics
        self.maxEventBytes = maxEventBytes
        self.registry = registry
        self.hyperparameters = hyperparameters
        defaultEditor = editor
        scorer = CounterFactScorer.make(host.model)
        self.logger = logger
        try rebuildEditState()
    }

    /// Brings the editor's method state to the weights' head: the state blocks of its lineage.
    func rebuildEditState() throws {
        guard case .alphaEdit = hyperparameters else { return }
        let lineage = try host.store.lineage(to: host.head)
        try defaultEditor.rebuildState(lineage.map(\.state))
        if !lineage.isEmpty {
            logger.info("AlphaEdit: accumulated the keys of \(lineage.count) edit(s) up to snapshot \(host.head)",
                        metadata: ["edits": "\(lineage.count)", "snapshot": "\(host.head)"])
        }
    }

    // MARK: entry point

    public func process(_ m: KafkaMessage) throws -> Outcome {
        do {
            if m.topic == topics.control { return try control(m) }
            return try factUpdate(m)
        } catch let r as Rejection {
            return deadLetter(m, r)
        }
    }

    func validate(_ value: JSONValue, _ schema: CompiledSchema, name: String) throws {
        let result = schema.validate(value)
        guard result.valid else {
            let details = result.errors.prefix(20).map(\.description)
            let id = EventReader.eventId(value)
            throw Rejection(.schema, "the event does not conform to \(name) (\(result.errors.count) error(s)): \(details.first ?? "")",
                            details: Array(details), eventId: id)
        }
    }

    func checkModel(_ name: String, eventId: String) throws {
        let short = name.split(separator: "/").last.map(String.init) ?? name
        guard short.caseInsensitiveCompare(host.modelName) == .orderedSame else {
            throw Rejection(.unknownModel, "the event is for model \(name); this daemon serves \(host.modelName)", eventId: eventId)
        }
    }

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
            return .done(Outcome(kind: .redelivery, records: [resultRecord(result)], editSeconds: 0, eventId: e.id,
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
        return Outcome(kind: .applied(method: editor.method), records: [resultRecord(stored)], editSeconds: editSeconds, eventId: e.id,
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
            throw Rejection(.editFailed, "applying the update failed: \(error)", eventId: eventId)
        }
        let hashing = DispatchGroup()
        let model = host.model
        DispatchQueue.global().async(group: hashing) { _ = model.weightHash }
        let posts: [CaseScores]
        do { posts = try records.map { try CounterFactEval.score($0, with: scorer) } } catch {
            hashing.wait()
            try host.discardUncommitted()
            throw Rejection(.editFailed, "scoring the edited model failed: \(error)", eventId: eventId)
        }
        let scoredAt = Date()
        // The canary set, while the hash is still being computed.
        var canary: CanaryFigures?, canarySeconds: Double?
        if let g = qualityGuard {
            do { canary = try g.measure(model) } catch {
                hashing.wait()
                try host.discardUncommitted()
                throw Rejection(.editFailed, "scoring the canary set on the edited model failed: \(error)", eventId: eventId)
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

    // MARK: batches

    /// Processes consecutive messages of one partition. Fact updates for the default editor of a
    /// method that edits several facts in one computation (MEMIT, AlphaEdit), other than dry runs,
    /// are edited together and stored as one snapshot that indexes all their ids; a fact that repeats
    /// a pending one (same id, or same subject and prompt) waits for the pending edit, so the later
    /// update wins as it would one at a time. Everything else is processed alone, in order. One
    /// outcome per message, in order; throws only for failures of the daemon's own resources.
    public func process(batch ms: [KafkaMessage]) throws -> [Outcome] {
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
            // The batch was edited as one: every event of it is refused with the figures.
            return g.map { i, p in
                var mine = r
                mine.eventId = p.event.id
                return (i, deadLetter(p.message, mine))
            }
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
        return g.enumerated().map { j, member in
            let e = member.edit.event
            return (member.index, Outcome(kind: .applied(method: editor.method), records: [resultRecord(stored[j])], editSeconds: editSeconds, eventId: e.id,
                                          summary: "applied \(e.id) as snapshot \(stored[j].snapshot ?? 0) (batch edit \(j + 1) of \(n)): \(e.subject) → \(e.targetNew.str)",
                                          steps: ["hash": applied.hashSeconds, "snapshot": snapshotSeconds], canary: applied.canary))
        }
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

    /// The editor for an event: the default one, or one with the event's bounded overrides.
    func editor(for e: FactUpdate) throws -> FactEditor {
        guard let o = e.hyperparameters else { return defaultEditor }
        switch hyperparameters {
        case .rome(let defaults):
            var h = defaults
            if let layers = o.layers {
                guard layers.count == 1 else { throw Rejection(.invalidHyperparameters, "ROME edits one layer; the event names \(layers)", eventId: e.id) }
                h.layer = layers[0]
            }
            if let lr = o.learningRate { h.vLr = Float(lr) }
            if let steps = o.steps { h.vNumGradSteps = steps }
            if let c = o.clampNormFactor { h.clampNormFactor = Float(c) }
            if let k = o.klFactor { h.klFactor = Float(k) }
            if o.mom2UpdateWeight != nil {
                throw Rejection(.invalidHyperparameters, "mom2_update_weight is a MEMIT setting; ROME does not take it", eventId: e.id)
            }
            if h == defaults { return defaultEditor }
            do { try h.validate(layers: host.model.config.layers) } catch {
                throw Rejection(.invalidHyperparameters, "\(error)", eventId: e.id)
            }
            return try cachedEditor(h, eventId: e.id) {
                try registry.editor(model: host.model, hparams: .rome(h), baseHash: host.baseHash, computeMissing: false)
            }
        case .memit(let defaults), .alphaEdit(let defaults):
            let alphaEdit = hyperparameters.method == .alphaedit
            var h = defaults
            if let layers = o.layers {
                guard !alphaEdit || layers == defaults.layers else {
                    throw Rejection(.invalidHyperparameters, "AlphaEdit's accumulated state is per layer; its layers \(defaults.layers) are fixed", eventId: e.id)
                }
                h.layers = layers
            }
            if let lr = o.learningRate { h.vLr = Float(lr) }
            if let steps = o.steps { h.vNumGradSteps = steps }
            if let c = o.clampNormFactor { h.clampNormFactor = Float(c) }
            if let k = o.klFactor { h.klFactor = Float(k) }
            if let w = o.mom2UpdateWeight {
                guard !alphaEdit else { throw Rejection(.invalidHyperparameters, "mom2_update_weight is MEMIT's λ; AlphaEdit does not use it", eventId: e.id) }
                h.mom2UpdateWeight = w
            }
            if h == defaults { return defaultEditor }
            do { try h.validate(layers: host.model.config.layers) } catch {
                throw Rejection(.invalidHyperparameters, "\(error)", eventId: e.id)
            }
            return try cachedEditor(h, eventId: e.id) {
                guard let base = defaultEditor as? MemitEditor else { throw SetupError("the default editor is not MEMIT") }
                if h.layers == defaults.layers {
                    // Same layers: share the statistics, templates, SAE and (AlphaEdit) the accumulated state.
                    return try MemitEditor(model: host.model, hparams: h, templates: base.templates, statistics: base.statistics,
                                           solver: base.solver, sae: base.mesaSetup.sae, fallbackReason: base.mesaSetup.fallbackReason)
                }
                return try registry.editor(model: host.model, hparams: .memit(h), baseHash: host.baseHash, computeMissing: false)
            }
        }
    }

    func cachedEditor<H: Encodable>(_ h: H, eventId: String, make: () throws -> FactEditor) throws -> FactEditor {
        let key = String(decoding: try JSONCoding.encoder().encode(h), as: UTF8.self)
        if let cached = editors[key] { return cached }
        do {
            let ed = try make()
            if editors.count >= 8 { editors.removeAll() }
            editors[key] = ed
            return ed
        } catch let r as Rejection {
            throw r
        } catch {
            throw Rejection(.invalidHyperparameters, "the overrides need state this daemon does not have: \(error)", eventId: eventId)
        }
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
        case .contextOverflow, .invalidInput: return Rejection(.invalidEdit, err.description, eventId: eventId)
        default: return Rejection(.editFailed, err.description, eventId: eventId)
        }
    }

    func rejection(_ err: EditError, eventId: String) -> Rejection {
        switch err.code {
        case .promptPlaceholder, .subjectNotFound, .emptyTarget, .targetUnchanged, .tooLong:
            return Rejection(.invalidEdit, err.message, eventId: eventId)
        case .hyperparameters:
            return Rejection(.invalidHyperparameters, err.message, eventId: eventId)
        default:
            return Rejection(.editFailed, "\(err.code): \(err.message)", eventId: eventId)
        }
    }

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
            return Outcome(kind: .redelivery, records: [resultRecord(doc)], editSeconds: 0, eventId: c.id,
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
                    throw Rejection(err.code == .notFound ? .unknownSnapshot : .rollbackFailed, err.message, eventId: c.id)
                }
            }
            let t0 = Date()
            let entry: JournalEntry
            do { entry = try host.rollback(to: to, commandId: c.id) } catch let err as WeightStateError {
                throw Rejection(.rollbackFailed, err.message, eventId: c.id)
            } catch let err as SnapshotStoreError where err.code == .corrupted || err.code == .notFound {
                throw Rejection(.rollbackFailed, err.message, eventId: c.id)
            }
            try rebuildEditState()
            var doc = commandResult(c, entry: entry, source: m)
            doc.timings = ["rollback_seconds": Date().timeIntervalSince(t0)]
            let canary = try qualityGuard.map { try $0.measure(host.model) }
            doc.canary = canaryDocument(canary)
            return Outcome(kind: .rolledBack, records: [resultRecord(doc)], editSeconds: 0, eventId: c.id,
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

    // MARK: output records

    func resultRecord(_ doc: EditResultDocument) -> OutboundRecord {
        let payload = (try? JSONCoding.encoder().encode(doc)).map(Array.init) ?? []
        let ce = CloudEvent(id: UUID().uuidString.lowercased(), source: EventTypes.source, type: EventTypes.editResult,
                            subject: doc.eventId, datacontenttype: "application/json", data: payload)
        return OutboundRecord(topic: topics.results, key: Array(host.modelName.utf8), payload: payload, headers: ce.kafkaHeaders())
    }

    /// The dead letter for `m`: the reason, the message and the original record, bounded so that it
    /// always fits the broker's message limit (`DeadLetterDocument.Limits`).
    public func deadLetter(_ m: KafkaMessage, _ r: Rejection) -> Outcome {
        let doc = DeadLetterDocument(m, r, limits: deadLetterLimits)
        return Outcome(kind: .deadLetter(r.reason), records: [deadLetterRecord(doc, key: m.key)], editSeconds: 0, eventId: r.eventId,
                       summary: "dead letter (\(r.reason.rawValue)) for \(m.topic)/\(m.partition)@\(m.offset): \(r.message)")
    }

    /// The record of a dead letter, keyed by the original key when that is short; its smaller form
    /// carries none of the original bytes (only their lengths and SHA-256), for a broker whose message
    /// limit is below the dead letter's.
    public func deadLetterRecord(_ doc: DeadLetterDocument, key: [UInt8]?) -> OutboundRecord {
        let topic = topics.deadLetters
        @Sendable func record(_ doc: DeadLetterDocument, key: [UInt8]?) -> OutboundRecord {
            let payload = (try? JSONCoding.encoder().encode(doc)).map(Array.init) ?? []
            let ce = CloudEvent(id: UUID().uuidString.lowercased(), source: EventTypes.source, type: EventTypes.deadLetter,
                                subject: doc.eventId, datacontenttype: "application/json", data: payload)
            return OutboundRecord(topic: topic, key: key, payload: payload, headers: ce.kafkaHeaders())
        }
        var r = record(doc, key: key.flatMap { $0.count <= deadLetterLimits.keyBytes ? $0 : nil })
        let bare = doc.withoutOriginalBytes()
        r.smaller = { record(bare, key: nil) }
        return r
    }

    /// The id a record claims, for a dead letter that cannot say more (best effort: the CloudEvents id
    /// or the JSON body's "id").
    public func eventIdHint(_ m: KafkaMessage) -> String? {
        if let ce = try? CloudEvent.decode(m) { return ce.id.utf8.count <= 256 ? ce.id : nil }
        guard m.payload.count <= maxEventBytes, let v = try? JSONValue.parse(m.payload, limits: JSONParseLimits(maxDepth: 64)) else { return nil }
        return EventReader.eventId(v)
    }
}

/// Schemas/edit-result.schema.json.
public struct EditResultDocument: Codable, Sendable, Equatable {
    public struct Model: Codable, Sendable, Equatable { public var name: String; public var baseHash: String }
    public struct Scores: Codable, Sendable, Equatable {
        public var es, em, ps, pm, ns, nm: Double?
        public var pNew: Double?
        init(_ s: CaseScores) {
            func v(_ x: Double) -> Double? { x.isNaN ? nil : x }
            es = v(s.es); em = v(s.em); ps = v(s.ps); pm = v(s.pm); ns = v(s.ns); nm = v(s.nm)
            pNew = s.rewrite.first.map { exp(-$0.nllNew) }
        }
    }
    public struct Metrics: Codable, Sendable, Equatable { public var pre: Scores?; public var post: Scores? }
    public struct Source: Codable, Sendable, Equatable { public var topic: String; public var partition: Int; public var offset: Int }

    public var eventId: String
    public var kind: String
    public var status: String
    public var redelivery: Bool?
    public var model: Model
    public var snapshot: UInt64?
    public var parent: UInt64?
    public var head: UInt64
    public var hashBefore: String?
    public var weightHash: String
    public var method: String?
    public var subject: String?
    public var targetNew: String?
    public var targetTrue: String?
    public var targetTrueInferred: Bool?
    public var metrics: Metrics?
    public var timings: [String: Double]?
    public var snapshotBytes: Int?
    public var label: String?
    public var source: Source?
    /// MESA: the SAE the value vector was refined through and how much of the written change it
    /// represents, or why refinement is off.
    public var refinement: Refinement?
    /// A batch edit: the events edited together in one computation and stored as one snapshot.
    public var batch: Batch?
    /// A redelivery: whether the snapshot that applied the event is still on the head's lineage.
    public var onHeadLineage: Bool?
    /// A word to the subscriber, e.g. why a redelivered edit is no longer in the live weights.
    public var note: String?
    /// The quality guard's canary figures on the weights after the event, beside the base model's.
    public var canary: Canary?

    public struct Canary: Codable, Sendable, Equatable {
        public var accuracy: Double
        public var perplexity: Double
        public var baseAccuracy: Double
        public var basePerplexity: Double
    }
    public var processedAt: String

    public struct Batch: Codable, Sendable, Equatable {
        public var size: Int
        /// This event's place in the batch, from 0.
        public var index: Int
        public var eventIds: [String]
    }

    public struct Refinement: Codable, Sendable, Equatable {
        public var sae: String?
        public var coverage: Double?
        public var outside: Double?
        public var fallback: String?
    }
}

/// Schemas/dead-letter.schema.json.
public struct DeadLetterDocument: Codable, Sendable, Equatable {
    /// How much of the original record a dead letter carries. Past a limit it carries the first bytes,
    /// the whole length and the SHA-256 of the whole, so that it always fits the broker's message
    /// limit (1 MB by default) whatever the original was.
    public struct Limits: Sendable, Equatable {
        public var payloadBytes = 65_536
        public var keyBytes = 1_024
        public var headerValueBytes = 1_024
        public var headers = 64
        public var messageCharacters = 4_096
        public init() {}
    }
    public struct Header: Codable, Sendable, Equatable {
        public var key: String
        public var valueBase64: String?
        public var valueBytes: Int?
        public var valueSha256: String?
    }
    public struct Original: Codable, Sendable, Equatable {
        public var topic: String
        public var partition: Int
        public var offset: Int
        public var keyBase64: String?
        /// The key's length and SHA-256 when `key_base64` holds only its first bytes.
        public var keyBytes: Int?
        public var keySha256: String?
        public var payloadBase64: String
        /// The payload's length and SHA-256 when `payload_base64` holds only its first bytes.
        public var payloadBytes: Int?
        public var payloadSha256: String?
        public var headers: [Header]
        /// How many headers were left out past the limit.
        public var headersOmitted: Int?
    }
    public var reason: String
    public var message: String
    public var eventId: String?
    public var details: [String]?
    public var original: Original
    public var deadLetteredAt: String

    public init(reason: String, message: String, eventId: String?, details: [String]?, original: Original, deadLetteredAt: String) {
        self.reason = reason
        self.message = message
        self.eventId = eventId
        self.details = details
        self.original = original
        self.deadLetteredAt = deadLetteredAt
    }

    /// The same dead letter with none of the original bytes: lengths and SHA-256 only.
    public func withoutOriginalBytes() -> DeadLetterDocument {
        var d = self
        func bytes(_ b64: String?, _ n: Int?) -> Int? { n ?? b64.flatMap { Data(base64Encoded: $0)?.count } }
        func digest(_ b64: String?, _ h: String?) -> String? { h ?? b64.flatMap { Data(base64Encoded: $0) }.map { SHA256.hex(SHA256.hash(Array($0))) } }
        let o = original
        d.original.payloadBytes = bytes(o.payloadBase64, o.payloadBytes)
        d.original.payloadSha256 = digest(o.payloadBase64, o.payloadSha256)
        d.original.payloadBase64 = ""
        if o.keyBase64 != nil {
            d.original.keyBytes = bytes(o.keyBase64, o.keyBytes)
            d.original.keySha256 = digest(o.keyBase64, o.keySha256)
            d.original.keyBase64 = ""
        }
        d.original.headersOmitted = (o.headersOmitted ?? 0) + o.headers.count
        d.original.headers = []
        if d.original.headersOmitted == 0 { d.original.headersOmitted = nil }
        return d
    }

    /// The dead letter of `m` rejected for `r`, within `limits`.
    public init(_ m: KafkaMessage, _ r: Rejection, limits: Limits) {
        /// The first `limit` bytes in base64, and the whole length and SHA-256 when cut.
        func cut(_ b: [UInt8], _ limit: Int) -> (String, Int?, String?) {
            guard b.count > limit else { return (Data(b).base64EncodedString(), nil, nil) }
            return (Data(b.prefix(limit)).base64EncodedString(), b.count, SHA256.hex(SHA256.hash(b)))
        }
        func clip(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n)) + "… (\(s.count) characters)" }
        let key = m.key.map { cut($0, limits.keyBytes) }
        let payload = cut(m.payload, limits.payloadBytes)
        let headers = m.headers.prefix(limits.headers).map { h -> Header in
            let v = h.value.map { cut($0, limits.headerValueBytes) }
            return Header(key: clip(h.key, 256), valueBase64: v?.0, valueBytes: v?.1, valueSha256: v?.2)
        }
        self.init(
            reason: r.reason.rawValue, message: clip(r.message, limits.messageCharacters),
            eventId: r.eventId.map { clip($0, 256) }, details: r.details.isEmpty ? nil : r.details.prefix(20).map { clip($0, 1_024) },
            original: Original(topic: m.topic, partition: Int(m.partition), offset: Int(m.offset), keyBase64: key?.0, keyBytes: key?.1,
                               keySha256: key?.2, payloadBase64: payload.0, payloadBytes: payload.1, payloadSha256: payload.2,
                               headers: headers, headersOmitted: m.headers.count > limits.headers ? m.headers.count - limits.headers : nil),
            deadLetteredAt: Timestamp.now())
    }
}
