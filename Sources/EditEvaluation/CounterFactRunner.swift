import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import Storage
import Tensor

/// A run that cannot go on (a bad record range, a journal of another run, an interruption), with the
/// message for the operator.
public struct EvaluationRunError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Logs `message` at info through the `mesa` logger (stderr, in the configured format).
func log(_ message: String) { Logger(label: "mesa").info("\(message)") }

/// Runs CounterFact cases through an editor: score, edit, score again, and restore the weights
/// exactly before the next case (or keep them with `sequential`, scoring every case again after the
/// last edit, the sequential protocol of METHODS §3.5). With `checkpoints`, a sequential run also
/// scores every case edited so far after that many edits.
public struct CounterFactRunner {
    public let model: LanguageModel
    public let editor: FactEditor
    public let sequential: Bool
    public var label = "eval"
    public var checkpoints: [Int] = []
    /// Records edited together in one computation (MEMIT, AlphaEdit; 1: one at a time).
    public var batch = 1

    /// Metrics of the edited cases after `edits` sequential edits.
    public struct Checkpoint: Codable {
        public var edits: Int
        public var metrics: Metrics
    }

    /// The quality guard's canary figures (accuracy on facts the base model answers, perplexity of a
    /// text sample) after `edits` sequential edits; `edits` 0 is the base model.
    public struct CanaryPoint: Codable, Equatable {
        public var edits: Int
        public var accuracy: Double
        public var perplexity: Double
        public init(edits: Int, _ f: CanaryFigures) {
            self.edits = edits
            accuracy = f.accuracy
            perplexity = f.perplexity
        }
    }

    /// What a run produced: every case, the wall time, the checkpoint curve and the canary curve.
    public struct Outcome {
        public var cases: [EvalCase]
        public var seconds: Double
        public var checkpoints: [Checkpoint]
        public var canary: [CanaryPoint]
    }

    /// With a journal (sequential runs only), edits go through its store and the run resumes where it stopped.
    public var journal: SequentialJournal?
    /// With a case journal (runs that are not sequential), every scored case is appended to it and
    /// the run resumes after the cases it holds.
    public var caseJournal: CaseJournal?
    /// Polled between cases; a journaled run stops there and can be resumed.
    public var shouldStop: () -> Bool = { false }
    /// With `sequential`: the canary set scored on the base model, at every checkpoint and after the
    /// last edit, and every `canaryEvery` edits (0: only there), so that a long stream shows how the
    /// model wears beside S (issue 15's canary perplexity along a 10,000-edit stream).
    public var canary: QualityGuard?
    public var canaryEvery = 0

    public init(model: LanguageModel, editor: FactEditor, sequential: Bool) {
        self.model = model
        self.editor = editor
        self.sequential = sequential
    }

