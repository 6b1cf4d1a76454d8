import Foundation
import ModelRuntime
import Tensor

/// Entity-key preservation (`entity_keys` in the MEMIT family's hyperparameters): the second moment of
/// the MLP keys of N entity names, C_e = (1/N)·Σ k_n k_nᵀ [ff, ff] per edited layer, joins the closed
/// form beside λC as λ·ρ·C_e, so that the update is asked to leave entities' keys where they are:
/// X = (λ(C + ρC_e) + μI + K_pK_pᵀ + KKᵀ)⁻¹K (ENCORE; MEMIT without μ and K_p).
///
/// Why: C is the keys' second moment over every token of generic text, where subject-final tokens are
/// a small minority. An edit's key direction C⁻¹k* therefore reaches other subjects' keys through what
/// subject keys share, and a stream of edits moves the facts of subjects it never named: after 1,000
/// ENCORE edits half of 64 known facts are lost, many to a relation's new objects ("… Glacier belongs
/// to the continent of" → Asia; "Italy's capital," → New York). C_e weights that shared part.
///
/// The entity names are the titles of the Wikipedia sample's articles (the corpus C comes from), in
/// the article order of `seed`, each read bare (BOS + title, its last token), on the base weights.
public struct EntityKeySettings: Codable, Sendable, Equatable {
    /// ρ: C_e's weight relative to C's (the solve adds λ·ρ·C_e).
    public var weight: Double
    /// N, the entity names (default 2,000).
    public var subjects: Int?
    /// The article order the names are taken in (default 0).
    public var seed: UInt64?

    public init(weight: Double, subjects: Int? = nil, seed: UInt64? = nil) {
        self.weight = weight
        self.subjects = subjects
        self.seed = seed
    }

    public var count: Int { subjects ?? 2000 }
    public var orderSeed: UInt64 { seed ?? 0 }

    public func validate() throws {
        guard weight > 0, weight.isFinite, weight <= 1000 else { throw EditError(.hyperparameters, "entity_keys.weight must be in (0, 1000]") }
        guard (16...100_000).contains(count) else { throw EditError(.hyperparameters, "entity_keys.subjects must be in 16...100000") }
    }

    /// The statistics spec of layer `layer` (population `entities`, N in `tokens`).
    public func spec(modelHash: String, layer: Int) -> KeyStatisticsSpec {
        KeyStatisticsSpec(modelHash: modelHash, layer: layer, tokens: count, sequenceLength: 0, seed: orderSeed, population: "entities")
    }

    /// The first `count` distinct non-empty titles of `corpus` (shuffled with `orderSeed`) that are not in
    /// `excluding`.
    public func names(from corpus: Corpus, excluding: Set<String> = []) throws -> [String] {
        var seen = Set<String>(), names: [String] = []
        for t in corpus.titles where !t.isEmpty && !excluding.contains(t) && seen.insert(t).inserted {
            names.append(t)
            if names.count == count { break }
        }
        guard names.count == count else {
            throw EditError(.hyperparameters, "entity_keys.subjects is \(count), the corpus \(corpus.path) has \(names.count) usable titles")
        }
        return names
    }
}

extension MemitEditor {
    /// C_e = (1/N)·Σ k_n k_nᵀ at each of `layers` over the bare names' last-token keys on the current
    /// weights (the base model's: the caller checks), one packed reading of every name: layer → statistics.
    public func entityStatistics(names: [String], settings: EntityKeySettings, modelHash: String, layers: [Int]) throws -> [Int: KeyStatistics] {
        let prompts = try names.map { try tokenizer.subjectPrompt(prefix: "", prompt: "{}", subject: $0) }
        guard !prompts.isEmpty else { throw EditError(.hyperparameters, "no entity names") }
        let ff = model.config.intermediate, n = prompts.count
        let read = try reads(prompts, sites: Set(layers.map { Site(layer: $0, kind: .mlpKey) }), packed: true)
        var out: [Int: KeyStatistics] = [:]
        for l in layers {
            let keys = read[Site(layer: l, kind: .mlpKey)]!   // [N][ff]
            var kt = [Double](repeating: 0, count: ff * n)   // Kᵀ [ff, N]
            for (j, k) in keys.enumerated() { for r in 0..<ff { kt[r * n + j] = Double(k[r]) } }
            var c = [Double](repeating: 0, count: ff * ff)   // KᵀK / N [ff, ff]
            kt.withUnsafeBufferPointer { k in c.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(transB: true, m: ff, n: ff, k: n, alpha: 1 / Double(n), a: k.baseAddress!, lda: n, b: k.baseAddress!, ldb: n,
                           c: out.baseAddress!, ldc: ff)
            } }
            guard c.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the layer-\(l) entity keys are non-finite") }
            out[l] = KeyStatistics(spec: settings.spec(modelHash: modelHash, layer: l), dim: ff, count: n, moment: c.map(Float.init))
        }
        return out
    }
}
