import Foundation
import Tensor

/// One prompt of a δ batch: its tokens, the position where δ enters, and the positions whose
/// next-token logits the loss reads.
public struct DeltaPrompt: Sendable, Equatable {
    public var tokens: [Int32]
    /// Index into `tokens` where δ is added (for an edit: the subject's last token).
    public var position: Int
    /// Logit rows the loss needs; each must be ≥ `position` (earlier rows do not depend on δ).
    public var logitPositions: [Int]

    public init(tokens: [Int32], position: Int, logitPositions: [Int]) {
        self.tokens = tokens
        self.position = position
        self.logitPositions = logitPositions
    }
}

/// Heap scratch owned by a `DeltaPass`, zero-initialized.
final class Scratch {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ n: Int) {
        count = n
        p = .allocate(capacity: max(1, n))
        p.initialize(repeating: 0, count: max(1, n))
    }
    deinit { p.deallocate() }
    func zero() { p.update(repeating: 0, count: count) }
}

/// The part of the model that depends on a vector δ added to the residual stream right after decoder
/// layer `l` (the `mlp_out@l` and `resid_out@l` sites enter it identically: x_l[p] += δ), at one
/// position p per prompt, with its gradient.
///
/// Causal attention means that positions before p, and every layer up to l, do not depend on δ. So
/// `init` runs each prompt once through the whole model and keeps the residual after layer l at
/// positions p..<T (the rows that change) and the keys and values of positions 0..<p of every later
/// layer (which do not). `forward(delta:)` then recomputes only layers l+1..<L on the rows p..<T of
/// every prompt, batched into one [R, ·] matrix (R = Σ (T − p)), and `backward(logitGradient:)`
/// carries ∂loss/∂logits back to ∂loss/∂δ through those layers: attention with RoPE and grouped KV
/// heads (prefix keys held fixed), RMSNorm or LayerNorm, the gated-SiLU or GELU MLP, and the tied
/// or untied unembedding. Only input gradients are formed, never weight gradients.
///
/// Prompts never attend to each other, so one pass can hold the prompts of several independent
/// optimizations (several facts of a batch edit): `forward(deltas:prompts:)` then runs any subset of
/// them, packed into R = Σ_subset (T − p) rows without padding, and the next `backward` covers that
/// subset. A prompt's rows are computed by the same operations whichever prompts share the pass.
public final class DeltaPass: @unchecked Sendable {  // not thread-safe: scratch state of one optimization, used by the one thread that runs it
    public let model: LanguageModel
    public let layer: Int
    public let prompts: [DeltaPrompt]
    /// The down-projection input of layer l at each prompt's position on the unedited pass: [prompts][ff].
    public let keys: [[Float]]
    /// The MLP output of layer l at each prompt's position: [prompts][d].
    public let mlpOutputs: [[Float]]
    /// The residual stream after layer l at each prompt's position (δ = 0): [prompts][d].
    public let residuals: [[Float]]
    /// Rows of the batch with every prompt: R.
    public let rowCount: Int
    /// Number of logit rows `forward(deltas:)` returns (all prompts' `logitPositions`, in order).
    public let logitCount: Int

    /// The prompts of one forward (indices into `prompts`, ascending) packed into batch rows.
    struct Layout {
        let prompts: [Int]
        let offsets: [Int]      // first batch row of each listed prompt
        let rows: Int           // R = Σ (T − p) over the listed prompts
        let logitRows: [Int]    // batch row of each logit row, listed prompts in order

        init(prompts: [Int], of all: [DeltaPrompt]) {
            var offsets: [Int] = [], logitRows: [Int] = [], r = 0
            for i in prompts {
                let p = all[i]
                offsets.append(r)
                logitRows += p.logitPositions.map { r + $0 - p.position }
                r += p.tokens.count - p.position
            }
            (self.prompts, self.offsets, self.rows, self.logitRows) = (prompts, offsets, r, logitRows)
        }
    }