    public func run(_ records: [CounterFactRecord]) throws -> Outcome {
        precondition(journal == nil || sequential, "a journal records sequential runs")
        precondition(caseJournal == nil || !sequential, "a case journal records runs that are not sequential")
        let scorer = CounterFactScorer.make(model)
        let bar = ProgressBar(label)
        let t0 = Date()
        let done = journal?.cases.count ?? caseJournal?.cases.count ?? 0
        guard done <= records.count else { throw EvaluationRunError("the journal holds \(done) cases, more than the \(records.count) records asked for") }
        var cases = journal?.cases ?? caseJournal?.cases ?? []
        // A checkpoint and a canary point are saved before their batch is committed (below): points past
        // the journal's edits belong to a batch that a stop cut off, and are measured again when it is redone.
        var curve = (journal?.curve ?? []).filter { $0.edits <= done }
        let canary = sequential ? canary : nil
        var canaryCurve = (journal?.canaryCurve ?? []).filter { $0.edits <= done }
        if let canary, canaryCurve.isEmpty {
            canaryCurve.append(CanaryPoint(edits: 0, canary.base))
            try journal?.save(canary: canaryCurve)
        }
        var backups: [WeightBackup] = []
        // The cases scored at a checkpoint after the last edit are the final scores.
        var scoredAtEnd: [EvalCase]?
        let hashBefore = model.weightHash
        // Every edited case scored again on the current weights (which hold all edits so far).
        func rescored(_ cases: [EvalCase]) throws -> [EvalCase] {
            var out = cases
            for j in out.indices where out[j].post != nil { out[j].post = try CounterFactEval.score(records[j], with: scorer) }
            return out
        }
        // "pre" is the unedited model's score of every case (a sequential run's weights hold the earlier
        // edits by the time a case is edited; scoring pre there hides the damage they did).
        let pres = try basePres(records, from: done, scorer: scorer)
        var base: [String: [Float]] = [:], baseNorms: [String: Double] = [:]
        var i = done
        while i < records.count {
            if journal != nil || caseJournal != nil, shouldStop() {
                bar.finish()
                throw EvaluationRunError("interrupted after \(i) edits; run the same command again to resume")
            }
            // One edit computation per group: `batch` records together (the AlphaEdit paper's protocol), or one.
            let group = Array(records[i..<min(records.count, i + max(1, batch))])
            var cs = group.enumerated().map { j, r in EvalCase(record: r, pre: pres[i + j - done]) }
            let requests = group.map { EditRequest(subject: $0.subject, prompt: $0.prompt, targetNew: $0.targetNew, targetTrue: $0.targetTrue) }
            let caseHash = journal == nil ? "" : model.weightHash
            let e0 = Date()
            var kept: [LowRankUpdate] = []
            do {
                let (updates, phases, coverages) = try editor.computeUpdates(together: requests)
                if sequential {
                    for u in updates where base[u.parameter] == nil {
                        base[u.parameter] = journal?.host.baseValues(u.parameter) ?? model.weights.all.first { $0.name == u.parameter }?.data
                        baseNorms[u.parameter] = base[u.parameter].map { w in w.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }
                    }
                }
                var applied: [WeightBackup] = []
                do {
                    // A journaled run applies through its host, which keeps the base values for a replay.
                    for u in updates { if let journal { try journal.host.apply(u) } else { applied.append(try model.apply(u)) } }
                } catch {
                    if let journal { try journal.host.discardUncommitted() } else { for b in applied.reversed() { try model.restore(b) } }
                    throw error
                }
                let seconds = Date().timeIntervalSince(e0) / Double(group.count)
                let norms = sequential ? updateNorms(base) : nil
                for j in cs.indices {
                    cs[j].editSeconds = seconds
                    cs[j].phases = phases
                    let c = j < coverages.count ? coverages[j] : editor.lastCoverage
                    cs[j].saeCoverage = c?.coverage
                    let signals = group.count == 1 ? editor.lastSignals : [:]
                    let fromSAE = c.map { c in
                        ["outside": c.outside, "subject_error": c.subjectError, "crowding": c.crowding].compactMapValues { $0 }
                    }
                    cs[j].uncertainty = fromSAE == nil && signals.isEmpty ? nil : (fromSAE ?? [:]).merging(signals) { a, _ in a }
                    cs[j].post = try CounterFactEval.score(group[j], with: scorer)
                    if sequential {
                        cs[j].immediate = cs[j].post
                        cs[j].updateNorms = norms
                    }
                }
                if sequential {
                    backups += applied
                    kept = updates
                } else {
                    for b in applied.reversed() { try model.restore(b) }
                }
            } catch {
                for j in cs.indices { cs[j].error = String(describing: error) }
            }
            let next = i + group.count
            let mark = sequential ? checkpoints.filter({ $0 > i && $0 <= next }).max() : nil
            // The checkpoint and the canary are measured on the weights that hold this batch and saved
            // before the batch is committed: a stop between the two redoes the batch and measures them
            // again, where the other order would lose them.
            if let canary, mark != nil || next == records.count || (canaryEvery > 0 && next / canaryEvery > i / canaryEvery) {
                try measureCanary(canary, edits: next, into: &canaryCurve)
            }
            if let mark {
                let scored = try rescored(cases + cs)
                let m = Metrics.aggregate(scored.compactMap(\.post))
                if next == records.count { scoredAtEnd = scored }
                curve.append(Checkpoint(edits: next, metrics: m))
                try journal?.save(curve)
                log(String(format: "after %d edits%@: ES %.1f PS %.1f NS %.1f S %.1f", next, mark == next ? "" : " (checkpoint \(mark))",
                           m.es, m.ps, m.ns, m.s))
            }
            if let journal {
                try journal.commit(cs, index: i, factors: kept, state: kept.isEmpty ? [] : editor.pendingState(), method: editor.method,
                                   hashBefore: caseHash)
            }
            try caseJournal?.append(cs)
            if sequential, !kept.isEmpty {
                editor.keep()
                if let state = (editor as? MemitEditor)?.alphaEditState {
                    let fill = Dictionary(uniqueKeysWithValues: state.fill().map { ("\($0.key)", $0.value) })
                    for j in cs.indices { cs[j].nullspaceFill = fill }
                }
            }
            cases += cs
            var extra = ""
            if sequential {
                let m = Metrics.aggregate(cases.compactMap(\.immediate))
                extra = String(format: "immediate S %.1f (ES %.1f PS %.1f NS %.1f)", m.s, m.es, m.ps, m.ns)
                if let norms = cs.last?.updateNorms, let (name, n) = norms.max(by: { $0.value < $1.value }) {
                    extra += String(format: "  max ‖ΔW‖ %.3g (%.2f‖W₀‖)", n, n / (baseNorms[name] ?? .nan))
                }
            }
            bar.update(next, records.count, unit: "cases", seconds: Date().timeIntervalSince(t0), start: done, extra: extra)
            i = next
        }
        bar.finish()
        if let scoredAtEnd {
            for j in cases.indices { cases[j].post = scoredAtEnd[j].post }
        } else if sequential {
            cases = try rescored(cases)
            // A journal written before checkpoints were saved ahead of their batch can hold the last
            // batch without its checkpoint or canary point (a stop between them): they are the end's.
            if done == records.count, let journal, !records.isEmpty {
                let lastStart = (records.count - 1) / max(1, batch) * max(1, batch)
                if checkpoints.contains(where: { $0 > lastStart && $0 <= records.count }), curve.last?.edits != records.count {
                    curve.append(Checkpoint(edits: records.count, metrics: Metrics.aggregate(cases.compactMap(\.post))))
                    try journal.save(curve)
                    log("checkpoint after \(records.count) edits recorded from the final scores")
                }
                if let canary, canaryCurve.last?.edits != records.count {
                    try measureCanary(canary, edits: records.count, into: &canaryCurve)
                }
            }
        }
        if journal == nil {
            for b in backups.reversed() { try model.restore(b) }
            guard model.weightHash == hashBefore else { throw EvaluationRunError("internal error: the weights were not restored exactly") }
        }
        return Outcome(cases: cases, seconds: Date().timeIntervalSince(t0), checkpoints: curve, canary: canaryCurve)
    }

