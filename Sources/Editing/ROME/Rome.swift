import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// The prompts of one ROME edit, tokenized: what the optimization sees (and what a reference
/// implementation must be given to reproduce it).
public struct RomeBatch: Sendable {
    /// One rewrite prompt per prefix (the bare prompt first) and the "{subject} is a" KL prompt, with δ
    /// at the subject's last token.
    public init(request: EditRequest, prefixes: [String], tokenizer: EditTokenizer, contextLength: Int) throws {
        try request.validate()
        let target = try tokenizer.target(request.targetNew)
        var rewrite: [DeltaPrompt] = [], targets: [[Int32]] = []
        for prefix in prefixes {
            let sp = try tokenizer.subjectPrompt(prefix: prefix, prompt: request.prompt, subject: request.subject)
            let ids = sp.tokens + target.dropLast()
            guard ids.count <= contextLength else { throw EditError(.tooLong, "prompt and target exceed the context") }
            let positions = (0..<target.count).map { sp.tokens.count - 1 + $0 }
            rewrite.append(DeltaPrompt(tokens: ids, position: sp.subjectLast, logitPositions: positions))
            targets.append(target)
        }
        let klp = try tokenizer.subjectPrompt(prefix: "", prompt: "{} is a", subject: request.subject)
        self.request = request
        self.rewrite = rewrite
        rewriteTargets = targets
        kl = [DeltaPrompt(tokens: klp.tokens, position: klp.subjectLast, logitPositions: [klp.subjectLast])]
        targetNew = target
    }

    /// The edit these prompts are for.
    public var request: EditRequest
    /// One per context template: template prefix + prompt(subject) + target[:-1]; δ at the subject's
    /// last token; logits at the target positions.
    public var rewrite: [DeltaPrompt]
    /// The target token id scored at each rewrite logit position, per prompt.
    public var rewriteTargets: [[Int32]]
    /// "{subject} is a": δ at the subject's last token; its next-token distribution is held near the
    /// unedited one.
    public var kl: [DeltaPrompt]
    public var targetNew: [Int32]
}

/// What one ROME computation produced, with diagnostics.
public struct RomeResult: Sendable {
    /// The rank-one form ΔW = r uᵀ. Without refinement, and with the `neutral` MESA variant, it is what
    /// `applied` holds; with the `per_prompt` variant under `each` key averaging, r is the mean refined
    /// change / uᵀk* (a summary, not what is written).
    public var update: RankOneUpdate
    /// What is written into the weights: `update` itself, or with the `per_prompt` MESA variant under
    /// `each` the rank-n update (n rewrite prompts) that adds exactly the refined change Δ_i the
    /// optimization evaluated at every prompt i: ΔW = [Δ_1 … Δ_n](KᵀC⁻¹K + εI)⁻¹(C⁻¹K)ᵀ.
    public var applied: LowRankUpdate
    /// With refinement: ‖written change at the bare prompt‖ / ‖δ‖ (1 for an SAE that passes δ
    /// through unchanged), and the condition number of the rewrite keys' Gram matrix KᵀC⁻¹K (what
    /// the `per_prompt` variant's exact write inverts, with a ridge of 1e-6 of its mean diagonal).
    public var writtenToDelta: Float?
    public var keyGramCondition: Double?
    /// The neighbours neighbour protection mined (KL terms and/or hard-negative keys).
    public var neighbours: [String] = []
    /// With mined neighbours (an uncertainty signal): the mean and the largest move of their prompts
    /// toward the new object under the update, in nats of log p(new) − log p(current object).
    public var neighbourShift: Double?
    public var neighbourShiftMax: Double?
    /// True if δ was refined through the SAE.
    public var refined: Bool
    /// How much of the written change at the bare prompt the SAE represents (when an SAE is attached).
    public var coverage: SAECoverage?
    /// With refinement: latents of g = enc(δ) − enc(0) that are nonzero at the final δ; with the
    /// `output_features` variant, the dimension of δ's subspace.
    public var deltaFeatures: Int?
    /// `output_features`: the latents whose decoder directions δ was confined to.
    public var outputLatents: [Int]?
    /// `key_features`: the key SAE's latents u was computed from (empty: none qualified, or their
    /// direction was degenerate, and u is ROME's own).
    public var keyLatents: [Int]?
    /// `key_features`: ‖k*_parts‖/‖k*‖, how much of the subject's key its own latents reconstruct.
    public var keyPartShare: Double?
    /// k*: the mean key over the templates [ff].
    public var keyStar: [Float]
    public var valueInitNorm: Float
    public var deltaNorm: Float
    /// uᵀk*.
    public var denominator: Float
    /// uᵀk_i / uᵀk* per rewrite prompt (the bare prompt first): the edited weights add this multiple
    /// of δ at prompt i, where the optimization added δ itself.
    public var keyGains: [Float]
    /// Loss per evaluated step (the last one is the final loss).
    public var losses: [EditLoss.Value]
    /// Seconds per phase: "k_star" (the unedited passes that give keys and v_init), "v_star"
    /// (optimization), "closed_form".
    public var phases: [String: Double]
}

