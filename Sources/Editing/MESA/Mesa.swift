import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// MESA settings inside a method's hyperparameters (`"mesa": {...}`): the value vector is refined
/// through a sparse autoencoder trained on the site where δ is injected (METHODS §5).
public struct MesaHyperparameters: Codable, Sendable, Equatable {
    /// The SAE directory: absolute, or a name under `<state>/sae/`.
    public var sae: String
    /// Weight of ‖enc(δ) − enc(0)‖₁, the L1 penalty on the δ features (MESA-AE's v_alpha); default 1e-4.
    public var l1: Float?
    /// Keep the method's KL term (MESA-AE drops it); default true.
    public var kl: Bool?
    /// When the SAE cannot be loaded: true edits without refinement (and says so in every result),
    /// false refuses to start; default false.
    public var fallback: Bool?
    /// How the refined change is formed and written; default `neutral`.
    public var variant: MesaVariant?
    /// `output_features`: latents whose decoder directions δ may use; default 64.
    public var features: Int?
    /// `key_features`: an SAE on the MLP key site (`mlp_key`, the down projection's input) of the
    /// edited layer: absolute, or a name under `<state>/sae/`.
    public var keySae: String?
    /// `key_features`: a key latent is the subject's own when its log10 firing frequency on the SAE's
    /// training text is below this (default −2.5: under 0.3% of tokens).
    public var keyRarity: Float?

    public init(sae: String, l1: Float? = nil, kl: Bool? = nil, fallback: Bool? = nil, variant: MesaVariant? = nil, features: Int? = nil,
                keySae: String? = nil, keyRarity: Float? = nil) {
        self.sae = sae
        self.l1 = l1
        self.kl = kl
        self.fallback = fallback
        self.variant = variant
        self.features = features
        self.keySae = keySae
        self.keyRarity = keyRarity
    }

    public var featureCount: Int { features ?? 64 }
    public var keyRarityLog10: Float { keyRarity ?? -2.5 }

    public var refinementVariant: MesaVariant { variant ?? .neutral }

    public var l1Weight: Float { l1 ?? 1e-4 }
    public var keepsKL: Bool { kl ?? true }
    public var fallsBack: Bool { fallback ?? false }

    public func validate() throws {
        guard !sae.isEmpty else { throw EditError(.hyperparameters, "mesa.sae must name an SAE directory") }
        guard l1Weight >= 0, l1Weight.isFinite else { throw EditError(.hyperparameters, "mesa.l1 must be finite and non-negative") }
        guard (1...4096).contains(featureCount) else { throw EditError(.hyperparameters, "mesa.features must be in 1...4096") }
        guard keyRarityLog10.isFinite, keyRarityLog10 <= 0 else { throw EditError(.hyperparameters, "mesa.key_rarity must be a log10 frequency ≤ 0") }
        if refinementVariant == .keyFeatures, keySae?.isEmpty != false {
            throw EditError(.hyperparameters, "mesa.variant key_features needs mesa.key_sae, an SAE on the edited layer's mlp_key")
        }
    }

    /// The key SAE's directory, as `saeDirectory`.
    public func keySaeDirectory(stateDirectory: URL) -> URL? {
        keySae.map { Self.directory($0, stateDirectory: stateDirectory) }
    }

    /// The SAE directory: `sae` itself if absolute, else `<stateDirectory>/sae/<sae>`.
    public func saeDirectory(stateDirectory: URL) -> URL { Self.directory(sae, stateDirectory: stateDirectory) }

    /// `name` itself if absolute, else `<stateDirectory>/sae/<name>`.
    static func directory(_ name: String, stateDirectory: URL) -> URL {
        name.hasPrefix("/") ? URL(fileURLWithPath: name) : stateDirectory.appendingPathComponent("sae").appendingPathComponent(name)
    }
}