    /// Scores the canary set on the current weights as the point after `edits` edits, saved to the journal.
    private func measureCanary(_ canary: QualityGuard, edits: Int, into canaryCurve: inout [CanaryPoint]) throws {
        let f = try canary.measure(model)
        canaryCurve.append(CanaryPoint(edits: edits, f))
        try journal?.save(canary: canaryCurve)
        log(String(format: "canary after %d edits: accuracy %.1f (base %.1f), perplexity %.3f (base %.3f, %+.2f%%)", edits, f.accuracy,
                   canary.base.accuracy, f.perplexity, canary.base.perplexity, 100 * (f.perplexity / canary.base.perplexity - 1)))
    }

    /// The unedited model's scores of `records[from...]`. A resumed journal's weights hold its edits:
    /// they go back to the base model for the scoring and return to the head (both checked by hash).
    func basePres(_ records: [CounterFactRecord], from done: Int, scorer: CandidateScorer) throws -> [CaseScores] {
        // A journal keeps every base score it computed (`pre.jsonl`): a long run stopped before its
        // first edit, or resumed many times, scores each record on the base model once.
        var pres = try journal?.basePres() ?? [:]
        let missing = (done..<records.count).filter { pres[$0] == nil }
        if !missing.isEmpty {
            let head = journal?.host.head ?? 0
            if head != 0 { try journal?.host.materialize(0) }
            let scored = Result {
                for (n, i) in missing.enumerated() {
                    let s = try CounterFactEval.score(records[i], with: scorer)
                    pres[i] = s
                    try journal?.appendBasePre(i, s)
                    if (n + 1) % 1000 == 0 { log("scored \(n + 1) of \(missing.count) records on the base model") }
                }
            }
            if head != 0 { try journal?.host.materialize(head) }
            try scored.get()
        }
        return (done..<records.count).map { pres[$0]! }
    }

