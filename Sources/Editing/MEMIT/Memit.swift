import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// Which prompts `second_solve` asks whether a request's edit landed (its new object's first token on
/// top once the batch's first updates are in place).
public enum SecondSolveCheck: String, Codable, Sendable, CaseIterable {
    /// The bare prompt only.
    case bare
    /// Every context-template prompt (the bare one among them): the prompts z was optimized on, so
    /// an edit that holds on the bare prompt and not behind a prefix is solved again.
    case contexts
}

/// The MEMIT family's hyperparameters (METHODS §2.1), `deploy/hparams/{memit,alphaedit,encore}/<model>.json`.
public struct MemitHyperparameters: Codable, Sendable, Equatable, OptimizedHyperparameters {
    /// The edited layers, ascending; δ is optimized on the residual after the last one.
    public var layers: [Int]
    /// The optimization of z = h_L + δ (‖h_L‖ is δ's reference norm): templates (MEMIT uses 5 of
    /// length 10), Adam, stops.
    public var optimization: OptimizationSettings
    /// λ in ΔW = R [(λC + KKᵀ)⁻¹K]ᵀ.
    public var mom2UpdateWeight: Double
    public var mom2Tokens: Int
    public var mom2SequenceLength: Int
    public var mom2Seed: UInt64
    /// Ridge added to C, relative to its mean diagonal.
    public var mom2Ridge: Double
    /// AlphaEdit only: the share of C's trace (smallest eigenvalues first) whose eigenvectors span
    /// the null space the update is projected into.
    public var nullspaceEnergy: Double?
    /// AlphaEdit only: α in (P(KKᵀ + K_pK_pᵀ) + αI), or its scale with `l2Relative`.
    public var l2: Double?
    /// AlphaEdit only: α = l2 · tr(PC) per layer, relative to the energy of the keys in the null space
    /// (METHODS §9: an absolute α lets a fresh key deliver ‖Pk‖²/(α + ‖Pk‖²) of its share, which
    /// depends on the cut and the layer's key scale).
    public var l2Relative: Bool?
    /// ENCORE only: μ in (λC + μI + K_pK_pᵀ + KKᵀ), the weight of the Frobenius-norm term on each update.
    public var updateNormLambda: Double?
    /// NAS, norm-anchor scaling (arXiv 2602.02543): the number of CounterFact edits on the base model
    /// whose mean ‖v*‖ (v* = v0 + δ, v0 the MLP output of the last edited layer at the subject) is the
    /// anchor every solved v* is rescaled to (the paper's nas_restart; 0 or absent: off).
    public var normAnchorSamples: Int?
    /// MESA refinement of z through an SAE at `resid_out` of the last edited layer, where δ enters.
    public var mesa: MesaHyperparameters?
    /// Key-side neighbour protection (the MEMIT family's form of ROME's `neighbours`): at every edited
    /// layer, the candidate subjects whose keys the layer's solution x_j moves most (|x_jᵀk_n|) are
    /// mined per request, and their keys in the request's prompt join the solve with weight
    /// key_weight/count each, so that the update is asked to leave them unchanged (AlphaEdit: beside
    /// K_pK_pᵀ, as earlier edits' keys are; MEMIT/ENCORE: beside λC). Mining is by key gain only and
    /// kl_factor must be 0.
    public var neighbours: NeighbourSettings?
    /// MEMIT and ENCORE: entity-key preservation, λ·ρ·C_e beside λC in the solve (`EntityKeySettings`).
    public var entityKeys: EntityKeySettings?
    /// A second z and spread, on the edited weights, for the requests whose new object is not the top
    /// token after their bare prompt once the first updates are in place (`MemitEditor.computeUpdates`).
    public var secondSolve: Bool?
    /// Which prompts `second_solve` asks (`SecondSolveCheck`; default `bare`).
    public var secondSolveCheck: SecondSolveCheck?
    /// MEMIT and ENCORE: τ in X = A⁻¹K(τI + KᵀA⁻¹K)⁻¹, A the solve's matrix without KKᵀ. τ = 1 (the
    /// default) is the papers' closed form (A + KKᵀ)⁻¹K, which lands the fraction G(I + G)⁻¹,
    /// G = KᵀA⁻¹K, of each layer's share, so λ sets both what the update protects and how much of
    /// the edit lands. Smaller τ lands more in the span of A⁻¹K; τ = 0 lands the share exactly
    /// (ΔW·K = R) with the least A-norm.
    public var landingSlack: Double?
    /// τ when it changes the solve: nil for the closed form (absent or 1).
    public var effectiveLandingSlack: Double? { landingSlack.flatMap { $0 == 1 ? nil : $0 } }

    /// Decodes a hyperparameter file (extra keys such as `$schema`, `method` and `model` are allowed).
    public static func decode(_ data: Data) throws -> MemitHyperparameters {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        do { return try d.decode(MemitHyperparameters.self, from: data) } catch {
            throw EditError(.hyperparameters, "malformed MEMIT/AlphaEdit/ENCORE hyperparameters: \(error)", cause: error)
        }
    }

