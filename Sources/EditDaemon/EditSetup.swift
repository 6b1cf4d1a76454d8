import Contracts
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import SparseAutoencoder
import Tensor

/// A setup failure (missing file, invalid configuration) with a message for the operator.
public struct SetupError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (its text ends `message`).
    public var cause: (any Error)?
    public init(_ message: String) { self.message = message }
    /// `message` followed by the text of `cause`, which is kept.
    public init(_ message: String, cause: any Error) {
        self.message = message.isEmpty ? "\(cause)" : "\(message): \(cause)"
        self.cause = cause
    }
    public var description: String { message }
}

extension SetupError {
    /// A hyperparameter or configuration file the schema catalog refused, with the catalog's message.
    init(_ e: SchemaCatalogError) {
        self.init(e.message)
        cause = e
    }
}

/// The model's short name and its hyperparameter file.
public enum Installation {
    /// The model's short name: the file name without extension and quantization suffix.
    public static func modelName(_ path: String) -> String {
        var name = URL(fileURLWithPath: path).lastPathComponent
        for ext in [".gguf", ".safetensors"] where name.hasSuffix(ext) { name.removeLast(ext.count) }
        if let dot = name.lastIndex(of: "."), name[name.index(after: dot)...].range(of: #"^(Q\d|F16|F32|BF16|IQ\d)"#, options: .regularExpression) != nil {
            name = String(name[..<dot])
        }
        return name
    }

    /// The first of `directories` holding `<method>/<model>.json` (`Paths.hparams`).
    public static func hparamsFile(method: EditMethod, modelName: String, directories: [URL]) throws -> URL {
        let file = "\(modelName).json"
        for d in directories {
            let u = d.appendingPathComponent(method.rawValue).appendingPathComponent(file)
            if FileManager.default.fileExists(atPath: u.path) { return u }
        }
        throw SetupError("no \(method.rawValue) hyperparameters for \(modelName): add \(method.rawValue)/\(file) to the hyperparameter directory (deploy/hparams)")
    }
}

/// One method's hyperparameters, as its file holds them: what `EditorRegistry` builds an editor from.
public enum MethodHyperparameters: Sendable, Equatable {
    case rome(RomeHyperparameters)
    case memit(MemitHyperparameters)
    case alphaEdit(MemitHyperparameters)
    case encore(MemitHyperparameters)

    public var method: EditMethod {
        switch self {
        case .rome: return .rome
        case .memit: return .memit
        case .alphaEdit: return .alphaedit
        case .encore: return .encore
        }
    }

    /// The lowest layer these hyperparameters edit (where the quality guard's canary pass starts).
    public var lowestLayer: Int {
        switch self {
        case .rome(let h): return h.layer
        case .memit(let h), .alphaEdit(let h), .encore(let h): return h.layers.first ?? 0
        }
    }

    /// The "mesa" block (MESA refinement through an SAE).
    public var mesa: MesaHyperparameters? {
        get {
            switch self {
            case .rome(let h): return h.mesa
            case .memit(let h), .alphaEdit(let h), .encore(let h): return h.mesa
            }
        }
        set {
            switch self {
            case .rome(var h): h.mesa = newValue; self = .rome(h)
            case .memit(var h): h.mesa = newValue; self = .memit(h)
            case .alphaEdit(var h): h.mesa = newValue; self = .alphaEdit(h)
            case .encore(var h): h.mesa = newValue; self = .encore(h)
            }
        }
    }
}

/// The one place editors are built, for every method: hyperparameter files checked against their
/// schema, stored context templates, key statistics loaded from the edit state or computed once
/// (resumably), AlphaEdit's null-space projectors, and the SAE of MESA refinement.
public struct EditorRegistry {
    /// The state directory (`Paths.state` by default): `<hash16>/` per base model.
    public var stateDirectory: URL
    public var corpusPath: String
    public var logger: Logger
    /// Progress of a key-statistics computation: (tokens done, tokens wanted, seconds).
    public var progress: ((Int, Int, Double) -> Void)?
    public var shouldStop: (() -> Bool)?
    /// CounterFact records whose base-model edits give NAS's anchor (`norm_anchor_samples`), e.g.
    /// `<data_dir>/counterfact/counterfact-train.json` (tuning data, never the evaluation split).
    public var anchorRecords: URL?

