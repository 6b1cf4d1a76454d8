import ArgumentParser
import EditDaemon
import EditEvaluation
import Editing
import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

struct SAE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sae",
        abstract: "Train and inspect BatchTopK sparse autoencoders on the model's activations.",
        subcommands: [SAETrain.self, SAEInfo.self])
}

/// Where SAEs and activation caches of a model live: `<state>/<hash16>/sae/<name>/`, `.../activations/`.
extension EditState {
    var saeDirectory: URL { root.appendingPathComponent("sae") }
    func activationCacheURL(_ spec: ActivationSpec) -> URL { root.appendingPathComponent("activations").appendingPathComponent(spec.key + ".f16") }
}

struct SAETrain: ParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Harvest activations at a site from the Wikipedia sample (cached) and train a BatchTopK SAE on them.",
        discussion: """
        Activations are collected from shuffled articles (the first --sequence-length tokens of each, \
        or with --windows every consecutive window of that length; position 0 dropped) and cached as half floats under $MESA_HOME/state/<model hash>/activations/. \
        Training follows dictionary_learning's BatchTopK (METHODS.md §4); the progress bar reports the \
        fraction of variance unexplained (FVU), L0 and dead latents on the training batches. At the end \
        the SAE is evaluated on held-out articles (the last ones of the shuffled order): FVU, L0 and \
        the next-token loss recovered when its reconstruction replaces the site's activation. The SAE \
        is written in SAELens' layout (cfg.json, sae_weights.safetensors, sparsity.safetensors) to \
        $MESA_HOME/state/<model hash>/sae/<name>/ unless --out is given. Several sites (--site mlp_out \
        mlp_key) and layers (--layers) are harvested in one pass; then one SAE is trained per site, in \
        the order given.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var logOptions: LogOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .long, parsing: .upToNextOption,
            help: "Activation sites: mlp_out, mlp_key (the down projection's input), resid_out, resid_in (default: mlp_out).")
    var site: [String] = []
    @Option(name: .long, help: "Latents (d_sae).") var width: Int = 4608
    @Option(name: .long, help: "Mean active latents per token (BatchTopK k).") var k: Int = 32
    @Option(name: .long, help: "Training tokens (rows seen; the cache is reused in shuffled epochs when smaller).") var tokens: Int = 2_000_000
    @Option(name: .long, help: "Activation rows to harvest (default: min(--tokens, 1,000,000)).") var harvestTokens: Int?
    @Option(name: .long, help: "Tokens per article, or per window with --windows.") var sequenceLength: Int = 256
    @Flag(name: .long, help: "Cut every article into windows of --sequence-length tokens (the whole corpus at short-context cost).")
    var windows = false
    @Option(name: .long, help: "Activations per step.") var batchSize: Int = 1024
    @Option(name: .long, help: "Learning rate (default 2e-4/sqrt(width/2^14)).") var lr: Float?
    @Option(name: .long, help: "Seed for initialization and shuffling.") var seed: UInt64 = 0
    @Option(name: .long, help: "Held-out articles for the quality figures.") var heldOutArticles: Int = 12
    @Option(name: .long, help: "SAE name under the state's sae/ directory (default: <site><layer>-w<width>-k<k>).") var name: String?
    @Option(name: .long, help: "Write the SAE here instead.") var out: String?
    @Option(name: .long, help: "Also write the training report (JSON) here.") var report: String?

    @Option(name: .customLong("layers"), parsing: .upToNextOption, help: "Several layers: one harvest pass, then one SAE per layer.")
    var layers: [Int] = []

    func run() throws {
        try reportingErrors {
            var kinds: [SiteKind] = []
            for name in site.isEmpty ? ["mlp_out"] : site {
                guard let kind = SiteKind(rawValue: name) else { throw fail("--site must be mlp_out, mlp_key, resid_out or resid_in, not \(name)") }
                if !kinds.contains(kind) { kinds.append(kind) }
            }
            let wanted = Array(Set(layers + (editOptions.layer.map { [$0] } ?? []))).sorted()
            guard !wanted.isEmpty else { throw fail("give --layer L (or --layers L1 L2 …)") }
            let sites = kinds.flatMap { k in wanted.map { Site(layer: $0, kind: k) } }
            guard sites.count == 1 || (out == nil && name == nil) else { throw fail("--out and --name name one SAE; use them with a single site and layer") }
            let path = try modelOptions.path
            let model = try modelOptions.load()
            for l in wanted where l < 0 || l >= model.config.layers { throw fail("layer \(l) is outside 0..<\(model.config.layers)") }
            let hash = model.weightHash
            let state = editOptions.state(baseHash: hash)
            let specs = sites.map {
                ActivationSpec(modelHash: hash, site: $0, tokens: harvestTokens ?? min(tokens, 1_000_000),
                               sequenceLength: sequenceLength, seed: seed, windows: windows)
            }
            let corpus = try Corpus(path: editOptions.corpusPath, seed: seed)
            try trappingInterrupt { stop in
                var caches: [Site: ActivationCache] = [:]
                for s in specs where FileManager.default.fileExists(atPath: state.activationCacheURL(s).path) {
                    caches[s.site] = try ActivationCache(url: state.activationCacheURL(s))
                    log("using cached activations \(state.activationCacheURL(s).path) (\(caches[s.site]!.rows) rows)")
                }
                let missing = specs.filter { caches[$0.site] == nil }
                var harvestSeconds = 0.0
                if !missing.isEmpty {
                    let target = missing[0].tokens
                    log("harvesting \(target) activations at \(missing.map(\.site.description).joined(separator: ", ")) from \(editOptions.corpusPath)")
                    let bar = ProgressBar("harvest")
                    let t0 = Date()
                    // Held-out articles come from the end of the shuffled order, so the harvest stops before them.
                    guard let got = try ActivationCache.harvest(
                        model: model, specs: missing, articleCount: max(0, corpus.count - heldOutArticles), article: corpus.article,
                        to: missing.map { state.activationCacheURL($0) },
                        progress: { rows, _ in bar.update(rows, target, unit: "tok", seconds: Date().timeIntervalSince(t0)) },
                        shouldStop: { stop.isRaised }) else { bar.finish(); throw fail("interrupted; the same command resumes the harvest") }
                    bar.finish()
                    harvestSeconds = Date().timeIntervalSince(t0)
                    for c in got { caches[c.spec.site] = c }
                    log(String(format: "harvested %d rows per site in %.0f s (%.0f tokens/s)", got[0].rows, harvestSeconds, Double(got[0].rows) / harvestSeconds))
                }
                // Held-out sequences (the last articles of the shuffled order).
                let tok = model.tokenizer
                var sequences: [[Int32]] = []
                for i in 0..<min(heldOutArticles, corpus.count) {
                    var ids = tok.encode(corpus.article(corpus.count - 1 - i), addSpecial: true, parseSpecial: false)
                    ids = Array(ids.prefix(min(sequenceLength, model.config.contextLength)))
                    if ids.count > specs[0].skipFirst + 1 { sequences.append(ids) }
                }
                for s in sites {
                    let suffix = wanted.count == 1 ? "-\(s.kind.rawValue)" : kinds.count == 1 ? "-layer\(s.layer)" : "-\(s.kind.rawValue)\(s.layer)"
                    try train(model: model, modelPath: path, cache: caches[s]!, sequences: sequences, state: state, harvestSeconds: harvestSeconds,
                              reportPath: report.map { sites.count == 1 ? $0 : ($0 as NSString).deletingPathExtension + suffix + ".json" }, stop: stop)
                }
            }
        }
    }

    func train(model: LanguageModel, modelPath path: String, cache: ActivationCache, sequences: [[Int32]], state: EditState,
               harvestSeconds: Double, reportPath: String?, stop: StopFlag) throws {
        let where_ = cache.spec.site, layer = where_.layer, kind = where_.kind, hash = model.weightHash
        var settings = BatchTopKSettings(width: width, k: k, tokens: tokens, batchSize: batchSize)
        settings.lr = lr
        settings.seed = seed
        let metadata = SAEMetadata(modelName: EditOptions.modelName(path), modelHash: hash, site: where_,
                                   contextSize: sequenceLength, prependBos: model.tokenizer.addBOS)
        let trainer = try BatchTopKTrainer(dIn: cache.dim, settings: settings, metadata: metadata)
        let run = try SAETrainingRun(trainer: trainer, cache: cache)
        let bar = ProgressBar("train \(where_)")
        var smooth: (fvu: Double, l0: Double)?
        var last: SAEStepStats?
        // Loss recovered on two held-out articles, every tenth of the run once θ is set.
        let probe = Array(sequences.prefix(2))
        let every = max(1, settings.steps / 10)
        var recovered: Double?
        var probeSeconds = 0.0
        let t0 = Date()
        let finished = try run.run(progress: { s, secs in
            let a = 0.05
            smooth = smooth.map { ((1 - a) * $0.fvu + a * s.fvu, (1 - a) * $0.l0 + a * s.l0) } ?? (s.fvu, s.l0)
            last = s
            if s.step % every == 0, s.threshold >= 0, !probe.isEmpty, let snap = try? trainer.finish() {
                let p0 = Date()
                if let l = try? snap.spliceLosses(model: model, sequences: probe, skipFirst: cache.spec.skipFirst), l.zero != l.clean {
                    recovered = (l.zero - l.spliced) / (l.zero - l.clean)
                }
                probeSeconds += Date().timeIntervalSince(p0)
            }
            bar.update(s.tokens, settings.steps * batchSize, unit: "tok", seconds: secs - probeSeconds,
                       extra: String(format: "FVU %.3f L0 %.1f dead %d", smooth!.fvu, smooth!.l0, s.dead)
                           + (recovered.map { String(format: " loss recovered %.3f", $0) } ?? ""))
        }, shouldStop: { stop.isRaised })
        bar.finish()
        guard finished else { throw fail("interrupted (training is not resumable; nothing was written)") }
        // Throughput counts training only, not the loss-recovered probes.
        let trainSeconds = Date().timeIntervalSince(t0) - probeSeconds
        let sae = try trainer.finish()
        var heldOut: [Float] = []
        for ids in sequences {
            let r = try model.forward(ids, options: ForwardOptions(capture: [where_], logits: .none, stopAfterLayer: layer))
            heldOut += r.activations[where_]!.data[(cache.spec.skipFirst * cache.dim)...]
        }
        log("evaluating on \(sequences.count) held-out articles (\(heldOut.count / cache.dim) tokens)")
        let q = try sae.quality(model: model, heldOut: heldOut, rows: heldOut.count / cache.dim, sequences: sequences, skipFirst: cache.spec.skipFirst)
        let throughput = Double(trainer.step * batchSize) / trainSeconds
        sae.training["fvu_held_out"] = .number(q.fvu)
        sae.training["l0_held_out"] = .number(q.l0)
        sae.training["loss_recovered"] = .number(q.lossRecovered)
        sae.training["train_tokens_per_second"] = .number(throughput)
        sae.training["activation_rows"] = .number(Double(cache.rows))
        let dest = out.map { URL(fileURLWithPath: $0) }
            ?? state.saeDirectory.appendingPathComponent(name ?? "\(kind.rawValue)\(layer)-w\(width)-k\(k)")
        try sae.save(to: dest)
        let dead = (sae.logSparsity ?? []).filter { $0 < -9 }.count
        print(String(format: "SAE %@: d_in %d, width %d, k %d, %d steps of %d (%d tokens, %.0f tokens/s, %.0f s)",
                     where_.description, sae.dIn, width, k, trainer.step, batchSize, trainer.step * batchSize, throughput, trainSeconds))
        if let last { print(String(format: "last batch: FVU %.4f, L0 %.1f, dead %d, θ %.4g (normalized)", last.fvu, last.l0, last.dead, last.threshold)) }
        print(String(format: "held out (%d tokens): FVU %.4f, L0 %.1f, never fired %d; CE clean %.4f, spliced %.4f, zero-ablated %.4f: loss recovered %.4f",
                     q.heldOutTokens, q.fvu, q.l0, q.deadOnHeldOut, q.lossClean, q.lossSpliced, q.lossZero, q.lossRecovered))
        print("latents that never fired in training: \(dead)")
        print("wrote \(dest.path)")
        if let reportPath {
            let doc: [String: Any] = [
                "model": EditOptions.modelName(path), "model_hash": hash, "site": where_.description, "width": width, "k": k,
                "batch_size": batchSize, "steps": trainer.step, "training_tokens": trainer.step * batchSize,
                "activation_rows": cache.rows, "harvest_seconds": harvestSeconds, "train_seconds": trainSeconds,
                "train_tokens_per_second": throughput, "lr": Double(settings.effectiveLR()),
                "held_out": ["tokens": q.heldOutTokens, "fvu": q.fvu, "l0": q.l0, "never_fired": q.deadOnHeldOut,
                             "ce_clean": q.lossClean, "ce_spliced": q.lossSpliced, "ce_zero": q.lossZero,
                             "loss_recovered": q.lossRecovered, "loss_tokens": q.lossTokens] as [String: Any],
                "dead_in_training": dead, "command": CommandLine.arguments.joined(separator: " "),
                "blas": BLASInfo.current, "sae": dest.path,
            ]
            try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: reportPath))
            print("wrote \(reportPath)")
        }
    }
}

struct SAEInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Load an SAE directory (SAELens or dictionary_learning layout) and print its shape, site and training figures.")

    @Argument(help: "The SAE directory.") var directory: String

    func run() throws {
        try reportingErrors {
            let sae = try SparseAutoencoder.load(from: URL(fileURLWithPath: directory))
            print("site \(sae.metadata.site) (\(sae.metadata.hookName)), model \(sae.metadata.modelName)")
            print("d_in \(sae.dIn), d_sae \(sae.width), k \(sae.k.map(String.init) ?? "?"), threshold \(sae.threshold.first ?? 0)")
            for (key, v) in sae.training.sorted(by: { $0.key < $1.key }) { print("  \(key): \(v)") }
        }
    }
}

enum BLASInfo {
    static var current: String { BLAS.configuration.description }
}
