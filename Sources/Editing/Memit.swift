import Foundation
import ModelRuntime
import Tensor

/// ΔW = L·R of one down projection W [rows, cols]: L [rows, rank], R [rank, cols], row-major. A
/// MEMIT edit of N facts is one such update of rank N per edited layer.
public struct LowRankUpdate: Codable, Sendable, Equatable {
    public var parameter: String
    public var layer: Int
    public var rows: Int
    public var cols: Int
    public var rank: Int
    /// [rows, rank]
    public var left: [Float]
    /// [rank, cols]
    public var right: [Float]

    public init(parameter: String, layer: Int, rows: Int, cols: Int, rank: Int, left: [Float], right: [Float]) {
        self.parameter = parameter
        self.layer = layer
        self.rows = rows
        self.cols = cols
        self.rank = rank
        self.left = left
        self.right = right
    }
}

extension LanguageModel {
    /// W += L·R (rank 1 by `sger`, as `apply(RankOneUpdate)`; higher ranks by one `sgemm`). Returns
    /// what restores W exactly.
    @discardableResult
    public func apply(_ u: LowRankUpdate) throws -> WeightBackup {
        guard u.layer >= 0, u.layer < config.layers else { throw EditError(.hyperparameters, "no layer \(u.layer)") }
        let w = weights.layers[u.layer].wDown
        guard w.name == u.parameter, w.shape == [u.rows, u.cols], u.rank >= 1,
              u.left.count == u.rows * u.rank, u.right.count == u.rank * u.cols else {
            throw EditError(.hyperparameters, "update of \(u.parameter) [\(u.rows), \(u.cols)] rank \(u.rank) does not fit \(w.name) \(w.shape)")
        }
        guard u.left.allSatisfy(\.isFinite), u.right.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the update has non-finite values") }
        let backup = WeightBackup(parameter: w.name, values: w.data)
        w.mutate { buf in
            u.left.withUnsafeBufferPointer { l in u.right.withUnsafeBufferPointer { r in
                if u.rank == 1 {
                    BLAS.sger(m: u.rows, n: u.cols, x: l.baseAddress!, y: r.baseAddress!, a: buf.baseAddress!, lda: u.cols)
                } else {
                    BLAS.sgemm(m: u.rows, n: u.cols, k: u.rank, a: l.baseAddress!, lda: u.rank, b: r.baseAddress!, ldb: u.cols,
                               beta: 1, c: buf.baseAddress!, ldc: u.cols)
                }
            } }
        }
        return backup
    }
}

/// MEMIT's hyperparameters (METHODS §2.1), `deploy/hparams/memit/<model>.json`.
public struct MemitHyperparameters: Codable, Sendable, Equatable {
    /// The edited layers, ascending; δ is optimized on the residual after the last one.
    public var layers: [Int]
    /// Random-prefix templates (the bare prompt is always added first); MEMIT uses 5 of length 10.
    public var contextTemplates: [ContextTemplates.Group]
    public var templateSeed: UInt64
    public var vNumGradSteps: Int
    public var vLr: Float
    public var vWeightDecay: Float
    /// ‖δ‖ ≤ clamp_norm_factor · ‖h_L‖.
    public var clampNormFactor: Float
    public var klFactor: Float
    public var earlyStopLoss: Float
    /// λ in ΔW = R [(λC + KKᵀ)⁻¹K]ᵀ.
    public var mom2UpdateWeight: Double
    public var mom2Tokens: Int
    public var mom2SequenceLength: Int
    public var mom2Seed: UInt64
    /// Ridge added to C, relative to its mean diagonal.
    public var mom2Ridge: Double