    /// ‖W − W₀‖_F of every tensor in `base`, W the current weights (in Double).
    func updateNorms(_ base: [String: [Float]]) -> [String: Double] {
        var out: [String: Double] = [:]
        for (name, w0) in base {
            guard let w = model.weights.all.first(where: { $0.name == name })?.data, w.count == w0.count else { continue }
            var sum = 0.0
            for i in w.indices { let d = Double(w[i]) - Double(w0[i]); sum += d * d }
            out[name] = sum.squareRoot()
        }
        return out
    }

    /// Settings recorded with every report: the method's hyperparameters and BLAS.
    public func settings() -> [String: String] {
        var s = editor.settings
        s["method"] = editor.method
        s["blas"] = BLAS.configuration.description
        return s
    }
}

/// Records `start..<start+limit` of a CounterFact file (either layout).
public func loadRecords(_ path: String, start: Int, limit: Int) throws -> [CounterFactRecord] {
    let all = try CounterFact.load(path: path).records
    guard start >= 0, start < all.count else { throw EvaluationRunError("--start \(start) is outside 0..<\(all.count)") }
    return Array(all[start..<min(all.count, start + max(0, limit))])
}

/// Makes a run that is not sequential resumable: each case is scored on the base weights on its own,
/// so the journal is the scored cases themselves, one JSON line each in `cases.jsonl`, appended and
/// flushed to disk as each case ends, beside the run's signature (`run.json`). A run that stops
/// anywhere continues with the same command after the complete lines (a line cut by a crash is
/// dropped and its case done again).
public final class CaseJournal {
    public let cases: [EvalCase]
    let handle: FileHandle

    public init(directory: URL, fingerprint: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        try SequentialJournal.claim(directory, fingerprint: fingerprint)
        let url = directory.appendingPathComponent("cases.jsonl")
        var text = fm.contents(atPath: url.path).map { String(decoding: $0, as: UTF8.self) } ?? ""
        if !text.isEmpty, !text.hasSuffix("\n"), let cut = text.lastIndex(of: "\n") {
            text = String(text[...cut])
        } else if !text.hasSuffix("\n") {
            text = ""
        }
        cases = try text.split(separator: "\n").map { try JSONDecoder().decode(EvalCase.self, from: Data($0.utf8)) }
        try Data(text.utf8).write(to: url, options: .atomic)
        handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        if !cases.isEmpty { log("resuming after \(cases.count) case(s) from \(directory.path)") }
    }

    deinit { try? handle.close() }

    /// Appends `cs`, one line each, and flushes them to disk.
    func append(_ cs: [EvalCase]) throws {
        var data = Data()
        for c in cs {
            data.append(try JSONEncoder().encode(c))
            data.append(UInt8(ascii: "\n"))
        }
        try handle.write(contentsOf: data)
        try handle.synchronize()
    }
}

/// Makes a sequential run resumable: every edit is committed to an LMDB snapshot store under
/// `directory` (its updates, the method's state blocks, and the scored case as the snapshot's result),
/// and the checkpoint curve is a JSON file beside it. A run that stops anywhere (Ctrl-C, kill, the
/// end of a session) continues with the same command: the stored updates are replayed onto the
/// freshly loaded model (checked against the recorded weight hash), the editor's state is rebuilt
/// from the stored blocks, and the records already done are skipped.
public final class SequentialJournal {
    public let host: ModelHost
    public let curveURL: URL
    public let canaryURL: URL
    /// The base model's scores of the run's records, one JSON line each ({"index", "pre"}).
    public let preURL: URL
    private var preHandle: FileHandle?
    /// The cases, the checkpoint curve and the canary curve already recorded when the journal was opened.
    public let cases: [EvalCase]
    public let curve: [CounterFactRunner.Checkpoint]
    public let canaryCurve: [CounterFactRunner.CanaryPoint]

    /// The signature of a run (`run.json`): the method, its settings (sorted, AlphaEdit's nullity left
    /// out), the data file, the first record, the base model's hash and the batch size. A journal
    /// resumes only under the same signature, byte for byte.
    public static func signature(editor: FactEditor, dataPath: String, start: Int, baseHash: String, batch: Int) -> String {
        "\(editor.method) \(editor.settings.sorted { $0.key < $1.key }.filter { $0.key != "nullity" }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) data=\(dataPath) start=\(start) model=\(baseHash)" + (batch > 1 ? " batch=\(batch)" : "")
    }

