import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// ROME's neighbour protection (`neighbours` in the hyperparameters; METHODS §10, designs 1 and 2):
/// the subjects an edit is most likely to spill onto are mined from a bank of other subjects, and
/// their prompts (the edit's own prompt with the neighbour as subject) protect them in two ways:
/// - on the value side (`kl_factor`), as KL-preservation terms in the v* objective. The key
///   direction u is fixed before δ is optimized, so the change a neighbour n will see is known in
///   advance: g_n·δ at its subject's last token, g_n = uᵀk_n/uᵀk*; the optimization adds exactly that
///   and holds the neighbour's next-token distribution near the unedited one;
/// - on the key side (`key_weight`), as hard-negative keys in the statistics u is computed from:
///   C' = C + (w/M)·Σ_n k_n k_nᵀ, so that u = C'⁻¹k* (or the equal-gain direction under C') gives
///   the neighbours small gains while the edited subject's prompts keep theirs.
public struct NeighbourSettings: Codable, Sendable, Equatable {
    /// How neighbours are mined.
    public enum Mining: String, Codable, Sendable, CaseIterable {
        /// The largest |g_n|: the subjects whose keys the rank-one update moves most (no SAE).
        case keyGain = "key_gain"
        /// The largest overlap (Jaccard) of active SAE latents at the edit site with the edited
        /// subject's (the SAE as the stethoscope that says who could be hurt; needs `mesa.sae`).
        case saeOverlap = "sae_overlap"
        /// Among the `shortlist` subjects of largest |g_n|, the `count` to which the unedited model,
        /// asked the edit's own prompt, gives the fact's current object (target_true, or the model's own
        /// first token for the edited subject) the highest probability: the subjects that share the
        /// fact being changed, as CounterFact's neighbourhood prompts do, and that the update reaches.
        case sharedObject = "shared_object"
    }
    /// Where the candidate subjects come from.
    public enum Bank: String, Codable, Sendable, CaseIterable {
        /// The subjects of the CounterFact tuning records (the data directory's train split).
        case counterfact
        /// The titles of the corpus's articles (the Wikipedia sample the key statistics come from), in
        /// article order; with `entity_keys` the titles its C_e already holds are skipped. Needs no
        /// evaluation data: the bank a deployed daemon uses.
        case corpusTitles = "corpus_titles"
    }
    /// Neighbours per edit.
    public var count: Int
    /// Weight of the neighbours' mean KL term in v*'s objective (0: none).
    public var klFactor: Float
    /// Weight w of the neighbours' keys added to C when u is computed (0: none): their share of the
    /// key distribution's second moment.
    public var keyWeight: Float?
    /// Subjects in the bank (the first distinct ones of the candidate list); default 2,000.
    public var candidates: Int?
    /// Default `key_gain`.
    public var mine: Mining?
    /// Default `counterfact`.
    public var bank: Bank?
    /// `shared_object`: how many subjects of largest key gain are scored on the edit's prompt; default
    /// 4 × count (at most the bank).
    public var shortlist: Int?
    /// Whether the mined neighbours' prompts are scored with the update for the `neighbour_shift`
    /// signal (default true; one full pass over their prompts and one from the edited layer up).
    public var probe: Bool?

    public init(count: Int, klFactor: Float, keyWeight: Float? = nil, candidates: Int? = nil, mine: Mining? = nil, shortlist: Int? = nil,
                probe: Bool? = nil, bank: Bank? = nil) {
        self.count = count
        self.klFactor = klFactor
        self.keyWeight = keyWeight
        self.candidates = candidates
        self.mine = mine
        self.shortlist = shortlist
        self.probe = probe
        self.bank = bank
    }

    public var probes: Bool { probe ?? true }

    public var mining: Mining { mine ?? .keyGain }
    public var candidateBank: Bank { bank ?? .counterfact }
    public var bankSize: Int { candidates ?? 2000 }
    public var shortlistSize: Int { min(bankSize, shortlist ?? 4 * count) }
    public var negativeKeyWeight: Float { keyWeight ?? 0 }

    public func validate() throws {
        guard (1...64).contains(count) else { throw EditError(.hyperparameters, "neighbours.count must be in 1...64") }
        guard klFactor >= 0, klFactor.isFinite else { throw EditError(.hyperparameters, "neighbours.kl_factor must be finite and non-negative") }
        guard negativeKeyWeight >= 0, negativeKeyWeight.isFinite else {
            throw EditError(.hyperparameters, "neighbours.key_weight must be finite and non-negative")
        }
        guard bankSize >= count else { throw EditError(.hyperparameters, "neighbours.candidates must be at least count") }
        if let shortlist, !(count...4096).contains(shortlist) {
            throw EditError(.hyperparameters, "neighbours.shortlist must be in count...4096")
        }
    }