    let c: ModelConfig
    let full: Layout            // every prompt
    var layout: Layout          // the prompts of the last forward
    let lengths: [Int]          // rows of each prompt: T − p
    let baseOffsets: [Int]      // first row of each prompt in `base`
    let caches: [KVCache]       // per prompt: K/V of every layer, [T, kv]; rows ≥ p rewritten per forward
    let base: Scratch           // [R, d] residual after layer l with δ = 0, every prompt
    let rope: RoPE?
    // Saved by `forward` for `backward`, per upper layer s (layer l+1+s).
    let savedIn: [Scratch]      // [R, d] residual entering the layer
    let savedQKV: [Scratch]     // [R, q + 2·kv] projections after RoPE
    let savedMid: [Scratch]     // [R, d] residual after attention
    let savedAct: [Scratch]     // [R, 2·ff] gate|up pre-activations (gated) or [R, ff] (GELU)
    let savedProbs: [[Scratch]] // [prompt] [heads, T − p, T] attention probabilities
    let savedFinal: Scratch     // [logits, d] residual rows at the logit positions
    // Work buffers.
    let x: Scratch, h: Scratch, att: Scratch, tmp: Scratch, key: Scratch
    let dx: Scratch, dMid: Scratch, dh: Scratch, dAtt: Scratch, dQKV: Scratch, dAct: Scratch, dKey: Scratch, dP: Scratch
    private var forwardDone = false
    /// Floating-point operations of every `forward` and `backward` so far (matrix products and
    /// attention; the elementwise work is left out): the arithmetic a step's time is compared with.
    public private(set) var forwardFLOPs = 0.0, backwardFLOPs = 0.0

    /// FLOPs of one forward over `layout`: each prompt's rows p..<T through the upper layers
    /// (`positionFLOPs`) and the unembedding of the logit rows (2·d·V each). `attentionTwice`: the
    /// backward, whose attention costs twice the forward's.
    func flops(_ layout: Layout, attentionTwice: Bool = false) -> Double {
        let gated = model.weights.layers[0].wGate != nil
        let rows = layout.prompts.reduce(0.0) { sum, i in
            let p = prompts[i]
            return sum + Self.positionFLOPs(c, gated: gated, count: p.tokens.count - p.position, after: p.position,
                                            layers: upperLayers.count, attentionTwice: attentionTwice)
        }
        return rows + Double(layout.logitRows.count) * 2 * Double(c.hidden) * Double(c.vocabSize)
    }

    public var upperLayers: Range<Int> { (layer + 1)..<c.layers }
    var qkvWidth: Int { c.heads * c.headDim + 2 * c.kvHeads * c.headDim }

    /// Tokens per packed sequence of the unedited pass in `init` (bounds its scratch memory).
    static let packTokens = 2048

    /// FLOPs of `count` positions that follow `after` cached ones through `layers` layers: per position
    /// and layer the projections (2·in·out for Q|K|V, O, the MLP's input(s) and down), per head the
    /// attention over the positions it sees (2·hd for the score and 2·hd for the value of each).
    static func positionFLOPs(_ c: ModelConfig, gated: Bool, count: Int, after: Int, layers: Int, attentionTwice: Bool = false) -> Double {
        let d = Double(c.hidden), ff = Double(c.intermediate), hd = Double(c.headDim)
        let qd = Double(c.heads) * hd, qkvw = qd + 2 * Double(c.kvHeads) * hd
        let perPosition = 2 * (d * qkvw + qd * d + d * (gated ? 2 * ff : ff) + ff * d)
        let (n, s) = (Double(count), Double(after))
        let seen = n * s + n * (n + 1) / 2   // Σ over the positions of the positions each one sees
        return Double(layers) * (n * perPosition + (attentionTwice ? 2 : 1) * seen * Double(c.heads) * 4 * hd)
    }

    /// FLOPs of the unedited pass in `init`: every shared prefix once through every layer, the rest of
    /// every prompt through layers 0...l, its positions before p through the later layers (projections,
    /// and attention over the positions each token sees).
    public let prepareFLOPs: Double

    /// The shortest prefix worth sharing, in tokens.
    static let minimumSharedPrefix = 4

    /// A prefix of tokens that several prompts start with, and those prompts.
    struct SharedPrefix {
        let tokens: [Int32]
        let prompts: [Int]
    }