/// ROME (METHODS §1) with the r-ROME fix: the rank-one update is computed with the
/// template-averaged key k* on both sides, ΔW = δ uᵀ / (uᵀk*) with u = C⁻¹k*/‖C⁻¹k*‖, so that
/// (W + ΔW)k* = Wk* + δ. The public code divides by the bare prompt's key instead, which can make the
/// denominator tiny and the update huge. Computing an update never touches the weights.
public final class RomeEditor: @unchecked Sendable {  // `bank` is guarded by `bankLock`; the other `var`s are set up before the editor is shared, and edits run on one thread at a time
    public let model: LanguageModel
    public let hparams: RomeHyperparameters
    public let templates: ContextTemplates
    public let statistics: KeyStatistics?
    /// MESA: the SAE at `mlp_out@layer` (refinement when the hyperparameters ask for it, and the
    /// coverage figure of every edit) or why refinement is off.
    public let mesaSetup: MesaAttachment
    /// MESA design 2 (`key_features`): the SAE at `mlp_key@layer`.
    public let keySAE: SparseAutoencoder?
    /// The coverage figure of the update last computed through `FactEditor`.
    public internal(set) var lastCoverage: SAECoverage?
    /// The uncertainty signals of the update last computed through `FactEditor`.
    public internal(set) var lastSignals: [String: Double] = [:]
    let tokenizer: EditTokenizer
    /// Candidate subjects for neighbour protection (tuning data's subjects, never the evaluation
    /// split's); the bank is built from them on the first edit that needs it.
    public var neighbourCandidates: [String] = []
    private var bank: SubjectBank?
    private let bankLock = NSLock()

    public init(model: LanguageModel, hparams: RomeHyperparameters, templates: ContextTemplates, statistics: KeyStatistics?,
                sae: SparseAutoencoder? = nil, fallbackReason: String? = nil, keySAE: SparseAutoencoder? = nil) throws {
        try hparams.validate(layers: model.config.layers)
        mesaSetup = try MesaAttachment(hparams.mesa, sae: sae, fallbackReason: fallbackReason,
                                       site: Site(layer: hparams.layer, kind: .mlpOut), width: model.config.hidden)
        if mesaSetup.settings?.refinementVariant == .keyFeatures {
            guard let keySAE else { throw EditError(.state, "MESA key_features needs the key SAE \(hparams.mesa?.keySae ?? "")") }
            do { try keySAE.check(site: Site(layer: hparams.layer, kind: .mlpKey), width: model.config.intermediate) } catch {
                throw EditError(.hyperparameters, "the key SAE does not fit the edit site: \(error)", cause: error)
            }
        }
        self.keySAE = mesaSetup.settings?.refinementVariant == .keyFeatures ? keySAE : nil
        if hparams.mom2Adjustment {
            guard let s = statistics else { throw EditError(.state, "mom2_adjustment needs key statistics for layer \(hparams.layer)") }
            guard s.spec.layer == hparams.layer, s.dim == model.config.intermediate else {
                throw EditError(.state, "key statistics are for layer \(s.spec.layer) with width \(s.dim); the edit needs layer \(hparams.layer) with width \(model.config.intermediate)")
            }
        }
        guard templates.prefixes.first == "" else { throw EditError(.state, "context templates must start with the bare prompt") }
        self.model = model
        self.hparams = hparams
        self.templates = templates
        self.statistics = statistics
        tokenizer = EditTokenizer(model: model)
    }

    public var site: Site { Site(layer: hparams.layer, kind: .mlpOut) }

