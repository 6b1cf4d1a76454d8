import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import Tensor

/// The canary set a quality guard scores: facts the base model answers (its greedy next token is
/// the answer's first token) and a text sample for perplexity. Stored as JSON; an operator may
/// replace it with a file of the same shape.
public struct CanarySet: Codable, Sendable, Equatable {
    public struct Fact: Codable, Sendable, Equatable {
        public var prompt: String
        public var answer: String
        public init(prompt: String, answer: String) {
            self.prompt = prompt
            self.answer = answer
        }
    }
    public var facts: [Fact]
    /// Text whose perplexity is measured (its first `perplexityTokens` tokens).
    public var text: String
    /// Where the facts and the text came from.
    public var source: String?

    public init(facts: [Fact], text: String, source: String? = nil) {
        self.facts = facts
        self.text = text
        self.source = source
    }

    /// The longest fact prompt (in tokens, BOS included) the default canary set takes: the guard's pass
    /// costs in proportion to its tokens and the facts are most of them, so short prompts buy the same
    /// number of facts for about two thirds of the time (known_1000's prompts run 4–20 tokens).
    public static let defaultMaxPromptTokens = 9

    /// Builds the default canary set: facts from ROME's known facts (`known_1000.json`: prompt and
    /// attribute), shuffled with `seed`, kept when their prompt has at most `maxPromptTokens` tokens
    /// (0: any) and the model answers them, up to `count`; and the first `tokens` tokens of
    /// WikiText-2 (`tokens.valid.txt`).
    public static func build(model: LanguageModel, knownFacts: URL, wikitext: URL, count: Int, tokens: Int, seed: UInt64,
                             maxPromptTokens: Int = defaultMaxPromptTokens) throws -> CanarySet {
        guard let data = FileManager.default.contents(atPath: knownFacts.path),
              let rows = (try? JSONSerialization.jsonObject(with: data)) as? [[String: Any]] else {
            throw SetupError("cannot read the known facts \(knownFacts.path) (a JSON list of {prompt, attribute})")
        }
        var order = Array(rows.indices)
        var rng = SplitMix64(seed: seed)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let tok = EditTokenizer(model: model)
        let candidates = order.compactMap { i -> Fact? in
            guard let prompt = rows[i]["prompt"] as? String, let answer = rows[i]["attribute"] as? String else { return nil }
            guard maxPromptTokens <= 0 || tok.prompt(prompt).count <= maxPromptTokens else { return nil }
            return Fact(prompt: prompt, answer: answer)
        }
        // In chunks of packed passes, until `count` facts are answered.
        var facts: [Fact] = []
        var next = 0
        while facts.count < count, next < candidates.count {
            let chunk = Array(candidates[next..<min(candidates.count, next + 64)])
            next += chunk.count
            facts += try QualityGuard.answered(model, chunk).prefix(count - facts.count)
        }
        guard let raw = try? String(contentsOf: wikitext, encoding: .utf8) else { throw SetupError("cannot read \(wikitext.path)") }
        // Whole lines of running text (no headings), until the sample holds enough tokens.
        var text = ""
        for line in raw.split(separator: "\n") {
            let l = line.trimmingCharacters(in: .whitespaces)
            guard !l.isEmpty, !l.hasPrefix("=") else { continue }
            text += (text.isEmpty ? "" : "\n") + l
            if model.tokenizer.encode(text, addSpecial: false, parseSpecial: false).count > tokens { break }
        }
        return CanarySet(facts: facts, text: text, source: "\(knownFacts.lastPathComponent) (seed \(seed)), \(wikitext.lastPathComponent)")
    }
}

/// What the canary set measures on some weights: the share of canary facts answered (percent) and
/// the perplexity of the text sample.
public struct CanaryFigures: Codable, Sendable, Equatable {
    public var accuracy: Double
    public var perplexity: Double
    public init(accuracy: Double, perplexity: Double) {
        self.accuracy = accuracy
        self.perplexity = perplexity
    }
}