    /// Per prompt, how many of its first tokens come from a shared prefix (0: none), and the prefixes.
    /// A prompt wants the longest prefix it has in common with another prompt (its neighbours when
    /// the prompts are sorted by their tokens), up to its δ position (the rows from p on must be its
    /// own); prompts that want the same prefix, of at least `minimumSharedPrefix` tokens, share it.
    static func sharedPrefixes(_ prompts: [DeltaPrompt]) -> (shared: [Int], prefixes: [SharedPrefix]) {
        func common(_ a: Int, _ b: Int) -> Int {
            let (x, y) = (prompts[a].tokens, prompts[b].tokens)
            var n = 0
            while n < x.count, n < y.count, x[n] == y[n] { n += 1 }
            return n
        }
        let order = prompts.indices.sorted { prompts[$0].tokens.lexicographicallyPrecedes(prompts[$1].tokens) }
        var groups: [[Int32]: [Int]] = [:]
        for (k, i) in order.enumerated() {
            let previous = k > 0 ? common(order[k - 1], i) : 0, next = k + 1 < order.count ? common(i, order[k + 1]) : 0
            let want = min(max(previous, next), prompts[i].position)
            if want >= minimumSharedPrefix { groups[Array(prompts[i].tokens[..<want]), default: []].append(i) }
        }
        var shared = [Int](repeating: 0, count: prompts.count), prefixes: [SharedPrefix] = []
        for (tokens, members) in groups.sorted(by: { $0.value[0] < $1.value[0] }) where members.count > 1 {
            for i in members { shared[i] = tokens.count }
            prefixes.append(SharedPrefix(tokens: tokens, prompts: members.sorted()))
        }
        return (shared, prefixes)
    }

    /// Consecutive groups of the items (their token counts) of at most `packTokens` tokens each (at least one item).
    static func packs(_ counts: [Int]) -> [[Int]] {
        var out: [[Int]] = [], total = 0
        for (i, n) in counts.enumerated() {
            if out.isEmpty || total + n > packTokens {
                out.append([])
                total = 0
            }
            out[out.count - 1].append(i)
            total += n
        }
        return out
    }

