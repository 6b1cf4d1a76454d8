import Foundation

/// ROME's hyperparameters for one model (METHODS §1.6), read from `deploy/hparams/rome/<model>.json`,
/// which is checked against `Schemas/rome-hparams.schema.json`. Keys are snake_case in the file.
public struct RomeHyperparameters: Codable, Sendable, Equatable, OptimizedHyperparameters {
    /// How k* averages the keys of the rewrite prompts (METHODS §1.3).
    public enum KeyAveraging: String, Codable, Sendable {
        /// The mean over all prompts: the bare prompt weighs 1/(1 + Σ counts) (kmeng01 ROME).
        case templates
        /// The mean of group means, the bare prompt a group of its own (MEMIT's compute_ks).
        case groups
        /// k* as in `templates`, but u is the direction of least uᵀCu with uᵀk_i equal for every
        /// rewrite prompt i (ROME imposes it on the mean key only), so δ reaches each prompt whole.
        case each
    }

    /// The edited layer: its MLP down projection is rewritten.
    public var layer: Int
    /// The optimization of v* = W k* + δ (‖v_init‖ is δ's reference norm): templates, Adam, stops.
    public var optimization: OptimizationSettings
    public var keyAveraging: KeyAveraging
    /// u = C⁻¹k* (true) or u = k* (false).
    public var mom2Adjustment: Bool
    /// Key statistics: tokens, tokens per article, article shuffle seed.
    public var mom2Tokens: Int
    public var mom2SequenceLength: Int
    public var mom2Seed: UInt64
    /// Ridge added to C, relative to its mean diagonal, before solving.
    public var mom2Ridge: Double
    /// MESA refinement of v* through an SAE at `mlp_out@layer` (absent: plain ROME).
    public var mesa: MesaHyperparameters?
    /// Neighbour protection: mined subjects' prompts as KL terms in the v* objective and/or their keys
    /// as hard negatives in C (absent: none, unless `mesa.variant` is `mined_neighbours`).
    public var neighbours: NeighbourSettings?

    /// The neighbour protection in force: the file's block, or with the `mined_neighbours` MESA
    /// variant 8 neighbours with their KL at factor 1 (`output_features`: 8 neighbours that only say
    /// which latents δ must not use), mined by SAE latent overlap (the block's other settings are
    /// kept when given; its mining is then SAE overlap).
    public var neighbourProtection: NeighbourSettings? {
        guard let variant = mesa?.refinementVariant, variant.minesNeighbours else { return neighbours }
        var n = neighbours ?? NeighbourSettings(count: 8, klFactor: variant == .minedNeighbours ? 1 : 0)
        n.mine = .saeOverlap
        return n
    }

    public init(layer: Int, contextTemplates: [ContextTemplates.Group] = [.init(length: 5, count: 5), .init(length: 10, count: 5)],
                templateSeed: UInt64 = 0, keyAveraging: KeyAveraging = .templates, vNumGradSteps: Int = 25, vLr: Float = 0.5, vWeightDecay: Float = 1e-3,
                clampNormFactor: Float = 4, klFactor: Float = 0.0625, earlyStopLoss: Float = 0.05, mom2Adjustment: Bool = true,
                mom2Tokens: Int = 300_000, mom2SequenceLength: Int = 512, mom2Seed: UInt64 = 0, mom2Ridge: Double = 1e-4, mesa: MesaHyperparameters? = nil) {
        self.layer = layer
        optimization = OptimizationSettings(contextTemplates: contextTemplates, templateSeed: templateSeed, vNumGradSteps: vNumGradSteps, vLr: vLr,
                                            vWeightDecay: vWeightDecay, clampNormFactor: clampNormFactor, klFactor: klFactor,
                                            earlyStopLoss: earlyStopLoss)
        self.keyAveraging = keyAveraging
        self.mom2Adjustment = mom2Adjustment
        self.mom2Tokens = mom2Tokens
        self.mom2SequenceLength = mom2SequenceLength
        self.mom2Seed = mom2Seed
        self.mom2Ridge = mom2Ridge
        self.mesa = mesa
    }