/// The quality guard: scores the canary set after every edit or batch and says when the edited
/// weights crossed a threshold against the base model (canary accuracy down more than
/// `maxAccuracyDrop` points, or perplexity up more than `maxPerplexityRise`, a fraction). The
/// daemon then undoes the edit and dead-letters its events (reason `quality_gate`).
public final class QualityGuard: @unchecked Sendable {  // `start` and `resumeCache`, the only mutable state, are guarded by `lock`
    public let canary: CanarySet
    /// Per fact: the prompt's tokens and the answer's first token, [n].
    let facts: [(prompt: [Int32], answer: Int32)]
    /// The text sample's tokens (BOS first when the tokenizer adds one).
    let text: [Int32]
    /// Tokens whose perplexity is measured.
    public var perplexityTokens: Int { max(0, text.count - 1) }
    /// Tokens in one canary pass (every fact's prompt and the text): what its cost is proportional to.
    public var passTokens: Int { facts.reduce(0) { $0 + $1.prompt.count } + (text.count >= 2 ? text.count : 0) }
    /// The base model's figures.
    public let base: CanaryFigures
    public let maxAccuracyDrop: Double
    public let maxPerplexityRise: Double
    /// The lowest layer the daemon's edits write (its method's first edited layer). Above 0, the canary
    /// pass starts there, from the residual stream it cached together with a digest of the weights
    /// below it; when those weights change (an edit or a rollback that reaches them) the pass runs
    /// from the embeddings again and refreshes the cache. The figures are the same either way.
    public var startLayer: Int {
        get { lock.lock(); defer { lock.unlock() }; return start }
        set { lock.lock(); start = max(0, newValue); resumeCache = nil; lock.unlock() }
    }
    private var start = 0
    private var resumeCache: (key: [UInt8], point: ResumePoint)?
    private let lock = NSLock()

    /// Measures the base figures on `model`, which must hold the base weights.
    public init(model: LanguageModel, canary: CanarySet, perplexityTokens: Int, maxAccuracyDrop: Double, maxPerplexityRise: Double) throws {
        let tok = EditTokenizer(model: model)
        let facts: [(prompt: [Int32], answer: Int32)] = try canary.facts.map { f in
            guard let t = Self.tokens(f, tok) else { throw SetupError("canary fact \"\(f.prompt)\" has an empty or untokenizable answer") }
            return t
        }
        let text = Array(tok.prompt(canary.text).prefix(min(perplexityTokens + 1, model.config.contextLength)))
        guard text.count >= 2 || !facts.isEmpty else { throw SetupError("the canary set has neither facts nor text") }
        self.facts = facts
        self.text = text
        self.canary = canary
        self.maxAccuracyDrop = maxAccuracyDrop
        self.maxPerplexityRise = maxPerplexityRise
        base = try Self.measure(model, facts: facts, text: text)
    }

    /// A fact's prompt tokens and its answer's first token, tokenized as edits are (nil: no answer token).
    static func tokens(_ f: CanarySet.Fact, _ tok: EditTokenizer) -> (prompt: [Int32], answer: Int32)? {
        guard let first = (try? tok.target(f.answer))?.first else { return nil }
        return (tok.prompt(f.prompt), first)
    }

    /// The facts `model` answers (its greedy next token is the answer's first token), in packed passes
    /// of 64 facts.
    static func answered(_ model: LanguageModel, _ facts: [CanarySet.Fact]) throws -> [CanarySet.Fact] {
        let tok = EditTokenizer(model: model)
        let usable = facts.compactMap { f in tokens(f, tok).map { (f, $0) } }
        var kept: [CanarySet.Fact] = []
        for start in stride(from: 0, to: usable.count, by: 64) {
            let chunk = usable[start..<min(usable.count, start + 64)]
            let hits = try pass(model, facts: chunk.map(\.1), text: []).answered
            kept += zip(chunk, hits).filter(\.1).map(\.0.0)
        }
        return kept
    }

    /// The canary figures of `model`'s current weights.
    public func measure(_ model: LanguageModel) throws -> CanaryFigures {
        lock.lock(); defer { lock.unlock() }
        guard start > 0, start < model.config.layers else { return try Self.measure(model, facts: facts, text: text) }
        let key = Self.digest(model, below: start)
        let cached = resumeCache?.key == key ? resumeCache?.point : nil
        let r = try Self.pass(model, facts: facts, text: text, resume: cached, capture: cached == nil ? start : nil)
        if let residual = r.residual { resumeCache = (key, ResumePoint(layer: start, residual: residual)) }
        return Self.figures(r.answered, r.meanNLL, facts: facts.count)
    }

