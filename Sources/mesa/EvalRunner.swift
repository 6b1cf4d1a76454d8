import Editing
import Evaluation
import Foundation
import ModelRuntime
import Tensor

/// Runs CounterFact cases through an editor: score, edit, score again, and restore the weights
/// exactly before the next case (or keep them with `sequential`, scoring every case again after the
/// last edit, the sequential protocol of METHODS §3.5). With `checkpoints`, a sequential run also
/// scores every case edited so far after that many edits.
struct CounterFactRunner {
    let model: LanguageModel
    let editor: FactEditor
    let sequential: Bool
    var label = "eval"
    var checkpoints: [Int] = []

    /// Metrics of the edited cases after `edits` sequential edits.
    struct Checkpoint: Codable {
        var edits: Int
        var metrics: Metrics
    }

    func run(_ records: [CounterFactRecord]) throws -> (cases: [EvalCase], seconds: Double, checkpoints: [Checkpoint]) {
        let scorer = CounterFactScorer.make(model)
        let bar = ProgressBar(label)
        let t0 = Date()
        var cases: [EvalCase] = []
        var backups: [WeightBackup] = []
        var curve: [Checkpoint] = []
        let hashBefore = model.weightHash
        for (i, r) in records.enumerated() {
            var c = EvalCase(record: r, pre: try CounterFactEval.score(r, with: scorer))
            let request = EditRequest(subject: r.subject, prompt: r.prompt, targetNew: r.targetNew, targetTrue: r.targetTrue)
            let e0 = Date()
            do {
                let (updates, phases) = try editor.computeUpdates(for: request)
                var applied: [WeightBackup] = []
                do { for u in updates { applied.append(try model.apply(u)) } } catch {
                    for b in applied.reversed() { try model.restore(b) }
                    throw error
                }
                c.editSeconds = Date().timeIntervalSince(e0)
                c.phases = phases
                c.saeCoverage = editor.lastCoverage?.coverage
                c.post = try CounterFactEval.score(r, with: scorer)
                if sequential {
                    backups += applied
                    editor.keep()
                } else {
                    for b in applied.reversed() { try model.restore(b) }
                }
            } catch {
                c.error = String(describing: error)
            }
            cases.append(c)
            if sequential, checkpoints.contains(i + 1) {
                var scored = cases
                for j in scored.indices where scored[j].post != nil { scored[j].post = try CounterFactEval.score(records[j], with: scorer) }
                let m = Metrics.aggregate(scored.compactMap(\.post))
                curve.append(Checkpoint(edits: i + 1, metrics: m))
                log(String(format: "after %d edits: ES %.1f PS %.1f NS %.1f S %.1f", i + 1, m.es, m.ps, m.ns, m.s))
            }
            bar.update(i + 1, records.count, unit: "cases", seconds: Date().timeIntervalSince(t0))
        }
        bar.finish()
        if sequential {
            // Every case again, on the model that holds all edits.
            for i in cases.indices where cases[i].post != nil {
                cases[i].post = try CounterFactEval.score(records[i], with: scorer)
            }
            for b in backups.reversed() { try model.restore(b) }
        }
        guard model.weightHash == hashBefore else { throw fail("internal error: the weights were not restored exactly") }
        return (cases, Date().timeIntervalSince(t0), curve)
    }

    /// Settings recorded with every report: the method's hyperparameters and BLAS.
    func settings() -> [String: String] {
        var s = editor.settings
        s["method"] = editor.method
        s["blas"] = BLAS.configuration.description
        return s
    }
}

func loadRecords(_ path: String, start: Int, limit: Int) throws -> [CounterFactRecord] {
    let all = try CounterFact.load(path: path).records
    guard start >= 0, start < all.count else { throw fail("--start \(start) is outside 0..<\(all.count)") }
    return Array(all[start..<min(all.count, start + max(0, limit))])
}

var defaultDataPath: String { FileManager.default.currentDirectoryPath + "/../shared/data/counterfact/counterfact-val.json" }