    public init(layers: [Int], contextTemplates: [ContextTemplates.Group] = [.init(length: 10, count: 5)], templateSeed: UInt64 = 0,
                vNumGradSteps: Int = 25, vLr: Float = 0.5, vWeightDecay: Float = 1e-3, clampNormFactor: Float = 0.75,
                klFactor: Float = 0.0625, earlyStopLoss: Float = 0.05, mom2UpdateWeight: Double = 15_000, mom2Tokens: Int = 300_000,
                mom2SequenceLength: Int = 512, mom2Seed: UInt64 = 0, mom2Ridge: Double = 1e-4) {
        self.layers = layers
        optimization = OptimizationSettings(contextTemplates: contextTemplates, templateSeed: templateSeed, vNumGradSteps: vNumGradSteps, vLr: vLr,
                                            vWeightDecay: vWeightDecay, clampNormFactor: clampNormFactor, klFactor: klFactor,
                                            earlyStopLoss: earlyStopLoss)
        self.mom2UpdateWeight = mom2UpdateWeight
        self.mom2Tokens = mom2Tokens
        self.mom2SequenceLength = mom2SequenceLength
        self.mom2Seed = mom2Seed
        self.mom2Ridge = mom2Ridge
    }

    // The file is flat: the optimization settings' keys sit beside the MEMIT family's own.
    private enum CodingKeys: String, CodingKey {
        case layers, mom2UpdateWeight, mom2Tokens, mom2SequenceLength, mom2Seed, mom2Ridge, nullspaceEnergy, l2, l2Relative,
             updateNormLambda, normAnchorSamples, mesa, neighbours, entityKeys, secondSolve, secondSolveCheck, landingSlack
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        layers = try c.decode([Int].self, forKey: .layers)
        optimization = try OptimizationSettings(from: decoder)
        mom2UpdateWeight = try c.decode(Double.self, forKey: .mom2UpdateWeight)
        mom2Tokens = try c.decode(Int.self, forKey: .mom2Tokens)
        mom2SequenceLength = try c.decode(Int.self, forKey: .mom2SequenceLength)
        mom2Seed = try c.decode(UInt64.self, forKey: .mom2Seed)
        mom2Ridge = try c.decode(Double.self, forKey: .mom2Ridge)
        nullspaceEnergy = try c.decodeIfPresent(Double.self, forKey: .nullspaceEnergy)
        l2 = try c.decodeIfPresent(Double.self, forKey: .l2)
        l2Relative = try c.decodeIfPresent(Bool.self, forKey: .l2Relative)
        updateNormLambda = try c.decodeIfPresent(Double.self, forKey: .updateNormLambda)
        normAnchorSamples = try c.decodeIfPresent(Int.self, forKey: .normAnchorSamples)
        mesa = try c.decodeIfPresent(MesaHyperparameters.self, forKey: .mesa)
        neighbours = try c.decodeIfPresent(NeighbourSettings.self, forKey: .neighbours)
        entityKeys = try c.decodeIfPresent(EntityKeySettings.self, forKey: .entityKeys)
        secondSolve = try c.decodeIfPresent(Bool.self, forKey: .secondSolve)
        secondSolveCheck = try c.decodeIfPresent(SecondSolveCheck.self, forKey: .secondSolveCheck)
        landingSlack = try c.decodeIfPresent(Double.self, forKey: .landingSlack)
    }

    public func encode(to encoder: Encoder) throws {
        try optimization.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layers, forKey: .layers)
        try c.encode(mom2UpdateWeight, forKey: .mom2UpdateWeight)
        try c.encode(mom2Tokens, forKey: .mom2Tokens)
        try c.encode(mom2SequenceLength, forKey: .mom2SequenceLength)
        try c.encode(mom2Seed, forKey: .mom2Seed)
        try c.encode(mom2Ridge, forKey: .mom2Ridge)
        try c.encodeIfPresent(nullspaceEnergy, forKey: .nullspaceEnergy)
        try c.encodeIfPresent(l2, forKey: .l2)
        try c.encodeIfPresent(l2Relative, forKey: .l2Relative)
        try c.encodeIfPresent(updateNormLambda, forKey: .updateNormLambda)
        try c.encodeIfPresent(normAnchorSamples, forKey: .normAnchorSamples)
        try c.encodeIfPresent(mesa, forKey: .mesa)
        try c.encodeIfPresent(neighbours, forKey: .neighbours)
        try c.encodeIfPresent(entityKeys, forKey: .entityKeys)
        try c.encodeIfPresent(secondSolve, forKey: .secondSolve)
        try c.encodeIfPresent(secondSolveCheck, forKey: .secondSolveCheck)
        try c.encodeIfPresent(landingSlack, forKey: .landingSlack)
    }

    public func statisticsSpec(modelHash: String, layer: Int) -> KeyStatisticsSpec {
        KeyStatisticsSpec(modelHash: modelHash, layer: layer, tokens: mom2Tokens, sequenceLength: mom2SequenceLength, seed: mom2Seed)
    }

    public func validate(layers count: Int) throws {
        func bad(_ m: String) -> EditError { EditError(.hyperparameters, m) }
        guard !layers.isEmpty, layers == layers.sorted(), Set(layers).count == layers.count else { throw bad("layers must be distinct and ascending") }
        guard layers.allSatisfy({ $0 >= 0 && $0 < count }) else { throw bad("layers \(layers) exceed 0..<\(count)") }
        let o = optimization
        guard o.vNumGradSteps >= 1, o.vNumGradSteps <= 1000, o.vLr > 0, o.vLr.isFinite, o.clampNormFactor > 0, o.klFactor >= 0, o.vWeightDecay >= 0 else {
            throw bad("optimization settings out of range")
        }
        guard mom2UpdateWeight > 0, mom2UpdateWeight.isFinite, mom2Ridge >= 0 else { throw bad("mom2_update_weight must be positive") }
        if let n = neighbours {
            try n.validate()
            guard n.klFactor == 0, n.mining == .keyGain, n.negativeKeyWeight > 0 else {
                throw bad("the MEMIT family's neighbours are key-side only: kl_factor 0, mine key_gain and a positive key_weight")
            }
        }
        try entityKeys?.validate()
        if secondSolveCheck != nil, secondSolve != true { throw bad("second_solve_check needs second_solve") }
        if let t = landingSlack {
            guard t >= 0, t <= 1 else { throw bad("landing_slack must be in 0...1") }
            guard nullspaceEnergy == nil else { throw bad("landing_slack is for MEMIT and ENCORE, not AlphaEdit") }
        }
    }
}

