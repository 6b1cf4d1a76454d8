import ArgumentParser
import EditDaemon
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import SparseAutoencoder
import Tensor

struct MesaCostBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesa",
        abstract: "The cost of a MESA edit (or a design file's neighbour protection) against a ROME edit: the same records, the same hyperparameters, alternating in one process.",
        discussion: """
        Early stopping is disabled so both run exactly --steps optimization steps (the refinement's cost \
        is per step). Each record is edited with ROME, then with ROME+MESA, --repeats times after a \
        warm-up; the ratio of the median edit times is the figure (the target is ≤ 1.2; the authors' \
        code pays about 2× on a GPU). Phases are reported separately.
        """)

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "ROME hyperparameters.") var hparams = "deploy/hparams/rome/SmolLM2-135M-Instruct.json"
    @Option(help: "SAE directory, or a name under <state>/<hash16>/sae/ (the neutral refinement; not with --design).") var sae: String?
    @Option(help: "A ROME file whose mesa and neighbours blocks are the edit to time against ROME (an SAE-guided design) instead of the neutral refinement through --sae.")
    var design: String?
    @Option(help: "CounterFact tuning file whose subjects are the neighbour candidates (--design with neighbours, bank counterfact).")
    var candidates = "../shared/data/counterfact/counterfact-train.json"
    @Option(help: "Wikipedia sample whose article titles are the neighbour candidates (--design with neighbours, bank corpus_titles).")
    var corpus = "../shared/data/corpus/enwiki-2015-sample.txt"
    @Option(help: "CounterFact file.") var data = "../shared/data/counterfact/counterfact-val.json"
    @Option(help: "Records to edit (the first N).") var records = 3
    @Option(help: "Optimization steps (early stop disabled).") var steps: Int?
    @Option(help: "BLAS threads.") var threads = 1
    @Option(help: "Timed repetitions per record and method, after one warm-up.") var repeats = 2
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/mesa-cost.json"

    func run() throws {
        BLAS.setThreads(threads)
        let setup = try RomeBenchSetup(model: model, hparams: hparams, steps: steps)
        let (path, m, h, state, templates, stats) = (setup.path, setup.model, setup.hparams, setup.state, setup.templates, setup.statistics)
        var hm = h
        if let design {
            guard sae == nil else { throw ValidationError("--design names its SAE in its mesa block; leave out --sae") }
            guard let data = FileManager.default.contents(atPath: design) else { throw ValidationError("cannot read \(design)") }
            let file = try RomeHyperparameters.decode(data)
            hm.mesa = file.mesa
            hm.neighbours = file.neighbours
        } else {
            guard let sae else { throw ValidationError("give --sae or --design") }
            hm.mesa = MesaHyperparameters(sae: sae)
        }
        guard hm.mesa != nil || hm.neighbourProtection != nil else { throw ValidationError("\(design ?? "") has neither a mesa nor a neighbours block") }
        // A design may be SAE-free (neighbour protection alone).
        let dir = hm.mesa?.saeDirectory(stateDirectory: state.root)
        let loaded = try dir.map { try SparseAutoencoder.load(from: $0) }
        let keySAE = try hm.mesa?.keySaeDirectory(stateDirectory: state.root).map { try SparseAutoencoder.load(from: $0) }
        let rome = try RomeEditor(model: m, hparams: h, templates: templates, statistics: stats)
        let mesa = try RomeEditor(model: m, hparams: hm, templates: templates, statistics: stats, sae: loaded, keySAE: keySAE)
        if let nk = hm.neighbourProtection {
            mesa.neighbourCandidates = nk.candidateBank == .corpusTitles
                ? try nk.titleCandidates(corpus: try Corpus(path: corpus, seed: 0), entityKeys: nil)
                : try CounterFact.load(path: candidates).records.map(\.subject)
        }
        let recs = Array(try CounterFact.load(path: data).records.prefix(records))
        var times: [String: [Double]] = ["rome": [], "mesa": []]
        var phases: [String: [String: [Double]]] = ["rome": [:], "mesa": [:]]
        for (ri, rec) in recs.enumerated() {
            let request = EditRequest(subject: rec.subject, prompt: rec.prompt, targetNew: rec.targetNew, targetTrue: rec.targetTrue)
            for i in 0...repeats {
                for (name, editor) in [("rome", rome), ("mesa", mesa)] {
                    var result: RomeResult?
                    let t = try timed { result = try editor.computeUpdate(request) }
                    guard i > 0 || ri > 0 else { continue }  // the first round warms up
                    times[name]!.append(t)
                    for (p, v) in result!.phases { phases[name]![p, default: []].append(v) }
                }
            }
        }
        let tr = median(times["rome"]!), tm = median(times["mesa"]!)
        print(String(format: "ROME      %.3f s per edit (median of %d)", tr, times["rome"]!.count))
        let variant = hm.mesa?.refinementVariant.rawValue ?? "neighbours only"
        print(String(format: "design    %.3f s per edit (median of %d; %@)", tm, times["mesa"]!.count, variant))
        print(String(format: "ratio design / ROME: %.3f (SAE width %d, %d steps, %d thread(s))", tm / tr, loaded?.width ?? 0, h.vNumGradSteps, threads))
        for name in ["rome", "mesa"] {
            let p = phases[name]!.sorted { $0.key < $1.key }.map { String(format: "%@ %.3f", $0.key, median($0.value)) }.joined(separator: ", ")
            print("  \(name) phases (median s): \(p)")
        }
        let doc: [String: Any] = [
            "model": (path as NSString).lastPathComponent, "sae": dir?.path ?? "", "sae_width": loaded?.width ?? 0, "sae_k": loaded?.k ?? 0,
            "variant": variant, "design": design ?? "", "neighbours": hm.neighbourProtection?.description ?? "",
            "steps": h.vNumGradSteps, "threads": threads, "records": recs.count, "repeats": repeats,
            "rome_seconds_median": tr, "mesa_seconds_median": tm, "ratio": tm / tr,
            "rome_seconds": times["rome"]!, "mesa_seconds": times["mesa"]!,
            "phases_median": phases.mapValues { $0.mapValues(median) },
            "blas": BLAS.configuration.description, "command": CommandLine.arguments.joined(separator: " "),
            "created": ISO8601DateFormatter().string(from: Date()),
        ]
        try writeResults(doc, to: out)
    }
}

