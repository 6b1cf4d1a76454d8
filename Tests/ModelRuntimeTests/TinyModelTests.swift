import Foundation
import ModelRuntime
import Tensor
import Testing

@Suite struct TinyModelTests {
    @Test(arguments: ["llama", "qwen2", "gpt2"])
    func kvCacheDecodingMatchesFullForward(arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let ids: [Int32] = [40, 72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101]
        let full = try m.forward(ids, options: ForwardOptions(logits: .all))
        let cache = KVCache(config: m.config)
        _ = try m.forward(Array(ids[0..<5]), cache: cache, options: ForwardOptions(logits: .none))
        for t in 5..<ids.count {
            let step = try m.forward([ids[t]], cache: cache).logitRow(0)
            #expect(Vector.maxAbsDifference(step, full.logitRow(t)) < 1e-4, "position \(t)")
        }
        #expect(cache.length == ids.count)
    }

    /// Sequences packed into one pass give what each gives alone: positions restart and attention
    /// stays within each sequence (RoPE and learned position embeddings alike).
    @Test(arguments: ["llama", "qwen2", "gpt2"])
    func packedSegmentsEqualSeparatePasses(_ arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let seqs: [[Int32]] = [[5, 9, 2, 7], [3], [11, 4, 4, 8, 1, 6], [2, 2]]
        let ends = seqs.reduce(into: [Int]()) { $0.append(($0.last ?? -1) + $1.count) }
        let packed = try m.forward(seqs.flatMap { $0 }, options: ForwardOptions(logits: .positions(ends), segments: seqs.map(\.count)))
        let v = m.config.vocabSize
        for (i, s) in seqs.enumerated() {
            let alone = try m.forward(s, options: ForwardOptions(logits: .last)).logits.data
            let row = Array(packed.logits.data[(i * v)..<((i + 1) * v)])
            let err = zip(alone, row).map { abs($0 - $1) }.max() ?? 0
            let scale = alone.map(abs).max() ?? 1
            #expect(err <= 1e-5 * max(1, scale), "\(arch) sequence \(i): max difference \(err)")
        }
        #expect(throws: ModelError.self) { try m.forward([1, 2, 3], options: ForwardOptions(segments: [1, 1])) }
        #expect(throws: ModelError.self) { try m.forward([1, 2], options: ForwardOptions(segments: [2, 0])) }
    }

