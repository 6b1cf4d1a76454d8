import ArgumentParser
import EditDaemon
import Editing
import Evaluation
import Foundation
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
        let templates = try state.templates(model: lm, groups: h.contextTemplates, seed: h.templateSeed, log: { print($0) })
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
        try writeResults(["edit_median_seconds": edit, "edits": records.count, "blas_core": c.coreName, "blas_threads": c.threads,
                          "canary": rows, "target_ratio": 0.10], to: out)
        print("wrote \(out)")
    }
}