    /// Prepares the batch: one unedited pass over every prompt (packed).
    /// - Parameter site: `mlp_out@l` or `resid_out@l`.
    public init(model: LanguageModel, site: Site, prompts: [DeltaPrompt]) throws {
        c = model.config
        guard site.kind == .mlpOut || site.kind == .residOut else {
            throw ModelError(.invalidInput, "δ can be added at mlp_out or resid_out, not \(site.kind.rawValue)")
        }
        guard site.layer >= 0, site.layer < c.layers else { throw ModelError(.invalidInput, "no layer \(site.layer) (the model has \(c.layers))") }
        guard !prompts.isEmpty else { throw ModelError(.invalidInput, "a δ batch needs at least one prompt") }
        for (i, p) in prompts.enumerated() {
            guard !p.tokens.isEmpty, p.tokens.count <= c.contextLength else {
                throw ModelError(.invalidInput, "prompt \(i) has \(p.tokens.count) tokens (context \(c.contextLength))")
            }
            guard p.position >= 0, p.position < p.tokens.count else {
                throw ModelError(.invalidInput, "prompt \(i): δ position \(p.position) is outside 0..<\(p.tokens.count)")
            }
            for r in p.logitPositions where r < p.position || r >= p.tokens.count {
                throw ModelError(.invalidInput, "prompt \(i): logit position \(r) is outside \(p.position)..<\(p.tokens.count)")
            }
        }
        self.model = model
        self.layer = site.layer
        self.prompts = prompts
        let d = c.hidden, ff = c.intermediate
        let full = Layout(prompts: Array(prompts.indices), of: prompts)
        let offsets = full.offsets, logitRows = full.logitRows
        (self.full, layout, baseOffsets, rowCount, logitCount) = (full, full, offsets, full.rows, logitRows.count)
        let lengths = prompts.map { $0.tokens.count - $0.position }
        self.lengths = lengths
        let R = full.rows
        let c = self.c, layer = site.layer
        let base = Scratch(R * d)
        self.base = base

        // The unedited pass. Prompts that share a prefix of tokens (a context template that several
        // facts' prompts start with) share its computation: each distinct prefix runs once through
        // every layer and each of its prompts continues a copy of its cache. The rest of every prompt
        // is packed into sequences of at most `packTokens` tokens (one prompt per segment, each
        // continuing its own KV cache) and split by layer: every position through layers 0...l (the
        // sites at l; the rows p..<T of the residual after l), then the positions before p from that
        // residual through the later layers (their keys and values are all those layers need from
        // them; the rows p..<T above l are recomputed by every `forward`).
        let gated = model.weights.layers[0].wGate != nil
        func passFLOPs(_ n: Int, after start: Int, layers: Int) -> Double {
            Self.positionFLOPs(c, gated: gated, count: n, after: start, layers: layers)
        }
        let caches = prompts.map { KVCache(config: c, capacity: $0.tokens.count) }
        let (shared, prefixes) = Self.sharedPrefixes(prompts)
        var flops = 0.0
        if !prefixes.isEmpty {
            let prefixCaches = prefixes.map { KVCache(config: c, capacity: $0.tokens.count) }
            for chunk in Self.packs(prefixes.map(\.tokens.count)) {
                _ = try model.forward(chunk.flatMap { prefixes[$0].tokens },
                                      options: ForwardOptions(logits: .none, segments: chunk.map { prefixes[$0].tokens.count },
                                                              segmentCaches: chunk.map { SegmentCache(prefixCaches[$0]) }))
            }
            for (k, prefix) in prefixes.enumerated() {
                flops += passFLOPs(prefix.tokens.count, after: 0, layers: c.layers)
                for i in prefix.prompts { try caches[i].copyPrefix(from: prefixCaches[k], count: prefix.tokens.count) }
            }
        }
        var keys = [[Float]](repeating: [], count: prompts.count), outs = keys, resids = keys
        let capture: Set<Site> = [Site(layer: layer, kind: .mlpKey), Site(layer: layer, kind: .mlpOut), Site(layer: layer, kind: .residOut)]
        for pack in Self.packs(prompts.indices.map { prompts[$0].tokens.count - shared[$0] }) {
            let res = try model.forward(pack.flatMap { prompts[$0].tokens[shared[$0]...] },
                                        options: ForwardOptions(capture: capture, logits: .none, stopAfterLayer: layer,
                                                                segments: pack.map { prompts[$0].tokens.count - shared[$0] },
                                                                segmentCaches: pack.map { SegmentCache(caches[$0], start: shared[$0]) }))
            let k = res.activations[Site(layer: layer, kind: .mlpKey)]!   // [rows, ff]
            let o = res.activations[Site(layer: layer, kind: .mlpOut)]!   // [rows, d]
            let x = res.activations[Site(layer: layer, kind: .residOut)]! // [rows, d]
            var row = 0
            var beforeRows: [Float] = [], before: [Int] = []   // [Σ (p − shared), d] residual after l before p
            for i in pack {
                let p = prompts[i], own = p.position - shared[i]
                let at = row + own
                flops += passFLOPs(p.tokens.count - shared[i], after: shared[i], layers: layer + 1)
                keys[i] = Array(k.data[(at * ff)..<((at + 1) * ff)])
                outs[i] = Array(o.data[(at * d)..<((at + 1) * d)])
                resids[i] = Array(x.data[(at * d)..<((at + 1) * d)])
                let n = lengths[i] * d
                x.data.withUnsafeBufferPointer { base.p.advanced(by: offsets[i] * d).update(from: $0.baseAddress! + at * d, count: n) }
                if own > 0 {
                    beforeRows += x.data[(row * d)..<(at * d)]
                    before.append(i)
                }
                row += p.tokens.count - shared[i]
            }
            if !before.isEmpty, layer + 1 < c.layers {
                let counts = before.map { prompts[$0].position - shared[$0] }
                for (i, n) in zip(before, counts) { flops += passFLOPs(n, after: shared[i], layers: c.layers - layer - 1) }
                _ = try model.forward(before.flatMap { prompts[$0].tokens[shared[$0]..<prompts[$0].position] },
                                      options: ForwardOptions(logits: .none, segments: counts,
                                                              resume: ResumePoint(layer: layer + 1, residual: Tensor(shape: [counts.reduce(0, +), d], data: beforeRows)),
                                                              segmentCaches: before.map { SegmentCache(caches[$0], start: shared[$0]) }))
            }
        }
        prepareFLOPs = flops
        (self.keys, mlpOutputs, residuals, self.caches) = (keys, outs, resids, caches)
        rope = c.ropeStyle.map { RoPE(style: $0, headDim: c.headDim, base: c.ropeBase, maxPositions: (prompts.map(\.tokens.count).max() ?? 1)) }

        let upper = c.layers - site.layer - 1
        let qkvw = c.heads * c.headDim + 2 * c.kvHeads * c.headDim
        let qd = c.heads * c.headDim
        savedIn = (0..<upper).map { _ in Scratch(R * d) }
        savedQKV = (0..<upper).map { _ in Scratch(R * qkvw) }
        savedMid = (0..<upper).map { _ in Scratch(R * d) }
        savedAct = (0..<upper).map { _ in Scratch(R * 2 * ff) }
        let probSizes = prompts.indices.map { c.heads * lengths[$0] * prompts[$0].tokens.count }
        savedProbs = (0..<upper).map { _ in probSizes.map { Scratch($0) } }
        savedFinal = Scratch(logitRows.count * d)
        let maxT = prompts.map(\.tokens.count).max()!, maxN = lengths.max()!
        (x, h, att, tmp, key) = (Scratch(R * d), Scratch(max(R, logitRows.count) * d), Scratch(R * qd), Scratch(R * d), Scratch(R * ff))
        (dx, dMid, dh, dAtt, dQKV) = (Scratch(R * d), Scratch(R * d), Scratch(max(R, logitRows.count) * d), Scratch(R * qd), Scratch(R * qkvw))
        (dAct, dKey, dP) = (Scratch(R * 2 * ff), Scratch(R * ff), Scratch(maxN * maxT))
    }