struct SAETrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sae",
        abstract: "BatchTopK training throughput: mesa's trainer against the same step in PyTorch (ops/reference/sae_reference.py), same rows, same threads, same run.")

    @Option(help: "Activation cache (.f16) written by `mesa sae train`.") var cache: String
    @Option(help: "Latents.") var width = 4608
    @Option(help: "BatchTopK k.") var k = 32
    @Option(help: "Activations per step.") var batch = 1024
    @Option(help: "Timed steps (after --warmup).") var steps = 20
    @Option(help: "Untimed steps first.") var warmup = 2
    @Option(help: "BLAS / torch threads.") var threads = 1
    @Option(help: "Python of the PyTorch reference environment ('none' to skip).")
    var reference = paths.home.appendingPathComponent("refenv/bin/python").path
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/sae-train.json"

    func run() throws {
        BLAS.setThreads(threads)
        let c = try ActivationCache(url: URL(fileURLWithPath: cache))
        guard c.rows >= (steps + warmup) * batch + batch else { throw ValidationError("the cache has \(c.rows) rows; need \((steps + warmup + 1) * batch)") }
        var s = BatchTopKSettings(width: width, k: k, tokens: (steps + warmup) * batch, batchSize: batch)
        s.deadTokens = 10 * batch
        let t = try BatchTopKTrainer(dIn: c.dim, settings: s,
                                     metadata: SAEMetadata(modelName: "bench", modelHash: nil, site: c.spec.site, contextSize: 0, prependBos: false))
        var x = [Float](repeating: 0, count: batch * c.dim)
        var times: [Double] = []
        for step in 0..<(steps + warmup) {
            x.withUnsafeMutableBufferPointer { c.read(rows: Array(step * batch..<(step + 1) * batch)[...], into: $0.baseAddress!) }
            let sec = try timed { try t.step(x) }
            if step >= warmup { times.append(sec) }
        }
        let total = times.reduce(0, +)
        let mesaRate = Double(times.count * batch) / total
        print(String(format: "mesa:    %.0f tokens/s (%d steps of %d, width %d, k %d, d_in %d, %d thread(s))", mesaRate, times.count, batch, width, k, c.dim, threads))
        var doc: [String: Any] = [
            "cache": cache, "width": width, "k": k, "batch": batch, "steps": times.count, "threads": threads, "d_in": c.dim,
            "mesa_tokens_per_second": mesaRate, "mesa_step_seconds_median": median(times),
            "blas": BLAS.configuration.description, "command": CommandLine.arguments.joined(separator: " "),
            "created": ISO8601DateFormatter().string(from: Date()),
        ]
        if reference != "none", let ref = try runReferenceScript(python: reference, [
            "ops/reference/sae_reference.py", "--cache", cache, "--width", "\(width)", "--k", "\(k)", "--batch", "\(batch)",
            "--steps", "\(steps)", "--warmup", "\(warmup)", "--threads", "\(threads)"]),
            let rate = ref["tokens_per_second"] as? Double {
            print(String(format: "PyTorch: %.0f tokens/s (%@)", rate, ref["torch"] as? String ?? "?"))
            print(String(format: "ratio mesa / PyTorch: %.2f×", mesaRate / rate))
            doc["reference"] = ref
            doc["ratio"] = mesaRate / rate
        }
        try writeResults(doc, to: out)
    }
}