    /// The `corpus_titles` bank: the corpus's non-empty article titles in article order, past the names
    /// `entityKeys` already holds in C_e (read from the same corpus in its own order); at least
    /// `candidates` distinct ones.
    public func titleCandidates(corpus: Corpus, entityKeys: EntityKeySettings?) throws -> [String] {
        let held = Set(try entityKeys?.names(from: corpus) ?? [])
        let titles = corpus.titles.filter { !$0.isEmpty && !held.contains($0) }
        guard Set(titles).count >= bankSize else {
            throw EditError(.hyperparameters, "neighbours.candidates is \(bankSize), the corpus \(corpus.path) has \(Set(titles).count) titles outside entity_keys")
        }
        return titles
    }

    /// The run-signature form.
    public var description: String {
        "count=\(count) kl_factor=\(klFactor) key_weight=\(negativeKeyWeight) candidates=\(bankSize) mine=\(mining.rawValue)"
            + (candidateBank == .counterfact ? "" : " bank=\(candidateBank.rawValue)")
            + (mining == .sharedObject ? " shortlist=\(shortlistSize)" : "")
    }
}

/// Hard-negative keys K_N [M][ff] added to the key statistics with total weight w, solved with
/// Woodbury's identity: C'⁻¹x = C⁻¹x − Z·S⁻¹·K_NᵀC⁻¹x with Z = C⁻¹K_N and S = (M/w)·I + K_NᵀZ [M, M].
struct NegativeKeys {
    let keys: [[Float]]
    /// C⁻¹k_n [M][ff].
    let z: [[Float]]
    /// S [M, M].
    let s: [Double]

    init(keys: [[Float]], weight: Float, solve: ([Float]) throws -> [Float]) throws {
        let m = keys.count
        self.keys = keys
        z = try keys.map(solve)
        var s = Self.symmetricGram(keys, z)
        for i in 0..<m { s[i * m + i] += Double(m) / Double(weight) }
        self.s = s
    }

    /// The Gram matrix aᵢ·bⱼ [n, n] of two lists of n vectors, averaged with its transpose (for b = C⁻¹a
    /// it is symmetric up to rounding, and the solves that follow need it exactly symmetric).
    static func symmetricGram(_ a: [[Float]], _ b: [[Float]]) -> [Double] {
        let n = a.count
        var g = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { g[i * n + j] = Double(Vector.dot(a[i], b[j])) } }
        for i in 0..<n { for j in 0..<i { let m = (g[i * n + j] + g[j * n + i]) / 2; g[i * n + j] = m; g[j * n + i] = m } }
        return g
    }

    /// C'⁻¹x from C⁻¹x ([ff]).
    func apply(_ cx: [Float]) throws -> [Float] {
        let m = keys.count
        let t = (0..<m).map { Double(Vector.dot(keys[$0], cx)) }
        let y = try LAPACK.solveSPD(s, t, n: m, nrhs: 1)
        var out = cx.map(Double.init)
        for i in 0..<m { for j in out.indices { out[j] -= y[i] * Double(z[i][j]) } }
        return out.map { Float($0) }
    }
}

/// The candidate subjects and what mining needs of each, from one unedited pass per chunk of bare
/// subjects (BOS + subject): the MLP key at the subject's last token at the edit layer, k_n [ff], and
/// with an SAE the active latents of its MLP output there.
///
/// A bare subject's key stands for the subject in any prompt that starts with it; in prompts where
/// context precedes the subject the key differs, which is why the gains used in the objective are
/// recomputed from the neighbour prompts themselves.
public final class SubjectBank: Sendable {
    public let subjects: [String]
    /// [N, ff] row-major.
    let keys: [Float]
    let ff: Int
    /// Active latents per subject (sorted), with an SAE.
    let latents: [[Int]]?

    /// Builds the bank at `layer` from the first `limit` distinct non-empty `subjects`, packing 64
    /// subjects per pass.
    public init(model: LanguageModel, layer: Int, subjects candidates: [String], limit: Int, sae: SparseAutoencoder? = nil) throws {
        let keySite = Site(layer: layer, kind: .mlpKey), outSite = Site(layer: layer, kind: .mlpOut)
        let (subjects, rows) = try Self.read(model: model, candidates: candidates, limit: limit, sites: sae == nil ? [keySite] : [keySite, outSite])
        var latents: [[Int]] = []
        if let sae, let outs = rows[outSite] {   // [N, d]
            let d = model.config.hidden
            for start in stride(from: 0, to: subjects.count, by: 64) {
                let n = min(64, subjects.count - start)
                let f = sae.encode(Array(outs[(start * d)..<((start + n) * d)]), rows: n)  // [n, F]
                for i in 0..<n { latents.append((0..<sae.width).filter { f[i * sae.width + $0] != 0 }) }
            }
        }
        self.subjects = subjects
        keys = rows[keySite]!
        ff = model.config.intermediate
        self.latents = sae == nil ? nil : latents
    }