    static func measure(_ model: LanguageModel, facts: [(prompt: [Int32], answer: Int32)], text: [Int32]) throws -> CanaryFigures {
        let r = try pass(model, facts: facts, text: text)
        return figures(r.answered, r.meanNLL, facts: facts.count)
    }

    static func figures(_ answered: [Bool], _ meanNLL: Double?, facts: Int) -> CanaryFigures {
        let accuracy = facts == 0 ? 100 : 100 * Double(answered.filter { $0 }.count) / Double(facts)
        return CanaryFigures(accuracy: accuracy, perplexity: meanNLL.map(exp) ?? 1)
    }

    /// SHA-256 over the digests of the embeddings and of every tensor of the layers below `layer`:
    /// what the residual stream entering `layer` depends on. Digests are cached per tensor until it
    /// is written, so this is cheap while those weights stay as they are.
    static func digest(_ model: LanguageModel, below layer: Int) -> [UInt8] {
        let w = model.weights
        var h = SHA256()
        for p in [w.tokenEmbedding] + [w.positionEmbedding].compactMap({ $0 }) + w.layers.prefix(layer).flatMap(\.all) {
            h.update(Array(p.name.utf8) + [0])
            h.update(p.digest)
        }
        return h.finalize()
    }

    /// One pass for the facts and the text: every fact's prompt and the text packed as independent
    /// sequences (the weights are read once: a pass per short prompt would be bound by memory
    /// bandwidth, ~30 ms each on the default model), logits at each prompt's last token and at every
    /// text position. Per fact whether its answer is the top token; the text's mean NLL (nil without
    /// text). With `resume` the pass starts from that residual stream; with `capture` it returns the
    /// residual stream entering that layer ([tokens, d]), to resume later passes from.
    static func pass(_ model: LanguageModel, facts: [(prompt: [Int32], answer: Int32)], text: [Int32], resume: ResumePoint? = nil,
                     capture: Int? = nil) throws -> (answered: [Bool], meanNLL: Double?, residual: Tensor?) {
        let scored = text.count >= 2 ? text : []
        let segments = facts.map(\.prompt.count) + (scored.isEmpty ? [] : [scored.count])
        guard !segments.isEmpty else { return ([], nil, nil) }
        var ends: [Int] = [], at = 0
        for f in facts { at += f.prompt.count; ends.append(at - 1) }
        let textRows = scored.isEmpty ? [] : Array(at..<(at + scored.count - 1))
        let site = capture.map { Site(layer: $0, kind: .residIn) }
        let r = try model.forward(facts.flatMap(\.prompt) + scored, options: ForwardOptions(
            capture: site.map { [$0] } ?? [], logits: .positions(ends + textRows), segments: segments, resume: resume))
        let residual = site.flatMap { r.activations[$0] }
        let v = model.config.vocabSize
        // logits [facts + text rows, vocab]
        let (answered, meanNLL) = r.logits.data.withUnsafeBufferPointer { l in
            let answered = facts.enumerated().map { i, f -> Bool in
                let row = l.baseAddress! + i * v
                var best = 0
                for j in 1..<v where row[j] > row[best] { best = j }
                return Int32(best) == f.answer
            }
            var nll = 0.0
            for j in textRows.indices {
                let row = l.baseAddress! + (facts.count + j) * v
                nll += Double(Kernels.logSumExp(row, v) - row[Int(scored[j + 1])])
            }
            return (answered, textRows.isEmpty ? nil : nll / Double(textRows.count))
        }
        return (answered, meanNLL, residual)
    }

    /// Why `f` crosses a threshold against the base figures, or nil.
    public func violation(_ f: CanaryFigures) -> String? {
        var why: [String] = []
        if base.accuracy - f.accuracy > maxAccuracyDrop {
            why.append(String(format: "canary accuracy %.1f%% is %.1f points below the base model's %.1f%% (limit %.1f)",
                              f.accuracy, base.accuracy - f.accuracy, base.accuracy, maxAccuracyDrop))
        }
        if !(f.perplexity <= base.perplexity * (1 + maxPerplexityRise)) {
            why.append(String(format: "canary perplexity %.3f is %.1f%% above the base model's %.3f (limit %.1f%%)",
                              f.perplexity, 100 * (f.perplexity / base.perplexity - 1), base.perplexity, 100 * maxPerplexityRise))
        }
        return why.isEmpty ? nil : why.joined(separator: "; ")
    }

