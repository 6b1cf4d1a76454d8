import ArgumentParser
import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import Tensor

struct RomeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rome",
        abstract: "One ROME edit timed by phase, next to the same algorithm in PyTorch (same prompts, same steps) in the same run.",
        discussion: """
        Early stopping is disabled on both sides so both run exactly --steps optimization steps. The \
        PyTorch side (ops/reference/rome_reference.py) recomputes every layer and position at every \
        step, as the reference code does; mesa recomputes only the layers after the edit layer at the \
        positions from the subject's last token on. The FLOP floor is the matmul work of that minimal \
        computation divided by the sgemm rate measured here at the same shape.
        """)

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "ROME hyperparameters.") var hparams = "deploy/hparams/rome/SmolLM2-135M-Instruct.json"
    @Option(help: "CounterFact file; the edit is record --record of it.") var data = "../shared/data/counterfact/counterfact-val.json"
    @Option(help: "Which record to edit.") var record = 0
    @Option(help: "Optimization steps on both sides (early stop disabled).") var steps: Int?
    @Option(help: "BLAS / torch threads.") var threads = 2
    @Option(help: "Timed repetitions (median reported), after one warm-up.") var repeats = 3
    @Option(help: "Python of the PyTorch reference environment ('none' to skip).")
    var reference = paths.home.appendingPathComponent("refenv/bin/python").path
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/rome.json"
    @Option(help: "Also time records --record..<--record+N edited one at a time (update computed and applied) with the file's stop rule, and with the stop rule from before the most-probable early stop (the file's loss threshold or its steps); 0 skips.")
    var stopRecords = 10
    @Option(help: "With --stop-records: the earlier edit's hyperparameters (default: the file's, without the most-probable early stop).")
    var beforeHparams: String?

    func run() throws {
        BLAS.setThreads(threads)
        let setup = try RomeBenchSetup(model: model, hparams: hparams, steps: steps)
        let (path, m, templates, stats) = (setup.path, setup.model, setup.templates, setup.statistics)
        var h = setup.hparams
        // The reference implements ROME's u = C⁻¹k* with k* the mean key; run mesa the same way so
        // u and δ are comparable (key_averaging only changes how u is chosen, not the cost).
        h.keyAveraging = .templates
        let editor = try RomeEditor(model: m, hparams: h, templates: templates, statistics: stats)
        let rec = try CounterFact.load(path: data).records[record]
        let request = EditRequest(subject: rec.subject, prompt: rec.prompt, targetNew: rec.targetNew, targetTrue: rec.targetTrue)
        let batch = try editor.batch(for: request)
        let scorer = CounterFactScorer.make(m)

        // mesa: warm-up, then `repeats` timed edits (compute, apply, evaluate, restore).
        var runs: [[String: Double]] = []
        var last: RomeResult?
        for i in 0...repeats {
            var phases: [String: Double] = [:]
            var result: RomeResult?
            let total = try timed {
                let r = try editor.computeUpdate(batch: batch)
                let backup = try m.apply(r.update)
                phases["eval"] = try timed { _ = try CounterFactEval.score(rec, with: scorer) }
                try m.restore(backup)
                result = r
            }
            guard let result else { continue }
            phases.merge(result.phases) { a, _ in a }
            phases["total"] = total
            if i > 0 { runs.append(phases) }
            last = result
        }
        guard let last else { throw ValidationError("no edit ran") }
        let names = ["k_star", "v_star", "closed_form", "eval", "total"]
        let mesa = Dictionary(uniqueKeysWithValues: names.map { n in (n, median(runs.map { $0[n] ?? 0 })) })

        // The minimal work of the v* phase: per step, layers l+1..L−1 on the R rows that depend on δ
        // (forward GEMMs; the backward forms input gradients only, the same GEMM FLOPs again), the
        // logits of the loss rows (forward and backward), plus the causal attention blocks.
        let c = m.config
        let all = batch.rewrite + batch.kl
        let R = all.reduce(0) { $0 + $1.tokens.count - $1.position }
        let L = all.reduce(0) { $0 + $1.logitPositions.count }
        let upper = c.layers - h.layer - 1
        let qkvw = (c.heads + 2 * c.kvHeads) * c.headDim
        let perRowLayer = 2 * (c.hidden * qkvw + c.heads * c.headDim * c.hidden + 3 * c.hidden * c.intermediate)
        let attention = all.reduce(0) { acc, p in
            let n = p.tokens.count - p.position
            return acc + upper * c.heads * 2 * 2 * c.headDim * n * p.tokens.count
        }
        let stepsRun = last.losses.count
        let forwardFlops = Double(R * upper * perRowLayer + 2 * L * c.vocabSize * c.hidden + attention)
        let vFlops = Double(stepsRun) * forwardFlops + Double(stepsRun - 1) * forwardFlops
        let rate = sgemmRate(m: R, n: 2 * c.intermediate, k: c.hidden) * 1e9
        let floor = vFlops / rate

        let blas = BLAS.configuration
        print(String(format: "mesa   ROME edit (layer %d, %d steps, %d prompts, R = %d rows, %d logit rows): total %.3f s = k* %.3f + v* %.3f + closed form %.3f + eval %.3f",
                     h.layer, stepsRun, all.count, R, L, mesa["total"]!, mesa["k_star"]!, mesa["v_star"]!, mesa["closed_form"]!, mesa["eval"]!))
        print(String(format: "       v* minimal work %.2f GFLOP; sgemm %dx%dx%d at %.0f GFLOP/s ⇒ floor %.3f s; measured v* is %.2f× the floor",
                     vFlops / 1e9, R, 2 * c.intermediate, c.hidden, rate / 1e9, floor, mesa["v_star"]! / floor))
        print(String(format: "       peak RSS %.0f MiB; %@", Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576, blas.description))
        var result: [String: Any] = [
            "benchmark": "rome", "model": (path as NSString).lastPathComponent, "threads": threads, "repeats": repeats,
            "layer": h.layer, "steps": stepsRun, "prompts": all.count, "rows": R, "logit_rows": L, "case_id": rec.caseId,
            "blas": ["core": blas.coreName, "threads": blas.threads, "build": blas.build],
            "mesa": mesa.merging(["peak_rss_mib": Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576, "v_star_gflop": vFlops / 1e9,
                                  "sgemm_gflop_per_s": rate / 1e9, "v_star_floor_s": floor, "v_star_over_floor": mesa["v_star"]! / floor]) { a, _ in a },
        ]

        // One edit as the file has it against one with the stop rule from before the most-probable
        // early stop, over the same records (their steps differ per record).
        var stopEdit: Double?
        if stopRecords > 0 {
            let records = try CounterFact.load(path: data).records
            guard record + stopRecords <= records.count else { throw ValidationError("--record \(record) with --stop-records \(stopRecords) exceeds the data") }
            var before = setup.file
            before.earlyStopTop = false
            var beforeTemplates = templates
            if let beforeHparams {
                guard let bd = FileManager.default.contents(atPath: beforeHparams) else { throw ValidationError("cannot read \(beforeHparams)") }
                before = try RomeHyperparameters.decode(bd)
                before.mesa = nil
                guard before.layer == setup.file.layer else { throw ValidationError("\(beforeHparams) edits layer \(before.layer), the file layer \(setup.file.layer)") }
                beforeTemplates = try setup.state.templates(model: m, groups: before.contextTemplates, seed: before.templateSeed,
                                                            logger: Logger(label: "mesa-bench"))
            }
            var rules: [String: Any] = [:]
            var seconds: [String: Double] = [:]
            for (name, hp, ts) in [("file", setup.file, templates), ("before", before, beforeTemplates)] {
                let e = try RomeEditor(model: m, hparams: hp, templates: ts, statistics: stats)
                var times: [Double] = [], steps: [Double] = []
                for r in records[record..<(record + stopRecords)] {
                    let request = EditRequest(subject: r.subject, prompt: r.prompt, targetNew: r.targetNew, targetTrue: r.targetTrue)
                    var edit: RomeResult?
                    times.append(try timed {
                        edit = try e.computeUpdate(request)
                        try m.restore(try m.apply(edit!.update))
                    })
                    steps.append(edit!.phases["v_steps"] ?? .nan)
                }
                let mean = times.reduce(0, +) / Double(times.count)
                seconds[name] = mean
                rules[name] = ["edit_seconds_mean": mean, "edit_seconds": times, "steps_mean": steps.reduce(0, +) / Double(steps.count),
                               "context_prefixes": ts.prefixes.count,
                               "early_stop_loss": hp.earlyStopLoss, "early_stop_top": hp.earlyStopTop ?? false, "early_stop_top_checks": hp.earlyStopTopChecks ?? 1]
                print(String(format: "mesa   %@ stop rule (loss < %g%@), records %d..<%d: edit %.3f s mean, %.1f steps mean",
                             name == "file" ? "the file's" : "the earlier", hp.earlyStopLoss,
                             hp.earlyStopTop == true ? ", most-probable stop at check \(hp.earlyStopTopChecks ?? 1)" : "",
                             record, record + stopRecords, mean, steps.reduce(0, +) / Double(steps.count)))
            }
            rules["before_over_file"] = seconds["before"]! / seconds["file"]!
            print(String(format: "ratio  one edit with the earlier stop rule / with the file's: %.2f×", seconds["before"]! / seconds["file"]!))
            result["stop_rules"] = rules
            stopEdit = seconds["file"]
        }

        if reference != "none", let ref = try runReference(batch: batch, editor: editor, record: rec, modelPath: path) {
            result["pytorch"] = ref
            let phases = ref["phases"] as? [String: Double] ?? [:]
            let tTotal = phases["total_s"] ?? .nan
            let ratio = tTotal / mesa["total"]!
            var ratios: [String: Double] = ["total": ratio]
            for (n, k) in [("k_star", "k_star_s"), ("v_star", "v_star_s"), ("closed_form", "closed_form_s"), ("eval", "eval_s")] {
                if let t = phases[k] { ratios[n] = t / mesa[n]! }
            }
            result["ratio"] = ratios
            // Agreement of the two implementations on the same inputs.
            if let dref = ref["delta"] as? [Double], let uref = ref["u"] as? [Double] {
                let delta = last.update.r.map { $0 * last.denominator }
                let dd = zip(delta, dref).map { Double($0) - $1 }, uu = zip(last.update.u, uref).map { Double($0) - $1 }
                func n(_ v: [Double]) -> Double { v.reduce(0) { $0 + $1 * $1 }.squareRoot() }
                result["agreement"] = ["delta_rel_l2": n(dd) / n(dref), "u_rel_l2": n(uu) / n(uref)]
                print(String(format: "agree  δ relative L2 difference %.2e, u %.2e", n(dd) / n(dref), n(uu) / n(uref)))
            }
            print(String(format: "torch  total %.3f s = k* %.3f + v* %.3f + closed form %.3f + eval %.3f; peak RSS %.0f MiB [torch %@]",
                         tTotal, phases["k_star_s"] ?? .nan, phases["v_star_s"] ?? .nan, phases["closed_form_s"] ?? .nan, phases["eval_s"] ?? .nan,
                         (ref["peak_rss_mib"] as? Double) ?? .nan, (ref["torch"] as? String) ?? "?"))
            print(String(format: "ratio  one ROME edit: mesa is %.2f× faster than PyTorch (v* phase %.2f×)", ratio, ratios["v_star"] ?? .nan))
            if let stopEdit, let edit = phases["edit_s"] {
                // PyTorch's edit at fixed steps (the reference code's way) against mesa's as the file has it.
                ratios["pytorch_fixed_edit_over_file_edit"] = edit / stopEdit
                result["ratio"] = ratios
                print(String(format: "ratio  PyTorch's edit at %d fixed steps / mesa's mean edit with the file's stop rule: %.2f×", h.vNumGradSteps, edit / stopEdit))
            }
        }
        result["date"] = ISO8601DateFormatter().string(from: Date())
        try writeResults(result, to: out)
    }

    /// Writes the job (token ids, hyperparameters, the covariance as used) and runs rome_reference.py.
    func runReference(batch: RomeBatch, editor: RomeEditor, record: CounterFactRecord, modelPath: String) throws -> [String: Any]? {
        let h = editor.hparams
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-rome-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var covariance: Any = NSNull()
        if let s = editor.statistics {
            // The same matrix mesa solves with: C plus the ridge.
            let cm = s.regularizedMoment(ridge: h.mom2Ridge).map(Float.init)
            let url = dir.appendingPathComponent("C.f32")
            try cm.withUnsafeBufferPointer { Data(buffer: $0) }.write(to: url)
            covariance = url.path
        }
        let tok = EditTokenizer(model: editor.model)
        var evalPrompts: [[String: Any]] = []
        let prompts = [record.rewritePrompt] + record.paraphrasePrompts + record.neighborhoodPrompts
        for p in prompts {
            let ids = tok.prompt(p)
            for cand in [record.targetNew, record.targetTrue] {
                let t = try tok.target(cand)
                evalPrompts.append(["tokens": (ids + t).map(Int.init), "targets": t.indices.map { [ids.count - 1 + $0, Int(t[$0])] }])
            }
        }
        let job: [String: Any] = [
            "model": modelPath, "layer": h.layer, "steps": h.vNumGradSteps, "lr": h.vLr, "weight_decay": h.vWeightDecay,
            "clamp_norm_factor": h.clampNormFactor, "kl_factor": h.klFactor, "early_stop_loss": 0,
            "rewrite_prompts": zip(batch.rewrite, batch.rewriteTargets).map { p, t in
                ["tokens": p.tokens.map(Int.init), "position": p.position, "targets": zip(p.logitPositions, t).map { [$0, Int($1)] }]
            },
            "kl_prompts": batch.kl.map { ["tokens": $0.tokens.map(Int.init), "position": $0.position] },
            "covariance": covariance, "eval_prompts": evalPrompts, "repeats": repeats,
        ]
        let jobURL = dir.appendingPathComponent("job.json")
        try JSONSerialization.data(withJSONObject: job).write(to: jobURL)
        return try runReferenceScript(python: reference, ["ops/reference/rome_reference.py", "--job", jobURL.path, "--threads", "\(threads)"])
    }
}