/// What one MEMIT computation produced.
public struct MemitResult: Sendable {
    /// One update per edited layer, in layer order; apply them in this order.
    public var updates: [LowRankUpdate]
    /// ‖δ_i‖ per request and the final loss of each request's optimization.
    public var deltaNorms: [Float]
    public var finalLosses: [Double]
    /// AlphaEdit and ENCORE only (empty for MEMIT): per edited layer, the requests' keys recomputed with
    /// all updates applied, [n][ff], which they add to their accumulated K_pK_pᵀ once the updates are kept.
    public var keysAfter: [Int: [[Double]]]
    public var phases: [String: Double]
    /// MESA only: per request, the SAE coverage of its change at the bare prompt.
    public var coverages: [SAECoverage] = []
}

/// How the closed form of one layer is solved: X [ff, n] with ΔW = R·Xᵀ.
public enum SpreadSolver: Sendable {
    /// MEMIT: X = (λC + KKᵀ)⁻¹K.
    case memit
    /// AlphaEdit: X = (P(KKᵀ + K_pK_pᵀ) + αI)⁻¹PK, P the null-space projector of C.
    case alphaEdit(AlphaEditState)
    /// ENCORE: X = (λC + μI + K_pK_pᵀ + KKᵀ)⁻¹K.
    case encore(EncoreState)

    /// The method this solver implements.
    public var method: EditMethod {
        switch self {
        case .memit: return .memit
        case .alphaEdit: return .alphaedit
        case .encore: return .encore
        }
    }

    /// The keys of the kept edits, for the methods that keep them.
    public var keptKeys: KeyAccumulator? {
        switch self {
        case .memit: return nil
        case .alphaEdit(let s): return s.kept
        case .encore(let s): return s.kept
        }
    }
}

/// MEMIT (METHODS §2.1): a target residual z_i = h_L + δ_i per request (δ on the residual after the
/// last edited layer L, optimized as in ROME, clamp relative to ‖h_L‖), then for each layer l_i in
/// ascending order, keys K_i and the residual gap at L recomputed on the partially edited model and
/// ΔW_i = R_i [(λC_i + K_iK_iᵀ)⁻¹K_i]ᵀ with R_i = (Z − H_L)/(n − i), solved in Double. Computing the
/// updates applies them temporarily (later layers must see earlier ones) and restores the weights
/// bit-exactly before returning.
public final class MemitEditor: @unchecked Sendable {  // not thread-safe: its `var`s are set up before use and edits run on one thread at a time (the daemon's worker)
    public let model: LanguageModel
    public let hparams: MemitHyperparameters
    public let templates: ContextTemplates
    /// C for each edited layer; empty for AlphaEdit, whose solve reads only the projectors built from
    /// C ([ff, ff] Float32 per layer that need not stay resident: 47 MB for the default model).
    public let statistics: [Int: KeyStatistics]
    public let solver: SpreadSolver
    /// AlphaEdit's state, when the solver is AlphaEdit's.
    public var alphaEditState: AlphaEditState? {
        if case .alphaEdit(let s) = solver { return s }
        return nil
    }
    let tokenizer: EditTokenizer
    /// The keys after the last computed updates (for `keep`).
    var lastKeysAfter: [Int: [[Double]]]?
    /// NAS: the base model's mean ‖v*‖ at the last edited layer (`normAnchor(for:)`); required when
    /// `hparams.normAnchorSamples` is positive.
    public var normAnchor: Float?
    /// MESA: the SAE at `resid_out` of the last edited layer, where δ enters (METHODS §5.6 (c): the
    /// public code applies an mlp_out SAE to this residual), or why refinement is off.
    public let mesaSetup: MesaAttachment
    /// The coverage of the update last computed (first request).
    public internal(set) var lastCoverage: SAECoverage?
    /// The most rows (Σ (T − p) over its prompts) one joint z pass holds; the requests of a larger batch
    /// edit are optimized in consecutive groups. A pass keeps about (2·d + q + 2·kv + 2·ff)·4 bytes per
    /// row and layer above the edited ones (≈ 0.45 MB per row for SmolLM2-135M at layer 7), so this
    /// bounds its memory (≈ 115 MB at 256 rows) without changing any result.
    public var jointRowLimit = 256
    /// The most tokens one packed reading pass holds (the keys and residuals of a batch edit's prompts).
    var packTokens = 1024
    /// Candidate subjects for neighbour protection (tuning data's subjects, never the evaluation
    /// split's); the banks (`neighbourBanks`) are read from them.
    public var neighbourCandidates: [String] = []
    /// Neighbour protection's candidate banks per edited layer: built at the first mining on the weights
    /// of that moment unless `prepareNeighbourBanks()` built them first (the editor registry does, on
    /// the base weights), or shared from another editor of the same model.
    public var neighbourBanks: [Int: SubjectBank] = [:]
    /// The neighbours the last computed updates protected, per request (mined at the last edited layer).
    public internal(set) var lastNeighbours: [[String]] = []
    /// C_e per edited layer for `hparams.entityKeys` (`entityStatistics(names:…)` on the base weights,
    /// or the stored ones); required when it is set.
    public var entityStatistics: [Int: KeyStatistics] = [:]

