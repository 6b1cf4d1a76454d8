import Foundation
import Tensor
import Tokenizers

/// A deterministic PRNG (xoshiro256**), seeded explicitly so sampling is reproducible.
public struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    public init(seed: UInt64) {
        var z = seed
        func split() -> UInt64 {  // SplitMix64 to spread the seed
            z &+= 0x9e37_79b9_7f4a_7c15
            var r = z
            r = (r ^ (r >> 30)) &* 0xbf58_476d_1ce4_e5b9
            r = (r ^ (r >> 27)) &* 0x94d0_49bb_1331_11eb
            return r ^ (r >> 31)
        }
        s = (split(), split(), split(), split())
    }
    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3; s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }
}

/// How the next token is chosen.
public enum Sampling: Sendable, Equatable {
    case greedy
    /// Top-k sampling at a temperature (k = 5 is what ROME's context templates use); k at or above
    /// the vocabulary size samples from the whole distribution.
    case topK(k: Int, temperature: Float)
}

/// A token and its log-probability under the model: the log-softmax of its logits, before any
/// temperature or top-k.
public struct TokenLogprob: Sendable, Equatable {
    public var token: Int32
    public var logprob: Float
    public init(token: Int32, logprob: Float) {
        self.token = token
        self.logprob = logprob
    }
}

public struct GenerationResult: Sendable {
    public var promptTokens: [Int32]
    public var tokens: [Int32]
    public var text: String
    public var stoppedAtEOS: Bool
    /// True when the caller's `shouldStop` ended the generation.
    public var stoppedByCaller: Bool
    /// With `logprobs`: each generated token's log-probability, one per token; else empty.
    public var tokenLogprobs: [Float]
    /// With `logprobs: n`, n ≥ 1: the n most likely tokens at each step, most likely first; else empty.
    public var topLogprobs: [[TokenLogprob]]
    public var prefillSeconds: Double
    public var decodeSeconds: Double
}

/// Token-averaged negative log-likelihood of a target continuation (the quantity every edit metric uses).
public struct TargetScore: Sendable, Codable, Equatable {
    public var promptTokens: [Int32]
    public var targetTokens: [Int32]
    /// −log P(t_j | prompt, t_<j) per target token.
    public var tokenNLL: [Double]
    /// Mean of `tokenNLL`.
    public var meanNLL: Double
    /// exp(−meanNLL): the geometric-mean token probability.
    public var probability: Double
}

extension LanguageModel {
    /// Picks the next token from logits [vocab].
    public static func sample(_ logits: [Float], _ sampling: Sampling, rng: inout Xoshiro256) -> Int32 {
        switch sampling {
        case .greedy:
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return Int32(best)
        case .topK(let k, let temperature):
            let kk = max(1, min(k, logits.count))
            let top: ArraySlice<Int>
            if kk == logits.count {
                // The whole distribution: no order needed (the weights below sum the same).
                top = Array(0..<logits.count)[...]
            } else {
                var idx = Array(0..<logits.count)
                idx.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
                top = idx.prefix(kk)
            }
            let t = max(temperature, 1e-6)
            let m = top.map { logits[$0] }.max()!
            let w = top.map { Double(expf((logits[$0] - m) / t)) }
            let total = w.reduce(0, +)
            var r = Double(rng.next() >> 11) * 0x1.0p-53 * total
            for (i, id) in top.enumerated() {
                r -= w[i]
                if r <= 0 { return Int32(id) }
            }
            return Int32(top.last!)
        }
    }

    /// The log-probabilities of logits [vocab]: the chosen token's, and the `n` most likely tokens
    /// (most likely first, ties by lower id).
    public static func logprobs(_ logits: [Float], chosen: Int32, top n: Int) -> (chosen: Float, top: [TokenLogprob]) {
        let lse = logits.withUnsafeBufferPointer { Kernels.logSumExp($0.baseAddress!, $0.count) }
        var best: [Int] = []  // indices of the largest logits so far, descending, at most n
        if n > 0 {
            for i in 0..<logits.count where best.count < n || logits[i] > logits[best[best.count - 1]] {
                var at = best.count
                while at > 0, logits[best[at - 1]] < logits[i] { at -= 1 }
                best.insert(i, at: at)
                if best.count > n { best.removeLast() }
            }
        }
        return (logits[Int(chosen)] - lse, best.map { TokenLogprob(token: Int32($0), logprob: logits[$0] - lse) })
    }