    /// `fingerprint` identifies the run (`signature`); a directory holding another run is refused.
    public init(directory: URL, model: LanguageModel, modelName: String, editor: FactEditor, fingerprint: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        try Self.claim(directory, fingerprint: fingerprint)
        let store = try SnapshotStore(path: directory.appendingPathComponent("lmdb").path)
        host = try ModelHost(model: model, modelName: modelName, store: store)
        let lineage = try store.lineage(to: host.head)
        try editor.rebuildState(lineage.map(\.state))
        cases = try lineage.flatMap { rec in
            try rec.eventIds.map { try JSONDecoder().decode(EvalCase.self, from: Data((rec.result(ofEvent: $0) ?? "").utf8)) }
        }
        curveURL = directory.appendingPathComponent("curve.json")
        curve = (fm.contents(atPath: curveURL.path)).flatMap { try? JSONDecoder().decode([CounterFactRunner.Checkpoint].self, from: $0) } ?? []
        canaryURL = directory.appendingPathComponent("canary.json")
        preURL = directory.appendingPathComponent("pre.jsonl")
        canaryCurve = (fm.contents(atPath: canaryURL.path)).flatMap { try? JSONDecoder().decode([CounterFactRunner.CanaryPoint].self, from: $0) } ?? []
        if !cases.isEmpty { log("resuming after \(cases.count) edit(s) from \(directory.path) (weights at snapshot \(host.head))") }
    }

    /// Writes `fingerprint` as the directory's run (`run.json`), or checks that it is the run there.
    static func claim(_ directory: URL, fingerprint: String) throws {
        let runURL = directory.appendingPathComponent("run.json")
        if let old = FileManager.default.contents(atPath: runURL.path) {
            guard String(decoding: old, as: UTF8.self) == fingerprint else {
                throw EvaluationRunError("\(directory.path) holds another run (\(runURL.path)); use a fresh --resume directory")
            }
        } else {
            try Data(fingerprint.utf8).write(to: runURL, options: .atomic)
        }
    }

    /// Records the cases edited together from `index` on, with the updates already applied through
    /// `host` and the editor's new state, as one snapshot (a batch snapshot for several cases).
    func commit(_ cs: [EvalCase], index: Int, factors: [LowRankUpdate], state: [StateBlock], method: String, hashBefore: String) throws {
        let ids = cs.enumerated().map { j, c in "case-\(index + j)-\(c.caseId)" }
        let draft = SnapshotDraft(eventId: ids[0], source: nil, method: method, hyperparameters: "{}",
                                  hashBefore: hashBefore, hashAfter: host.model.weightHash, blas: ModelHost.blasInfo, factors: factors, state: state,
                                  batch: ids.dropFirst().map { BatchMember(eventId: $0, source: nil) })
        let docs = try cs.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        _ = try host.commit(draft) { _ in docs }
    }

    func save(_ curve: [CounterFactRunner.Checkpoint]) throws {
        try JSONEncoder().encode(curve).write(to: curveURL, options: .atomic)
    }

    deinit { try? preHandle?.close() }

    struct BasePre: Codable {
        var index: Int
        var pre: CaseScores
    }

    /// The base scores journalled so far, by record index (from the run's first record). A line cut
    /// by a crash is dropped (its record is scored again) and the file rewritten without it.
    func basePres() throws -> [Int: CaseScores] {
        var text = FileManager.default.contents(atPath: preURL.path).map { String(decoding: $0, as: UTF8.self) } ?? ""
        if !text.hasSuffix("\n") { text = text.lastIndex(of: "\n").map { String(text[...$0]) } ?? "" }
        var out: [Int: CaseScores] = [:]
        for line in text.split(separator: "\n") {
            let p = try JSONDecoder().decode(BasePre.self, from: Data(line.utf8))
            out[p.index] = p.pre
        }
        try Data(text.utf8).write(to: preURL, options: .atomic)
        try preHandle?.close()
        preHandle = try FileHandle(forWritingTo: preURL)
        try preHandle?.seekToEnd()
        return out
    }

    func appendBasePre(_ index: Int, _ pre: CaseScores) throws {
        guard let preHandle else { return }
        var data = try JSONEncoder().encode(BasePre(index: index, pre: pre))
        data.append(UInt8(ascii: "\n"))
        try preHandle.write(contentsOf: data)
    }

    func save(canary: [CounterFactRunner.CanaryPoint]) throws {
        try JSONEncoder().encode(canary).write(to: canaryURL, options: .atomic)
    }
}