/// How a MESA edit forms the change it writes.
public enum MesaVariant: String, Codable, Sendable, CaseIterable {
    /// One change Δ = W_decᵀ(ReLU(f̄ + g) − f̄) from the SAE code f̄ of the rewrite prompts' mean
    /// activation, seen by every prompt and written as the method's own update (ROME: rank one), with
    /// the weight decay and the norm clamp on Δ itself: with an SAE that represents δ exactly this is
    /// the method without refinement, so any difference is the SAE's doing.
    case neutral
    /// The slide's formulation (MESA-AE): each prompt sees its own Δ_i from its own code f_i, and ROME
    /// writes all of them exactly (a rank-n update through the template keys' Gram matrix); decay and
    /// clamp act on δ.
    case perPrompt = "per_prompt"
    /// Design 1: no refinement of δ; the SAE mines the subjects whose active latents at the edit site
    /// overlap the edited subject's most, and their prompts enter v*'s objective as KL terms
    /// (`neighbour_kl`, mined by `sae_overlap`).
    case minedNeighbours = "mined_neighbours"
    /// Design 3 (METHODS §5.2 Variant A, made neutral): δ is confined to the span of the decoder
    /// directions of the `features` latents that promote the new object most (output score: the
    /// first-order drop of the rewrite NLL along the direction, −W_dec[j]·∂L/∂δ at δ = 0, after Arad
    /// et al.) among those inactive on every mined neighbour (neighbours mined by SAE overlap); the
    /// change is written as ROME's rank-one update, with decay and clamp on it.
    case outputFeatures = "output_features"

    /// Design 2: no refinement of δ; the key SAE (`key_sae`, on `mlp_key`) finds the latents of the
    /// edited subject's keys that are its own (active on at least half of the rewrite prompts and rare
    /// on generic text, `key_rarity`), and the key direction u is computed from the part of each
    /// rewrite key those latents reconstruct, so that other subjects' keys, which share the generic
    /// latents, move the edited row less. Each rewrite prompt then sees the gain uᵀk_i/uᵀk* the update
    /// gives it.
    case keyFeatures = "key_features"

    /// Variants that use the SAE to mine neighbours instead of refining δ through it.
    public var minesNeighbours: Bool { self == .minedNeighbours || self == .outputFeatures }
}

/// Design 2's key parts: per rewrite key, the part the subject's own latents of a key SAE reconstruct.
public struct SubjectKeyFeatures: Sendable {
    /// The subject's own latents: active on at least half of the keys and rarer than the cut.
    public let latents: [Int]
    /// Σ_{j ∈ latents} f_ij W_dec[j] for each key i: [n][ff].
    public let parts: [[Float]]

    /// `keys` [n][ff] at the SAE's site; `rarity`: the log10 firing frequency below which a latent is
    /// the subject's own (the SAE must carry its firing frequencies).
    public init(sae: SparseAutoencoder, keys: [[Float]], rarity: Float) throws {
        guard let frequency = sae.logSparsity, frequency.count == sae.width else {
            throw EditError(.state, "key_features needs the key SAE's firing frequencies (sparsity.safetensors)")
        }
        let n = keys.count, F = sae.width, D = sae.dIn
        let codes = sae.encode(keys.flatMap { $0 }, rows: n)  // [n, F]
        var own: [Int] = []
        for j in 0..<F where frequency[j] < rarity {
            var active = 0
            for i in 0..<n where codes[i * F + j] > 0 { active += 1 }
            if 2 * active >= n, active > 0 { own.append(j) }
        }
        latents = own
        parts = (0..<n).map { i in
            var part = [Float](repeating: 0, count: D)
            for j in own where codes[i * F + j] > 0 {
                let f = codes[i * F + j]
                for k in 0..<D { part[k] += f * sae.decoder[j * D + k] }
            }
            return part
        }
    }
}

/// Design 3's subspace: the output-promoting latents of an edit and an orthonormal basis of their
/// decoder directions.
public struct OutputFeatureSubspace: Sendable {
    /// The latents chosen, best output score first.
    public let latents: [Int]
    /// Orthonormal rows [m][D] spanning their decoder directions (m ≤ latents.count: directions that
    /// are numerically dependent on earlier ones are dropped).
    public let basis: [[Float]]