    /// Logits at every prompt's `logitPositions` (in prompt order) with `delta` added after layer l
    /// at each prompt's position: [logitCount, vocab].
    public func forward(delta: [Float]) throws -> Tensor {
        try forward(deltas: [[Float]](repeating: delta, count: prompts.count))
    }

    /// As `forward(delta:)`, with a vector of its own for each prompt: deltas [prompts][d].
    public func forward(deltas: [[Float]]) throws -> Tensor {
        guard deltas.count == prompts.count else { throw ModelError(.invalidInput, "\(deltas.count) δ vectors for \(prompts.count) prompts") }
        return try run(full, deltas: deltas)
    }

    /// As `forward(deltas:)` over the listed prompts only (indices into `prompts`, ascending, no
    /// repeats), a vector for each: deltas [subset.count][d]. Returns the listed prompts' logit rows in
    /// order, [Σ_subset |logitPositions|, vocab]; the next `backward` covers the same prompts.
    public func forward(deltas: [[Float]], prompts subset: [Int]) throws -> Tensor {
        guard deltas.count == subset.count else { throw ModelError(.invalidInput, "\(deltas.count) δ vectors for \(subset.count) prompts") }
        guard !subset.isEmpty else { throw ModelError(.invalidInput, "a δ forward needs at least one prompt") }
        for (a, i) in subset.enumerated() where i < 0 || i >= prompts.count || (a > 0 && i <= subset[a - 1]) {
            throw ModelError(.invalidInput, "prompt subset \(subset) must ascend within 0..<\(prompts.count)")
        }
        return try run(subset == full.prompts ? full : Layout(prompts: subset, of: prompts), deltas: deltas)
    }