    public init(stateDirectory: URL, corpusPath: String, logger: Logger,
                progress: ((Int, Int, Double) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) {
        self.stateDirectory = stateDirectory
        self.corpusPath = corpusPath
        self.logger = logger
        self.progress = progress
        self.shouldStop = shouldStop
    }

    /// Reads and checks `method`'s hyperparameter file (Schemas/rome-hparams.schema.json or
    /// memit-hparams.schema.json).
    public static func hyperparameters(_ method: EditMethod, at url: URL, catalog: SchemaCatalog) throws -> MethodHyperparameters {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw SetupError("cannot read \(url.path)") }
        switch method {
        case .rome:
            do { try catalog.check(data, against: "rome-hparams.schema.json", what: url.path) } catch let e as SchemaCatalogError { throw SetupError(e) }
            return .rome(try RomeHyperparameters.decode(data))
        case .memit, .alphaedit, .encore:
            do { try catalog.check(data, against: "memit-hparams.schema.json", what: url.path) } catch let e as SchemaCatalogError { throw SetupError(e) }
            let h = try MemitHyperparameters.decode(data)
            switch method {
            case .alphaedit: return .alphaEdit(h)
            case .encore: return .encore(h)
            default: return .memit(h)
            }
        }
    }

    /// The editor `hparams` describe, for `model`. Templates and statistics are keyed by the base hash
    /// and must come from the unedited model: pass `computeMissing: false` once the model holds edits,
    /// so missing ones are an error instead of being derived from edited weights.
    public func editor(model: LanguageModel, hparams: MethodHyperparameters, baseHash: String? = nil,
                       computeMissing: Bool = true) throws -> FactEditor {
        switch hparams {
        case .rome(let h): return try romeEditor(model: model, hparams: h, baseHash: baseHash, computeMissing: computeMissing)
        case .memit(let h): return try memitEditor(model: model, hparams: h, method: .memit, baseHash: baseHash, computeMissing: computeMissing)
        case .alphaEdit(let h): return try memitEditor(model: model, hparams: h, method: .alphaedit, baseHash: baseHash, computeMissing: computeMissing)
        case .encore(let h): return try memitEditor(model: model, hparams: h, method: .encore, baseHash: baseHash, computeMissing: computeMissing)
        }
    }

    /// Loads (or computes and stores) the key statistics `specs`. Throws when interrupted.
    public func keyStatistics(model: LanguageModel, specs: [KeyStatisticsSpec]) throws -> [KeyStatistics] {
        let state = EditState(directory: stateDirectory, baseHash: model.weightHash)
        var out: [KeyStatistics?] = try specs.map { try state.cachedStatistics($0) }
        let missing = specs.indices.filter { out[$0] == nil }
        guard !missing.isEmpty else { return out.map { $0! } }
        let todo = missing.map { specs[$0] }
        let corpus = try Corpus(path: corpusPath, seed: todo[0].seed)
        let ckpt = state.checkpointURL(todo)
        let resuming = FileManager.default.fileExists(atPath: ckpt.path) ? " (resuming from \(ckpt.lastPathComponent))" : ""
        logger.notice("computing key statistics for layer(s) \(todo.map(\.layer)) over \(todo[0].tokens) tokens of \(corpusPath)\(resuming)")
        let builder = try KeyStatisticsBuilder(model: model, specs: todo, corpus: corpus, checkpoint: ckpt)
        let report = progress
        guard let built = try builder.run(progress: { report?($0.tokens, $0.target, $0.seconds) }, shouldStop: shouldStop) else {
            throw SetupError("interrupted; progress saved to \(ckpt.path), run again to resume")
        }
        for (i, s) in zip(missing, built) {
            try s.write(to: state.statisticsURL(s.spec), corpus: corpusPath)
            logger.notice("stored key statistics", metadata: ["path": "\(state.statisticsURL(s.spec).path)", "tokens": "\(s.count)"])
            out[i] = s
        }
        return out.map { $0! }
    }