struct MemitBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memit",
        abstract: "One MEMIT or AlphaEdit edit timed by phase, next to the same algorithm in PyTorch (ops/reference/memit_reference.py, same token ids, same steps) in the same run.",
        discussion: """
        The loss threshold is disabled on both sides (unless --file-stop) so both run the file's v_num_grad_steps \
        (fewer where the file asks for the most-probable early stop). The key \
        statistics (and AlphaEdit's projectors) are computed once beforehand on both sides and not timed, \
        as the methods' public code caches them. Phases: z (the δ optimization at the last edited layer) \
        and spread (keys, residual gaps and closed-form solves, layer by layer). With --batch N, facts per \
        minute together and alone, each phase's share and the mean steps per fact are measured in the \
        same run; their ratio is the figure to compare when other work loads the machine.
        """)

    @Option(help: "memit, alphaedit or encore.") var method = "alphaedit"
    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "Hyperparameters (default: deploy/hparams/<method>/SmolLM2-135M-Instruct.json).") var hparams: String?
    @Option(help: "CounterFact file; the edit is record --record of it.") var data = "../shared/data/counterfact/counterfact-val.json"
    @Option(help: "Which record to edit.") var record = 0
    @Option(help: "BLAS / torch threads.") var threads = 1
    @Option(help: "Timed repetitions (median reported), after one warm-up.") var repeats = 2
    @Option(help: "Python of the PyTorch reference environment ('none' to skip).")
    var reference = paths.home.appendingPathComponent("refenv/bin/python").path
    @Option(help: "Results file (JSON; default ops/bench/results/<method>.json).") var out: String?
    @Option(help: "Also time records record..<record+N edited together (one batch edit, as the daemon's batch.max_events does) against the same N edited one at a time.")
    var batch = 1
    @Flag(help: "Keep the hyperparameter file's loss threshold (early_stop_loss); without it a fact stops before v_num_grad_steps only by the most-probable early stop, where the file asks for it.")
    var fileStop = false
    @Flag(help: "With --batch: also time the facts one at a time with the stop rule from before the most-probable early stop (the file's loss threshold or v_num_grad_steps): the one-at-a-time rate the throughput target of issue 19 is measured against.")
    var before = false
    @Option(parsing: .upToNextOption, help: "With --batch: also time the batch together with these limits on the rows of one joint z pass (the editor's jointRowLimit, which bounds the pass's memory), same run.")
    var jointRows: [Int] = []

    func run() throws {
        guard let kind = EditMethod(rawValue: method), kind != .rome else { throw ValidationError("--method memit, alphaedit or encore") }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        BLAS.setThreads(threads)
        let path = try model ?? paths.defaultModel()
        let m = try ModelLoader.load(path: path)
        let file = hparams ?? "deploy/hparams/\(method)/SmolLM2-135M-Instruct.json"
        guard let hd = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
        var h = try MemitHyperparameters.decode(hd)
        let fileLoss = h.earlyStopLoss
        if !fileStop { h.earlyStopLoss = 0 }
        let stopRule = fileStop ? "the file's stop rule" : h.earlyStopTop == true ? "most-probable stop, no loss threshold" : "fixed steps"
        h.mesa = nil
        let state = EditState(directory: paths.state, baseHash: m.weightHash)
        let templates = try state.templates(model: m, groups: h.contextTemplates, seed: h.templateSeed, logger: Logger(label: "mesa-bench"))
        var stats: [Int: KeyStatistics] = [:]
        var statPaths: [String] = []
        for l in h.layers {
            let spec = h.statisticsSpec(modelHash: state.baseHash, layer: l)
            guard let s = try state.cachedStatistics(spec) else { throw ValidationError("no key statistics for layer \(l): run `mesa stats --layers \(h.layers.map(String.init).joined(separator: " "))` first") }
            stats[l] = s
            statPaths.append(state.statisticsURL(spec).path)
        }
        func makeEditor(_ h: MemitHyperparameters) throws -> MemitEditor {
            let solver: SpreadSolver
            switch kind {
            case .alphaedit:
                solver = .alphaEdit(try AlphaEditState(statistics: stats, nullspaceEnergy: h.nullspaceEnergy ?? 0.02, l2: h.l2 ?? 10, relative: h.l2Relative ?? false))
            case .encore:
                solver = .encore(try EncoreState(layers: h.layers, dim: m.config.intermediate, mu: h.updateNormLambda ?? 0))
            case .memit, .rome:
                solver = .memit
            }
            return try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, solver: solver)
        }
        let editor = try makeEditor(h)
        let all = try CounterFact.load(path: data).records
        guard record + batch <= all.count else { throw ValidationError("--record \(record) with --batch \(batch) exceeds the data") }
        let rec = all[record]
        let request = EditRequest(subject: rec.subject, prompt: rec.prompt, targetNew: rec.targetNew, targetTrue: rec.targetTrue)
        var runs: [[String: Double]] = []
        var last: MemitResult?
        for i in 0...repeats {
            var r: MemitResult?
            let t = try timed { r = try editor.computeUpdates([request]) }
            if i > 0 { runs.append((r!.phases).merging(["edit": t]) { a, _ in a }) }
            last = r
        }
        let med = Dictionary(uniqueKeysWithValues: ["z", "spread", "edit"].map { k in (k, median(runs.compactMap { $0[k] })) })
        let norms = last!.updates.map { Double(Vector.norm($0.left)) * Double(Vector.norm($0.right)) }
        print(String(format: "mesa %@: edit %.3f s (z %.3f, spread %.3f), ‖δ‖ %.4f", editor.method, med["edit"]!, med["z"]!, med["spread"]!, last!.deltaNorms[0]))
        var doc: [String: Any] = [
            "method": editor.method, "model": (path as NSString).lastPathComponent, "record": record, "layers": h.layers, "steps": h.vNumGradSteps,
            "threads": threads, "repeats": repeats, "mesa_seconds": med, "mesa_delta_norm": Double(last!.deltaNorms[0]),
            "mesa_update_norms": norms, "blas": BLAS.configuration.description, "command": CommandLine.arguments.joined(separator: " "),
            "created": ISO8601DateFormatter().string(from: Date()),
        ]
        if batch > 1 {
            let requests = all[record..<(record + batch)].map {
                EditRequest(subject: $0.subject, prompt: $0.prompt, targetNew: $0.targetNew, targetTrue: $0.targetTrue)
            }
            // Both on the unedited weights (computeUpdates leaves them untouched), each timed once, in the
            // same run: other load on the machine moves both, so the ratio is the figure to compare.
            var alone = 0.0, aloneSteps = 0.0
            var alonePhases: [String: Double] = [:]
            var aloneNorms: [Float] = [], aloneLosses: [Double] = []
            let cpu0 = processCPUSeconds()
            for r in requests {
                var one: MemitResult?
                alone += try timed { one = try editor.computeUpdates([r]) }
                for k in ["z", "spread"] { alonePhases[k, default: 0] += one!.phases[k] ?? 0 }
                aloneSteps += one!.phases["z_steps"] ?? .nan
                aloneNorms.append(one!.deltaNorms[0])
                aloneLosses.append(one!.finalLosses[0])
            }
            let cpu1 = processCPUSeconds()
            var joint: MemitResult?
            let together = try timed { joint = try editor.computeUpdates(requests) }
            // CPU seconds of each path: less moved by other processes than the wall time (not by cache contention).
            let cpu = (alone: cpu1 - cpu0, together: processCPUSeconds() - cpu1)
            // The batch together under other row limits per joint pass, and the peak memory each one adds.
            let deployedRows = editor.jointRowLimit
            var byRows: [[String: Double]] = []
            for rows in jointRows {
                editor.jointRowLimit = rows
                ResidentMemory.release()
                ResidentMemory.resetPeak()
                let before = ResidentMemory.current()?.resident ?? 0
                let t = try timed { _ = try editor.computeUpdates(requests) }
                let added = Double((ResidentMemory.current()?.peak ?? 0) - before) / 1_048_576
                byRows.append(["rows": Double(rows), "seconds": t, "facts_per_minute": 60 * Double(batch) / t, "peak_added_mib": added])
            }
            editor.jointRowLimit = deployedRows
            // The same facts one at a time with the stop rule from before the most-probable early stop.
            var earlier: (seconds: Double, steps: Double)?
            if before {
                var hb = h
                hb.earlyStopTop = false
                hb.earlyStopLoss = fileLoss
                let old = try makeEditor(hb)
                var seconds = 0.0, steps = 0.0
                for r in requests {
                    var one: MemitResult?
                    seconds += try timed { one = try old.computeUpdates([r]) }
                    steps += one!.phases["z_steps"] ?? .nan
                }
                earlier = (seconds, steps / Double(batch))
            }
            // The 1-minute load average after both paths ran (other processes share the cores).
            let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)).flatMap { $0.split(separator: " ").first.flatMap { Double($0) } }
            let n = Double(batch), jp = joint!.phases
            // Share of each path's wall time per phase; "other" is tokenization and bookkeeping.
            func shares(_ p: [String: Double], _ total: Double) -> [String: Double] {
                let z = (p["z"] ?? 0) / total, spread = (p["spread"] ?? 0) / total
                return ["z": z, "spread": spread, "other": 1 - z - spread]
            }
            let (st, sa) = (shares(jp, together), shares(alonePhases, alone))
            let perMinute = (together: 60 * n / together, alone: 60 * n / alone)
            let steps = (together: jp["z_steps"] ?? .nan, alone: aloneSteps / n)
            print(String(format: "batch of %d (%@): together %.1f facts/min (%.3f s per fact; z %.0f%%, spread %.0f%%, other %.0f%%; %.1f steps per fact)",
                         batch, stopRule, perMinute.together, together / n, 100 * st["z"]!, 100 * st["spread"]!, 100 * st["other"]!, steps.together))
            print(String(format: "               alone    %.1f facts/min (%.3f s per fact; z %.0f%%, spread %.0f%%, other %.0f%%; %.1f steps per fact)",
                         perMinute.alone, alone / n, 100 * sa["z"]!, 100 * sa["spread"]!, 100 * sa["other"]!, steps.alone))
            print(String(format: "               together / alone: %.2f× the facts per minute (z phase %.2f× faster), same run; %@",
                         alone / together, (alonePhases["z"] ?? .nan) / (jp["z"] ?? .nan), BLAS.configuration.description))
            // Each fact's z together against alone (the joint optimization must not change it).
            let normDiff = zip(joint!.deltaNorms, aloneNorms).map { Double(abs($0 - $1) / max($1, 1e-12)) }.max() ?? .nan
            let lossDiff = zip(joint!.finalLosses, aloneLosses).map { abs($0 - $1) / max(abs($1), 1e-12) }.max() ?? .nan
            let parts = ["pass", "forward", "loss", "backward", "descend"].map { String(format: "%@ %.2f", $0, jp["z_" + $0] ?? .nan) }
            print("               together, the z phase's parts (s): " + parts.joined(separator: ", "))
            // Each part's rate against the sgemm rate at a step's shape (rows of 32 facts' prompts).
            let rate = sgemmRate(m: 1024, n: 1536, k: 576)
            var floors: [String: Double] = [:]
            for part in ["pass", "forward", "backward"] {
                if let g = jp["z_\(part)_gflop"], let t = jp["z_" + part] { floors[part] = t / (g / rate) }
            }
            print(String(format: "               pass %.0f GFLOP at %.2f× its floor, forward %.0f GFLOP at %.2f×, backward %.0f GFLOP at %.2f× (sgemm %.0f GFLOP/s at [1024, 576]·[576, 1536])",
                         jp["z_pass_gflop"] ?? .nan, floors["pass"] ?? .nan, jp["z_forward_gflop"] ?? .nan, floors["forward"] ?? .nan,
                         jp["z_backward_gflop"] ?? .nan, floors["backward"] ?? .nan, rate))
            for r in byRows {
                print(String(format: "               together with at most %.0f rows per joint pass: %.1f facts/min (%.3f s per fact; %.2f× the %d-row figure above); the edit's peak added %.0f MiB",
                             r["rows"]!, r["facts_per_minute"]!, r["seconds"]! / n, r["seconds"]! / together, deployedRows, r["peak_added_mib"]!))
            }
            if let earlier {
                print(String(format: "               one at a time with the stop rule before the most-probable stop (loss < %g or %d steps): %.1f facts/min (%.3f s per fact; %.1f steps per fact); together / that: %.2f×",
                             fileLoss, h.vNumGradSteps, 60 * n / earlier.seconds, earlier.seconds / n, earlier.steps, earlier.seconds / together))
            }
            print(String(format: "               CPU time: %.1f s together, %.1f s alone: %.2f×", cpu.together, cpu.alone, cpu.alone / cpu.together))
            print(String(format: "               per fact, together vs alone: ‖δ‖ max relative difference %.1e, final loss %.1e", normDiff, lossDiff))
            if let load {
                print(String(format: "               load average %.2f on %d cores: the absolute rates are this machine's under that load; compare the ratio",
                             load, ProcessInfo.processInfo.activeProcessorCount))
            }
            doc["batch"] = ["size": batch, "stop": stopRule, "together_seconds": together, "alone_seconds": alone,
                            "joint_row_limit": deployedRows, "together_by_row_limit": byRows,
                            "together_phases": jp, "alone_phases": alonePhases, "sgemm_gflop_per_s": rate, "together_over_floor": floors, "together_phase_shares": st, "alone_phase_shares": sa,
                            "together_facts_per_minute": perMinute.together, "alone_facts_per_minute": perMinute.alone,
                            "together_steps_per_fact": steps.together, "alone_steps_per_fact": steps.alone,
                            "throughput_ratio": alone / together, "load_average_1min": load ?? -1,
                            "together_cpu_seconds": cpu.together, "alone_cpu_seconds": cpu.alone, "cpu_ratio": cpu.alone / cpu.together,
                            "delta_norm_max_relative_difference": normDiff, "final_loss_max_relative_difference": lossDiff,
                            "cores": ProcessInfo.processInfo.activeProcessorCount] as [String: Any]
            if let earlier {
                var b = doc["batch"] as! [String: Any]
                b["before_stop"] = "loss < \(fileLoss) or \(h.vNumGradSteps) steps, no most-probable stop"
                b["before_seconds"] = earlier.seconds
                b["before_facts_per_minute"] = 60 * n / earlier.seconds
                b["before_steps_per_fact"] = earlier.steps
                b["together_over_before"] = earlier.seconds / together
                doc["batch"] = b
            }
        }
        if reference != "none" {
            let tok = EditTokenizer(model: m)
            let batch = try RomeBatch(request: request, prefixes: templates.prefixes, tokenizer: tok, contextLength: m.config.contextLength)
            let keys = try templates.prefixes.map { try tok.subjectPrompt(prefix: $0, prompt: request.prompt, subject: request.subject) }
            let bare = try tok.subjectPrompt(prefix: "", prompt: request.prompt, subject: request.subject)
            guard let weights = templates.groupWeights else { throw ValidationError("the templates do not match their groups") }
            var job: [String: Any] = [
                "model": path, "method": method, "layers": h.layers, "steps": h.vNumGradSteps, "lr": h.vLr, "weight_decay": h.vWeightDecay,
                "clamp_norm_factor": h.clampNormFactor, "kl_factor": h.klFactor, "early_stop_loss": h.earlyStopLoss, "mom2_update_weight": h.mom2UpdateWeight,
                "mom2_ridge": h.mom2Ridge, "statistics": statPaths, "repeats": repeats, "early_stop_top": h.earlyStopTop ?? false,
                "early_stop_top_checks": h.earlyStopTopChecks ?? 1,
                "rewrite_prompts": zip(batch.rewrite, batch.rewriteTargets).map { p, t in
                    ["tokens": p.tokens.map(Int.init), "position": p.position, "targets": zip(p.logitPositions, t).map { [$0, Int($1)] }]
                },
                "kl_prompts": batch.kl.map { ["tokens": $0.tokens.map(Int.init), "position": $0.position] },
                "key_prompts": keys.map { ["tokens": $0.tokens.map(Int.init), "position": $0.subjectLast] },
                "key_weights": weights, "bare_prompt": ["tokens": bare.tokens.map(Int.init), "position": bare.subjectLast],
            ]
            if kind == .alphaedit { job["nullspace_energy"] = h.nullspaceEnergy ?? 0.02; job["l2"] = h.l2 ?? 10 }
            if kind == .encore { job["update_norm_lambda"] = h.updateNormLambda ?? 0 }
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-memit-\(getpid())")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            let jobURL = dir.appendingPathComponent("job.json")
            try JSONSerialization.data(withJSONObject: job).write(to: jobURL)
            if let ref = try runReferenceScript(python: reference, ["ops/reference/memit_reference.py", "--job", jobURL.path, "--threads", "\(threads)"]),
               let phases = ref["phases"] as? [String: Double], let edit = phases["edit_s"] {
                print(String(format: "PyTorch: edit %.3f s (z %.3f, spread %.3f), ‖δ‖ %.4f", edit, phases["z_s"] ?? .nan, phases["spread_s"] ?? .nan,
                             ref["delta_norm"] as? Double ?? .nan))
                print(String(format: "ratio PyTorch / mesa: %.2f× (z %.2f×, spread %.2f×)", edit / med["edit"]!, (phases["z_s"] ?? .nan) / med["z"]!,
                             (phases["spread_s"] ?? .nan) / med["spread"]!))
                if let rn = ref["update_norms"] as? [Double] {
                    let rel = zip(norms, rn).map { abs($0 - $1) / max(1e-12, $1) }
                    print(String(format: "per-layer ‖ΔW‖ relative difference: max %.2e", rel.max() ?? .nan))
                    doc["update_norm_relative_difference"] = rel
                }
                doc["reference"] = ref
                doc["speedup"] = edit / med["edit"]!
            }
        }
        let dest = out ?? "ops/bench/results/\(method).json"
        try writeResults(doc, to: dest)
    }
}

/// CPU seconds this process has used (all threads).
private func processCPUSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