    /// Scores every latent by −W_dec[j]·gradient (gradient: ∂L/∂δ at δ = 0, [D]) and keeps the `count`
    /// best with a positive score that are not in `excluded`; Gram–Schmidt (twice, in Double) on their
    /// decoder rows.
    public init(sae: SparseAutoencoder, gradient: [Float], excluded: Set<Int>, count: Int) {
        let F = sae.width, D = sae.dIn
        var scores = [Float](repeating: 0, count: F)  // [F] = W_dec·g
        sae.decoder.withUnsafeBufferPointer { w in gradient.withUnsafeBufferPointer { x in scores.withUnsafeMutableBufferPointer { y in
            BLAS.sgemv(trans: false, rows: F, cols: D, a: w.baseAddress!, lda: D, x: x.baseAddress!, y: y.baseAddress!)
        } } }
        // Output score −W_dec[j]·g: the first-order drop of the loss along latent j's direction.
        let candidates: [Int] = (0..<F).filter { j in !excluded.contains(j) && scores[j] < 0 }
        let ranked: [Int] = candidates.sorted { (a: Int, b: Int) -> Bool in
            scores[a] < scores[b] || (scores[a] == scores[b] && a < b)
        }
        let chosen = ranked.prefix(count)
        var rows: [[Double]] = []
        for j in chosen {
            var v = (0..<D).map { Double(sae.decoder[j * D + $0]) }
            let n0 = (v.reduce(0) { $0 + $1 * $1 }).squareRoot()
            for _ in 0..<2 {
                for q in rows {
                    var dot = 0.0
                    for k in 0..<D { dot += q[k] * v[k] }
                    for k in 0..<D { v[k] -= dot * q[k] }
                }
            }
            let n = (v.reduce(0) { $0 + $1 * $1 }).squareRoot()
            guard n0 > 0, n > 1e-6 * n0 else { continue }
            rows.append(v.map { $0 / n })
        }
        latents = Array(chosen)
        basis = rows.map { $0.map { Float($0) } }
    }
}

/// The MESA refinement of δ at one site for a batch of prompts (METHODS §5.3, with its pitfalls fixed).
///
/// For prompt i with unedited activation h_i at the site, the vector the model sees is
///
///     h_i' = dec(ReLU(enc(h_i) + g)) + (h_i − dec(enc(h_i)))   with   g = enc(δ) − enc(0)
///
/// i.e. the SAE's reconstruction with the δ features added, plus h_i's reconstruction error, so that
/// h_i' = h_i at δ = 0 (the public code uses enc(δ) and misses the −enc(0)). The change it adds is
/// Δ_i = W_decᵀ(ReLU(f_i + g) − f_i), f_i = enc(h_i) held fixed; the loss adds l1·‖g‖₁.
///
/// Gradient: exact through the decoder and the outer ReLU where a latent is on; where a δ latent is
/// off (g_j = 0) the thresholds are crossed straight-through (∂g_j/∂δ := W_enc[j]), since otherwise
/// δ = 0 is a stationary point whenever enc(0) has no active latent and the optimization never starts.
///
/// Shared (the `neutral` variant): one code f̄ = enc(h̄) stands for every prompt, so every prompt sees
/// the same Δ, the change that is written; the optimization's decay and clamp then act on Δ.
/// Shapes: D = d_in, F = latents, n = prompts.
public struct SAERefinement {
    public let sae: SparseAutoencoder
    public let l1: Float
    /// enc(h_i): [n][F], or [1][F] when shared.
    let features: [[Float]]
    /// enc(0): [F].
    let zeroFeatures: [Float]
    /// One change for every prompt (from `features[0]`).
    public let shared: Bool
    /// Prompts the changes are for.
    let prompts: Int

    /// `activations`: h_i at the site for each prompt, [n][D]: one change per prompt from its own code.
    public init(sae: SparseAutoencoder, l1: Float, activations: [[Float]]) {
        self.sae = sae
        self.l1 = l1
        let D = sae.dIn
        features = activations.map { sae.encode($0, rows: 1) }
        zeroFeatures = sae.encode([Float](repeating: 0, count: D), rows: 1)
        shared = false
        prompts = activations.count
    }