    public init(model: LanguageModel, hparams: MemitHyperparameters, templates: ContextTemplates, statistics: [Int: KeyStatistics],
                solver: SpreadSolver = .memit, sae: SparseAutoencoder? = nil, fallbackReason: String? = nil) throws {
        try hparams.validate(layers: model.config.layers)
        mesaSetup = try MesaAttachment(hparams.mesa, sae: sae, fallbackReason: fallbackReason,
                                       site: Site(layer: hparams.layers.last!, kind: .residOut), width: model.config.hidden)
        var alphaEdit: AlphaEditState?
        if case .alphaEdit(let state) = solver { alphaEdit = state }
        guard hparams.entityKeys == nil || alphaEdit == nil else {
            throw EditError(.hyperparameters, "entity_keys weights C in MEMIT's and ENCORE's solve; AlphaEdit's projected solve has no C")
        }
        for l in hparams.layers {
            if let alphaEdit {
                guard alphaEdit.projectors[l] != nil, alphaEdit.dim == model.config.intermediate else {
                    throw EditError(.state, "AlphaEdit needs a null-space projector of width \(model.config.intermediate) for layer \(l)")
                }
            } else {
                guard let s = statistics[l], s.dim == model.config.intermediate else {
                    throw EditError(.state, "MEMIT needs key statistics of width \(model.config.intermediate) for layer \(l)")
                }
            }
        }
        guard templates.prefixes.first == "" else { throw EditError(.state, "context templates must start with the bare prompt") }
        self.model = model
        self.hparams = hparams
        self.templates = templates
        self.statistics = alphaEdit == nil ? statistics : [:]
        self.solver = solver
        tokenizer = EditTokenizer(model: model)
    }

    public func computeUpdates(_ requests: [EditRequest]) throws -> MemitResult {
        guard !requests.isEmpty else { throw EditError(.hyperparameters, "no requests") }
        let h = hparams, n = requests.count
        var clock = PhaseClock()

        let anchored = (h.normAnchorSamples ?? 0) > 0
        guard !anchored || normAnchor != nil else {
            throw EditError(.state, "norm_anchor_samples is set but the NAS anchor was not computed (MemitEditor.normAnchor(for:))")
        }
        // z_i = h_L + δ_i on the unedited model: [n][d]. Several requests share one optimization (one
        // forward and backward per step over every running fact); MESA refinement runs one at a time.
        let solved: [SolvedZ]
        if n > 1 && mesaSetup.settings == nil {
            let together = try optimizeZTogether(requests)
            solved = together.solved
            // The joint optimization's parts: seconds of z_pass (the unedited pass over every prompt),
            // z_forward, z_loss, z_backward, z_descend (all steps); z_pass_gflop, z_forward_gflop, z_backward_gflop.
            for (part, v) in together.phases { clock.phases["z_" + part] = v }
        } else {
            solved = try requests.map(optimizeZ)
        }
        var z: [[Float]] = [], norms: [Float] = [], finals: [Double] = [], steps: [Int] = []
        var coverages: [SAECoverage] = []
        for s in solved {
            steps.append(s.losses.count)
            z.append(try target(s))
            if let sae = mesaSetup.sae { coverages.append(sae.coverage(before: s.hL, after: z[z.count - 1])) }
            norms.append(Vector.norm(s.change))
            finals.append(s.losses.last?.total ?? .nan)
        }
        lastCoverage = coverages.first
        clock.lap("z")
        // Not seconds: the mean count of loss evaluations per fact (the stop rule's effect).
        clock.phases["z_steps"] = Double(steps.reduce(0, +)) / Double(max(1, steps.count))

        // The bare prompts (no target) and their template variants, for keys and the residual gap.
        let bare = try requests.map { try tokenizer.subjectPrompt(prefix: "", prompt: $0.prompt, subject: $0.subject) }
        let prompts = try requests.map { r in
            try templates.prefixes.map { try tokenizer.subjectPrompt(prefix: $0, prompt: r.prompt, subject: r.subject) }
        }
        guard let weights = templates.groupWeights else { throw EditError(.state, "the context templates do not match their groups") }

        // The spread edits the weights layer by layer and restores them: readers of the weights wait
        // until they are restored (the gate is released after the restore, defers run in reverse).
        model.weightGate.beginWriting()
        defer { model.weightGate.endWriting() }
        var updates: [LowRankUpdate] = [], backups: [WeightBackup] = []
        defer { for b in backups.reversed() { try? model.restore(b) } }
        try spread(z: z, requests: requests, bare: bare, prompts: prompts, weights: weights, mine: true, updates: &updates, backups: &backups)

        // `second_solve`: the requests whose new object is not the top token after their bare prompt
        // (`second_solve_check` contexts: after any of their context-template prompts) with every
        // update in place get a second z, optimized on the edited weights, and a second spread on top
        // of the first, which keeps the keys of the batch's other requests (weight 1 each, as ENCORE's
        // kept keys) where the first put them. It mines no neighbours.
        if h.secondSolve == true {
            let asked = h.secondSolveCheck == .contexts ? prompts : bare.map { [$0] }
            let missed = try requests.indices.filter { try !landed(requests[$0], prompts: asked[$0]) }
            clock.phases["second_solve_requests"] = Double(missed.count)
            clock.lap("spread")
            if !missed.isEmpty {
                let again = missed.map { requests[$0] }
                let solved2 = again.count > 1 && mesaSetup.settings == nil ? try optimizeZTogether(again).solved : try again.map(optimizeZ)
                let kept = requests.indices.filter { !missed.contains($0) }.map { prompts[$0] }
                try spread(z: try solved2.map(target), requests: again, bare: missed.map { bare[$0] }, prompts: missed.map { prompts[$0] },
                           weights: weights, mine: false, protect: kept, updates: &updates, backups: &backups)
                clock.lap("second_solve")
            }
        }
        // AlphaEdit and ENCORE accumulate the keys with every update in place once the edit is kept.
        var keysAfter: [Int: [[Double]]] = [:]
        if solver.keptKeys != nil { keysAfter = try meanKeys(layers: h.layers, prompts: prompts, weights: weights) }
        clock.lap("spread")
        return MemitResult(updates: updates, deltaNorms: norms, finalLosses: finals, keysAfter: keysAfter, phases: clock.phases, coverages: coverages)
    }