    /// The forward of the prompts in `layout`: deltas [layout.prompts.count][d].
    private func run(_ layout: Layout, deltas: [[Float]]) throws -> Tensor {
        let d = c.hidden, ff = c.intermediate, hd = c.headDim, qd = c.heads * hd, kvd = c.kvHeads * hd
        let qkvw = qkvWidth, R = layout.rows, group = c.heads / c.kvHeads
        for delta in deltas {
            guard delta.count == d else { throw ModelError(.invalidInput, "δ has \(delta.count) values, expected \(d)") }
            guard delta.allSatisfy(\.isFinite) else { throw ModelError(.nonFinite, "δ has a non-finite value") }
        }
        self.layout = layout
        forwardDone = false
        let w = model.weights
        let offsets = layout.offsets, logitRows = layout.logitRows
        // x [R, d]: each listed prompt's unedited rows, packed, plus its δ at its first row.
        for (a, i) in layout.prompts.enumerated() {
            (x.p + offsets[a] * d).update(from: base.p + baseOffsets[i] * d, count: lengths[i] * d)
            deltas[a].withUnsafeBufferPointer { Kernels.add(x.p + offsets[a] * d, $0.baseAddress!, count: d) }
        }
        let scale = 1 / Float(hd).squareRoot()

        for (s, j) in upperLayers.enumerated() {
            let lw = w.layers[j]
            savedIn[s].p.update(from: x.p, count: R * d)
            model.norm(x.p, lw.attnNorm, lw.attnNormBias, out: h.p, rows: R)
            let qkv = savedQKV[s].p
            project(h.p, rows: R, into: qkv, ldc: qkvw, parts: [(lw.wq, lw.bq, 0), (lw.wk, lw.bk, qd), (lw.wv, lw.bv, qd + kvd)], fused: lw.qkvFused)
            for (slot, i) in layout.prompts.enumerated() {
                let p = prompts[i], off = offsets[slot], cache = caches[i]
                for a in 0..<lengths[i] {
                    let row = qkv + (off + a) * qkvw, pos = p.position + a
                    if let rope {
                        rope.apply(row, heads: c.heads, position: pos)
                        rope.apply(row + qd, heads: c.kvHeads, position: pos)
                    }
                    (cache.keys[j] + pos * kvd).update(from: row + qd, count: kvd)
                    (cache.values[j] + pos * kvd).update(from: row + qd + kvd, count: kvd)
                }
                // Per head: P[n, T] = softmax(Q_h K_gᵀ · scale) over the causal columns; out_h = P V_g.
                // The blocks are tiny (n ≈ 5 rows, T ≈ 20), so direct SIMD loops beat BLAS calls here.
                let n = lengths[i], T = p.tokens.count, p0 = p.position
                let K = cache.keys[j], Vv = cache.values[j]
                for head in 0..<c.heads {
                    let g = head / group
                    let P = savedProbs[s][i].p + head * n * T
                    for a in 0..<n {
                        let q = qkv + (off + a) * qkvw + head * hd, pr = P + a * T, valid = p0 + a + 1
                        for t in 0..<valid { pr[t] = scale * Kernels.dot(q, K + t * kvd + g * hd, hd) }
                        Kernels.softmaxRows(pr, rows: 1, cols: T, valid: { _ in valid })
                        let out = att.p + (off + a) * qd + head * hd
                        out.update(repeating: 0, count: hd)
                        for t in 0..<valid { Kernels.axpy(pr[t], Vv + t * kvd + g * hd, out, hd) }
                    }
                }
            }
            project(att.p, rows: R, into: tmp.p, ldc: d, parts: [(lw.wo, lw.bo, 0)], fused: true)
            Kernels.add(x.p, tmp.p, count: R * d)
            savedMid[s].p.update(from: x.p, count: R * d)

            model.norm(x.p, lw.mlpNorm, lw.mlpNormBias, out: h.p, rows: R)
            let act = savedAct[s].p
            if let wGate = lw.wGate {
                project(h.p, rows: R, into: act, ldc: 2 * ff, parts: [(wGate, nil, 0), (lw.wUp, lw.bUp, ff)], fused: lw.gateUpFused)
                for r in 0..<R { Kernels.siluGate(gate: act + r * 2 * ff, up: act + r * 2 * ff + ff, out: key.p + r * ff, count: ff) }
            } else {
                project(h.p, rows: R, into: act, ldc: ff, parts: [(lw.wUp, lw.bUp, 0)], fused: true)
                key.p.update(from: act, count: R * ff)
                Kernels.geluTanh(key.p, count: R * ff)
            }
            project(key.p, rows: R, into: tmp.p, ldc: d, parts: [(lw.wDown, lw.bDown, 0)], fused: true)
            Kernels.add(x.p, tmp.p, count: R * d)
        }

        let L = logitRows.count, V = c.vocabSize
        var logits = [Float](repeating: 0, count: L * V)
        for (i, r) in logitRows.enumerated() { (savedFinal.p + i * d).update(from: x.p + r * d, count: d) }
        if L > 0 {
            model.norm(savedFinal.p, w.outputNorm, w.outputNormBias, out: h.p, rows: L)
            logits.withUnsafeMutableBufferPointer { lp in
                BLAS.sgemmNT(m: L, n: V, k: d, a: h.p, lda: d, b: w.output.pointer, ldb: d, c: lp.baseAddress!, ldc: V)
            }
        }
        forwardDone = true
        forwardFLOPs += flops(layout)
        return Tensor(shape: [L, V], data: logits)
    }

    /// ∂loss/∂δ given ∂loss/∂logits [L, vocab] for the logits of the last `forward` (L rows: its
    /// prompts' logit positions), δ shared by its prompts.
    public func backward(logitGradient: Tensor) throws -> [Float] {
        try backwardRows(logitGradient: logitGradient)
        let d = c.hidden
        var grad = [Float](repeating: 0, count: d)
        grad.withUnsafeMutableBufferPointer { g in for off in layout.offsets { Kernels.add(g.baseAddress!, dx.p + off * d, count: d) } }
        return grad
    }