    /// One change for all `prompts` prompts, from the code of `activation` ([D]).
    public init(sae: SparseAutoencoder, l1: Float, sharedActivation activation: [Float], prompts: Int) {
        self.sae = sae
        self.l1 = l1
        features = [sae.encode(activation, rows: 1)]
        zeroFeatures = sae.encode([Float](repeating: 0, count: sae.dIn), rows: 1)
        shared = true
        self.prompts = prompts
    }

    /// What one evaluation at δ produced: the per-prompt changes and what the gradient needs.
    public struct State {
        /// Δ_i: [n][D].
        public var changes: [[Float]]
        /// g = enc(δ) − enc(0): [F].
        public var g: [Float]
        /// ‖g‖₁.
        public var l1Norm: Double
    }

    /// Δ_i(δ) for every prompt.
    public func evaluate(_ delta: [Float]) -> State {
        let F = sae.width
        let fd = sae.encode(delta, rows: 1)
        var g = [Float](repeating: 0, count: F)
        var l1n: Double = 0
        for j in 0..<F { g[j] = fd[j] - zeroFeatures[j]; l1n += Double(abs(g[j])) }
        let changes: [[Float]] = features.map { f in
            var c = [Float](repeating: 0, count: F)
            for j in 0..<F where g[j] != 0 { c[j] = max(0, f[j] + g[j]) - f[j] }
            return sae.decodeLinear(c)
        }
        return State(changes: shared ? Array(repeating: changes[0], count: prompts) : changes, g: g, l1Norm: l1n)
    }

    /// ∂L/∂δ from ∂L/∂Δ_i ([prompts][D]) and the L1 term, at `state`; `shared` ([D]) is a gradient
    /// on the shared change itself (the weight decay of the `neutral` variant).
    public func gradient(_ state: State, changeGradients: [[Float]], shared extra: [Float]? = nil) -> [Float] {
        let F = sae.width, D = sae.dIn, n = features.count
        precondition(changeGradients.count == prompts)
        // c[i, j] = W_dec[j]·∂L/∂Δ_i  ([n, F] = [n, D]·W_decᵀ); shared: one row, the sum over prompts.
        var flat = [Float](repeating: 0, count: n * D)
        if shared {
            for row in changeGradients + (extra.map { [$0] } ?? []) { for k in 0..<D { flat[k] += row[k] } }
        } else {
            precondition(extra == nil, "a gradient on the shared change needs a shared refinement")
            for i in 0..<n { for k in 0..<D { flat[i * D + k] = changeGradients[i][k] } }
        }
        var c = [Float](repeating: 0, count: n * F)
        flat.withUnsafeBufferPointer { a in sae.decoder.withUnsafeBufferPointer { w in c.withUnsafeMutableBufferPointer { cp in
            BLAS.sgemm(transB: true, m: n, n: F, k: D, a: a.baseAddress!, lda: D, b: w.baseAddress!, ldb: D, c: cp.baseAddress!, ldc: F)
        } } }
        var dg = [Float](repeating: 0, count: F)
        for j in 0..<F {
            let gj = state.g[j]
            var s: Float = 0
            for i in 0..<n where gj == 0 || features[i][j] + gj > 0 { s += c[i * F + j] }
            if gj != 0 { s += l1 * (gj > 0 ? 1 : -1) }
            dg[j] = s
        }
        // ∂L/∂δ = W_encᵀ·dg  ([D])
        var out = [Float](repeating: 0, count: D)
        sae.encoder.withUnsafeBufferPointer { w in dg.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { y in
            BLAS.sgemv(trans: true, rows: F, cols: D, a: w.baseAddress!, lda: D, x: x.baseAddress!, y: y.baseAddress!)
        } } }
        return out
    }
}

/// An editor's MESA setup, checked once: what the hyperparameters ask for, the SAE loaded for it, and
/// why refinement is off when it fell back. ROME and MEMIT/AlphaEdit share it.
public struct MesaAttachment: Sendable {
    /// The SAE at the site where δ enters (also used for the coverage figure).
    public let sae: SparseAutoencoder?
    /// Why refinement was asked for but is off (the SAE could not be loaded and `mesa.fallback` is true).
    public let fallbackReason: String?
    /// The refinement in force: asked for, and the SAE is loaded.
    public let settings: MesaHyperparameters?

