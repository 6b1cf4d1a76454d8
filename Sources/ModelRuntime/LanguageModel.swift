import Foundation
import Tensor
import Tokenizers

/// Keys and values of past positions, per layer: [capacity, kvHeads·headDim] each.
public final class KVCache: @unchecked Sendable {  // not thread-safe: each cache belongs to the one forward pass that fills it
    public let capacity: Int
    public let width: Int
    public private(set) var length = 0
    let keys: [UnsafeMutablePointer<Float>]
    let values: [UnsafeMutablePointer<Float>]

    public init(config: ModelConfig, capacity: Int? = nil) {
        let rows = min(capacity ?? config.contextLength, config.contextLength)
        let w = config.kvHeads * config.headDim
        self.capacity = rows
        width = w
        keys = (0..<config.layers).map { _ in .allocate(capacity: max(1, rows * w)) }
        values = (0..<config.layers).map { _ in .allocate(capacity: max(1, rows * w)) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Forgets positions from `n` on.
    public func truncate(to n: Int) { length = min(length, max(0, n)) }

    /// Takes positions 0..<n of `other` (every layer's keys and values) as its own, forgetting the rest.
    public func copyPrefix(from other: KVCache, count n: Int) throws {
        guard other.width == width, other.keys.count == keys.count, n >= 0, n <= other.length, n <= capacity else {
            throw ModelError(.invalidInput, "cannot copy \(n) positions of a cache of length \(other.length) into one of capacity \(capacity)")
        }
        for l in keys.indices {
            keys[l].update(from: other.keys[l], count: n * width)
            values[l].update(from: other.values[l], count: n * width)
        }
        length = n
    }
    func advance(by n: Int) { length += n }
}

/// A resident decoder-only language model: configuration, Float32 weights, tokenizer.
public final class LanguageModel: @unchecked Sendable {  // `rope` is guarded by `ropeLock`; weights change only through edits, which the daemon runs on the worker thread, never beside a forward pass
    public let config: ModelConfig
    public let weights: ModelWeights
    public let tokenizer: BPETokenizer
    public let source: ModelSource
    /// Readers (queries) and the one writer (edits, rollbacks) of the weights: whoever changes them
    /// holds it as the writer until they are in a recorded state again. Forward passes keep their
    /// scratch per call, so any number of readers run side by side.
    public let weightGate = WeightGate()
    private var rope: RoPE?
    private let ropeLock = NSLock()

    public init(config: ModelConfig, weights: ModelWeights, tokenizer: BPETokenizer, source: ModelSource) {
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.source = source
        if let style = config.ropeStyle {
            rope = RoPE(style: style, headDim: config.headDim, base: config.ropeBase, maxPositions: min(config.contextLength, 4096))
        }
    }

    /// The weight hash of the current state (see `ModelWeights.hash`).
    public var weightHash: String { weights.hash }

    /// Width of the activation at a site.
    public func width(of kind: SiteKind) -> Int { kind == .mlpKey ? config.intermediate : config.hidden }

    private func ropeTable(upTo n: Int) -> RoPE? {
        guard rope != nil else { return nil }
        ropeLock.lock(); defer { ropeLock.unlock() }
        if rope!.maxPositions < n { rope!.grow(to: n) }
        return rope
    }

    /// Runs the decoder over `tokens`, appended after the positions already in `cache` (or from
    /// position 0 without a cache).
    ///
    /// Shapes: T = tokens.count, S = past + T, d = hidden, q = heads·headDim, kv = kvHeads·headDim,
    /// ff = intermediate. Returns logits [rows, vocab] for the selected positions.
    public func forward(_ tokens: [Int32], cache: KVCache? = nil, options: ForwardOptions = ForwardOptions()) throws -> ForwardResult {
        let c = config
        let T = tokens.count
        guard T > 0 else { throw ModelError(.invalidInput, "forward pass needs at least one token") }
        let past = cache?.length ?? 0
        let S = past + T
        if let cache, S > cache.capacity {
            throw ModelError(.contextOverflow, "\(S) tokens exceed the KV cache capacity of \(cache.capacity)")
        }
        for t in tokens where t < 0 || Int(t) >= c.vocabSize {
            throw ModelError(.invalidInput, "token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
        }
        var byPosition: [Site: [(Int, [Float])]] = [:]
        for iv in options.interventions {
            guard iv.site.layer >= 0, iv.site.layer < c.layers else { throw ModelError(.invalidInput, "intervention at \(iv.site): no such layer") }
            guard iv.position >= 0, iv.position < T else { throw ModelError(.invalidInput, "intervention at \(iv.site): position \(iv.position) is outside 0..<\(T)") }
            guard iv.vector.count == width(of: iv.site.kind) else {
                throw ModelError(.invalidInput, "intervention at \(iv.site): vector has \(iv.vector.count) values, expected \(width(of: iv.site.kind))")
            }
            byPosition[iv.site, default: []].append((iv.position, iv.vector))
        }
        let layerCount = options.stopAfterLayer.map { $0 + 1 } ?? c.layers
        guard layerCount >= 1, layerCount <= c.layers else {
            throw ModelError(.invalidInput, "stop after layer \(layerCount - 1): no such layer")
        }
        if layerCount < c.layers && options.logits != .none {
            throw ModelError(.invalidInput, "a pass that stops after layer \(layerCount - 1) has no logits")
        }
        let firstLayer = options.resume?.layer ?? 0
        if let r = options.resume {
            guard cache == nil else { throw ModelError(.invalidInput, "a pass resumed at layer \(r.layer) cannot use a KV cache") }
            guard r.layer >= 0, r.layer < layerCount else { throw ModelError(.invalidInput, "resume at layer \(r.layer): outside 0..<\(layerCount)") }
            guard r.residual.shape == [T, c.hidden] else {
                throw ModelError(.invalidInput, "resume residual has shape \(r.residual.shape), expected [\(T), \(c.hidden)]")
            }
        }
        for s in options.capture where s.layer < firstLayer || s.layer >= layerCount {
            throw ModelError(.invalidInput, "capture at \(s): no such layer (the pass runs layers \(firstLayer)..<\(layerCount))")
        }
        for iv in options.interventions where iv.site.layer < firstLayer {
            throw ModelError(.invalidInput, "intervention at \(iv.site): the pass resumes at layer \(firstLayer)")
        }
        // Independent sequences packed into the tokens: [start, end) each, positions from 0 in each.
        var spans = [(start: 0, end: T)]
        var position = (0..<T).map { past + $0 }
        if let lengths = options.segments {
            guard cache == nil else { throw ModelError(.invalidInput, "packed segments cannot extend a KV cache") }
            guard lengths.allSatisfy({ $0 > 0 }), lengths.reduce(0, +) == T else {
                throw ModelError(.invalidInput, "segment lengths \(lengths.count) must be positive and add up to the \(T) tokens")
            }
            spans = []
            var a = 0
            for n in lengths {
                spans.append((a, a + n))
                for t in a..<(a + n) { position[t] = t - a }
                a += n
            }
        }
        if let targets = options.segmentCaches {
            guard cache == nil else { throw ModelError(.invalidInput, "segment caches cannot be used with a KV cache") }
            guard targets.count == spans.count else {
                throw ModelError(.invalidInput, "\(targets.count) segment caches for \(spans.count) sequences")
            }
            for (t, span) in zip(targets, spans) {
                guard t.start >= 0, t.start <= t.cache.length else {
                    throw ModelError(.invalidInput, "a segment starts at position \(t.start) of a cache that holds \(t.cache.length)")
                }
                guard t.cache.capacity >= t.start + span.end - span.start else {
                    throw ModelError(.invalidInput, "a segment cache of capacity \(t.cache.capacity) cannot hold \(t.start + span.end - span.start) positions")
                }
                for i in span.start..<span.end { position[i] = t.start + i - span.start }
            }
        }
        // Packed sequences each start at position 0, or at their cache's start: the context bounds the longest one.
        let longest = (position.max() ?? 0) + 1
        guard longest <= c.contextLength else {
            throw ModelError(.contextOverflow, "\(longest) tokens exceed the model's context of \(c.contextLength)")
        }
        let starts = options.segmentCaches?.map(\.start)
        let rope = ropeTable(upTo: longest)

        let d = c.hidden, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, ff = c.intermediate, hd = c.headDim
        let group = c.heads / c.kvHeads
        // Scratch buffers.
        let x = UnsafeMutablePointer<Float>.allocate(capacity: T * d)       // [T, d] residual stream
        let h = UnsafeMutablePointer<Float>.allocate(capacity: T * d)       // [T, d] normed input
        let qkvWidth = qd + 2 * kvd
        let q = UnsafeMutablePointer<Float>.allocate(capacity: T * qkvWidth) // [T, q] or fused [T, q + 2·kv]
        let att = UnsafeMutablePointer<Float>.allocate(capacity: T * qd)    // [T, q] attention output
        // [n, past + n] one head, one sequence.
        let scoreCount = spans.enumerated().map { i, span in (span.end - span.start) * ((starts?[i] ?? past) + span.end - span.start) }.max() ?? 0
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(1, scoreCount))
        let gate = UnsafeMutablePointer<Float>.allocate(capacity: T * 2 * ff) // [T, ff] or fused gate|up [T, 2·ff]
        let up = UnsafeMutablePointer<Float>.allocate(capacity: T * ff)     // [T, ff] (becomes the key)
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: T * d)     // [T, d]
        // Without a cache, keys/values of this call live here: [T, kv].
        let localK = cache == nil ? UnsafeMutablePointer<Float>.allocate(capacity: T * kvd) : nil
        let localV = cache == nil ? UnsafeMutablePointer<Float>.allocate(capacity: T * kvd) : nil
        defer {
            [x, h, q, att, scores, gate, up, tmp].forEach { $0.deallocate() }
            localK?.deallocate(); localV?.deallocate()
        }
        var captured: [Site: Tensor] = [:]
        func site(_ kind: SiteKind, _ layer: Int, _ buf: UnsafeMutablePointer<Float>, _ width: Int) {
            let s = Site(layer: layer, kind: kind)
            if let adds = byPosition[s] {
                for (pos, v) in adds { v.withUnsafeBufferPointer { Kernels.add(buf + pos * width, $0.baseAddress!, count: width) } }
            }
            if options.capture.contains(s) {
                captured[s] = Tensor(shape: [T, width], data: Array(UnsafeBufferPointer(start: buf, count: T * width)))
            }
        }

        if let r = options.resume {
            r.residual.data.withUnsafeBufferPointer { x.update(from: $0.baseAddress!, count: T * d) }
        } else {
            // Embeddings.
            let emb = weights.tokenEmbedding.pointer
            for t in 0..<T { (x + t * d).update(from: emb + Int(tokens[t]) * d, count: d) }
            if let pos = weights.positionEmbedding {
                for t in 0..<T { Kernels.add(x + t * d, pos.pointer + position[t] * d, count: d) }
            }
        }

        let scale = 1 / Float(hd).squareRoot()
        for l in firstLayer..<layerCount {
            let w = weights.layers[l]
            site(.residIn, l, x, d)
            norm(x, w.attnNorm, w.attnNormBias, out: h, rows: T)

            // Projections: Y[T, out] = H[T, d] · Wᵀ.
            let kDst = cache.map { $0.keys[l] + past * kvd } ?? localK!
            let vDst = cache.map { $0.values[l] + past * kvd } ?? localV!
            let qStride: Int
            if w.qkvFused {
                // One GEMM for Q|K|V: [T, q + 2·kv]; K and V rows then move into the cache.
                gemm(h, w.wq.pointer, outDim: qkvWidth, inDim: d, out: q, rows: T)
                if w.qkvBiasFused {
                    Kernels.addBias(q, bias: w.bq!.pointer, rows: T, dim: qkvWidth)
                } else {
                    for (b, off) in [(w.bq, 0), (w.bk, qd), (w.bv, qd + kvd)] {
                        guard let b else { continue }
                        for t in 0..<T { Kernels.add(q + t * qkvWidth + off, b.pointer, count: b.count) }
                    }
                }
                for t in 0..<T {
                    (kDst + t * kvd).update(from: q + t * qkvWidth + qd, count: kvd)
                    (vDst + t * kvd).update(from: q + t * qkvWidth + qd + kvd, count: kvd)
                }
                qStride = qkvWidth
            } else {
                linear(h, w.wq, w.bq, out: q, rows: T)
                linear(h, w.wk, w.bk, out: kDst, rows: T)
                linear(h, w.wv, w.bv, out: vDst, rows: T)
                qStride = qd
            }
            if let rope {
                for t in 0..<T {
                    rope.apply(q + t * qStride, heads: c.heads, position: position[t])
                    rope.apply(kDst + t * kvd, heads: c.kvHeads, position: position[t])
                }
            }
            let keys = cache?.keys[l] ?? localK!, vals = cache?.values[l] ?? localV!
            if let targets = options.segmentCaches {
                for (t, (a, b)) in zip(targets, spans) {
                    (t.cache.keys[l] + t.start * kvd).update(from: keys + a * kvd, count: (b - a) * kvd)
                    (t.cache.values[l] + t.start * kvd).update(from: vals + a * kvd, count: (b - a) * kvd)
                }
            }
            // Causal attention per head and sequence: scores[n, past + n] = Q_h · K_gᵀ / √hd;
            // out_h[n, hd] = softmax(scores) · V_g, n the sequence's tokens (one sequence unless packed).
            // A sequence that continues a segment cache reads its keys and values there (past = its start).
            for (i, (a, b)) in spans.enumerated() {
                let n = b - a
                let seg = options.segmentCaches?[i]
                let before = seg?.start ?? past, keysSeen = before + n
                let (kSrc, vSrc) = seg.map { ($0.cache.keys[l], $0.cache.values[l]) }
                    ?? (keys + (spans.count == 1 ? 0 : a) * kvd, vals + (spans.count == 1 ? 0 : a) * kvd)
                for head in 0..<c.heads {
                    let g = head / group
                    BLAS.sgemm(transB: true, m: n, n: keysSeen, k: hd, alpha: scale, a: q + a * qStride + head * hd, lda: qStride,
                               b: kSrc + g * hd, ldb: kvd, c: scores, ldc: keysSeen)
                    Kernels.softmaxRows(scores, rows: n, cols: keysSeen, valid: { before + $0 + 1 })
                    BLAS.sgemm(m: n, n: hd, k: keysSeen, a: scores, lda: keysSeen, b: vSrc + g * hd, ldb: kvd,
                               c: att + a * qd + head * hd, ldc: qd)
                }
            }
            linear(att, w.wo, w.bo, out: tmp, rows: T)
            Kernels.add(x, tmp, count: T * d)

            // MLP.
            norm(x, w.mlpNorm, w.mlpNormBias, out: h, rows: T)
            if w.gateUpFused {
                // One GEMM for gate|up: [T, 2·ff]; key[t] = silu(gate[t]) ⊙ up[t].
                gemm(h, w.wGate!.pointer, outDim: 2 * ff, inDim: d, out: gate, rows: T)
                for t in 0..<T { Kernels.siluGate(gate: gate + t * 2 * ff, up: gate + t * 2 * ff + ff, out: up + t * ff, count: ff) }
            } else if let wGate = w.wGate {
                linear(h, wGate, nil, out: gate, rows: T)
                linear(h, w.wUp, w.bUp, out: up, rows: T)
                Kernels.siluGate(gate: gate, up: up, out: up, count: T * ff)
            } else {
                linear(h, w.wUp, w.bUp, out: up, rows: T)
                Kernels.geluTanh(up, count: T * ff)
            }
            site(.mlpKey, l, up, ff)
            linear(up, w.wDown, w.bDown, out: tmp, rows: T)
            site(.mlpOut, l, tmp, d)
            Kernels.add(x, tmp, count: T * d)
            site(.residOut, l, x, d)
        }
        cache?.advance(by: T)
        if let targets = options.segmentCaches {
            for (t, (a, b)) in zip(targets, spans) where t.cache.length < t.start + b - a { t.cache.advance(by: t.start + b - a - t.cache.length) }
        }

        // Final norm and logits for the selected rows only.
        let rows: [Int]
        switch options.logits {
        case .none: rows = []
        case .last: rows = [T - 1]
        case .all: rows = Array(0..<T)
        case .positions(let p):
            for r in p where r < 0 || r >= T { throw ModelError(.invalidInput, "logit position \(r) is outside 0..<\(T)") }
            rows = p
        }
        var logits = [Float](repeating: 0, count: rows.count * c.vocabSize)
        if !rows.isEmpty {
            for (i, r) in rows.enumerated() { (h + i * d).update(from: x + r * d, count: d) }
            norm(h, weights.outputNorm, weights.outputNormBias, out: h, rows: rows.count)
            logits.withUnsafeMutableBufferPointer { lp in
                BLAS.sgemmNT(m: rows.count, n: c.vocabSize, k: d, a: h, lda: d, b: weights.output.pointer, ldb: d,
                             c: lp.baseAddress!, ldc: c.vocabSize)
            }
        }
        return ForwardResult(logits: Tensor(shape: [rows.count, c.vocabSize], data: logits), logitPositions: rows, activations: captured)
    }

    /// RMSNorm, or LayerNorm when the layer has a norm bias, over [rows, hidden]. `out` may alias `x`.
    @inline(__always)
    func norm(_ x: UnsafePointer<Float>, _ w: Parameter, _ b: Parameter?, out: UnsafeMutablePointer<Float>, rows: Int) {
        if let b {
            Kernels.layerNorm(x, weight: w.pointer, bias: b.pointer, eps: config.normEps, out: out, rows: rows, dim: config.hidden)
        } else {
            Kernels.rmsNorm(x, weight: w.pointer, eps: config.normEps, out: out, rows: rows, dim: config.hidden)
        }
    }

    /// out[T, outDim] = x[T, inDim] · Wᵀ (+ bias), W: [outDim, inDim].
    @inline(__always)
    private func linear(_ x: UnsafePointer<Float>, _ w: Parameter, _ b: Parameter?, out: UnsafeMutablePointer<Float>, rows: Int) {
        gemm(x, w.pointer, outDim: w.shape[0], inDim: w.shape[1], out: out, rows: rows)
        if let b { Kernels.addBias(out, bias: b.pointer, rows: rows, dim: w.shape[0]) }
    }

    /// out[T, outDim] = x[T, inDim] · Wᵀ with W row-major [outDim, inDim] (gemv for one row).
    @inline(__always)
    private func gemm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, outDim: Int, inDim: Int, out: UnsafeMutablePointer<Float>, rows: Int) {
        if rows == 1 {
            BLAS.sgemv(rows: outDim, cols: inDim, a: w, lda: inDim, x: x, y: out)
        } else {
            BLAS.sgemmNT(m: rows, n: outDim, k: inDim, a: x, lda: inDim, b: w, ldb: inDim, c: out, ldc: outDim)
        }
    }
}