    init(subjects: [String], keys: [Float], ff: Int) {
        self.subjects = subjects
        self.keys = keys
        self.ff = ff
        latents = nil
    }

    /// Banks at each of `layers` from the first `limit` distinct non-empty `subjects`, read in one pass
    /// per chunk of 64 subjects that captures every layer's keys (the MEMIT family's banks, no SAE):
    /// layer → bank. The weights are read as they are: build on the base weights, so that a run
    /// resumed on edited weights and a daemon restarted at a later snapshot mine as the first start did.
    public static func banks(model: LanguageModel, layers: [Int], subjects candidates: [String], limit: Int) throws -> [Int: SubjectBank] {
        let sites = Set(layers.map { Site(layer: $0, kind: .mlpKey) })
        let (subjects, rows) = try read(model: model, candidates: candidates, limit: limit, sites: sites)
        return Dictionary(uniqueKeysWithValues: layers.map {
            ($0, SubjectBank(subjects: subjects, keys: rows[Site(layer: $0, kind: .mlpKey)] ?? [], ff: model.config.intermediate))
        })
    }

    /// The first `limit` distinct non-empty candidates that tokenize as a bare subject (BOS + subject),
    /// and each site's activation at their last token, [N, width] row-major per site: one forward per
    /// chunk of 64 subjects, up to the highest site's layer.
    static func read(model: LanguageModel, candidates: [String], limit: Int, sites: Set<Site>) throws -> (subjects: [String], rows: [Site: [Float]]) {
        var seen = Set<String>(), subjects: [String] = []
        for s in candidates where !s.isEmpty && seen.insert(s).inserted {
            subjects.append(s)
            if subjects.count == limit { break }
        }
        let tok = EditTokenizer(model: model)
        var prompts: [(subject: String, tokens: [Int32], last: Int)] = []
        for s in subjects {
            guard let p = try? tok.subjectPrompt(prefix: "", prompt: "{}", subject: s) else { continue }
            prompts.append((s, p.tokens, p.subjectLast))
        }
        var rows: [Site: [Float]] = Dictionary(uniqueKeysWithValues: sites.map { ($0, []) })
        guard let top = sites.map(\.layer).max() else { return (prompts.map(\.subject), rows) }
        for start in stride(from: 0, to: prompts.count, by: 64) {
            let chunk = prompts[start..<min(prompts.count, start + 64)]
            let r = try model.forward(chunk.flatMap(\.tokens), options: ForwardOptions(
                capture: sites, logits: .none, stopAfterLayer: top, segments: chunk.map(\.tokens.count)))
            for site in sites {
                let a = r.activations[site]!   // [tokens, width]
                var at = 0
                for p in chunk {
                    rows[site]! += a.row(at + p.last)
                    at += p.tokens.count
                }
            }
        }
        return (prompts.map(\.subject), rows)
    }

    /// The `count` subjects other than `exclude` with the largest |uᵀk_n| (u [ff]), largest first.
    public func mineByKeyGain(u: [Float], exclude: String, count: Int) -> [String] {
        keyGains(u: u, exclude: exclude, count: count).map(\.subject)
    }

    /// As `mineByKeyGain`, with each subject's |uᵀk_n|.
    public func keyGains(u: [Float], exclude: String, count: Int) -> [(subject: String, score: Float)] {
        var scores = [Float](repeating: 0, count: subjects.count)  // [N] = K u
        keys.withUnsafeBufferPointer { k in u.withUnsafeBufferPointer { x in scores.withUnsafeMutableBufferPointer { y in
            BLAS.sgemv(trans: false, rows: subjects.count, cols: ff, a: k.baseAddress!, lda: ff, x: x.baseAddress!, y: y.baseAddress!)
        } } }
        return top(count, exclude: exclude) { abs(scores[$0]) }
    }

    /// The active latents of a subject of the bank (built with an SAE), sorted.
    public func activeLatents(of subject: String) -> [Int]? {
        guard let latents, let i = subjects.firstIndex(of: subject) else { return nil }
        return latents[i]
    }

    /// The `count` subjects other than `exclude` whose active latents overlap `active` most (Jaccard).
    public func mineByLatentOverlap(active: [Int], exclude: String, count: Int) throws -> [String] {
        try latentOverlaps(active: active, exclude: exclude, count: count).map(\.subject)
    }

