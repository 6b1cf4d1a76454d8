import Editing
import Evaluation
import Foundation
import ModelRuntime
import Tensor

/// Runs CounterFact cases through an editor: score, edit, score again, and restore the weights
/// exactly before the next case (or keep them with `sequential`, scoring every case again after the
/// last edit, the sequential protocol of METHODS §3.5).
struct CounterFactRunner {
    let model: LanguageModel
    let editor: RomeEditor
    let sequential: Bool
    var label = "eval"

    func run(_ records: [CounterFactRecord]) throws -> (cases: [EvalCase], seconds: Double) {
        let scorer = CounterFactScorer.make(model)
        let bar = ProgressBar(label)
        let t0 = Date()
        var cases: [EvalCase] = []
        var backups: [WeightBackup] = []
        let hashBefore = model.weightHash
        for (i, r) in records.enumerated() {
            var c = EvalCase(record: r, pre: try CounterFactEval.score(r, with: scorer))
            let request = EditRequest(subject: r.subject, prompt: r.prompt, targetNew: r.targetNew, targetTrue: r.targetTrue)
            let e0 = Date()
            do {
                let result = try editor.computeUpdate(request)
                let backup = try model.apply(result.update)
                c.editSeconds = Date().timeIntervalSince(e0)
                c.phases = result.phases
                c.post = try CounterFactEval.score(r, with: scorer)
                if sequential { backups.append(backup) } else { try model.restore(backup) }
            } catch {
                c.error = String(describing: error)
            }
            cases.append(c)
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
        return (cases, Date().timeIntervalSince(t0))
    }

    /// Settings recorded with every report: hyperparameters, templates, statistics, BLAS.
    func settings() -> [String: String] {
        let h = editor.hparams
        var s: [String: String] = [
            "layer": "\(h.layer)", "v_num_grad_steps": "\(h.vNumGradSteps)", "v_lr": "\(h.vLr)", "v_weight_decay": "\(h.vWeightDecay)",
            "clamp_norm_factor": "\(h.clampNormFactor)", "kl_factor": "\(h.klFactor)", "early_stop_loss": "\(h.earlyStopLoss)",
            "mom2_adjustment": "\(h.mom2Adjustment)", "context_templates": "\(editor.templates.prefixes.count)",
            "template_seed": "\(h.templateSeed)", "key_averaging": h.keyAveraging.rawValue, "blas": BLAS.configuration.description,
        ]
        if let st = editor.statistics { s["mom2_tokens"] = "\(st.count)"; s["mom2_ridge"] = "\(h.mom2Ridge)" }
        return s
    }
}

func loadRecords(_ path: String, start: Int, limit: Int) throws -> [CounterFactRecord] {
    let all = try CounterFact.load(path: path).records
    guard start >= 0, start < all.count else { throw fail("--start \(start) is outside 0..<\(all.count)") }
    return Array(all[start..<min(all.count, start + max(0, limit))])
}

var defaultDataPath: String { FileManager.default.currentDirectoryPath + "/../shared/data/counterfact/counterfact-val.json" }