    /// z = h_L + Δ for one solved request, or with NAS (`normAnchor`) v* = v0 + Δ rescaled to the anchor,
    /// or v* = v0 (no change) when ‖v*‖ > 2·anchor: z = (h_L − v0) + v*. v0, h_L, Δ, v*, z: [d].
    func target(_ s: SolvedZ) throws -> [Float] {
        let target = zip(s.hL, s.change).map { $0 + $1 }
        guard (hparams.normAnchorSamples ?? 0) > 0 else { return target }
        guard let anchor = normAnchor else { throw EditError(.state, "norm_anchor_samples is set but the NAS anchor was not computed") }
        var vStar = zip(s.v0, s.change).map { $0 + $1 }
        let vn = Vector.norm(vStar)
        if vn > 2 * anchor { vStar = s.v0 } else if vn > 0 { vStar = vStar.map { $0 * anchor / vn } }
        return (0..<s.hL.count).map { s.hL[$0] - s.v0[$0] + vStar[$0] }
    }

    /// Whether the first token of the request's new object is the top token after each of `prompts`
    /// on the current weights (one forward per prompt, stopping at the first miss).
    public func landed(_ r: EditRequest, prompts: [SubjectPrompt]) throws -> Bool {
        let first = try tokenizer.target(r.targetNew)[0]
        for p in prompts {
            let f = try model.forward(p.tokens, options: ForwardOptions(logits: .last))
            guard DeltaOptimization.targetsOnTop(f.logits, [[first]]) else { return false }
        }
        return true
    }

    /// MEMIT's spread of the targets `z` ([n][d]) over the edited layers in ascending order, each layer's
    /// update applied (its backup kept) before the next layer's keys are read: per layer the requests'
    /// template-weighted keys K, R = (z − h_L(current)) / (layers left) and ΔW = R·Xᵀ. `mine`: key-side
    /// neighbour protection as configured; `protect`: prompts (per request, every template) whose keys
    /// on the current weights join the solve as negatives of weight 1 each.
    func spread(z: [[Float]], requests: [EditRequest], bare: [SubjectPrompt], prompts: [[SubjectPrompt]], weights: [Double], mine: Bool,
                protect: [[SubjectPrompt]] = [], updates: inout [LowRankUpdate], backups: inout [WeightBackup]) throws {
        let h = hparams, d = model.config.hidden, ff = model.config.intermediate, n = requests.count
        let zLayer = h.layers.last!
        for (i, l) in h.layers.enumerated() {
            // K: each request's template-weighted mean key on the partially edited model, [n][ff].
            let keys = try meanKeys(layers: [l], prompts: prompts, weights: weights)[l]!
            // R [d, n] = (z − h_L(current)) / (remaining layers).
            var resid = [Float](repeating: 0, count: d * n)
            let share = Float(h.layers.count - i)
            let residSite = Site(layer: zLayer, kind: .residOut)
            let current = try reads(bare, sites: [residSite], packed: n > 1)[residSite]!   // h_L on the current weights, [n][d]
            for (j, cur) in current.enumerated() {
                for c in 0..<d { resid[c * n + j] = (z[j][c] - cur[c]) / share }
            }
            let kept = protect.isEmpty ? [] : try meanKeys(layers: [l], prompts: protect, weights: weights)[l]!   // [m][ff]
            var x = try solve(layer: l, keys: keys, negatives: kept, weight: 1)
            if mine, let nk = h.neighbours {
                let mined = try mineNeighbours(nk, layer: l, x: x, requests: requests)
                if l == h.layers.last { lastNeighbours = mined }
                // Their keys in each request's own prompt, on the current weights: [M_total][ff].
                let prompts = try zip(requests, mined).flatMap { r, names in
                    try names.map { try tokenizer.subjectPrompt(prefix: "", prompt: r.prompt, subject: $0) }
                }
                if !prompts.isEmpty {
                    let site = Site(layer: l, kind: .mlpKey)
                    let negatives = try reads(prompts, sites: [site], packed: true)[site]!.map { $0.map(Double.init) }
                    x = try solve(layer: l, keys: keys, negatives: negatives, weight: Double(nk.negativeKeyWeight) / Double(nk.count))
                }
            }
            // ΔW = R Xᵀ: left R [d, n], right Xᵀ [n, ff].
            var right = [Float](repeating: 0, count: n * ff)
            for j in 0..<n { for r in 0..<ff { right[j * ff + r] = Float(x[r * n + j]) } }
            let w = model.weights.layers[l].wDown
            let u = LowRankUpdate(parameter: w.name, layer: l, rows: d, cols: ff, rank: n, left: resid, right: right)
            guard u.left.allSatisfy(\.isFinite), u.right.allSatisfy(\.isFinite) else {
                throw EditError(.nonFinite, "the layer-\(l) update is non-finite")
            }
            backups.append(try model.apply(u))
            updates.append(u)
        }
    }

    /// One request's optimized z: h_L and v0 (the MLP output of L) at the bare prompt's subject, [d]
    /// each; the change Δ that prompt saw (δ, or its SAE-refined change with MESA), [d]; the loss per step.
    typealias SolvedZ = (hL: [Float], v0: [Float], change: [Float], losses: [EditLoss.Value])