    /// The ROME editor for `model`.
    func romeEditor(model: LanguageModel, hparams h: RomeHyperparameters, baseHash: String?, computeMissing: Bool) throws -> RomeEditor {
        try h.validate(layers: model.config.layers)
        let state = EditState(directory: stateDirectory, baseHash: baseHash ?? model.weightHash)
        if !computeMissing, !FileManager.default.fileExists(atPath: state.templatesURL(groups: h.contextTemplates, seed: h.templateSeed).path) {
            throw SetupError("no stored context templates for \(h.contextTemplates) seed \(h.templateSeed)")
        }
        let templates = try state.templates(model: model, groups: h.contextTemplates, seed: h.templateSeed, logger: logger)
        var stats: KeyStatistics?
        if h.mom2Adjustment {
            let spec = h.statisticsSpec(modelHash: state.baseHash)
            if let cached = try state.cachedStatistics(spec) {
                stats = cached
            } else if computeMissing {
                stats = try keyStatistics(model: model, specs: [spec])[0]
            } else {
                throw SetupError("no key statistics for layer \(h.layer) (\(h.mom2Tokens) tokens): run `mesa stats --layer \(h.layer)` first")
            }
        }
        var (sae, reason) = try mesaSAE(model: model, settings: h.mesa, site: Site(layer: h.layer, kind: .mlpOut), state: state)
        var keySAE: SparseAutoencoder?
        if let m = h.mesa, m.refinementVariant == .keyFeatures, sae != nil, let dir = m.keySaeDirectory(stateDirectory: state.root) {
            (keySAE, reason) = try loadSAE(dir, site: Site(layer: h.layer, kind: .mlpKey), width: model.config.intermediate, settings: m)
            if keySAE == nil { sae = nil }
        }
        let editor = try RomeEditor(model: model, hparams: h, templates: templates, statistics: stats, sae: sae, fallbackReason: reason, keySAE: keySAE)
        if let nk = h.neighbourProtection {
            editor.neighbourCandidates = try neighbourCandidates(nk, entityKeys: nil)
            try editor.prepareNeighbourBank()
        }
        return editor
    }

    /// The SAE `settings` names, checked against the edit site. A missing, corrupt or mismatched SAE is
    /// an error, unless `mesa.fallback` is true: then the editor runs without refinement and says why.
    func mesaSAE(model: LanguageModel, settings: MesaHyperparameters?, site: Site, state: EditState) throws -> (SparseAutoencoder?, String?) {
        guard let m = settings else { return (nil, nil) }
        return try loadSAE(m.saeDirectory(stateDirectory: state.root), site: site, width: model.config.hidden, settings: m)
    }

    /// The SAE at `dir`, checked against `site` of activation width `width`, or with `mesa.fallback`
    /// none and why.
    func loadSAE(_ dir: URL, site: Site, width: Int, settings m: MesaHyperparameters) throws -> (SparseAutoencoder?, String?) {
        do {
            let sae = try SparseAutoencoder.load(from: dir)
            try sae.check(site: site, width: width)
            return (sae, nil)
        } catch {
            guard m.fallsBack else { throw SetupError("MESA refinement: the SAE at \(dir.path) is unusable", cause: error) }
            logger.warning("MESA refinement is off (mesa.fallback is true): the SAE at \(dir.path) is unusable", metadata: ["error": "\(error)"])
            return (nil, "the SAE at \(dir.path) is unusable: \(error)")
        }
    }