    public init(layers: [Int], contextTemplates: [ContextTemplates.Group] = [.init(length: 10, count: 5)], templateSeed: UInt64 = 0,
                vNumGradSteps: Int = 25, vLr: Float = 0.5, vWeightDecay: Float = 1e-3, clampNormFactor: Float = 0.75,
                klFactor: Float = 0.0625, earlyStopLoss: Float = 0.05, mom2UpdateWeight: Double = 15_000, mom2Tokens: Int = 300_000,
                mom2SequenceLength: Int = 512, mom2Seed: UInt64 = 0, mom2Ridge: Double = 1e-4) {
        self.layers = layers
        self.contextTemplates = contextTemplates
        self.templateSeed = templateSeed
        self.vNumGradSteps = vNumGradSteps
        self.vLr = vLr
        self.vWeightDecay = vWeightDecay
        self.clampNormFactor = clampNormFactor
        self.klFactor = klFactor
        self.earlyStopLoss = earlyStopLoss
        self.mom2UpdateWeight = mom2UpdateWeight
        self.mom2Tokens = mom2Tokens
        self.mom2SequenceLength = mom2SequenceLength
        self.mom2Seed = mom2Seed
        self.mom2Ridge = mom2Ridge
    }

    public func statisticsSpec(modelHash: String, layer: Int) -> KeyStatisticsSpec {
        KeyStatisticsSpec(modelHash: modelHash, layer: layer, tokens: mom2Tokens, sequenceLength: mom2SequenceLength, seed: mom2Seed)
    }

    public func validate(layers count: Int) throws {
        func bad(_ m: String) -> EditError { EditError(.hyperparameters, m) }
        guard !layers.isEmpty, layers == layers.sorted(), Set(layers).count == layers.count else { throw bad("layers must be distinct and ascending") }
        guard layers.allSatisfy({ $0 >= 0 && $0 < count }) else { throw bad("layers \(layers) exceed 0..<\(count)") }
        guard vNumGradSteps >= 1, vNumGradSteps <= 1000, vLr > 0, vLr.isFinite, clampNormFactor > 0, klFactor >= 0, vWeightDecay >= 0 else {
            throw bad("optimization settings out of range")
        }
        guard mom2UpdateWeight > 0, mom2UpdateWeight.isFinite, mom2Ridge >= 0 else { throw bad("mom2_update_weight must be positive") }
    }
}

/// What one MEMIT computation produced.
public struct MemitResult: Sendable {
    /// One update per edited layer, in layer order; apply them in this order.
    public var updates: [LowRankUpdate]
    /// ‖δ_i‖ per request and the final loss of each request's optimization.
    public var deltaNorms: [Float]
    public var finalLosses: [Double]
    public var phases: [String: Double]
}

/// MEMIT (METHODS §2.1): a target residual z_i = h_L + δ_i per request (δ on the residual after the
/// last edited layer L, optimized as in ROME, clamp relative to ‖h_L‖), then for each layer l_i in
/// ascending order, keys K_i and the residual gap at L recomputed on the partially edited model and
/// ΔW_i = R_i [(λC_i + K_iK_iᵀ)⁻¹K_i]ᵀ with R_i = (Z − H_L)/(n − i), solved in Double. Computing the
/// updates applies them temporarily (later layers must see earlier ones) and restores the weights
/// bit-exactly before returning.
public final class MemitEditor: @unchecked Sendable {
    public let model: LanguageModel
    public let hparams: MemitHyperparameters
    public let templates: ContextTemplates
    /// C for each edited layer.
    public let statistics: [Int: KeyStatistics]
    let tokenizer: EditTokenizer

    public init(model: LanguageModel, hparams: MemitHyperparameters, templates: ContextTemplates, statistics: [Int: KeyStatistics]) throws {
        try hparams.validate(layers: model.config.layers)
        for l in hparams.layers {
            guard let s = statistics[l], s.dim == model.config.intermediate else {
                throw EditError(.state, "MEMIT needs key statistics of width \(model.config.intermediate) for layer \(l)")
            }
        }
        guard templates.prefixes.first == "" else { throw EditError(.state, "context templates must start with the bare prompt") }
        self.model = model
        self.hparams = hparams
        self.templates = templates
        self.statistics = statistics
        tokenizer = EditTokenizer(model: model)
    }