    /// Tokenizes the request into the optimization batch.
    public func batch(for request: EditRequest) throws -> RomeBatch {
        try RomeBatch(request: request, prefixes: templates.prefixes, tokenizer: tokenizer, contextLength: model.config.contextLength)
    }

    /// The weight of each rewrite prompt's key in k* (they sum to 1). The prompts are the bare one and
    /// then the template groups in order.
    func keyWeights(prompts: Int) throws -> [Double] {
        switch hparams.keyAveraging {
        case .templates, .each:
            return [Double](repeating: 1 / Double(prompts), count: prompts)
        case .groups:
            guard let w = templates.groupWeights, w.count == prompts else {
                throw EditError(.state, "the template groups do not match the \(prompts) rewrite prompts")
            }
            return w
        }
    }

    /// u = C⁻¹K(KᵀC⁻¹K + εI)⁻¹1 for the keys K [ff, n]: the minimizer of uᵀCu subject to Kᵀu = 1
    /// (C = I without mom2 adjustment), ε = 1e-6·tr(KᵀC⁻¹K)/n keeping near-duplicate keys solvable.
    func equalGainDirection(keys: [[Float]], negatives: NegativeKeys? = nil) throws -> [Float] {
        let (ck, g) = try keyGram(keys: keys, negatives: negatives)
        let n = keys.count, ff = model.config.intermediate
        let a: [Double]
        do { a = try LAPACK.solveSPD(g, [Double](repeating: 1, count: n), n: n, nrhs: 1) } catch {
            throw EditError(.degenerateKey, "the template keys' Gram matrix is singular (\(error))", cause: error)
        }
        var u = [Double](repeating: 0, count: ff)
        for i in 0..<n { for j in 0..<ff { u[j] += a[i] * Double(ck[i][j]) } }
        return u.map { Float($0) }
    }

    /// ΔW = V(KᵀC⁻¹K + εI)⁻¹(C⁻¹K)ᵀ for keys K [ff, n] and values V = [v_1 … v_n] [d, n]: the update of
    /// least C-norm with ΔW k_i = v_i (up to ε) for every i. Rank n; `equalGainDirection` is the case v_i = δ.
    func exactDelivery(keys: [[Float]], values: [[Float]]) throws -> LowRankUpdate {
        let (ck, g) = try keyGram(keys: keys)
        let n = keys.count, d = model.config.hidden, ff = model.config.intermediate
        // X [n, d] = G⁻¹Vᵀ; left = Xᵀ [d, n]; right = (C⁻¹K)ᵀ [n, ff].
        var vt = [Double](repeating: 0, count: n * d)
        for i in 0..<n { for k in 0..<d { vt[i * d + k] = Double(values[i][k]) } }
        let x: [Double]
        do { x = try LAPACK.solveSPD(g, vt, n: n, nrhs: d) } catch {
            throw EditError(.degenerateKey, "the template keys' Gram matrix is singular (\(error))", cause: error)
        }
        var left = [Float](repeating: 0, count: d * n)
        for i in 0..<n { for k in 0..<d { left[k * n + i] = Float(x[i * d + k]) } }
        guard left.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the refined update is non-finite") }
        return LowRankUpdate(parameter: model.weights.layers[hparams.layer].wDown.name, layer: hparams.layer, rows: d, cols: ff,
                             rank: n, left: left, right: ck.flatMap { $0 })
    }

    /// C⁻¹x ([ff]): the key statistics' solve, or x itself without mom2 adjustment; with `negatives`,
    /// the solve with their keys added to C.
    func solveC(_ x: [Float], negatives: NegativeKeys? = nil) throws -> [Float] {
        var cx = x
        if hparams.mom2Adjustment, let stats = statistics { cx = try stats.solve(x, ridge: hparams.mom2Ridge) }
        return try negatives?.apply(cx) ?? cx
    }

    /// C⁻¹k_i for each key ([n][ff]) and G = KᵀC⁻¹K + εI ([n, n]).
    func keyGram(keys: [[Float]], negatives: NegativeKeys? = nil) throws -> ([[Float]], [Double]) {
        let n = keys.count
        // ck[i] = C⁻¹k_i [ff]
        let ck: [[Float]] = try keys.map { try solveC($0, negatives: negatives) }
        var g = NegativeKeys.symmetricGram(keys, ck)  // [n, n] KᵀC⁻¹K
        var trace = 0.0
        for i in 0..<n { trace += g[i * n + i] }
        for i in 0..<n { g[i * n + i] += 1e-6 * trace / Double(n) }
        return (ck, g)
    }