    /// Generates up to `maxTokens` tokens after `prompt` with a KV cache. The same prompt, sampling
    /// and seed give the same tokens. `logprobs: n` also reports each token's log-probability and
    /// the n most likely tokens at each step. `shouldStop` sees the tokens so far after each one and
    /// ends the generation by returning true. `onText` receives text as it becomes complete UTF-8.
    public func generate(prompt: [Int32], maxTokens: Int, sampling: Sampling = .greedy, seed: UInt64 = 0,
                         stopAtEOS: Bool = true, logprobs: Int? = nil, shouldStop: ((_ tokens: [Int32]) -> Bool)? = nil,
                         onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw ModelError(.invalidInput, "the prompt is empty") }
        guard prompt.count < config.contextLength else {
            throw ModelError(.contextOverflow, "the prompt has \(prompt.count) tokens; the model's context is \(config.contextLength)")
        }
        let budget = min(maxTokens, config.contextLength - prompt.count)
        let cache = KVCache(config: config, capacity: prompt.count + budget)
        var rng = Xoshiro256(seed: seed)
        var decoder = StreamingDecoder()
        let t0 = DispatchTime.now().uptimeNanoseconds
        var logits = try forward(prompt, cache: cache).logitRow(0)
        let t1 = DispatchTime.now().uptimeNanoseconds
        var out: [Int32] = []
        var eos = false, stopped = false
        var chosenLogprobs: [Float] = [], topLogprobs: [[TokenLogprob]] = []
        while out.count < budget {
            let next = Self.sample(logits, sampling, rng: &rng)
            if stopAtEOS, let e = tokenizer.eosId, next == e { eos = true; break }
            out.append(next)
            if let n = logprobs {
                let lp = Self.logprobs(logits, chosen: next, top: n)
                chosenLogprobs.append(lp.chosen)
                if n > 0 { topLogprobs.append(lp.top) }
            }
            if let onText { onText(decoder.push(tokenizer.tokenBytes(next))) }
            if let shouldStop, shouldStop(out) { stopped = true; break }
            if out.count == budget { break }
            logits = try forward([next], cache: cache).logitRow(0)
        }
        if let onText { onText(decoder.flush()) }
        let t2 = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(promptTokens: prompt, tokens: out, text: tokenizer.decode(out), stoppedAtEOS: eos, stoppedByCaller: stopped,
                                tokenLogprobs: chosenLogprobs, topLogprobs: topLogprobs,
                                prefillSeconds: Double(t1 - t0) / 1e9, decodeSeconds: Double(t2 - t1) / 1e9)
    }

    /// Scores `target` after `prompt` by teacher forcing: one forward pass over prompt + target.
    public func score(prompt: [Int32], target: [Int32]) throws -> TargetScore {
        guard !prompt.isEmpty else { throw ModelError(.invalidInput, "the prompt is empty") }
        guard !target.isEmpty else { throw ModelError(.invalidInput, "the target is empty") }
        let ids = prompt + target
        guard ids.count <= config.contextLength else {
            throw ModelError(.contextOverflow, "prompt and target have \(ids.count) tokens; the model's context is \(config.contextLength)")
        }
        // The logit at position p scores token p+1.
        let positions = (0..<target.count).map { prompt.count - 1 + $0 }
        let r = try forward(ids, options: ForwardOptions(logits: .positions(positions)))
        var nll: [Double] = []
        for j in 0..<target.count {
            let row = r.logits.data.withUnsafeBufferPointer { $0.baseAddress! + j * config.vocabSize }
            let lse = Kernels.logSumExp(row, config.vocabSize)
            let v = Double(lse - row[Int(target[j])])
            guard v.isFinite else { throw ModelError(.nonFinite, "non-finite log-probability for target token \(j)") }
            nll.append(v)
        }
        let mean = nll.reduce(0, +) / Double(nll.count)
        return TargetScore(promptTokens: prompt, targetTokens: target, tokenNLL: nll, meanNLL: mean, probability: exp(-mean))
    }

    /// Token-averaged NLL of each candidate continuation after `prompt`, sharing the prompt's pass
    /// through a KV cache: one prompt pass plus one short pass per multi-token candidate.
    public func candidateNLL(prompt: [Int32], candidates: [[Int32]]) throws -> [Double] {
        guard !prompt.isEmpty else { throw ModelError(.invalidInput, "the prompt is empty") }
        let longest = candidates.map(\.count).max() ?? 0
        guard candidates.allSatisfy({ !$0.isEmpty }) else { throw ModelError(.invalidInput, "a candidate is empty") }
        guard prompt.count + longest <= config.contextLength else {
            throw ModelError(.contextOverflow, "prompt and candidate have \(prompt.count + longest) tokens; the model's context is \(config.contextLength)")
        }
        let cache = KVCache(config: config, capacity: prompt.count + longest)
        let first = try forward(prompt, cache: cache).logits.data
        let V = config.vocabSize
        func nll(_ row: UnsafePointer<Float>, _ t: Int32) throws -> Double {
            let v = Double(Kernels.logSumExp(row, V) - row[Int(t)])
            guard v.isFinite else { throw ModelError(.nonFinite, "non-finite log-probability") }
            return v
        }
        var out: [Double] = []
        for cand in candidates {
            var total = try first.withUnsafeBufferPointer { try nll($0.baseAddress!, cand[0]) }
            if cand.count > 1 {
                let r = try forward(Array(cand.dropLast()), cache: cache, options: ForwardOptions(logits: .all))
                try r.logits.data.withUnsafeBufferPointer { p in
                    for j in 1..<cand.count { total += try nll(p.baseAddress! + (j - 1) * V, cand[j]) }
                }
                cache.truncate(to: prompt.count)
            }
            out.append(total / Double(cand.count))
        }
        return out
    }
}