    /// As `mineByLatentOverlap`, with each neighbour's Jaccard overlap.
    public func latentOverlaps(active: [Int], exclude: String, count: Int) throws -> [(subject: String, overlap: Float)] {
        guard let latents else { throw EditError(.state, "the subject bank was built without an SAE") }
        let a = Set(active)
        return top(count, exclude: exclude) { i in
            let b = latents[i]
            let shared = b.reduce(0) { $0 + (a.contains($1) ? 1 : 0) }
            let union = a.count + b.count - shared
            return union == 0 ? 0 : Float(shared) / Float(union)
        }.map { ($0.subject, $0.score) }
    }

    /// The `count` subjects other than `exclude` with the largest `score`, largest first, with their scores.
    func top(_ count: Int, exclude: String, score: (Int) -> Float) -> [(subject: String, score: Float)] {
        let order = subjects.indices.filter { subjects[$0] != exclude }.map { ($0, score($0)) }
            .sorted { $0.1 > $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
        return order.prefix(count).map { (subjects[$0.0], $0.1) }
    }
}

/// Other subjects in the edit's own prompt ("{} is located in" with the neighbour as subject), scored
/// at the prompt's last token on the unedited model and, given a rank-one update of the edited layer's
/// down projection, on the edited one. They find the subjects that share the fact being changed
/// (`shared_object` mining) and measure how far the update moves them toward the new object (the
/// `neighbour_shift` signal): a direct probe of the spill that CounterFact's neighbourhood measures.
struct NeighbourProbe {
    let subjects: [String]
    let prompts: [SubjectPrompt]

    init(subjects: [String], prompt: String, tokenizer: EditTokenizer) {
        var kept: [String] = [], prompts: [SubjectPrompt] = []
        for s in subjects {
            guard let p = try? tokenizer.subjectPrompt(prefix: "", prompt: prompt, subject: s) else { continue }
            kept.append(s)
            prompts.append(p)
        }
        self.subjects = kept
        self.prompts = prompts
    }

    /// log p(token) at each prompt's last position for each of `tokens` ([prompts][tokens]) on the
    /// unedited model and, with `update`, on the edited one (as `logSoftmax`).
    func logProbs(model: LanguageModel, layer: Int, tokens: [Int32], update: RankOneUpdate? = nil) throws -> (before: [[Float]], after: [[Float]]?) {
        let r = try logSoftmax(model: model, layer: layer, update: update)
        func pick(_ rows: [[Float]]) -> [[Float]] { rows.map { lp in tokens.map { lp[Int($0)] } } }
        return (pick(r.before), r.after.map(pick))
    }

    /// The log-softmax at each prompt's last position ([prompts][vocab]) on the unedited model and,
    /// given a rank-one update ΔW = r uᵀ of `layer`'s down projection, on the edited one. The update
    /// adds r·uᵀk_t to the MLP output at every position t, with k_t the unedited key (a change of the
    /// MLP output at layer l leaves that layer's keys as they were), so the unedited pass gives the
    /// keys and the residual entering the layer, and a second pass from that layer up with those
    /// interventions is exact.
    func logSoftmax(model: LanguageModel, layer: Int, update: RankOneUpdate? = nil) throws -> (before: [[Float]], after: [[Float]]?) {
        guard !prompts.isEmpty else { return ([], update == nil ? nil : []) }
        let all = prompts.flatMap(\.tokens), lengths = prompts.map(\.tokens.count)
        var lasts: [Int] = [], at = 0
        for n in lengths { at += n; lasts.append(at - 1) }
        let key = Site(layer: layer, kind: .mlpKey), entry = Site(layer: layer, kind: .residIn)
        let plain = try model.forward(all, options: ForwardOptions(capture: update == nil ? [] : [key, entry], logits: .positions(lasts), segments: lengths))
        guard let update else { return (rows(plain.logits), nil) }
        let ff = model.config.intermediate
        let gains: [Float] = plain.activations[key]!.data.withUnsafeBufferPointer { kp in update.u.withUnsafeBufferPointer { up in
            (0..<all.count).map { Kernels.dot(up.baseAddress!, kp.baseAddress! + $0 * ff, ff) }  // uᵀk_t
        } }
        let interventions = gains.enumerated().map { t, g in Intervention(site: Site(layer: layer, kind: .mlpOut), position: t, vector: update.r.map { $0 * g }) }
        let edited = try model.forward(all, options: ForwardOptions(interventions: interventions, logits: .positions(lasts), segments: lengths,
                                                                    resume: ResumePoint(layer: layer, residual: plain.activations[entry]!)))
        return (rows(plain.logits), rows(edited.logits))
    }

    /// log-softmax of each row of logits [rows, vocab].
    private func rows(_ logits: Tensor) -> [[Float]] {
        let V = logits.shape[1]
        return logits.data.withUnsafeBufferPointer { p in (0..<logits.shape[0]).map { EditLoss.logSoftmax(p.baseAddress! + $0 * V, V) } }
    }
}
