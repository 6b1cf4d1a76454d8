import Foundation
import ModelRuntime
import SparseAutoencoder

/// SAE figures of one candidate edit layer (`mesa layers --sae`), from the SAE at `mlp_out@layer`
/// encoding the MLP output at the subject's last token of every rewrite prompt (the bare prompt and
/// each context template) of a set of edit requests. A_t is the set of active latents of prompt t.
public struct SAELayerScore: Codable, Sendable, Equatable {
    public var layer: Int
    /// MESA's statistic (METHODS §5.4): mean over requests of |∩_t A_t| / F.
    public var common: Double
    /// The same intersection normalized by the union: mean |∩_t A_t| / |∪_t A_t| (template consistency
    /// independent of how many latents a layer activates).
    public var jaccard: Double
    /// Jaccard minus the mean Jaccard between the shared sets ∩_t A_t of two different requests:
    /// how much more one subject's templates agree than two subjects do. An early layer whose
    /// latents encode the token position generically scores high on `common` but not here.
    public var contrast: Double
    /// Ours (METHODS §5.7 leaves the formula open): mean over prompts of the fraction of A_t whose
    /// firing rate on the edit prompts exceeds `margin` × their rate on Wikipedia text (the SAE's
    /// training sparsity).
    public var specificity: Double
    /// Mean |A_t|.
    public var activeMean: Double
    public var requests: Int

    public static let margin = 10.0
}

public enum SAELayerChoice {
    /// Scores `layer` with `sae` (which must read `mlp_out@layer` and carry its training sparsity).
    public static func score(model: LanguageModel, sae: SparseAutoencoder, layer: Int, requests: [EditRequest],
                             templates: ContextTemplates) throws -> SAELayerScore {
        let site = Site(layer: layer, kind: .mlpOut)
        do { try sae.check(site: site, width: model.config.hidden) } catch { throw EditError(.hyperparameters, "\(error)", cause: error) }
        guard let logSparsity = sae.logSparsity else {
            throw EditError(.hyperparameters, "the SAE at \(site) has no training sparsity (sparsity.safetensors), which the specificity score needs")
        }
        guard requests.count >= 2 else { throw EditError(.hyperparameters, "the SAE layer scores need at least two requests") }
        let tok = EditTokenizer(model: model)
        let F = sae.width
        // Active sets per request per prompt.
        var sets: [[Set<Int>]] = []
        for r in requests {
            var perPrompt: [Set<Int>] = []
            for prefix in templates.prefixes {
                let sp = try tok.subjectPrompt(prefix: prefix, prompt: r.prompt, subject: r.subject)
                let ids = Array(sp.tokens.prefix(sp.subjectLast + 1))
                let out = try model.forward(ids, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: layer))
                let h = Array(out.activations[site]!.data.suffix(model.config.hidden))
                let f = sae.encode(h, rows: 1)
                perPrompt.append(Set((0..<F).filter { f[$0] > 0 }))
            }
            sets.append(perPrompt)
        }
        let prompts = sets.flatMap { $0 }
        var fires = [Int](repeating: 0, count: F)
        for a in prompts { for j in a { fires[j] += 1 } }
        let editRate = fires.map { Double($0) / Double(prompts.count) }
        let wikiRate = logSparsity.map { pow(10, Double($0)) }
        var common = 0.0, jaccard = 0.0, specificity = 0.0, active = 0.0
        var shared: [Set<Int>] = []
        for perPrompt in sets {
            let inter = perPrompt.dropFirst().reduce(perPrompt[0]) { $0.intersection($1) }
            let union = perPrompt.reduce(Set<Int>()) { $0.union($1) }
            shared.append(inter)
            common += Double(inter.count) / Double(F)
            jaccard += union.isEmpty ? 0 : Double(inter.count) / Double(union.count)
        }
        for a in prompts {
            active += Double(a.count)
            if !a.isEmpty { specificity += Double(a.filter { editRate[$0] > SAELayerScore.margin * wikiRate[$0] }.count) / Double(a.count) }
        }
        var cross = 0.0, pairs = 0
        for i in 0..<shared.count {
            for j in (i + 1)..<shared.count {
                let u = shared[i].union(shared[j]).count
                cross += u == 0 ? 0 : Double(shared[i].intersection(shared[j]).count) / Double(u)
                pairs += 1
            }
        }
        let n = Double(sets.count)
        return SAELayerScore(layer: layer, common: common / n, jaccard: jaccard / n, contrast: jaccard / n - cross / Double(max(1, pairs)),
                             specificity: specificity / Double(prompts.count), activeMean: active / Double(prompts.count), requests: sets.count)
    }

    /// The recommended layer: the most specific among the layers whose sweep S is within `slack`
    /// points of the best (all layers when there is no sweep).
    public static func recommend(scores: [SAELayerScore], sweepS: [Int: Double], slack: Double = 2) -> Int? {
        let best = sweepS.values.max()
        let eligible = scores.filter { s in best.map { b in (sweepS[s.layer] ?? -.infinity) >= b - slack } ?? true }
        return eligible.max { ($0.specificity, $0.contrast) < ($1.specificity, $1.contrast) }?.layer
    }
}