    /// k* [ff]: the key-weighted mean of the rewrite prompts' keys ([n][ff]).
    func keyStar(_ rewriteKeys: [[Float]]) throws -> [Float] {
        let weights = try keyWeights(prompts: rewriteKeys.count)
        var kStar = [Double](repeating: 0, count: model.config.intermediate)
        for (w, k) in zip(weights, rewriteKeys) { for j in kStar.indices { kStar[j] += w * Double(k[j]) } }
        return kStar.map { Float($0) }
    }

    /// The unit key direction u [ff] and uᵀk*: u = C⁻¹k*/‖C⁻¹k*‖ (or k*/‖k*‖ without mom2 adjustment),
    /// or under `each` the equal-gain direction of the rewrite keys; with hard-negative keys C is C'.
    /// Depends on the unedited keys only (an edit of this layer's down projection leaves its keys as they are).
    func keyDirection(rewriteKeys: [[Float]], keyStar: [Float], negatives: NegativeKeys? = nil) throws -> (u: [Float], denominator: Float) {
        var u = keyStar
        if hparams.keyAveraging == .each {
            u = try equalGainDirection(keys: rewriteKeys, negatives: negatives)
        } else if hparams.mom2Adjustment || negatives != nil {
            u = try solveC(keyStar, negatives: negatives)
        }
        let un = Vector.norm(u)
        guard un > 0, un.isFinite else { throw EditError(.nonFinite, "C⁻¹k* is zero or non-finite") }
        u = u.map { $0 / un }
        let denom = Vector.dot(u, keyStar)
        // uᵀk* = k*ᵀC⁻¹k*/‖C⁻¹k*‖ > 0 for positive definite C; a vanishing value means k* is (nearly) outside C's span.
        guard denom.isFinite, denom > 1e-6 * Vector.norm(keyStar) else {
            throw EditError(.degenerateKey, "uᵀk* = \(denom) is too small for a stable update")
        }
        return (u, denom)
    }

    /// Builds the candidate bank now, on the current weights (with neighbour protection and candidates;
    /// else nothing): the editor registry does it on the base weights, so that an editor started later
    /// in a stream mines as the first one did.
    public func prepareNeighbourBank() throws {
        guard let nk = hparams.neighbourProtection, !neighbourCandidates.isEmpty else { return }
        let sae = nk.mining == .saeOverlap ? mesaSetup.sae : nil
        if nk.mining == .saeOverlap, sae == nil { throw EditError(.state, "neighbour mining by SAE overlap needs the SAE") }
        let b = try SubjectBank(model: model, layer: hparams.layer, subjects: neighbourCandidates, limit: nk.bankSize, sae: sae)
        bankLock.withLock { self.bank = b }
    }

    /// The subjects neighbour protection guards for an edit of `subject` with key direction u [ff], and
    /// when they are mined by SAE overlap the mean overlap (the `crowding` signal).
    func mineNeighbours(_ nk: NeighbourSettings, request: EditRequest, u: [Float], object: () throws -> Int32) throws -> (subjects: [String], crowding: Double?) {
        let subject = request.subject
        let sae = nk.mining == .saeOverlap ? mesaSetup.sae : nil
        if nk.mining == .saeOverlap, sae == nil { throw EditError(.state, "neighbour mining by SAE overlap needs the SAE") }
        let bank: SubjectBank = try bankLock.withLock {
            if let b = self.bank { return b }
            guard !neighbourCandidates.isEmpty else { throw EditError(.state, "neighbour protection needs candidate subjects (tuning data)") }
            let b = try SubjectBank(model: model, layer: hparams.layer, subjects: neighbourCandidates, limit: nk.bankSize, sae: sae)
            self.bank = b
            return b
        }
        switch nk.mining {
        case .keyGain:
            return (bank.mineByKeyGain(u: u, exclude: subject, count: nk.count), nil)
        case .sharedObject:
            let shortlist = NeighbourProbe(subjects: bank.mineByKeyGain(u: u, exclude: subject, count: nk.shortlistSize),
                                           prompt: request.prompt, tokenizer: tokenizer)
            let scores = try shortlist.logProbs(model: model, layer: hparams.layer, tokens: [try object()]).before.map { $0[0] }
            let order = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
            return (order.prefix(nk.count).map { shortlist.subjects[$0] }, nil)
        case .saeOverlap:
            let own = try SubjectBank(model: model, layer: hparams.layer, subjects: [subject], limit: 1, sae: sae)
            let found = try bank.latentOverlaps(active: own.latents?.first ?? [], exclude: subject, count: nk.count)
            return (found.map(\.subject), found.isEmpty ? nil : found.reduce(0.0) { $0 + Double($1.overlap) } / Double(found.count))
        }
    }