    /// The figures as dead-letter details.
    public func details(_ f: CanaryFigures) -> [String] {
        [String(format: "canary_accuracy: %.2f", f.accuracy), String(format: "canary_perplexity: %.4f", f.perplexity),
         String(format: "base_accuracy: %.2f", base.accuracy), String(format: "base_perplexity: %.4f", base.perplexity),
         "canary_facts: \(facts.count)", "perplexity_tokens: \(perplexityTokens)"]
    }
}

extension QualityGuard {
    /// The files the default canary set is built from, under the data directory: ROME's known facts
    /// and WikiText-2's validation text.
    public static func defaultCanaryInputs(data: URL) -> (knownFacts: URL, wikitext: URL) {
        (data.appendingPathComponent("counterfact/known_1000.json"), data.appendingPathComponent("corpus/wikitext-2/tokens.valid.txt"))
    }

    /// The guard `config` asks for on `model` (which must hold the base weights): the operator's canary
    /// file, or the default set, built once and kept in the state directory (announced when built).
    public static func make(model: LanguageModel, config c: DaemonConfiguration, paths: Paths,
                            logger: Logger) throws -> QualityGuard {
        let canary: CanarySet
        if let path = c.qualityGuard?.canaryFile {
            guard let data = FileManager.default.contents(atPath: path) else { throw SetupError("cannot read the canary file \(path)") }
            do { canary = try JSONDecoder().decode(CanarySet.self, from: data) } catch {
                throw SetupError("\(path) is not a canary file ({\"facts\": [{\"prompt\", \"answer\"}], \"text\"})", cause: error)
            }
            let kept = try answered(model, canary.facts)
            logger.info("quality guard: \(path): the base model answers \(kept.count) of its \(canary.facts.count) facts; those are the canary")
            return try QualityGuard(model: model, canary: CanarySet(facts: kept, text: canary.text, source: path),
                                    perplexityTokens: c.guardPerplexityTokens, maxAccuracyDrop: c.guardMaxAccuracyDrop,
                                    maxPerplexityRise: c.guardMaxPerplexityRise)
        }
        let dir = EditState(directory: c.stateDirectory(paths), baseHash: model.weightHash).root
        let url = dir.appendingPathComponent("canary-\(c.guardFacts)-\(c.guardPerplexityTokens)-p\(CanarySet.defaultMaxPromptTokens).json")
        if let data = FileManager.default.contents(atPath: url.path), let stored = try? JSONDecoder().decode(CanarySet.self, from: data) {
            canary = stored
        } else {
            let data = c.dataDirectory(paths)
            let (known, wikitext) = defaultCanaryInputs(data: data)
            guard FileManager.default.fileExists(atPath: known.path), FileManager.default.fileExists(atPath: wikitext.path) else {
                throw SetupError("the quality guard needs a canary set: give quality_guard.canary_file, or data_dir (MESA_DATA_DIR) with "
                                 + "counterfact/known_1000.json and corpus/wikitext-2/tokens.valid.txt (looked in \(data.path)); "
                                 + "quality_guard.enabled=false turns the guard off")
            }
            let t0 = Date()
            canary = try CanarySet.build(model: model, knownFacts: known, wikitext: wikitext, count: c.guardFacts,
                                         tokens: c.guardPerplexityTokens, seed: 0)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try enc.encode(canary).write(to: url, options: .atomic)
            let seconds = String(format: "%.1f", Date().timeIntervalSince(t0))
            logger.notice("quality guard: built the canary set (\(canary.facts.count) facts the base model answers, \(seconds) s): \(url.path)")
        }
        return try QualityGuard(model: model, canary: canary, perplexityTokens: c.guardPerplexityTokens,
                                maxAccuracyDrop: c.guardMaxAccuracyDrop, maxPerplexityRise: c.guardMaxPerplexityRise)
    }
}
