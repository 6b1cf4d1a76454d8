import ArgumentParser
import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import Tensor

/// The quality guard's cost: scoring the canary set on edited weights against the median ROME edit
/// (the daemon's default method and hyperparameters, early stop on) on the same model, same run.
struct GuardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guard",
        abstract: "Quality guard cost: canary scoring time per canary size against the median ROME edit time, same run.")

    @Option(help: "Model (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "ROME hyperparameter file.") var hparams = "deploy/hparams/rome/SmolLM2-135M-Instruct.json"
    @Option(help: "CounterFact records edited for the median edit time.") var edits = 5
    @Option(help: "Data directory (known facts, WikiText-2, CounterFact).") var data = "../shared/data"
    @Option(parsing: .upToNextOption, help: "Canary sizes to time, as facts:tokens.") var sizes = ["100:256", "50:128", "32:128", "32:64"]
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/guard.json"

    func run() throws {
        let path = try model ?? ModelLocator.defaultModelPath()
        let lm = try ModelLoader.load(path: path)
        guard let hd = FileManager.default.contents(atPath: hparams) else { throw ValidationError("cannot read \(hparams)") }
        let h = try RomeHyperparameters.decode(hd)
        let state = EditState(home: EditState.defaultHome, baseHash: lm.weightHash)
        let templates = try state.templates(model: lm, groups: h.contextTemplates, seed: h.templateSeed, logger: Logger(label: "mesa-bench"))
        guard let stats = try state.cachedStatistics(h.statisticsSpec(modelHash: state.baseHash)) else {
            throw ValidationError("no key statistics for layer \(h.layer): run `mesa stats --layer \(h.layer)` (or the demo) first")
        }
        let editor = try RomeEditor(model: lm, hparams: h, templates: templates, statistics: stats)
        let records = Array(try CounterFact.load(path: data + "/counterfact/counterfact-val.json").records.prefix(edits))
        let dataDir = URL(fileURLWithPath: data)
        // Guards on the base weights, one per size (their canary sets are built from the same seed).
        var guards: [(String, QualityGuard)] = []
        for s in sizes {
            let p = s.split(separator: ":").compactMap { Int($0) }
            guard p.count == 2 else { throw ValidationError("size \(s) is not facts:tokens") }
            let canary = try CanarySet.build(model: lm, knownFacts: dataDir.appendingPathComponent("counterfact/known_1000.json"),
                                             wikitext: dataDir.appendingPathComponent("corpus/wikitext-2/tokens.valid.txt"),
                                             count: p[0], tokens: p[1], seed: 0)
            guards.append((s, try QualityGuard(model: lm, canary: canary, perplexityTokens: p[1], maxAccuracyDrop: 2, maxPerplexityRise: 0.03)))
        }
        var editTimes: [Double] = []
        var canaryTimes: [String: [Double]] = [:]
        for r in records {
            let request = EditRequest(subject: r.subject, prompt: r.prompt, targetNew: r.targetNew, targetTrue: r.targetTrue)
            var updates: [LowRankUpdate] = []
            editTimes.append(try timed { updates = try editor.computeUpdates(for: request).updates })
            let backups = try updates.map { try lm.apply($0) }
            for (s, g) in guards { canaryTimes[s, default: []].append(try timed { _ = try g.measure(lm) }) }
            for b in backups.reversed() { try lm.restore(b) }
        }
        // The reference: the same canary figures from one pass per fact and one for the text (how the
        // guard scored before packing), on the largest set, base weights.
        let (refSize, refGuard) = guards[0]
        var refFigures = CanaryFigures(accuracy: 0, perplexity: 0)
        let refTimes = try (0..<3).map { _ in try timed { refFigures = try Self.separatePasses(lm, refGuard.canary, tokens: refGuard.perplexityTokens) } }
        let packedBase = try refGuard.measure(lm)
        let agree = refFigures.accuracy == packedBase.accuracy && abs(refFigures.perplexity / packedBase.perplexity - 1) < 1e-4
        let edit = median(editTimes)
        let c = BLAS.configuration
        print(String(format: "ROME edit: median %.3f s over %d edits (early stop on); BLAS %@ threads %d", edit, records.count, c.coreName, c.threads))
        var rows: [[String: Any]] = []
        for (s, g) in guards {
            let t = median(canaryTimes[s] ?? [])
            print(String(format: "canary %@ (%d facts, %d tokens): %.3f s = %.1f%% of the median edit", s, g.canary.facts.count,
                         g.perplexityTokens, t, 100 * t / edit))
            rows.append(["size": s, "facts": g.canary.facts.count, "tokens": g.perplexityTokens, "seconds": t, "ratio_to_edit": t / edit])
        }
        let ref = median(refTimes)
        print(String(format: "reference, one pass per fact (%@): %.3f s = %.1f%% of the median edit; packed/separate %.2fx; figures agree: %@ (accuracy %.1f / %.1f, perplexity %.5f / %.5f)",
                     refSize, ref, 100 * ref / edit, ref / max(1e-9, median(canaryTimes[refSize] ?? [])), agree ? "yes" : "NO",
                     packedBase.accuracy, refFigures.accuracy, packedBase.perplexity, refFigures.perplexity))
        try writeResults(["edit_median_seconds": edit, "edits": records.count, "blas_core": c.coreName, "blas_threads": c.threads,
                          "canary": rows, "target_ratio": 0.10,
                          "reference_separate_passes": ["size": refSize, "seconds": ref, "ratio_to_edit": ref / edit, "figures_agree": agree]], to: out)
        print("wrote \(out)")
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