    /// The first token of the fact's current object: target_true's when the request names it, else
    /// the unedited model's top token after the edit's own prompt.
    func currentObject(_ request: EditRequest) throws -> Int32 {
        if let t = request.targetTrue, let first = try tokenizer.target(t).first { return first }
        let own = NeighbourProbe(subjects: [request.subject], prompt: request.prompt, tokenizer: tokenizer)
        guard let lp = try own.logSoftmax(model: model, layer: hparams.layer).before.first,
              let top = lp.indices.max(by: { lp[$0] < lp[$1] }) else {
            throw EditError(.subjectNotFound, "the edit's prompt cannot be scored for \(request.subject)")
        }
        return Int32(top)
    }

    /// The `neighbour_shift` signal: how far the update moves the mined neighbours' prompts toward the
    /// new object, in nats of log p(new) − log p(current object) at their last token (first tokens),
    /// the mean and the largest over the neighbours.
    func neighbourShift(_ neighbours: [String], request: EditRequest, update: RankOneUpdate, targetNew: [Int32],
                        object: () throws -> Int32) throws -> (mean: Float, max: Float)? {
        let probe = NeighbourProbe(subjects: neighbours, prompt: request.prompt, tokenizer: tokenizer)
        guard !probe.subjects.isEmpty, let new = targetNew.first else { return nil }
        let tokens = [new, try object()]
        let scored = try probe.logProbs(model: model, layer: hparams.layer, tokens: tokens, update: update)
        let shifts = zip(scored.before, scored.after ?? []).map { b, a in (a[0] - a[1]) - (b[0] - b[1]) }
        guard shifts.allSatisfy(\.isFinite), let top = shifts.max() else { throw EditError(.nonFinite, "a neighbour's shift is non-finite") }
        return (shifts.reduce(0, +) / Float(shifts.count), top)
    }

    /// A fact conflicts with an earlier fact j of the same batch when j's update moves its subject by
    /// more than this share of δ_j: |u_jᵀk_i*| > conflictGain·u_jᵀk_j*. Its δ then must be optimized on
    /// weights that hold j's update, as one at a time would.
    public static let conflictGain: Float = 0.05

    /// Whether facts can share one δ optimization: plain ROME (MESA refinement and neighbour
    /// protection optimize each fact with prompts of its own).
    public var editsTogether: Bool { mesaSetup.settings == nil && hparams.neighbourProtection == nil }