    // The file is flat: the optimization settings' keys sit beside ROME's own.
    private enum CodingKeys: String, CodingKey {
        case layer, keyAveraging, mom2Adjustment, mom2Tokens, mom2SequenceLength, mom2Seed, mom2Ridge, mesa, neighbours
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        layer = try c.decode(Int.self, forKey: .layer)
        optimization = try OptimizationSettings(from: decoder)
        keyAveraging = try c.decode(KeyAveraging.self, forKey: .keyAveraging)
        mom2Adjustment = try c.decode(Bool.self, forKey: .mom2Adjustment)
        mom2Tokens = try c.decode(Int.self, forKey: .mom2Tokens)
        mom2SequenceLength = try c.decode(Int.self, forKey: .mom2SequenceLength)
        mom2Seed = try c.decode(UInt64.self, forKey: .mom2Seed)
        mom2Ridge = try c.decode(Double.self, forKey: .mom2Ridge)
        mesa = try c.decodeIfPresent(MesaHyperparameters.self, forKey: .mesa)
        neighbours = try c.decodeIfPresent(NeighbourSettings.self, forKey: .neighbours)
    }

    public func encode(to encoder: Encoder) throws {
        try optimization.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layer, forKey: .layer)
        try c.encode(keyAveraging, forKey: .keyAveraging)
        try c.encode(mom2Adjustment, forKey: .mom2Adjustment)
        try c.encode(mom2Tokens, forKey: .mom2Tokens)
        try c.encode(mom2SequenceLength, forKey: .mom2SequenceLength)
        try c.encode(mom2Seed, forKey: .mom2Seed)
        try c.encode(mom2Ridge, forKey: .mom2Ridge)
        try c.encodeIfPresent(mesa, forKey: .mesa)
        try c.encodeIfPresent(neighbours, forKey: .neighbours)
    }

    /// Decodes a hyperparameter file (extra keys such as `$schema`, `model` and `layer_sweep` are allowed).
    public static func decode(_ data: Data) throws -> RomeHyperparameters {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        do { return try d.decode(RomeHyperparameters.self, from: data) } catch {
            throw EditError(.hyperparameters, "malformed ROME hyperparameters: \(error)", cause: error)
        }
    }

    /// The key statistics these settings call for at `layer` (default: the edited layer).
    public func statisticsSpec(modelHash: String, layer: Int? = nil) -> KeyStatisticsSpec {
        KeyStatisticsSpec(modelHash: modelHash, layer: layer ?? self.layer, tokens: mom2Tokens, sequenceLength: mom2SequenceLength, seed: mom2Seed)
    }

    /// Range checks against the model's shape.
    public func validate(layers: Int) throws {
        func bad(_ m: String) -> EditError { EditError(.hyperparameters, m) }
        guard layer >= 0, layer < layers else { throw bad("layer \(layer) is outside 0..<\(layers)") }
        let o = optimization
        guard o.vNumGradSteps >= 1, o.vNumGradSteps <= 1000 else { throw bad("v_num_grad_steps must be in 1...1000") }
        guard o.vLr > 0, o.vLr.isFinite, o.vWeightDecay >= 0, o.clampNormFactor > 0, o.klFactor >= 0, o.earlyStopLoss >= 0 else {
            throw bad("learning rate, decay, clamp, KL factor and early-stop loss must be finite and non-negative (lr, clamp positive)")
        }
        guard mom2Tokens > 0, mom2SequenceLength > 1, mom2Ridge >= 0 else { throw bad("mom2 settings must be positive") }
        for g in o.contextTemplates where g.length < 1 || g.count < 0 { throw bad("context template group \(g) is invalid") }
        try neighbourProtection?.validate()
        if neighbourProtection?.mining == .saeOverlap, mesa == nil { throw bad("neighbours.mine sae_overlap needs an SAE (a mesa block)") }
    }
}