    /// z's optimization settings for a request whose residual at the subject has norm `hNorm`.
    func zOptimization(hNorm: Float) -> DeltaOptimization {
        hparams.optimization.delta(klFactor: mesaSetup.klFactor(hparams.klFactor), referenceNorm: hNorm)
    }

    func zBatch(_ r: EditRequest) throws -> RomeBatch {
        try RomeBatch(request: r, prefixes: templates.prefixes, tokenizer: tokenizer, contextLength: model.config.contextLength)
    }

    /// ‖h_L‖ at the bare prompt, checked. `hL` [d].
    func residualNorm(_ hL: [Float]) throws -> Float {
        let hNorm = Vector.norm(hL)
        guard hNorm > 0, hNorm.isFinite else { throw EditError(.nonFinite, "the residual at the subject is zero or non-finite") }
        return hNorm
    }

    /// One request's optimization of δ on the residual after the last edited layer L, on the current
    /// weights, alone (with MESA refinement when it is in force).
    func optimizeZ(_ r: EditRequest) throws -> SolvedZ {
        let batch = try zBatch(r)
        let pass = try DeltaPass(model: model, site: Site(layer: hparams.layers.last!, kind: .residOut), prompts: batch.rewrite + batch.kl)
        let hL = pass.residuals[0]
        let hNorm = try residualNorm(hL)
        // With MESA every prompt sees its SAE-refined change (`neutral`: one change from the rewrite
        // prompts' mean residual); z takes the bare prompt's refined change, the vector the
        // optimization evaluated there.
        let refinement = mesaSetup.refinement(activations: pass.residuals, rewrite: batch.rewrite.count)
        let outcome = try zOptimization(hNorm: hNorm).run(pass: pass, batch: batch, refinement: refinement)
        return (hL, pass.mlpOutputs[0], outcome.changes?[0] ?? outcome.delta, outcome.losses)
    }

    /// `optimizeZ` for every request together (`JointDeltaOptimization`: one pass over the requests'
    /// prompts, each request with the settings and stop it would have alone), in consecutive groups of
    /// at most `jointRowLimit` pass rows. No MESA refinement.
    func optimizeZTogether(_ requests: [EditRequest]) throws -> (solved: [SolvedZ], phases: [String: Double]) {
        let batches = try requests.map(zBatch)
        var groups: [[RomeBatch]] = [], rows = 0
        for b in batches {
            let r = (b.rewrite + b.kl).reduce(0) { $0 + $1.tokens.count - $1.position }
            if groups.isEmpty || rows + r > jointRowLimit {
                groups.append([])
                rows = 0
            }
            groups[groups.count - 1].append(b)
            rows += r
        }
        var solved: [SolvedZ] = [], phases: [String: Double] = [:]
        for g in groups {
            let r = try optimizeZTogether(batches: g)
            solved += r.solved
            phases.merge(r.phases, uniquingKeysWith: +)
        }
        return (solved, phases)
    }

    func optimizeZTogether(batches: [RomeBatch]) throws -> (solved: [SolvedZ], phases: [String: Double]) {
        var clock = PhaseClock()
        let pass = try DeltaPass(model: model, site: Site(layer: hparams.layers.last!, kind: .residOut),
                                 prompts: JointDeltaOptimization.prompts(of: batches))
        clock.lap("pass")
        clock.phases["pass_gflop"] = pass.prepareFLOPs / 1e9
        // Each request's first prompt in the pass is its bare prompt: h_L and v0 there, [d] each.
        var reads: [(hL: [Float], v0: [Float])] = [], facts: [JointDeltaOptimization.Fact] = [], first = 0
        for b in batches {
            let hL = pass.residuals[first]
            reads.append((hL, pass.mlpOutputs[first]))
            facts.append(.init(optimization: zOptimization(hNorm: try residualNorm(hL)), batch: b))
            first += b.rewrite.count + b.kl.count
        }
        let outcome = try JointDeltaOptimization.run(facts, pass: pass)
        return (zip(reads, outcome.facts).map { r, o in (r.hL, r.v0, o.delta, o.losses) }, clock.phases.merging(outcome.phases, uniquingKeysWith: +))
    }

    /// NAS's anchor on the current (base) weights: ‖v*‖ = ‖v0 + Δ‖ of each request optimized alone,
    /// and their mean without the largest 5% (the reference code's upper-trimmed mean).
    public func normAnchor(for requests: [EditRequest]) throws -> (mean: Float, norms: [Float]) {
        guard !requests.isEmpty else { throw EditError(.hyperparameters, "the NAS anchor needs at least one request") }
        let norms = try requests.map { r -> Float in
            let s = try optimizeZ(r)
            return Vector.norm(zip(s.v0, s.change).map { $0 + $1 })
        }
        let sorted = norms.sorted()
        let kept = sorted.prefix(sorted.count - Int((0.05 * Double(sorted.count)).rounded(.down)))
        let mean = kept.reduce(0, +) / Float(kept.count)
        guard mean > 0, mean.isFinite else { throw EditError(.nonFinite, "the NAS anchor is zero or non-finite") }
        return (mean, norms)
    }

