import ArgumentParser
import Editing
import Evaluation
import Foundation
import ModelRuntime
import Tensor

struct Edit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply one edit (ROME, MEMIT or AlphaEdit; --mesa refines it through an SAE) to the resident model and print its metrics.",
        discussion: """
        The prompt holds {} where the subject goes: --subject "Eiffel Tower" --prompt "The {} is located in" \
        --target-new Rome. With --target-true the edit is scored as a CounterFact case (ES/EM on the \
        prompt, PS/PM on --paraphrase prompts, NS/NM on --neighborhood prompts), before and after.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .long, help: "The subject, as it appears in the text.") var subject: String
    @Option(name: .long, help: "The prompt, with {} where the subject goes.") var prompt: String
    @Option(name: .long, help: "The new object.") var targetNew: String
    @Option(name: .long, help: "The current object (enables the success metrics).") var targetTrue: String?
    @Option(name: .long, help: "A paraphrase prompt (subject filled in); repeatable.") var paraphrase: [String] = []
    @Option(name: .long, help: "A neighborhood prompt about another subject with the same true object; repeatable.") var neighborhood: [String] = []
    @Option(name: .long, help: "Greedy tokens to generate from the prompt before and after (0 = none).") var generate: Int = 12
    @Option(name: .long, help: "Write the rank-one update (JSON) here.") var saveUpdate: String?
    @Option(name: .long, help: "Write the edited model here as GGUF (edited tensors in F32, the rest as loaded).") var save: String?
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Option(name: .long, help: "Editing method: rome, memit, alphaedit or encore.") var method: EditMethod = .rome

    func run() throws {
        try reportingErrors {
            let path = try modelOptions.path
            let model = try modelOptions.load()
            let request = EditRequest(subject: subject, prompt: prompt, targetNew: targetNew, targetTrue: targetTrue)
            try request.validate()
            if method != .rome {
                try runMemit(model: model, path: path, request: request)
                return
            }
            guard let editor = try makeEditor(.rome, model: model, modelPath: path, options: editOptions) as? RomeEditor else { throw fail("not a ROME editor") }
            let record = CounterFactRecord(caseId: 0, subject: subject, prompt: prompt, targetNew: targetNew, targetTrue: targetTrue ?? "",
                                           paraphrasePrompts: paraphrase, neighborhoodPrompts: neighborhood)
            let scorer = CounterFactScorer.make(model)
            let tok = EditTokenizer(model: model)
            func continuation() throws -> String? {
                guard generate > 0 else { return nil }
                return try model.generate(prompt: tok.prompt(request.filledPrompt), maxTokens: generate).text
            }
            let hashBefore = model.weightHash
            let pre = targetTrue != nil ? try CounterFactEval.score(record, with: scorer) : nil
            let preNew = try pre?.rewrite[0].nllNew ?? scorer(request.filledPrompt, [targetNew])[0]
            let genBefore = try continuation()

            let t0 = Date()
            let result = try editor.computeUpdate(request)
            try model.apply(result.applied)
            let editSeconds = Date().timeIntervalSince(t0)

            let post = targetTrue != nil ? try CounterFactEval.score(record, with: scorer) : nil
            let postNew = try post?.rewrite[0].nllNew ?? scorer(request.filledPrompt, [targetNew])[0]
            let genAfter = try continuation()
            let hashAfter = model.weightHash

            if let saveUpdate {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                try enc.encode(result.applied).write(to: URL(fileURLWithPath: saveUpdate))
            }
            if let save { try ModelExporter.writeGGUF(model, to: save) }

            if json {
                var out: [String: Any] = [
                    "subject": subject, "prompt": prompt, "target_new": targetNew, "edit_seconds": editSeconds,
                    "phases": result.phases, "steps": result.losses.count, "final_loss": result.losses.last?.total ?? .nan,
                    "delta_norm": result.deltaNorm, "v_init_norm": result.valueInitNorm, "denominator": result.denominator, "key_gains": result.keyGains,
                    "p_new_before": exp(-preNew), "p_new_after": exp(-postNew), "hash_before": hashBefore, "hash_after": hashAfter,
                ]
                if let pre, let post {
                    out["pre"] = ["es": pre.es, "em": pre.em, "ps": pre.ps, "pm": pre.pm, "ns": pre.ns, "nm": pre.nm]
                    out["post"] = ["es": post.es, "em": post.em, "ps": post.ps, "pm": post.pm, "ns": post.ns, "nm": post.nm]
                }
                if let genBefore, let genAfter { out["generation_before"] = genBefore; out["generation_after"] = genAfter }
                if let c = result.coverage {
                    var doc: [String: Any] = ["coverage": c.coverage, "outside": c.outside, "change_norm": c.changeNorm]
                    if let e = c.subjectError { doc["subject_error"] = e }
                    if let x = c.crowding { doc["crowding"] = x }
                    out["sae_coverage"] = doc
                }
                if let x = result.neighbourShift { out["neighbour_shift"] = x }
                if let x = result.neighbourShiftMax { out["neighbour_shift_max"] = x }
                if let n = result.deltaFeatures { out["delta_features"] = n }
                if let r = result.writtenToDelta { out["written_to_delta_norm"] = r }
                if let c = result.keyGramCondition { out["key_gram_condition"] = c }
                let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("edit: \(request.filledPrompt) → \(targetNew)   (\(editor.method), layer \(editor.hparams.layer))")
            print(String(format: "  %.2f s: k* %.3f s, v* %.3f s (%d steps, loss %.3f → %.3f), closed form %.3f s",
                         editSeconds, result.phases["k_star"] ?? 0, result.phases["v_star"] ?? 0, result.losses.count,
                         result.losses.first?.total ?? .nan, result.losses.last?.total ?? .nan, result.phases["closed_form"] ?? 0))
            print(String(format: "  ‖δ‖ %.3f (‖v_init‖ %.3f), uᵀk* %.4f, bare-prompt gain uᵀk/uᵀk* %.3f", result.deltaNorm,
                         result.valueInitNorm, result.denominator, result.keyGains.first ?? .nan))
            if let r = result.writtenToDelta, let c = result.keyGramCondition {
                print(String(format: "  MESA: ‖written change‖/‖δ‖ %.3f, rank %d written, key Gram matrix condition %.3g", r, result.applied.rank, c))
            }
            print(String(format: "  P(%@ | prompt): %.4f → %.4f", targetNew, exp(-preNew), exp(-postNew)))
            if let pre, let post {
                func row(_ name: String, _ a: Double, _ b: Double) { print(String(format: "  %@ %8.3f → %8.3f", name, a, b)) }
                row("ES", pre.es, post.es); row("EM", pre.em, post.em)
                if !paraphrase.isEmpty { row("PS", pre.ps, post.ps); row("PM", pre.pm, post.pm) }
                if !neighborhood.isEmpty { row("NS", pre.ns, post.ns); row("NM", pre.nm, post.nm) }
            }
            if let genBefore, let genAfter {
                print("  before: \(request.filledPrompt)\(genBefore)")
                print("  after:  \(request.filledPrompt)\(genAfter)")
            }
            if let c = result.coverage {
                print(String(format: "  SAE: refined %@, δ latents %@, written change ‖Δ‖ %.3f, coverage %.3f (outside %.3f)",
                             result.refined ? "yes" : "no", result.deltaFeatures.map(String.init) ?? "-", c.changeNorm, c.coverage, c.outside))
            }
            print("  weights: \(hashBefore.prefix(16)) → \(hashAfter.prefix(16))")
            if let saveUpdate { print("  update written to \(saveUpdate)") }
            if let save { print("  edited model written to \(save)") }
        }
    }

    /// MEMIT / AlphaEdit / ENCORE: the low-rank updates of every edited layer, applied in order.
    func runMemit(model: LanguageModel, path: String, request: EditRequest) throws {
        guard saveUpdate == nil else { throw fail("--save-update writes ROME's rank-one update; use `mesa serve` snapshots for MEMIT/AlphaEdit") }
        guard let editor = try makeEditor(method, model: model, modelPath: path, options: editOptions) as? MemitEditor else {
            throw fail("not a MEMIT-family editor")
        }
        let record = CounterFactRecord(caseId: 0, subject: subject, prompt: prompt, targetNew: targetNew, targetTrue: targetTrue ?? "",
                                       paraphrasePrompts: paraphrase, neighborhoodPrompts: neighborhood)
        let scorer = CounterFactScorer.make(model)
        let hashBefore = model.weightHash
        let pre = targetTrue != nil ? try CounterFactEval.score(record, with: scorer) : nil
        let preNew = try pre?.rewrite[0].nllNew ?? scorer(request.filledPrompt, [targetNew])[0]
        let t0 = Date()
        let (updates, phases) = try editor.computeUpdates(for: request)
        for u in updates { try model.apply(u) }
        let seconds = Date().timeIntervalSince(t0)
        let post = targetTrue != nil ? try CounterFactEval.score(record, with: scorer) : nil
        let postNew = try post?.rewrite[0].nllNew ?? scorer(request.filledPrompt, [targetNew])[0]
        if let save { try ModelExporter.writeGGUF(model, to: save) }
        if json {
            var out: [String: Any] = [
                "method": editor.method, "subject": subject, "prompt": prompt, "target_new": targetNew, "edit_seconds": seconds, "phases": phases,
                "layers": updates.map(\.layer), "ranks": updates.map(\.rank), "p_new_before": exp(-preNew), "p_new_after": exp(-postNew),
                "hash_before": hashBefore, "hash_after": model.weightHash,
            ]
            if let pre, let post {
                out["pre"] = ["es": pre.es, "ps": pre.ps, "ns": pre.ns]
                out["post"] = ["es": post.es, "ps": post.ps, "ns": post.ns]
            }
            if let c = editor.lastCoverage { out["sae_coverage"] = ["coverage": c.coverage, "outside": c.outside] }
            print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("edit: \(request.filledPrompt) → \(targetNew)   (\(editor.method), layers \(updates.map(\.layer)))")
        // Phases are seconds except the counts (z_steps: loss evaluations per fact; second_solve_requests)
        // and the *_gflop figures.
        func phase(_ name: String, _ value: Double) -> String {
            if ["z_steps", "second_solve_requests"].contains(name) { return String(format: "%@ %g", name, value) }
            if name.hasSuffix("_gflop") { return String(format: "%@ %.1f GFLOP", name, value) }
            return String(format: "%@ %.2f s", name, value)
        }
        print(String(format: "  %.2f s (%@)", seconds, phases.sorted { $0.key < $1.key }.map { phase($0.key, $0.value) }.joined(separator: ", ")))
        print(String(format: "  P(%@ | prompt): %.4f → %.4f", targetNew, exp(-preNew), exp(-postNew)))
        if let pre, let post {
            print(String(format: "  ES %.3f → %.3f", pre.es, post.es))
            if !paraphrase.isEmpty { print(String(format: "  PS %.3f → %.3f", pre.ps, post.ps)) }
            if !neighborhood.isEmpty { print(String(format: "  NS %.3f → %.3f", pre.ns, post.ns)) }
        }
        if let c = editor.lastCoverage { print(String(format: "  SAE coverage %.3f (outside %.3f)", c.coverage, c.outside)) }
        print("  weights: \(hashBefore.prefix(16)) → \(model.weightHash.prefix(16))")
        if let save { print("  edited model written to \(save)") }
    }
}