    /// ∂loss/∂δ_i for each prompt's own vector (see `forward(deltas:)`), for the prompts of the last
    /// `forward` in its order: [prompts][d].
    public func backwardPerPrompt(logitGradient: Tensor) throws -> [[Float]] {
        try backwardRows(logitGradient: logitGradient)
        let d = c.hidden
        return layout.offsets.map { Array(UnsafeBufferPointer(start: dx.p + $0 * d, count: d)) }
    }

    /// Leaves ∂loss/∂x_l for every batch row of the last forward's layout in `dx`.
    private func backwardRows(logitGradient: Tensor) throws {
        let d = c.hidden, ff = c.intermediate, hd = c.headDim, qd = c.heads * hd, kvd = c.kvHeads * hd
        let layout = self.layout, offsets = layout.offsets, logitRows = layout.logitRows
        let qkvw = qkvWidth, R = layout.rows, group = c.heads / c.kvHeads, L = logitRows.count, V = c.vocabSize
        guard forwardDone else { throw ModelError(.invalidInput, "backward needs a forward pass first") }
        guard logitGradient.shape == [L, V] else {
            throw ModelError(.invalidInput, "logit gradient has shape \(logitGradient.shape), expected [\(L), \(V)]")
        }
        let w = model.weights
        let scale = 1 / Float(hd).squareRoot()
        // The same products as the forward (input gradients only), attention twice over.
        backwardFLOPs += flops(layout, attentionTwice: true)
        dx.zero()
        if L > 0 {
            // logits = norm(x_f) · Eᵀ  ⇒  ∂norm = ∂logits · E  [L, d], then through the final norm.
            logitGradient.data.withUnsafeBufferPointer { g in
                BLAS.sgemmNN(m: L, n: d, k: V, a: g.baseAddress!, lda: V, b: w.output.pointer, ldb: d, c: dh.p, ldc: d)
            }
            tmp.zero()
            normBackward(savedFinal.p, w.outputNorm, w.outputNormBias, dy: dh.p, dx: tmp.p, rows: L)
            for (i, r) in logitRows.enumerated() { Kernels.add(dx.p + r * d, tmp.p + i * d, count: d) }
        }

        for (s, j) in upperLayers.enumerated().reversed() {
            let lw = w.layers[j]
            // MLP: x_out = x_mid + Wdown · act(norm(x_mid)).
            BLAS.sgemmNN(m: R, n: ff, k: d, a: dx.p, lda: d, b: lw.wDown.pointer, ldb: ff, c: dKey.p, ldc: ff)
            let act = savedAct[s].p
            if let wGate = lw.wGate {
                for r in 0..<R {
                    Kernels.siluGateBackward(gate: act + r * 2 * ff, up: act + r * 2 * ff + ff, dout: dKey.p + r * ff,
                                             dgate: dAct.p + r * 2 * ff, dup: dAct.p + r * 2 * ff + ff, count: ff)
                }
                projectBack(dAct.p, rows: R, ld: 2 * ff, parts: [(wGate, 0), (lw.wUp, ff)], fused: lw.gateUpFused, into: dh.p)
            } else {
                Kernels.geluTanhBackward(act, dout: dKey.p, dx: dAct.p, count: R * ff)
                projectBack(dAct.p, rows: R, ld: ff, parts: [(lw.wUp, 0)], fused: true, into: dh.p)
            }
            dMid.p.update(from: dx.p, count: R * d)
            normBackward(savedMid[s].p, lw.mlpNorm, lw.mlpNormBias, dy: dh.p, dx: dMid.p, rows: R)

            // Attention: x_mid = x_in + Wo · attn(norm(x_in)).
            BLAS.sgemmNN(m: R, n: qd, k: d, a: dMid.p, lda: d, b: lw.wo.pointer, ldb: qd, c: dAtt.p, ldc: qd)
            dQKV.zero()
            let qkv = savedQKV[s].p
            for (slot, i) in layout.prompts.enumerated() {
                let p = prompts[i], n = lengths[i], T = p.tokens.count, p0 = p.position, off = offsets[slot]
                let K = caches[i].keys[j], Vv = caches[i].values[j]
                for head in 0..<c.heads {
                    let g = head / group
                    let P = savedProbs[s][i].p + head * n * T
                    for a in 0..<n {
                        let pr = P + a * T, valid = p0 + a + 1, row = off + a
                        let dOut = dAtt.p + row * qd + head * hd
                        let q = qkv + row * qkvw + head * hd
                        let dq = dQKV.p + row * qkvw + head * hd
                        // ∂P[t] = ∂out_h · v_t;  ∂S = P ⊙ (∂P − Σ P ⊙ ∂P).
                        var dot: Float = 0
                        for t in 0..<valid {
                            let v = Kernels.dot(dOut, Vv + t * kvd + g * hd, hd)
                            dP.p[t] = v
                            dot += pr[t] * v
                        }
                        for t in 0..<valid {
                            let ds = pr[t] * (dP.p[t] - dot) * scale
                            // ∂q_h += scale·∂S[t]·k_t; rows that depend on δ (t ≥ p0) also get ∂k_t and ∂v_t.
                            Kernels.axpy(ds, K + t * kvd + g * hd, dq, hd)
                            if t >= p0 {
                                let dst = dQKV.p + (off + t - p0) * qkvw
                                Kernels.axpy(ds, q, dst + qd + g * hd, hd)
                                Kernels.axpy(pr[t], dOut, dst + qd + kvd + g * hd, hd)
                            }
                        }
                    }
                }
                if let rope {
                    for a in 0..<n {
                        let row = dQKV.p + (off + a) * qkvw
                        rope.apply(row, heads: c.heads, position: p0 + a, inverse: true)
                        rope.apply(row + qd, heads: c.kvHeads, position: p0 + a, inverse: true)
                    }
                }
            }
            projectBack(dQKV.p, rows: R, ld: qkvw, parts: [(lw.wq, 0), (lw.wk, qd), (lw.wv, qd + kvd)], fused: lw.qkvFused, into: dh.p)
            dx.p.update(from: dMid.p, count: R * d)
            normBackward(savedIn[s].p, lw.attnNorm, lw.attnNormBias, dy: dh.p, dx: dx.p, rows: R)
        }
    }