    /// Each request's template-weighted key at each of `layers` on the current weights: layer →
    /// [n][ff]. One reading of every prompt captures every layer; several requests' prompts are packed.
    func meanKeys(layers: [Int], prompts: [[SubjectPrompt]], weights: [Double]) throws -> [Int: [[Double]]] {
        let ff = model.config.intermediate
        let sites = Set(layers.map { Site(layer: $0, kind: .mlpKey) })
        let read = try reads(prompts.flatMap { $0 }, sites: sites, packed: prompts.count > 1)
        var keys = Dictionary(uniqueKeysWithValues: layers.map { ($0, [[Double]](repeating: [Double](repeating: 0, count: ff), count: prompts.count)) })
        var i = 0
        for (j, ps) in prompts.enumerated() {
            for t in ps.indices {
                for l in layers {
                    let k = read[Site(layer: l, kind: .mlpKey)]![i]
                    for c in 0..<ff { keys[l]![j][c] += weights[t] * Double(k[c]) }
                }
                i += 1
            }
        }
        return keys
    }

    /// The activations at each prompt's subject-last token on the current weights: site → [prompts][width].
    /// Unpacked, one forward per prompt (a single edit's arithmetic, unchanged). `packed` (several
    /// requests): the prompts are cut after the subject (later tokens cannot reach it through causal
    /// attention) and packed into sequences of at most `packTokens` tokens (`ForwardOptions.segments`),
    /// so that one pass streams the weights for many short prompts.
    func reads(_ prompts: [SubjectPrompt], sites: Set<Site>, packed: Bool) throws -> [Site: [[Float]]] {
        let stop = sites.map(\.layer).max()!
        var out = Dictionary(uniqueKeysWithValues: sites.map { ($0, [[Float]]()) })
        guard packed else {
            for p in prompts {
                let f = try model.forward(p.tokens, options: ForwardOptions(capture: sites, logits: .none, stopAfterLayer: stop))
                for s in sites { out[s]!.append(f.activations[s]!.row(p.subjectLast)) }
            }
            return out
        }
        var start = 0
        while start < prompts.count {
            // prompts[start..<end]: as many as fit in packTokens (at least one).
            var end = start, total = 0
            while end < prompts.count, end == start || total + prompts[end].subjectLast + 1 <= packTokens {
                total += prompts[end].subjectLast + 1
                end += 1
            }
            let group = prompts[start..<end]
            let lengths = group.map { $0.subjectLast + 1 }
            let f = try model.forward(group.flatMap { $0.tokens[...$0.subjectLast] },
                                      options: ForwardOptions(capture: sites, logits: .none, stopAfterLayer: stop, segments: lengths))
            var row = 0
            for n in lengths {
                row += n
                for s in sites { out[s]!.append(f.activations[s]!.row(row - 1)) }   // [total, width] → the subject's last token
            }
            start = end
        }
        return out
    }

    /// Builds the candidate banks of every edited layer now, on the current weights, in one pass (with
    /// `neighbours` and candidates; else nothing).
    public func prepareNeighbourBanks() throws {
        guard let nk = hparams.neighbours, !neighbourCandidates.isEmpty else { return }
        neighbourBanks = try SubjectBank.banks(model: model, layers: hparams.layers, subjects: neighbourCandidates, limit: nk.bankSize)
    }

    /// Per request, the `nk.count` candidate subjects (other than its own) whose bare-subject keys at
    /// `layer` the layer's solution moves most: the largest |x_jᵀk_n| with x_j column j of X [ff, n].
    func mineNeighbours(_ nk: NeighbourSettings, layer: Int, x: [Double], requests: [EditRequest]) throws -> [[String]] {
        let bank: SubjectBank
        if let b = neighbourBanks[layer] { bank = b } else {
            guard !neighbourCandidates.isEmpty else { throw EditError(.state, "neighbour protection needs candidate subjects (tuning data)") }
            bank = try SubjectBank(model: model, layer: layer, subjects: neighbourCandidates, limit: nk.bankSize)
            neighbourBanks[layer] = bank
        }
        let ff = model.config.intermediate, n = requests.count
        return requests.indices.map { j in
            let column = (0..<ff).map { Float(x[$0 * n + j]) }
            return bank.mineByKeyGain(u: column, exclude: requests[j].subject, count: nk.count)
        }
    }