    /// Packed sequences that fill a KV cache each (`segmentCaches`), also in two passes split by layer
    /// (layers 0...1, then a pass resumed at layer 2), leave each cache as a pass of its sequence
    /// alone would: decoding on from it gives the logits of the whole sequence's pass. Sequences that
    /// continue a shared prefix's cache give what the prefix and the sequence give together.
    @Test(arguments: ["llama", "qwen2", "gpt2"])
    func packedSegmentsFillACacheEach(_ arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let seqs: [[Int32]] = [[5, 9, 2, 7], [3], [11, 4, 4, 8, 1, 6]]
        let next: Int32 = 12
        let tokens = seqs.flatMap { $0 }, lengths = seqs.map(\.count)
        let oneGo = seqs.map { KVCache(config: m.config, capacity: $0.count + 1) }
        _ = try m.forward(tokens, options: ForwardOptions(logits: .none, segments: lengths, segmentCaches: oneGo.map { SegmentCache($0) }))
        let split = seqs.map { KVCache(config: m.config, capacity: $0.count + 1) }
        let lower = try m.forward(tokens, options: ForwardOptions(capture: [Site(layer: 1, kind: .residOut)], logits: .none, stopAfterLayer: 1,
                                                                  segments: lengths, segmentCaches: split.map { SegmentCache($0) }))
        let point = ResumePoint(layer: 2, residual: try #require(lower.activations[Site(layer: 1, kind: .residOut)]))
        _ = try m.forward(tokens, options: ForwardOptions(logits: .none, segments: lengths, resume: point, segmentCaches: split.map { SegmentCache($0) }))
        for (i, s) in seqs.enumerated() {
            let whole = try m.forward(s + [next], options: ForwardOptions(logits: .last)).logits.data
            let scale = whole.map(abs).max() ?? 1
            for cache in [oneGo[i], split[i]] {
                #expect(cache.length == s.count)
                let step = try m.forward([next], cache: cache).logits.data
                let err = zip(whole, step).map { abs($0 - $1) }.max() ?? 0
                #expect(err <= 1e-5 * max(1, scale), "\(arch) sequence \(i): max difference \(err)")
            }
        }
        // Sequences that continue a copy of a prefix's cache (start at the prefix's length) give what
        // the prefix and the sequence give as one sequence.
        let prefix: [Int32] = [7, 3, 9]
        let prefixCache = KVCache(config: m.config, capacity: prefix.count)
        _ = try m.forward(prefix, cache: prefixCache, options: ForwardOptions(logits: .none))
        let continued = try seqs.map { s -> SegmentCache in
            let cache = KVCache(config: m.config, capacity: prefix.count + s.count)
            try cache.copyPrefix(from: prefixCache, count: prefix.count)
            return SegmentCache(cache, start: prefix.count)
        }
        let packed = try m.forward(tokens, options: ForwardOptions(logits: .all, segments: lengths, segmentCaches: continued))
        var row = 0
        for (i, s) in seqs.enumerated() {
            let whole = try m.forward(prefix + s, options: ForwardOptions(logits: .all)).logits.data
            let v = m.config.vocabSize
            for t in 0..<s.count {
                let got = Array(packed.logits.data[((row + t) * v)..<((row + t + 1) * v)])
                let want = Array(whole[((prefix.count + t) * v)..<((prefix.count + t + 1) * v)])
                let err = zip(got, want).map { abs($0 - $1) }.max() ?? 0
                #expect(err <= 1e-5 * max(1, want.map(abs).max() ?? 1), "\(arch) sequence \(i) position \(t): max difference \(err)")
            }
            #expect(continued[i].cache.length == prefix.count + s.count)
            row += s.count
        }
        #expect(throws: ModelError.self) {
            try m.forward([1], options: ForwardOptions(logits: .none, segmentCaches: [SegmentCache(KVCache(config: m.config), start: 2)]))
        }
        let small = [KVCache(config: m.config, capacity: 2), KVCache(config: m.config), KVCache(config: m.config)]
        #expect(throws: ModelError.self) { try m.forward(tokens, options: ForwardOptions(logits: .none, segments: lengths, segmentCaches: small.map { SegmentCache($0) })) }
        #expect(throws: ModelError.self) { try m.forward(tokens, options: ForwardOptions(logits: .none, segments: lengths, segmentCaches: [SegmentCache(oneGo[0])])) }
        #expect(throws: ModelError.self) {
            try m.forward([1], cache: KVCache(config: m.config), options: ForwardOptions(logits: .none, segmentCaches: [SegmentCache(KVCache(config: m.config))]))
        }
    }

    /// A pass resumed at a layer from the residual stream an earlier pass captured there gives the same
    /// logits bit for bit (the quality guard skips the layers an edit did not touch).
    @Test(arguments: ["llama", "gpt2"])
    func resumedPassEqualsTheFullPass(_ arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let seqs: [[Int32]] = [[5, 9, 2, 7], [3], [11, 4, 4, 8, 1, 6]]
        let tokens = seqs.flatMap { $0 }
        let site = Site(layer: 1, kind: .residIn)
        let full = try m.forward(tokens, options: ForwardOptions(capture: [site], logits: .all, segments: seqs.map(\.count)))
        let point = ResumePoint(layer: 1, residual: try #require(full.activations[site]))
        let resumed = try m.forward(tokens, options: ForwardOptions(logits: .all, segments: seqs.map(\.count), resume: point))
        #expect(resumed.logits.data == full.logits.data)
        #expect(throws: ModelError.self) { try m.forward(Array(tokens.prefix(3)), options: ForwardOptions(resume: point)) }
        #expect(throws: ModelError.self) {
            try m.forward(tokens, options: ForwardOptions(capture: [Site(layer: 0, kind: .mlpOut)], resume: point))
        }
        #expect(throws: ModelError.self) { try m.forward(tokens, cache: KVCache(config: m.config), options: ForwardOptions(resume: point)) }
    }

    @Test func causality() throws {
        let m = try TinyModel.load()
        let a = try m.forward([10, 20, 30, 40], options: ForwardOptions(logits: .all))
        let b = try m.forward([10, 20, 30, 99], options: ForwardOptions(logits: .all))
        for t in 0..<3 { #expect(a.logitRow(t) == b.logitRow(t)) }
        #expect(a.logitRow(3) != b.logitRow(3))
    }

    @Test func sitesAreConsistent() throws {
        let m = try TinyModel.load()
        let sites: Set<Site> = [Site(layer: 0, kind: .residOut), Site(layer: 1, kind: .residIn), Site(layer: 1, kind: .mlpKey),
                                Site(layer: 1, kind: .mlpOut), Site(layer: 1, kind: .residOut)]
        let r = try m.forward([5, 6, 7], options: ForwardOptions(capture: sites))
        #expect(r.activations[Site(layer: 0, kind: .residOut)] == r.activations[Site(layer: 1, kind: .residIn)])
        #expect(r.activations[Site(layer: 1, kind: .mlpKey)]?.shape == [3, m.config.intermediate])
        #expect(r.activations[Site(layer: 1, kind: .mlpOut)]?.shape == [3, m.config.hidden])
        // mlp_out = W_down · mlp_key (no bias in the llama layout).
        let key = r.activations[Site(layer: 1, kind: .mlpKey)]!.row(2)
        let w = m.weights.layers[1].wDown
        var manual = [Float](repeating: 0, count: m.config.hidden)
        for i in 0..<m.config.hidden {
            var s: Double = 0
            for j in 0..<m.config.intermediate { s += Double(w.pointer[i * m.config.intermediate + j]) * Double(key[j]) }
            manual[i] = Float(s)
        }
        #expect(Vector.maxAbsDifference(manual, r.activations[Site(layer: 1, kind: .mlpOut)]!.row(2)) < 1e-4)
    }

    @Test func interventionAddsAtThePositionAndPropagates() throws {
        let m = try TinyModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let delta = (0..<m.config.hidden).map { Float($0 % 5) * 0.1 }
        let base = try m.forward([5, 6, 7], options: ForwardOptions(capture: [site, Site(layer: 1, kind: .residOut)], logits: .all))
        let edited = try m.forward([5, 6, 7], options: ForwardOptions(
            capture: [site, Site(layer: 1, kind: .residOut)], interventions: [Intervention(site: site, position: 1, vector: delta)], logits: .all))
        let before = base.activations[site]!, after = edited.activations[site]!
        #expect(after.row(0) == before.row(0))
        #expect(Vector.maxAbsDifference(zip(before.row(1), delta).map { $0 + $1 }, after.row(1)) < 1e-6)
        #expect(after.row(2) == before.row(2))  // same site, other position: untouched
        #expect(edited.logitRow(0) == base.logitRow(0))  // earlier positions cannot see it
        #expect(edited.logitRow(2) != base.logitRow(2))  // later positions do
        let residBefore = base.activations[Site(layer: 1, kind: .residOut)]!.row(1)
        let residAfter = edited.activations[Site(layer: 1, kind: .residOut)]!.row(1)
        #expect(Vector.maxAbsDifference(zip(residBefore, delta).map { $0 + $1 }, residAfter) < 1e-5)
    }

    @Test func badInterventionsAreErrors() throws {
        let m = try TinyModel.load()
        #expect(throws: ModelError.self) {
            try m.forward([1, 2], options: ForwardOptions(interventions: [Intervention(site: Site(layer: 0, kind: .mlpOut), position: 2, vector: [Float](repeating: 0, count: 32))]))
        }
        #expect(throws: ModelError.self) {
            try m.forward([1, 2], options: ForwardOptions(interventions: [Intervention(site: Site(layer: 0, kind: .mlpKey), position: 0, vector: [0])]))
        }
        #expect(throws: ModelError.self) {
            try m.forward([1, 2], options: ForwardOptions(capture: [Site(layer: 99, kind: .mlpOut)]))
        }
        #expect(throws: ModelError.self) { try m.forward([]) }
        #expect(throws: ModelError.self) { try m.forward([Int32(m.config.vocabSize)]) }
    }

    @Test func contextOverflowIsATypedError() throws {
        let m = try TinyModel.load()
        let long = [Int32](repeating: 65, count: m.config.contextLength + 1)
        #expect { try m.forward(long) } throws: { ($0 as? ModelError)?.code == .contextOverflow }
        #expect { try m.generate(prompt: long, maxTokens: 2) } throws: { ($0 as? ModelError)?.code == .contextOverflow }
    }

    @Test func scoreIsTeacherForcedMeanNLL() throws {
        let m = try TinyModel.load()
        let prompt: [Int32] = [10, 11, 12], target: [Int32] = [13, 14]
        let s = try m.score(prompt: prompt, target: target)
        let all = try m.forward(prompt + target, options: ForwardOptions(logits: .all))
        var expected: [Double] = []
        for j in 0..<2 {
            let row = all.logitRow(2 + j)
            let lse = Double(row.map { Double($0) }.map(exp).reduce(0, +)).logValue
            expected.append(lse - Double(row[Int(target[j])]))
        }
        #expect(abs(s.tokenNLL[0] - expected[0]) < 1e-4 && abs(s.tokenNLL[1] - expected[1]) < 1e-4)
        #expect(abs(s.probability - exp(-(expected[0] + expected[1]) / 2)) < 1e-5)
        #expect(throws: ModelError.self) { try m.score(prompt: prompt, target: []) }
    }

    @Test func generationIsDeterministicPerSeed() throws {
        let m = try TinyModel.load()
        let a = try m.generate(prompt: [10, 11], maxTokens: 8, sampling: .topK(k: 5, temperature: 1), seed: 42, stopAtEOS: false)
        let b = try m.generate(prompt: [10, 11], maxTokens: 8, sampling: .topK(k: 5, temperature: 1), seed: 42, stopAtEOS: false)
        let g = try m.generate(prompt: [10, 11], maxTokens: 8, stopAtEOS: false)
        #expect(a.tokens == b.tokens)
        #expect(a.tokens.count == 8)
        // Greedy picks the argmax of a full forward at every step.
        var ids: [Int32] = [10, 11]
        for t in g.tokens {
            let row = try m.forward(ids).logitRow(0)
            #expect(Int(t) == row.indices.max { row[$0] < row[$1] }!)
            ids.append(t)
        }
    }

    @Test func weightHashTracksMutationAndIsStable() throws {
        let a = try TinyModel.load(), b = try TinyModel.load()
        let h0 = a.weightHash
        #expect(h0 == b.weightHash)
        #expect(h0.count == 64)
        let w = a.weights.layers[1].wDown
        let old = w.pointer[3]
        w.mutate { $0[3] += 1 }
        let h1 = a.weightHash
        #expect(h1 != h0)
        w.mutate { $0[3] = old }
        #expect(a.weightHash == h0)
        let other = try TinyModel.load(TinyModel.Spec(seed: 8))
        #expect(other.weightHash != h0)
    }
}