    /// The rank-one updates of several facts, to be applied in order, from δ optimizations that share
    /// every step's forward and backward (`JointDeltaOptimization`): the facts are cut into runs in
    /// which no fact conflicts with an earlier one (`conflictGain`); each run is optimized together on
    /// the weights that hold the earlier runs' updates (applied here and restored before returning), so
    /// each fact's δ is the one it would get alone on those weights. u, k* and uᵀk* of every fact come
    /// from the unedited keys of this layer, which edits of its down projection do not change.
    public func computeUpdates(jointly requests: [EditRequest]) throws -> (updates: [LowRankUpdate], phases: [String: Double]) {
        guard editsTogether else { throw EditError(.hyperparameters, "ROME with MESA refinement or neighbour protection edits one fact at a time") }
        let h = hparams
        var clock = PhaseClock()
        let batches = try requests.map(batch(for:))
        // Keys of every fact's rewrite prompts from one packed unedited pass: k*, u, uᵀk* per fact.
        let keyPass = try DeltaPass(model: model, site: site, prompts: batches.flatMap(\.rewrite))
        var directions: [(keyStar: [Float], u: [Float], denominator: Float)] = []
        var at = 0
        for b in batches {
            let keys = Array(keyPass.keys[at..<(at + b.rewrite.count)])
            at += b.rewrite.count
            let kStar = try keyStar(keys)
            let (u, denom) = try keyDirection(rewriteKeys: keys, keyStar: kStar)
            directions.append((kStar, u, denom))
        }
        clock.lap("k_star")
        // Runs of facts that no earlier fact of the same run moves.
        var runs: [[Int]] = []
        for i in requests.indices {
            let moved = runs.last?.contains { j in
                abs(Vector.dot(directions[j].u, directions[i].keyStar)) > Self.conflictGain * directions[j].denominator
            } ?? true
            if moved { runs.append([i]) } else { runs[runs.count - 1].append(i) }
        }
        var updates: [LowRankUpdate] = [], backups: [WeightBackup] = []
        defer { for b in backups.reversed() { try? model.restore(b) } }
        var steps = 0
        for (r, run) in runs.enumerated() {
            let own = run.map { batches[$0] }
            let pass = try DeltaPass(model: model, site: site, prompts: JointDeltaOptimization.prompts(of: own))
            // v_init of each fact: the MLP output at its bare prompt's subject (its first prompt), on these weights.
            var first = 0
            var facts: [JointDeltaOptimization.Fact] = []
            for b in own {
                let vInitNorm = Vector.norm(pass.mlpOutputs[first])
                guard vInitNorm > 0, vInitNorm.isFinite else { throw EditError(.nonFinite, "the MLP output at the subject is zero or non-finite") }
                facts.append(.init(optimization: h.optimization.delta(klFactor: h.klFactor, referenceNorm: vInitNorm), batch: b))
                first += b.rewrite.count + b.kl.count
            }
            clock.lap("k_star")
            let outcome = try JointDeltaOptimization.run(facts, pass: pass)
            clock.lap("v_star")
            for (i, o) in zip(run, outcome.facts) {
                steps += o.losses.count
                // r = δ / (uᵀk*).
                let rv = o.delta.map { $0 / directions[i].denominator }
                guard rv.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the update vector is non-finite") }
                let update = RankOneUpdate(parameter: model.weights.layers[h.layer].wDown.name, layer: h.layer, u: directions[i].u, r: rv).lowRank
                updates.append(update)
                if r < runs.count - 1 { backups.append(try model.apply(update)) }
            }
            clock.lap("update")
        }
        // Not seconds: loss evaluations per fact, and the runs the batch was cut into.
        clock.phases["v_steps"] = Double(steps) / Double(max(1, requests.count))
        clock.phases["runs"] = Double(runs.count)
        return (updates, clock.phases)
    }

    /// λ_max/λ_min of KᵀC⁻¹K for the keys K [ff, n] (without the ridge `keyGram` adds).
    func keyGramCondition(keys: [[Float]]) throws -> Double {
        let (_, g) = try keyGram(keys: keys)
        let n = keys.count
        var trace = 0.0
        for i in 0..<n { trace += g[i * n + i] }
        var plain = g
        // keyGram's ridge is 1e-6·tr/n on the diagonal of the ridged matrix, i.e. 1e-6/(1 + 1e-6) of its trace / n.
        for i in 0..<n { plain[i * n + i] -= 1e-6 * (trace / (1 + 1e-6)) / Double(n) }
        let values = try LAPACK.symmetricEigen(plain, n: n).values
        guard let lo = values.min(), let hi = values.max(), lo > 0 else { return .infinity }
        return hi / lo
    }

    /// Computes the rank-one update for `request` without changing the weights.
    public func computeUpdate(_ request: EditRequest) throws -> RomeResult {
        try computeUpdate(batch: try batch(for: request))
    }