    /// X [ff, n] (row-major) of the layer's closed form, in Double; `negatives` [M][ff] join it as
    /// keys the update should leave unchanged, each with `weight`.
    func solve(layer l: Int, keys: [[Double]], negatives: [[Double]] = [], weight: Double = 0) throws -> [Double] {
        let ff = model.config.intermediate, n = keys.count, h = hparams
        var b = [Double](repeating: 0, count: ff * n)   // K [ff, n]
        for j in 0..<n { for r in 0..<ff { b[r * n + j] = keys[j][r] } }
        // K_N [ff, M]; `addNegatives(to: a, left: L)` adds w·L·K_Nᵀ for L = K_N (MEMIT/ENCORE) or P·K_N
        // (AlphaEdit): a rank-M product, never an [ff, ff] intermediate.
        let m = negatives.count
        var kn = [Double](repeating: 0, count: ff * m)
        for j in 0..<m { for r in 0..<ff { kn[r * m + j] = negatives[j][r] } }
        func addNegatives(to a: inout [Double], left: [Double]) {
            guard m > 0 else { return }
            left.withUnsafeBufferPointer { l in kn.withUnsafeBufferPointer { k in a.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(transB: true, m: ff, n: ff, k: m, alpha: weight, a: l.baseAddress!, lda: m, b: k.baseAddress!, ldb: m,
                           beta: 1, c: out.baseAddress!, ldc: ff)
            } } }
        }
        switch solver {
        case .memit, .encore:
            // MEMIT: (λC + KKᵀ) X = K; ENCORE adds its kept keys and μI: (λC + μI + K_pK_pᵀ + KKᵀ) X = K.
            var encore: (kept: [Double], mu: Double)?
            if case .encore(let state) = solver {
                guard let acc = state.kept.accumulated[l] else { throw EditError(.state, "no ENCORE state for layer \(l)") }
                encore = (acc, state.mu)
            }
            // landing_slack τ ≠ 1: A leaves KKᵀ out, and X = A⁻¹K(τI + KᵀA⁻¹K)⁻¹ below.
            let slack = h.effectiveLandingSlack
            // KKᵀ [ff, ff], only where it joins A.
            var kkt: [Double] = []
            if slack == nil {
                kkt = [Double](repeating: 0, count: ff * ff)
                b.withUnsafeBufferPointer { k in kkt.withUnsafeMutableBufferPointer { out in
                    BLAS.dgemm(transB: true, m: ff, n: ff, k: n, a: k.baseAddress!, lda: n, b: k.baseAddress!, ldb: n, c: out.baseAddress!, ldc: ff)
                } }
            }
            // entity_keys: C_e [ff, ff] with its weight λ·ρ.
            var entities: (moment: [Float], scale: Double)?
            if let e = h.entityKeys {
                guard let ce = entityStatistics[l], ce.dim == ff else { throw EditError(.state, "entity_keys is set and there are no entity key statistics for layer \(l)") }
                entities = (ce.moment, h.mom2UpdateWeight * e.weight)
            }
            var a = statistics[l]!.regularizedMoment(ridge: h.mom2Ridge)
            for x in 0..<(ff * ff) {
                a[x] = h.mom2UpdateWeight * a[x] + (encore?.kept[x] ?? 0) + (slack == nil ? kkt[x] : 0)
                    + (entities.map { $0.scale * Double($0.moment[x]) } ?? 0)
            }
            addNegatives(to: &a, left: kn)
            if let mu = encore?.mu { for i in 0..<ff { a[i * ff + i] += mu } }
            let y: [Double]   // A⁻¹K [ff, n] (with KKᵀ in A when τ = 1: then X itself)
            do { y = try LAPACK.solveSPD(a, b, n: ff, nrhs: n) } catch {
                let system = (encore == nil ? "λC" : "λC + μI + K_pK_pᵀ") + (slack == nil ? " + KKᵀ" : "") + (h.entityKeys == nil ? "" : " + λρC_e")
                throw EditError(.degenerateKey, "\(system) at layer \(l) is not positive definite (\(error)); raise mom2_ridge or recompute the statistics", cause: error)
            }
            guard let tau = slack else { return y }
            // G = KᵀA⁻¹K + τI [n, n]; X = Y G⁻¹, i.e. Xᵀ = G⁻¹Yᵀ (G symmetric).
            var g = [Double](repeating: 0, count: n * n)
            b.withUnsafeBufferPointer { k in y.withUnsafeBufferPointer { yy in g.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(transA: true, m: n, n: n, k: ff, a: k.baseAddress!, lda: n, b: yy.baseAddress!, ldb: n, c: out.baseAddress!, ldc: n)
            } } }
            for i in 0..<n { g[i * n + i] += tau }
            var yt = [Double](repeating: 0, count: n * ff)   // Yᵀ [n, ff]
            for r in 0..<ff { for j in 0..<n { yt[j * ff + r] = y[r * n + j] } }
            let xt: [Double]
            do { xt = try LAPACK.solveSPD(g, yt, n: n, nrhs: ff) } catch {
                throw EditError(.degenerateKey, "KᵀA⁻¹K + τI at layer \(l) is not positive definite (\(error)): the batch's keys are linearly dependent; raise landing_slack", cause: error)
            }
            var x = [Double](repeating: 0, count: ff * n)
            for r in 0..<ff { for j in 0..<n { x[r * n + j] = xt[j * ff + r] } }
            return x
        case .alphaEdit(let state):
            // (P(KKᵀ + K_pK_pᵀ) + αI) X = PK, with P·K_pK_pᵀ kept by the accumulator and P·KKᵀ = (PK)Kᵀ.
            guard let stored = state.projectors[l], var a = state.kept.projected[l] else { throw EditError(.state, "no AlphaEdit projector for layer \(l)") }
            let p = stored.map(Double.init)   // P [ff, ff]
            var pk = [Double](repeating: 0, count: ff * n)   // PK [ff, n]
            p.withUnsafeBufferPointer { pp in b.withUnsafeBufferPointer { k in pk.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(m: ff, n: n, k: ff, a: pp.baseAddress!, lda: ff, b: k.baseAddress!, ldb: n, c: out.baseAddress!, ldc: n)
            } } }
            pk.withUnsafeBufferPointer { l in b.withUnsafeBufferPointer { k in a.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(transB: true, m: ff, n: ff, k: n, a: l.baseAddress!, lda: n, b: k.baseAddress!, ldb: n, beta: 1, c: out.baseAddress!, ldc: ff)
            } } }
            if m > 0 {
                // + P·w·K_NK_Nᵀ = w·(PK_N)K_Nᵀ
                var pkn = [Double](repeating: 0, count: ff * m)   // PK_N [ff, M]
                p.withUnsafeBufferPointer { pp in kn.withUnsafeBufferPointer { k in pkn.withUnsafeMutableBufferPointer { out in
                    BLAS.dgemm(m: ff, n: m, k: ff, a: pp.baseAddress!, lda: ff, b: k.baseAddress!, ldb: m, c: out.baseAddress!, ldc: m)
                } } }
                addNegatives(to: &a, left: pkn)
            }
            let alpha = state.alpha[l] ?? 0
            for i in 0..<ff { a[i * ff + i] += alpha }
            do { return try LAPACK.solve(a, pk, n: ff, nrhs: n) } catch {
                throw EditError(.degenerateKey, "the AlphaEdit system at layer \(l) is singular (\(error))", cause: error)
            }
        }
    }
}