private extension Double {
    var logValue: Double { Foundation.log(self) }
}

@Suite struct FusedProjectionTests {
    /// Loading lays Wq|Wk|Wv and gate|up out contiguously; the fused GEMMs give the same logits as
    /// separate projections, and each tensor keeps its own name, shape and digest.
    @Test(arguments: ["llama", "qwen2"])
    func fusedLayoutMatchesSeparateProjections(arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let l = m.weights.layers[0]
        #expect(l.qkvFused && l.gateUpFused)
        #expect(l.qkvBiasFused == (arch == "qwen2"))
        #expect(l.wk.name == "blk.0.attn_k.weight" && l.wk.shape == [16, 32])
        let ids: [Int32] = [5, 6, 7, 8]
        let fused = try m.forward(ids, options: ForwardOptions(logits: .all))
        // Rebuild the same weights unfused (separate storage per tensor) and compare.
        var layers = m.weights.layers
        for i in layers.indices {
            func copy(_ p: Parameter?) -> Parameter? { p.map { Parameter(name: $0.name, shape: $0.shape, data: $0.data) } }
            layers[i].wq = copy(layers[i].wq)!; layers[i].wk = copy(layers[i].wk)!; layers[i].wv = copy(layers[i].wv)!
            layers[i].bq = copy(layers[i].bq); layers[i].bk = copy(layers[i].bk); layers[i].bv = copy(layers[i].bv)
            layers[i].wGate = copy(layers[i].wGate); layers[i].wUp = copy(layers[i].wUp)!
            #expect(!layers[i].qkvFused && !layers[i].gateUpFused)
        }
        var w = m.weights
        w.layers = layers
        let separate = LanguageModel(config: m.config, weights: w, tokenizer: m.tokenizer, source: m.source)
        let ref = try separate.forward(ids, options: ForwardOptions(logits: .all))
        for t in 0..<ids.count { #expect(Vector.maxAbsDifference(fused.logitRow(t), ref.logitRow(t)) < 1e-5) }
        #expect(separate.weightHash == m.weightHash)
    }
}