    public func computeUpdate(batch: RomeBatch) throws -> RomeResult {
        let h = hparams, ff = model.config.intermediate
        var clock = PhaseClock()

        // k* and v_init from one unedited pass per prompt.
        var pass = try DeltaPass(model: model, site: site, prompts: batch.rewrite + batch.kl)
        let rewriteKeys = Array(pass.keys.prefix(batch.rewrite.count))
        let keyStar = try self.keyStar(rewriteKeys)
        clock.lap("k_star")
        // Design 2: the part of each rewrite key that the subject's own key latents reconstruct.
        var keyParts: SubjectKeyFeatures?
        if let keySAE, let m = mesaSetup.settings {
            keyParts = try SubjectKeyFeatures(sae: keySAE, keys: rewriteKeys, rarity: m.keyRarityLog10)
        }
        // k* of the key parts [ff], once: both direction calls and the reported share read it.
        let partsStar = try keyParts.map { try self.keyStar($0.parts) }
        var fromKeyParts = false
        func direction(_ negatives: NegativeKeys?) throws -> (u: [Float], denominator: Float) {
            fromKeyParts = false
            if let parts = keyParts?.parts, let partsStar, keyParts?.latents.isEmpty == false {
                // u from the subject's own key parts; the denominator stays uᵀk* of the whole keys.
                let (u, _) = try keyDirection(rewriteKeys: parts, keyStar: partsStar, negatives: negatives)
                let denom = Vector.dot(u, keyStar)
                if denom.isFinite, denom > 1e-6 * Vector.norm(keyStar) {
                    fromKeyParts = true
                    return (u, denom)
                }
            }
            return try keyDirection(rewriteKeys: rewriteKeys, keyStar: keyStar, negatives: negatives)
        }
        var (u, denom) = try direction(nil)
        clock.lap("closed_form")
        // Neighbour protection: the neighbours mined with that u join the KL prompts, each seeing
        // g_n·δ, and/or their keys (in the edit's prompt) enter C as hard negatives and u is recomputed.
        var batch = batch
        var promptScales: [Float]?, klRowWeights: [Double]?
        var neighbours: [String] = [], crowding: Double?
        // The fact's current object, found once for mining and the probe (a pass when target_true is absent).
        var currentObjectToken: Int32?
        func object() throws -> Int32 {
            if let t = currentObjectToken { return t }
            let t = try currentObject(batch.request)
            currentObjectToken = t
            return t
        }
        if let nk = h.neighbourProtection {
            (neighbours, crowding) = try mineNeighbours(nk, request: batch.request, u: u, object: object)
            let extra: [DeltaPrompt] = neighbours.compactMap { n in
                guard let sp = try? tokenizer.subjectPrompt(prefix: "", prompt: batch.request.prompt, subject: n) else { return nil }
                return DeltaPrompt(tokens: sp.tokens, position: sp.subjectLast, logitPositions: [sp.tokens.count - 1])
            }
            if !extra.isEmpty {
                let own = batch.kl.count
                // With their KL in the objective the neighbour prompts join the optimization's pass, which
                // then gives their keys too; on the key side alone a pass over them gives the keys.
                if nk.klFactor > 0 {
                    batch.kl += extra
                    pass = try DeltaPass(model: model, site: site, prompts: batch.rewrite + batch.kl)
                }
                let neighbourKeys = nk.klFactor > 0 ? Array(pass.keys.suffix(extra.count)) : try DeltaPass(model: model, site: site, prompts: extra).keys
                if nk.negativeKeyWeight > 0 {
                    (u, denom) = try direction(try NegativeKeys(keys: neighbourKeys, weight: nk.negativeKeyWeight) {
                        try self.solveC($0)
                    })
                }
                if nk.klFactor > 0 {
                    // g_n = uᵀk_n/uᵀk* from the neighbour prompts' own keys (context included).
                    let neighbourGains = neighbourKeys.map { Vector.dot(u, $0) / denom }
                    guard neighbourGains.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "a neighbour's key gain is non-finite") }
                    promptScales = [Float](repeating: 1, count: batch.rewrite.count + own) + neighbourGains
                    let kl = Double(mesaSetup.klFactor(h.klFactor))
                    klRowWeights = [Double](repeating: kl / Double(own), count: own)
                        + [Double](repeating: Double(nk.klFactor) / Double(extra.count), count: extra.count)
                }
            }
            clock.lap("neighbours")
        }
        // Gains of every prompt (rewrite, then KL): (W + r uᵀ)k_i = Wk_i + (uᵀk_i/uᵀk*) δ.
        let gains = pass.keys.map { Vector.dot(u, $0) / denom }
        guard gains.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "a key gain is non-finite") }
        if fromKeyParts {
            // u no longer gives every rewrite prompt gain 1: each is optimized with the gain it will get.
            var scales = promptScales ?? [Float](repeating: 1, count: pass.prompts.count)
            for i in 0..<batch.rewrite.count { scales[i] = gains[i] }
            promptScales = scales
        }
        let vInit = pass.mlpOutputs[0]
        let vInitNorm = Vector.norm(vInit)
        guard vInitNorm > 0, vInitNorm.isFinite else { throw EditError(.nonFinite, "the MLP output at the subject is zero or non-finite") }

        // v* = W k* + δ: Adam on δ with NLL + KL + weight decay, early stop, and the norm clamp; with MESA,
        // every prompt sees its SAE-refined change instead of δ (`neutral`: one change from the
        // key-weighted mean activation of the rewrite prompts).
        let refinement = mesaSetup.refinement(activations: pass.mlpOutputs, rewrite: batch.rewrite.count,
                                              weights: try keyWeights(prompts: batch.rewrite.count))
        var optimization = h.optimization.delta(klFactor: mesaSetup.klFactor(h.klFactor), referenceNorm: vInitNorm)
        optimization.promptScales = promptScales
        optimization.klRowWeights = klRowWeights
        if let m = mesaSetup.settings, m.refinementVariant == .outputFeatures, let sae = mesaSetup.sae {
            // Design 3: δ in the span of the output-promoting latents no mined neighbour uses.
            let bank = try bankLock.withLock { self.bank }
            let excluded = Set(neighbours.flatMap { bank?.activeLatents(of: $0) ?? [] })
            let count = m.featureCount
            optimization.subspace = { g in OutputFeatureSubspace(sae: sae, gradient: g, excluded: excluded, count: count) }
        }
        let outcome = try optimization.run(pass: pass, batch: batch, refinement: refinement)
        let delta = outcome.delta
        clock.lap("v_star")
        // Not seconds: the loss evaluations the stop rule allowed.
        clock.phases["v_steps"] = Double(outcome.losses.count)

        // The written vector per rewrite prompt: δ, or the refined change that prompt was optimized with.
        let n = batch.rewrite.count
        let written = outcome.changes.map { Array($0.prefix(n)) }
        var summary = delta
        if let written {
            let w = try keyWeights(prompts: n)
            summary = (0..<delta.count).map { k in Float((0..<n).reduce(0.0) { $0 + w[$1] * Double(written[$1][k]) }) }
        }
        // r = δ / (uᵀk*).
        let r = summary.map { $0 / denom }
        guard r.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the update vector is non-finite") }
        let update = RankOneUpdate(parameter: model.weights.layers[h.layer].wDown.name, layer: h.layer, u: u, r: r)
        var applied = update.lowRank
        if let written, refinement?.shared == false, h.keyAveraging == .each {
            applied = try exactDelivery(keys: Array(pass.keys.prefix(n)), values: written)
        }
        clock.lap("update")
        // The uncertainty probe: the mined neighbours scored with the update written as ROME's rank one.
        let shift = neighbours.isEmpty || h.neighbourProtection?.probes == false ? nil : try neighbourShift(neighbours, request: batch.request, update: update, targetNew: batch.targetNew, object: object)
        if shift != nil { clock.lap("probe") }
        let change0 = written.map { $0[0].map { $0 * (refinement?.shared == true ? gains[0] : 1) } } ?? delta.map { $0 * gains[0] }
        var coverage = mesaSetup.sae.map { $0.coverage(before: vInit, after: zip(vInit, change0).map { $0 + $1 }) }
        coverage?.crowding = crowding
        var result = RomeResult(update: update, applied: applied, refined: refinement != nil, coverage: coverage, deltaFeatures: outcome.latents,
                                keyStar: keyStar, valueInitNorm: vInitNorm, deltaNorm: Vector.norm(delta), denominator: denom,
                                keyGains: Array(gains.prefix(n)), losses: outcome.losses, phases: clock.phases)
        result.neighbours = neighbours
        result.neighbourShift = shift.map { Double($0.mean) }
        result.neighbourShiftMax = shift.map { Double($0.max) }
        result.outputLatents = outcome.subspaceLatents
        result.keyLatents = keyParts.map { fromKeyParts ? $0.latents : [] }
        if let partsStar, fromKeyParts {
            result.keyPartShare = Double(Vector.norm(partsStar) / Vector.norm(keyStar))
        }
        if refinement != nil {
            let dn = Vector.norm(delta)
            result.writtenToDelta = dn > 0 ? Vector.norm(change0) / dn : nil
            result.keyGramCondition = try keyGramCondition(keys: Array(pass.keys.prefix(n)))
        }
        return result
    }
}