    /// A MEMIT-family editor: MEMIT, AlphaEdit (its projectors are computed here, one eigendecomposition
    /// per layer) or ENCORE; with `norm_anchor_samples`, NAS's anchor from the edit state (or computed
    /// once). Templates and statistics come from the edit state as for ROME.
    func memitEditor(model: LanguageModel, hparams h: MemitHyperparameters, method: EditMethod, baseHash: String?,
                     computeMissing: Bool) throws -> MemitEditor {
        try h.validate(layers: model.config.layers)
        let state = EditState(directory: stateDirectory, baseHash: baseHash ?? model.weightHash)
        let templates = try state.templates(model: model, groups: h.contextTemplates, seed: h.templateSeed, logger: logger)
        let specs = h.layers.map { h.statisticsSpec(modelHash: state.baseHash, layer: $0) }
        var stats: [Int: KeyStatistics] = [:]
        for spec in specs { if let s = try state.cachedStatistics(spec) { stats[spec.layer] = s } }
        let missing = specs.filter { stats[$0.layer] == nil }
        if !missing.isEmpty {
            guard computeMissing else { throw SetupError("no key statistics for layer(s) \(missing.map(\.layer)): run `mesa stats --layers …` first") }
            for s in try keyStatistics(model: model, specs: missing) { stats[s.spec.layer] = s }
        }
        let solver: SpreadSolver
        switch method {
        case .rome:
            throw SetupError("ROME is not a MEMIT-family method")
        case .memit:
            solver = .memit
        case .encore:
            solver = .encore(try EncoreState(layers: h.layers, dim: model.config.intermediate, mu: h.updateNormLambda ?? 0))
        case .alphaedit:
            let t0 = Date()
            let st = try AlphaEditState(statistics: stats, nullspaceEnergy: h.nullspaceEnergy ?? 0.02, l2: h.l2 ?? 10, relative: h.l2Relative ?? false)
            let layers = st.nullity.sorted { $0.key < $1.key }.map {
                "\($0.key):\($0.value)," + String(format: "%.3g,%.3g", st.nullEnergy[$0.key] ?? 0, st.alpha[$0.key] ?? 0)
            }.joined(separator: " ")
            logger.info("AlphaEdit null spaces (dimension, tr(PC) and α per layer: \(layers)) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
            solver = .alphaEdit(st)
        }
        let (sae, reason) = try mesaSAE(model: model, settings: h.mesa, site: Site(layer: h.layers.last!, kind: .residOut), state: state)
        let editor = try MemitEditor(model: model, hparams: h, templates: templates, statistics: stats, solver: solver, sae: sae, fallbackReason: reason)
        if let n = h.normAnchorSamples, n > 0 {
            editor.normAnchor = try normAnchor(editor, samples: n, state: state, computeMissing: computeMissing)
        }
        if let nk = h.neighbours {
            editor.neighbourCandidates = try neighbourCandidates(nk, entityKeys: h.entityKeys)
            try editor.prepareNeighbourBanks()
        }
        if let e = h.entityKeys {
            editor.entityStatistics = try entityStatistics(editor, settings: e, state: state, computeMissing: computeMissing)
        }
        return editor
    }

    /// The candidate subjects neighbour protection mines from (`neighbours.bank`): the CounterFact tuning
    /// records' subjects, or the corpus's article titles in article order, past the names `entityKeys`
    /// already holds in C_e. The editor keeps the first `candidates` distinct ones.
    func neighbourCandidates(_ nk: NeighbourSettings, entityKeys: EntityKeySettings?) throws -> [String] {
        switch nk.candidateBank {
        case .counterfact:
            guard let records = anchorRecords else {
                throw SetupError("neighbour protection (neighbours) with bank counterfact needs CounterFact tuning records for its candidate subjects (the data directory); bank corpus_titles needs none")
            }
            return try CounterFact.load(path: records.path).records.map(\.subject)
        case .corpusTitles:
            return try nk.titleCandidates(corpus: try Corpus(path: corpusPath, seed: entityKeys?.orderSeed ?? 0), entityKeys: entityKeys)
        }
    }

    /// `entity_keys`' C_e for each of `editor`'s layers: stored in the state directory's statistics, or
    /// computed once on the base weights from the titles of the corpus's articles (seconds) and stored.
    func entityStatistics(_ editor: MemitEditor, settings e: EntityKeySettings, state: EditState, computeMissing: Bool) throws -> [Int: KeyStatistics] {
        let layers = editor.hparams.layers
        var out: [Int: KeyStatistics] = [:]
        for l in layers { if let s = try state.cachedStatistics(e.spec(modelHash: state.baseHash, layer: l)) { out[l] = s } }
        let missing = layers.filter { out[$0] == nil }
        guard !missing.isEmpty else { return out }
        guard computeMissing else { throw SetupError("no entity key statistics for layer(s) \(missing): one `mesa edit --method <method> --hparams <this file> …` or `mesa eval` computes them on the base weights") }
        guard editor.model.weightHash == state.baseHash else { throw SetupError("entity key statistics must be computed on the base weights") }
        let t0 = Date()
        let names = try e.names(from: try Corpus(path: corpusPath, seed: e.orderSeed))
        for (l, s) in try editor.entityStatistics(names: names, settings: e, modelHash: state.baseHash, layers: missing) {
            try s.write(to: state.statisticsURL(s.spec), corpus: corpusPath)
            out[l] = s
        }
        logger.notice("computed entity key statistics (\(names.count) article titles of \(corpusPath), layers \(missing)) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        return out
    }

    /// NAS's anchor for `editor`'s settings: cached in the state directory, or computed on the base
    /// weights from the first `samples` records of `anchorRecords` (a few seconds per record, once).
    func normAnchor(_ editor: MemitEditor, samples: Int, state: EditState, computeMissing: Bool) throws -> Float {
        let h = editor.hparams
        // Everything the anchor depends on: the z layer, the optimization, the templates, the records.
        let key = "L\(h.layers.last!) steps\(h.vNumGradSteps) lr\(h.vLr) wd\(h.vWeightDecay) clamp\(h.clampNormFactor) kl\(h.klFactor) "
            + "stop\(h.earlyStopLoss) top\(h.earlyStopTop ?? false)x\(h.earlyStopTopChecks ?? 1) "
            + "templates\(h.contextTemplates.map { "\($0.length)x\($0.count)" }.joined(separator: "_"))s\(h.templateSeed) "
            + "records \(anchorRecords?.lastPathComponent ?? "-") n\(samples)"
        let url = state.root.appendingPathComponent("nas-anchor-\(String(SHA256.hex(SHA256.hash(Array(key.utf8))).prefix(16))).json")
        struct Stored: Codable { var key: String; var mean: Float; var norms: [Float] }
        if let data = FileManager.default.contents(atPath: url.path), let s = try? JSONDecoder().decode(Stored.self, from: data), s.key == key {
            return s.mean
        }
        guard computeMissing else { throw SetupError("no NAS anchor for these settings (\(url.lastPathComponent)): run an edit with the CLI first") }
        guard editor.model.weightHash == state.baseHash else { throw SetupError("the NAS anchor must be computed on the base weights") }
        guard let records = anchorRecords else { throw SetupError("norm_anchor_samples needs CounterFact records for the anchor (the data directory)") }
        let all = try CounterFact.load(path: records.path).records
        guard all.count >= samples else { throw SetupError("\(records.path) has \(all.count) records; norm_anchor_samples is \(samples)") }
        let t0 = Date()
        let requests = all.prefix(samples).map { EditRequest(subject: $0.subject, prompt: $0.prompt, targetNew: $0.targetNew, targetTrue: $0.targetTrue) }
        let (mean, norms) = try editor.normAnchor(for: Array(requests))
        try FileManager.default.createDirectory(at: state.root, withIntermediateDirectories: true)
        try JSONEncoder().encode(Stored(key: key, mean: mean, norms: norms)).write(to: url, options: .atomic)
        logger.info("\(String(format: "NAS anchor: mean ‖v*‖ %.4g at layer %d over %d base-model edits of %@ (%.0f s)", mean, h.layers.last!, samples, records.lastPathComponent, Date().timeIntervalSince(t0)))")
        return mean
    }
}