    /// Refinement asked for needs the SAE, or a fallback with its reason; the SAE must read `site`.
    public init(_ asked: MesaHyperparameters?, sae: SparseAutoencoder?, fallbackReason: String?, site: Site, width: Int) throws {
        if let asked {
            try asked.validate()
            guard sae != nil || (asked.fallsBack && fallbackReason != nil) else {
                throw EditError(.state, "MESA refinement needs the SAE \(asked.sae)\(fallbackReason.map { ": \($0)" } ?? "")")
            }
        }
        if let sae {
            do { try sae.check(site: site, width: width) } catch {
                throw EditError(.hyperparameters, "the SAE does not fit the edit site: \(error)", cause: error)
            }
        }
        self.sae = sae
        self.fallbackReason = sae == nil ? fallbackReason : nil
        settings = sae != nil ? asked : nil
    }

    /// The refinement of one δ batch whose prompts have `activations` at the site ([prompts][D]), when
    /// refinement is on: with the `neutral` variant one change from the mean activation of the first
    /// `rewrite` prompts (the rewrite prompts, weighted by `weights` when given), else one per prompt.
    public func refinement(activations: [[Float]], rewrite: Int, weights: [Double]? = nil) -> SAERefinement? {
        guard let settings, let sae else { return nil }
        switch settings.refinementVariant {
        case .minedNeighbours, .outputFeatures, .keyFeatures:
            return nil
        case .perPrompt:
            return SAERefinement(sae: sae, l1: settings.l1Weight, activations: activations)
        case .neutral:
            let n = max(1, min(rewrite, activations.count))
            let w = weights ?? [Double](repeating: 1 / Double(n), count: n)
            var mean = [Double](repeating: 0, count: sae.dIn)  // [D]
            for i in 0..<n { for k in 0..<sae.dIn { mean[k] += w[i] * Double(activations[i][k]) } }
            return SAERefinement(sae: sae, l1: settings.l1Weight, sharedActivation: mean.map { Float($0) }, prompts: activations.count)
        }
    }

    /// The method's KL factor, or 0 when refinement is on with `kl: false`.
    public func klFactor(_ base: Float) -> Float { settings?.keepsKL == false ? 0 : base }

    /// `base` with "+MESA" when refinement is on.
    public func label(_ base: String) -> String { settings != nil ? base + "+MESA" : base }

    /// Report settings: the SAE and penalty in force, or the fallback's reason.
    public var report: [String: String] {
        var s: [String: String] = [:]
        if let m = settings, let sae {
            s["mesa_sae"] = m.sae
            s["mesa_sae_width"] = "\(sae.width)"
            s["mesa_sae_k"] = sae.k.map(String.init) ?? "?"
            s["mesa_l1"] = "\(m.l1Weight)"
            s["mesa_kl"] = "\(m.keepsKL)"
            s["mesa_variant"] = m.refinementVariant.rawValue
            if m.refinementVariant == .outputFeatures { s["mesa_features"] = "\(m.featureCount)" }
            if m.refinementVariant == .keyFeatures, let k = m.keySae { s["mesa_key_sae"] = k; s["mesa_key_rarity"] = "\(m.keyRarityLog10)" }
        }
        if let reason = fallbackReason { s["mesa_fallback"] = reason }
        return s
    }
}

extension MesaHyperparameters {
    /// A hyperparameter file's "mesa" block with an operator's overrides on top: a new SAE keeps the
    /// file's l1, kl and fallback; l1 and fallback apply only when refinement is asked for.
    public static func overriding(_ file: MesaHyperparameters?, sae: String?, l1: Float?, fallback: Bool?,
                                  variant: MesaVariant? = nil) -> MesaHyperparameters? {
        var out = file
        if let sae { out = MesaHyperparameters(sae: sae, l1: file?.l1, kl: file?.kl, fallback: file?.fallback, variant: file?.variant) }
        if let l1, out != nil { out?.l1 = l1 }
        if let fallback, out != nil { out?.fallback = fallback }
        if let variant, out != nil { out?.variant = variant }
        return out
    }
}
