import ArgumentParser
import Contracts
import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import Tensor

/// The quality guard's cost: scoring the canary set on edited weights against the median edit of a
/// method (its deployed hyperparameters, early stops as deployed) on the same model, same run; each
/// canary size timed as the daemon runs it (from the cached residual at the method's first edited
/// layer) and from the embeddings.
struct GuardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guard",
        abstract: "Quality guard cost: canary scoring time per canary size against the median edit time of a method, same run.")

    @Option(help: "Model (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "Editing method (rome, memit, alphaedit, encore).") var method = "rome"
    @Option(help: "Hyperparameter file (default: deploy/hparams/<method>/SmolLM2-135M-Instruct.json).") var hparams: String?
    @Option(help: "CounterFact records edited for the median edit time.") var edits = 5
    @Option(help: "Data directory (known facts, WikiText-2, CounterFact).") var data = "../shared/data"
    @Option(help: "CounterFact split whose first --edits records are edited (train to tune the thresholds, val to report).") var split = "val"
    @Option(parsing: .upToNextOption, help: "Canary sizes to time, as facts:tokens[:longest fact prompt in tokens, 0 for any; default \(CanarySet.defaultMaxPromptTokens)].")
    var sizes = ["32:64:0", "32:64", "24:64", "16:64"]
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/guard.json"

    func run() throws {
        guard let kind = EditMethod(rawValue: method) else { throw ValidationError("--method: one of \(EditMethod.names)") }
        let path = try model ?? paths.defaultModel()
        let lm = try ModelLoader.load(path: path)
        let file = URL(fileURLWithPath: hparams ?? "deploy/hparams/\(method)/SmolLM2-135M-Instruct.json")
        let registry = EditorRegistry(stateDirectory: paths.state, corpusPath: "",
                                      logger: Logger(label: "mesa-bench"))
        let hp = try EditorRegistry.hyperparameters(kind, at: file, catalog: try paths.schemaCatalog())
        let editor = try registry.editor(model: lm, hparams: hp, computeMissing: false)
        let firstLayer = hp.lowestLayer
        guard ["train", "val"].contains(split) else { throw ValidationError("--split: train or val") }
        let records = Array(try CounterFact.load(path: data + "/counterfact/counterfact-\(split).json").records.prefix(edits))
        let dataDir = URL(fileURLWithPath: data)
        // Guards on the base weights, one per size (their canary sets are built from the same seed): as the
        // daemon runs them (resumed at the first edited layer; the cache is filled here, on the base
        // weights, as the daemon's start does) and from the embeddings.
        var guards: [(String, QualityGuard, QualityGuard)] = []
        for s in sizes {
            let p = s.split(separator: ":").compactMap { Int($0) }
            guard p.count == 2 || p.count == 3 else { throw ValidationError("size \(s) is not facts:tokens[:longest prompt]") }
            let canary = try CanarySet.build(model: lm, knownFacts: dataDir.appendingPathComponent("counterfact/known_1000.json"),
                                             wikitext: dataDir.appendingPathComponent("corpus/wikitext-2/tokens.valid.txt"),
                                             count: p[0], tokens: p[1], seed: 0, maxPromptTokens: p.count == 3 ? p[2] : CanarySet.defaultMaxPromptTokens)
            let resumed = try QualityGuard(model: lm, canary: canary, perplexityTokens: p[1], maxAccuracyDrop: 2, maxPerplexityRise: 0.03)
            resumed.startLayer = firstLayer
            _ = try resumed.measure(lm)
            let full = try QualityGuard(model: lm, canary: canary, perplexityTokens: p[1], maxAccuracyDrop: 2, maxPerplexityRise: 0.03)
            guards.append((s, resumed, full))
        }
        var editTimes: [Double] = []
        var resumedTimes: [String: [Double]] = [:], fullTimes: [String: [Double]] = [:]
        var agree = true
        // Per size, each edit's canary figures against the base model's: facts lost and the perplexity rise.
        var lost: [String: [Int]] = [:], rise: [String: [Double]] = [:], trips: [String: Int] = [:]
        for r in records {
            let request = EditRequest(subject: r.subject, prompt: r.prompt, targetNew: r.targetNew, targetTrue: r.targetTrue)
            var updates: [LowRankUpdate] = []
            editTimes.append(try timed { updates = try editor.computeUpdates(for: request).updates })
            let backups = try updates.map { try lm.apply($0) }
            for (s, resumed, full) in guards {
                var a = CanaryFigures(accuracy: 0, perplexity: 0), b = a
                resumedTimes[s, default: []].append(try timed { a = try resumed.measure(lm) })
                fullTimes[s, default: []].append(try timed { b = try full.measure(lm) })
                agree = agree && a == b
                let base = resumed.base
                lost[s, default: []].append(Int(((base.accuracy - a.accuracy) * Double(resumed.canary.facts.count) / 100).rounded()))
                rise[s, default: []].append(a.perplexity / base.perplexity - 1)
                if resumed.violation(a) != nil { trips[s, default: 0] += 1 }
            }
            for b in backups.reversed() { try lm.restore(b) }
        }
        // The reference: the same canary figures from one pass per fact and one for the text (how the
        // guard scored before packing), on the largest set, base weights.
        let (refSize, _, refGuard) = guards[0]
        var refFigures = CanaryFigures(accuracy: 0, perplexity: 0)
        let refTimes = try (0..<3).map { _ in try timed { refFigures = try Self.separatePasses(lm, refGuard.canary, tokens: refGuard.perplexityTokens) } }
        let packedBase = try refGuard.measure(lm)
        let refAgree = refFigures.accuracy == packedBase.accuracy && abs(refFigures.perplexity / packedBase.perplexity - 1) < 1e-4
        let edit = median(editTimes)
        let c = BLAS.configuration
        print(String(format: "%@ edit: median %.3f s over %d edits; BLAS %@ threads %d; canary passes start at layer %d",
                     editor.method, edit, records.count, c.coreName, c.threads, firstLayer))
        var rows: [[String: Any]] = []
        for (s, g, _) in guards {
            let t = median(resumedTimes[s] ?? []), f = median(fullTimes[s] ?? [])
            print(String(format: "canary %@ (%d facts, %d perplexity tokens, %d tokens per pass): %.3f s = %.1f%% of the median edit (from the embeddings: %.3f s = %.1f%%)", s,
                         g.canary.facts.count, g.perplexityTokens, g.passTokens, t, 100 * t / edit, f, 100 * f / edit))
            let l = lost[s] ?? [], r = rise[s] ?? []
            let histogram = Dictionary(grouping: l, by: { $0 }).mapValues(\.count)
            print(String(format: "       over %d edits of %@: %d cross the thresholds (%.1f points, %.1f%%); facts lost per edit %@; perplexity rise median %.2f%%, largest %.2f%%",
                         l.count, split, trips[s] ?? 0, g.maxAccuracyDrop, 100 * g.maxPerplexityRise,
                         histogram.keys.sorted().map { "\($0): \(histogram[$0]!)" }.joined(separator: ", "), 100 * median(r), 100 * (r.max() ?? 0)))
            rows.append(["size": s, "facts": g.canary.facts.count, "tokens": g.perplexityTokens, "pass_tokens": g.passTokens, "seconds": t,
                         "ratio_to_edit": t / edit, "from_embeddings_seconds": f, "from_embeddings_ratio_to_edit": f / edit,
                         "edits_crossing": trips[s] ?? 0, "facts_lost": l, "perplexity_rise": r])
        }
        print("resumed and full passes give the same figures: \(agree ? "yes" : "NO")")
        let ref = median(refTimes)
        print(String(format: "reference, one pass per fact (%@): %.3f s = %.1f%% of the median edit; separate/packed %.2fx; figures agree: %@ (accuracy %.1f / %.1f, perplexity %.5f / %.5f)",
                     refSize, ref, 100 * ref / edit, ref / max(1e-9, median(fullTimes[refSize] ?? [])), refAgree ? "yes" : "NO",
                     packedBase.accuracy, refFigures.accuracy, packedBase.perplexity, refFigures.perplexity))
        try writeResults(["method": editor.method, "edit_median_seconds": edit, "edits": records.count, "split": split, "blas_core": c.coreName,
                          "blas_threads": c.threads, "start_layer": firstLayer, "canary": rows, "target_ratio": 0.10, "resumed_figures_agree": agree,
                          "reference_separate_passes": ["size": refSize, "seconds": ref, "ratio_to_edit": ref / edit, "figures_agree": refAgree]], to: out)
    }

    /// The canary figures from one forward pass per fact and one teacher-forced pass over the text.
    static func separatePasses(_ lm: LanguageModel, _ canary: CanarySet, tokens: Int) throws -> CanaryFigures {
        let tok = EditTokenizer(model: lm)
        var right = 0
        for f in canary.facts {
            let answer = try tok.target(f.answer)
            let logits = try lm.forward(tok.prompt(f.prompt), options: ForwardOptions(logits: .last)).logits.data
            let best = logits.indices.max { logits[$0] < logits[$1] }!
            if Int32(best) == answer.first { right += 1 }
        }
        let text = Array(tok.prompt(canary.text).prefix(tokens + 1))
        let s = try lm.score(prompt: [text[0]], target: Array(text.dropFirst()))
        return CanaryFigures(accuracy: canary.facts.isEmpty ? 100 : 100 * Double(right) / Double(canary.facts.count), perplexity: exp(s.meanNLL))
    }
}
