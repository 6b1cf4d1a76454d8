import Foundation
import ModelRuntime

/// ROME's random-prefix context templates (METHODS §1.2), generated once from the model with a fixed
/// seed and then stored with the model's edit state, so every edit of a model uses the same prefixes
/// across processes. The public code regenerates them unseeded in every process, which makes its
/// edits nondeterministic.
public struct ContextTemplates: Codable, Sendable, Equatable {
    /// One group: `count` texts of at most `length` tokens (counting the seed word's tokens).
    public struct Group: Codable, Sendable, Equatable {
        public var length: Int
        public var count: Int
        public init(length: Int, count: Int) { self.length = length; self.count = count }
    }

    public var groups: [Group]
    public var seed: UInt64
    /// The seed words generation starts from, cycled (the MESA/EasyEdit variant).
    public var seedWords: [String]
    /// Text placed before the prompt; the first is always "" (the bare prompt).
    public var prefixes: [String]
    /// The weight hash of the model that generated them.
    public var modelHash: String

    /// Per-prefix weights that average within each group and then over the groups, the bare prompt a
    /// group of its own (MEMIT's compute_ks). They sum to 1; nil if the prefixes do not match the groups.
    public var groupWeights: [Double]? {
        let sizes = [1] + groups.map(\.count).filter { $0 > 0 }
        guard sizes.reduce(0, +) == prefixes.count else { return nil }
        return sizes.flatMap { [Double](repeating: 1 / (Double($0) * Double(sizes.count)), count: $0) }
    }

    public static let defaultSeedWords = ["The", "Therefore", "Because", "I", "You"]

    /// Samples the prefixes with top-k 5: for each group, `count` generations of up to `length`
    /// tokens from a seed word; braces are removed and ". " appended.
    public static func generate(model: LanguageModel, groups: [Group], seed: UInt64,
                                seedWords: [String] = defaultSeedWords) throws -> ContextTemplates {
        guard !seedWords.isEmpty else { throw EditError(.hyperparameters, "no seed words for context templates") }
        var prefixes = [""]
        var n: UInt64 = 0
        let tok = EditTokenizer(model: model)
        for g in groups {
            guard g.length > 0, g.count >= 0 else { throw EditError(.hyperparameters, "context template group \(g) is invalid") }
            for i in 0..<g.count {
                let word = seedWords[i % seedWords.count]
                let ids = tok.prompt(word)
                let budget = max(0, g.length - ids.count)
                let r = try model.generate(prompt: ids, maxTokens: budget, sampling: .topK(k: 5, temperature: 1),
                                           seed: seed &+ n, stopAtEOS: true)
                n += 1
                var text = word + r.text
                text = text.replacingOccurrences(of: "{", with: " ").replacingOccurrences(of: "}", with: " ")
                prefixes.append(text + ". ")
            }
        }
        return ContextTemplates(groups: groups, seed: seed, seedWords: seedWords, prefixes: prefixes, modelHash: model.weightHash)
    }
}