    // MARK: helpers

    private func normBackward(_ x: UnsafePointer<Float>, _ w: Parameter, _ b: Parameter?, dy: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>, rows: Int) {
        if b != nil {
            Kernels.layerNormBackward(x, weight: w.pointer, eps: c.normEps, dy: dy, dx: dx, rows: rows, dim: c.hidden)
        } else {
            Kernels.rmsNormBackward(x, weight: w.pointer, eps: c.normEps, dy: dy, dx: dx, rows: rows, dim: c.hidden)
        }
    }

    /// out[R, ldc] columns part.offset ..< part.offset + W.rows = x[R, in] · Wᵀ (+ bias), for each part;
    /// one GEMM when the parts are contiguous in memory (`fused`).
    private func project(_ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>, ldc: Int,
                         parts: [(Parameter, Parameter?, Int)], fused: Bool) {
        let inDim = parts[0].0.shape[1]
        if fused {
            let outDim = parts.reduce(0) { $0 + $1.0.shape[0] }
            BLAS.sgemmNT(m: rows, n: outDim, k: inDim, a: x, lda: inDim, b: parts[0].0.pointer, ldb: inDim, c: out, ldc: ldc)
        } else {
            for (wt, _, off) in parts {
                BLAS.sgemmNT(m: rows, n: wt.shape[0], k: inDim, a: x, lda: inDim, b: wt.pointer, ldb: inDim, c: out + off, ldc: ldc)
            }
        }
        for (wt, b, off) in parts {
            guard let b else { continue }
            for r in 0..<rows { Kernels.add(out + r * ldc + off, b.pointer, count: wt.shape[0]) }
        }
    }

    /// into[R, in] = Σ_parts dOut[R, part columns] · W_part (the input gradient of `project`).
    private func projectBack(_ dOut: UnsafePointer<Float>, rows: Int, ld: Int, parts: [(Parameter, Int)], fused: Bool,
                             into: UnsafeMutablePointer<Float>) {
        let inDim = parts[0].0.shape[1]
        if fused {
            let outDim = parts.reduce(0) { $0 + $1.0.shape[0] }
            BLAS.sgemmNN(m: rows, n: inDim, k: outDim, a: dOut, lda: ld, b: parts[0].0.pointer, ldb: inDim, c: into, ldc: inDim)
        } else {
            for (k, (wt, off)) in parts.enumerated() {
                BLAS.sgemmNN(m: rows, n: inDim, k: wt.shape[0], a: dOut + off, lda: ld, b: wt.pointer, ldb: inDim,
                             accumulate: k > 0, c: into, ldc: inDim)
            }
        }
    }
}