    public func computeUpdates(_ requests: [EditRequest]) throws -> MemitResult {
        guard !requests.isEmpty else { throw EditError(.hyperparameters, "no requests") }
        let h = hparams, d = model.config.hidden, ff = model.config.intermediate, n = requests.count
        let zLayer = h.layers.last!
        var phases: [String: Double] = [:]
        var clock = Date()
        func lap(_ name: String) {
            phases[name] = Date().timeIntervalSince(clock)
            clock = Date()
        }

        // z_i = h_L + δ_i on the unedited model: [n][d].
        var z: [[Float]] = [], norms: [Float] = [], finals: [Double] = []
        for r in requests {
            let batch = try RomeBatch(request: r, prefixes: templates.prefixes, tokenizer: tokenizer, contextLength: model.config.contextLength)
            let pass = try DeltaPass(model: model, site: Site(layer: zLayer, kind: .residOut), prompts: batch.rewrite + batch.kl)
            let hL = pass.residuals[0]
            let hNorm = Vector.norm(hL)
            guard hNorm > 0, hNorm.isFinite else { throw EditError(.nonFinite, "the residual at the subject is zero or non-finite") }
            let (delta, losses) = try DeltaOptimization(steps: h.vNumGradSteps, lr: h.vLr, weightDecay: h.vWeightDecay, klFactor: h.klFactor,
                                                        earlyStopLoss: h.earlyStopLoss, maxNorm: h.clampNormFactor * hNorm, referenceNorm: hNorm)
                .run(pass: pass, batch: batch)
            z.append(zip(hL, delta).map { $0 + $1 })
            norms.append(Vector.norm(delta))
            finals.append(losses.last?.total ?? .nan)
        }
        lap("z")

        // The bare prompts (no target) and their template variants, for keys and the residual gap.
        let bare = try requests.map { try tokenizer.subjectPrompt(prefix: "", prompt: $0.prompt, subject: $0.subject) }
        let prompts = try requests.map { r in
            try templates.prefixes.map { try tokenizer.subjectPrompt(prefix: $0, prompt: r.prompt, subject: r.subject) }
        }
        guard let weights = templates.groupWeights else { throw EditError(.state, "the context templates do not match their groups") }

        var updates: [LowRankUpdate] = [], backups: [WeightBackup] = []
        defer { for b in backups.reversed() { try? model.restore(b) } }
        for (i, l) in h.layers.enumerated() {
            // K [ff, n] column-major as n rows of ff: each request's template-weighted mean key.
            var keys = [[Double]](repeating: [Double](repeating: 0, count: ff), count: n)
            for (j, ps) in prompts.enumerated() {
                for (t, p) in ps.enumerated() {
                    let f = try model.forward(p.tokens, options: ForwardOptions(capture: [Site(layer: l, kind: .mlpKey)], logits: .none, stopAfterLayer: l))
                    let k = f.activations[Site(layer: l, kind: .mlpKey)]!.row(p.subjectLast)
                    for c in 0..<ff { keys[j][c] += weights[t] * Double(k[c]) }
                }
            }
            // R [d, n] = (z − h_L(current)) / (remaining layers).
            var resid = [Float](repeating: 0, count: d * n)
            let share = Float(h.layers.count - i)
            for (j, p) in bare.enumerated() {
                let f = try model.forward(p.tokens, options: ForwardOptions(capture: [Site(layer: zLayer, kind: .residOut)], logits: .none, stopAfterLayer: zLayer))
                let cur = f.activations[Site(layer: zLayer, kind: .residOut)]!.row(p.subjectLast)
                for c in 0..<d { resid[c * n + j] = (z[j][c] - cur[c]) / share }
            }
            // X = (λC + KKᵀ)⁻¹K [ff, n], in Double.
            var a = statistics[l]!.regularizedMoment(ridge: h.mom2Ridge)
            for x in 0..<(ff * ff) { a[x] *= h.mom2UpdateWeight }
            for j in 0..<n { for r in 0..<ff where keys[j][r] != 0 { let kr = keys[j][r]; for c in 0..<ff { a[r * ff + c] += kr * keys[j][c] } } }
            var b = [Double](repeating: 0, count: ff * n)
            for j in 0..<n { for r in 0..<ff { b[r * n + j] = keys[j][r] } }
            let x: [Double]
            do { x = try LAPACK.solveSPD(a, b, n: ff, nrhs: n) } catch {
                throw EditError(.degenerateKey, "λC + KKᵀ at layer \(l) is not positive definite (\(error)); raise mom2_ridge or recompute the statistics")
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
        lap("spread")
        return MemitResult(updates: updates, deltaNorms: norms, finalLosses: finals, phases: phases)
    }
}
