import Foundation
import ModelRuntime
import Tensor

/// BatchTopK training settings (METHODS §4). Defaults follow dictionary_learning; the step-count
/// dependent ones (warmup, threshold start, dead-latent window) shrink with short runs so that a run of
/// a few thousand steps still warms up, sets θ and revives dead latents.
public struct BatchTopKSettings: Codable, Sendable, Equatable {
    public var width: Int
    public var k: Int
    /// Activations per step (B).
    public var batchSize: Int = 1024
    /// Training rows in total (may exceed the cache: it is reused in shuffled epochs).
    public var tokens: Int
    /// nil: 2e-4 / sqrt(F / 2^14).
    public var lr: Float?
    public var auxAlpha: Float = 1.0 / 32
    /// nil: d_in / 2.
    public var auxK: Int?
    /// nil: min(1000, steps / 20).
    public var warmupSteps: Int?
    /// Linear decay to 0 starts at this fraction of the steps.
    public var decayStart: Double = 0.8
    public var thresholdBeta: Float = 0.999
    /// nil: min(1000, steps / 10).
    public var thresholdStartStep: Int?
    /// A latent is dead after this many tokens without firing; nil: min(10M, max(10 batches, tokens / 10)).
    public var deadTokens: Int?
    public var gradientClip: Float = 1
    public var normalizeActivations = true
    public var seed: UInt64 = 0

    public init(width: Int, k: Int, tokens: Int, batchSize: Int = 1024) {
        self.width = width
        self.k = k
        self.tokens = tokens
        self.batchSize = batchSize
    }

    public var steps: Int { max(1, tokens / batchSize) }
    public func effectiveLR() -> Float { lr ?? 2e-4 / Float(Double(width) / 16384).squareRoot() }
    public func effectiveWarmup() -> Int { warmupSteps ?? min(1000, steps / 20) }
    public func effectiveThresholdStart() -> Int { thresholdStartStep ?? min(1000, steps / 10) }
    public func effectiveDeadTokens() -> Int { deadTokens ?? min(10_000_000, max(10 * batchSize, tokens / 10)) }

    public func validate(dIn: Int) throws {
        guard width > 0, k > 0, k < width, batchSize > 0, tokens >= batchSize else {
            throw SAEError(.settings, "width, k, batch size and tokens must be positive, k < width and tokens ≥ one batch")
        }
        guard (lr ?? 1) > 0, auxAlpha >= 0, decayStart > 0, decayStart <= 1, thresholdBeta > 0, thresholdBeta < 1, gradientClip > 0 else {
            throw SAEError(.settings, "learning rate, aux α, decay start, threshold β and gradient clip are out of range")
        }
        guard (auxK ?? dIn / 2) > 0 else { throw SAEError(.settings, "aux k must be positive") }
    }

    /// The learning rate at `step` (0-based): linear warmup, constant, linear decay to 0.
    public func learningRate(step: Int) -> Float {
        let base = effectiveLR(), warm = effectiveWarmup()
        var f: Float = 1
        if warm > 0, step < warm { f = Float(step + 1) / Float(warm) }
        let decay = Int(Double(steps) * decayStart)
        if step >= decay, steps > decay { f = min(f, Float(steps - step) / Float(steps - decay)) }
        return base * f
    }
}

/// Figures a training step or an evaluation reports.
public struct SAEStepStats: Sendable {
    public var step: Int
    public var tokens: Int
    /// Reconstruction MSE (sum over D, mean over rows), in normalized units.
    public var mse: Double
    public var auxLoss: Double
    /// Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖².
    public var fvu: Double
    /// Mean active latents per token.
    public var l0: Double
    public var dead: Int
    public var lr: Float
    public var threshold: Float
}

/// Trains a BatchTopK SAE (METHODS §4): batch-level top-k over B·F pre-activations, the auxiliary
/// loss on dead latents (top-k_aux per row, residual reconstructed without b_dec, normalized by the
/// residual's variance), the global inference θ from an EMA of the smallest selected activation,
/// unit-norm decoder rows with the parallel gradient removed, b_dec initialized at the geometric
/// median of the first batch, Adam with clipping, warmup and decay. Activations are divided by
/// sqrt(E‖x‖²) during training; `finish()` folds the factor back into b_enc, b_dec and θ.
///
/// Shapes: D = d_in, F = width, B = batch size. Gradients are computed by hand: only the B·k selected
/// (and the aux) latents carry gradient, so the backward pass is sparse and the dense cost is the
/// encoder GEMM [B, D]·[D, F].
public final class BatchTopKTrainer {
    public let settings: BatchTopKSettings
    public let dIn: Int
    public let metadata: SAEMetadata
    public private(set) var step = 0
    /// Normalization factor sqrt(E‖x‖²) (1 if disabled).
    public private(set) var normFactor: Float = 1

    // Parameters in normalized units. enc, dec: [F, D]; bEnc [F]; bDec [D].
    var enc: [Float], dec: [Float], bEnc: [Float], bDec: [Float]
    var theta: Float = -1
    // Adam moments, one per parameter array.
    var adam: [AdamState]
    var sinceFired: [Int]
    var fired: [Int]
    var initialized = false

    struct AdamState { var m: [Float]; var v: [Float] }

    public init(dIn: Int, settings: BatchTopKSettings, metadata: SAEMetadata) throws {
        try settings.validate(dIn: dIn)
        self.dIn = dIn
        self.settings = settings
        self.metadata = metadata
        let F = settings.width, D = dIn
        var gauss = GaussianSource(seed: settings.seed)
        // Decoder rows: Gaussian, unit norm; encoder = decoder (dictionary_learning: encoder = decoderᵀ).
        dec = [Float](repeating: 0, count: F * D)
        for j in 0..<F {
            var n: Float = 0
            for i in 0..<D { let g = gauss.next(); dec[j * D + i] = g; n += g * g }
            let s = 1 / n.squareRoot()
            for i in 0..<D { dec[j * D + i] *= s }
        }
        enc = dec
        bEnc = [Float](repeating: 0, count: F)
        bDec = [Float](repeating: 0, count: D)
        adam = [F * D, F * D, F, D].map { AdamState(m: .init(repeating: 0, count: $0), v: .init(repeating: 0, count: $0)) }
        sinceFired = [Int](repeating: 0, count: F)
        fired = [Int](repeating: 0, count: F)
    }

    /// Sets the normalization factor from a sample of rows x [rows, D] (raw units) and b_dec from the
    /// geometric median of the first batch. Called once, before the first step.
    public func initialize(sample x: [Float], rows: Int) throws {
        precondition(x.count == rows * dIn && rows > 0)
        let D = dIn
        var sq: Double = 0
        for v in x { sq += Double(v) * Double(v) }
        normFactor = settings.normalizeActivations ? Float((sq / Double(rows)).squareRoot()) : 1
        guard normFactor > 0, normFactor.isFinite else { throw SAEError(.nonFinite, "the activations have zero or non-finite norm") }
        let first = min(rows, settings.batchSize)
        let scaled = x.prefix(first * D).map { $0 / normFactor }
        bDec = Self.geometricMedian(scaled, rows: first, dim: D)
        initialized = true
    }

    /// Weiszfeld's iteration for argmin_m Σ‖x_r − m‖ over x [rows, dim], from the mean.
    static func geometricMedian(_ x: [Float], rows: Int, dim: Int, iterations: Int = 100) -> [Float] {
        var m = [Double](repeating: 0, count: dim)
        for r in 0..<rows { for i in 0..<dim { m[i] += Double(x[r * dim + i]) / Double(rows) } }
        for _ in 0..<iterations {
            var num = [Double](repeating: 0, count: dim), den = 0.0
            for r in 0..<rows {
                var d2 = 0.0
                for i in 0..<dim { let t = Double(x[r * dim + i]) - m[i]; d2 += t * t }
                let w = 1 / max(d2.squareRoot(), 1e-8)
                den += w
                for i in 0..<dim { num[i] += w * Double(x[r * dim + i]) }
            }
            var shift = 0.0
            for i in 0..<dim { let n = num[i] / den; shift += (n - m[i]) * (n - m[i]); m[i] = n }
            if shift.squareRoot() < 1e-5 { break }
        }
        return m.map(Float.init)
    }

    /// One step on x [B, D] in raw units. Returns the step's figures.
    @discardableResult
    public func step(_ raw: [Float]) throws -> SAEStepStats {
        let B = raw.count / dIn, D = dIn, F = settings.width
        precondition(B * D == raw.count && B > 0)
        if !initialized { try initialize(sample: raw, rows: B) }
        let inv = 1 / normFactor
        let x = raw.map { $0 * inv }  // [B, D] normalized
        // pre = (x − b_dec)·encᵀ + b_enc, then ReLU.  xc [B, D], pre [B, F]
        var xc = [Float](repeating: 0, count: B * D)
        for r in 0..<B { for i in 0..<D { xc[r * D + i] = x[r * D + i] - bDec[i] } }
        var pre = [Float](repeating: 0, count: B * F)
        for r in 0..<B { for j in 0..<F { pre[r * F + j] = bEnc[j] } }
        xc.withUnsafeBufferPointer { a in enc.withUnsafeBufferPointer { w in pre.withUnsafeMutableBufferPointer { p in
            BLAS.sgemm(transB: true, m: B, n: F, k: D, a: a.baseAddress!, lda: D, b: w.baseAddress!, ldb: D, beta: 1, c: p.baseAddress!, ldc: F)
        } } }
        for i in 0..<(B * F) where !(pre[i] > 0) { pre[i] = 0 }
        guard pre.allSatisfy(\.isFinite) else { throw SAEError(.nonFinite, "non-finite pre-activations at step \(step)") }

        // Batch top-k: the k·B largest positive values over the whole batch.
        let kb = settings.k * B
        var positives = pre.filter { $0 > 0 }
        let cut: Float = positives.count <= kb ? Float.leastNonzeroMagnitude : Self.kthLargest(&positives, kb)
        // Selected latents per row, as (latent, value) lists.
        var selected = [[(Int, Float)]](repeating: [], count: B)
        var nnz = 0
        var minSelected = Float.infinity
        for r in 0..<B {
            for j in 0..<F where pre[r * F + j] >= cut && pre[r * F + j] > 0 && nnz < kb {
                selected[r].append((j, pre[r * F + j]))
                nnz += 1
                minSelected = min(minSelected, pre[r * F + j])
            }
        }
        // x̂ = Σ f_j dec_j + b_dec;  e = x − x̂.
        var e = [Float](repeating: 0, count: B * D)
        dec.withUnsafeBufferPointer { w in
            e.withUnsafeMutableBufferPointer { ep in
                for r in 0..<B {
                    let row = ep.baseAddress! + r * D
                    for i in 0..<D { row[i] = -bDec[i] }
                    for (j, v) in selected[r] { Kernels.axpy(-v, w.baseAddress! + j * D, row, D) }
                    for i in 0..<D { row[i] += x[r * D + i] }
                }
            }
        }
        var sse: Double = 0
        for v in e { sse += Double(v) * Double(v) }
        var mean = [Double](repeating: 0, count: D)
        for r in 0..<B { for i in 0..<D { mean[i] += Double(x[r * D + i]) / Double(B) } }
        var total: Double = 0
        for r in 0..<B { for i in 0..<D { let t = Double(x[r * D + i]) - mean[i]; total += t * t } }

        // Fired / dead bookkeeping.
        var firedNow = [Bool](repeating: false, count: F)
        for r in 0..<B { for (j, _) in selected[r] { firedNow[j] = true; fired[j] += 1 } }
        for j in 0..<F { sinceFired[j] = firedNow[j] ? 0 : sinceFired[j] + B }
        let deadWindow = settings.effectiveDeadTokens()
        let deadList = (0..<F).filter { sinceFired[$0] >= deadWindow }

        // Gradients (normalized units).
        var gEnc = [Float](repeating: 0, count: F * D), gDec = [Float](repeating: 0, count: F * D)
        var gBEnc = [Float](repeating: 0, count: F), gBDec = [Float](repeating: 0, count: D)
        // d(recon)/dx̂ = −2e/B.
        let sRec = -2 / Float(B)
        var auxLoss: Double = 0
        var auxSelected = [[(Int, Float)]](repeating: [], count: B)
        var dAux = [Float]()  // [B, D] d(α·L_aux)/dê
        if !deadList.isEmpty && settings.auxAlpha > 0 {
            let kAux = min(settings.auxK ?? D / 2, deadList.count)
            for r in 0..<B {
                var cand = deadList.compactMap { j -> (Int, Float)? in pre[r * F + j] > 0 ? (j, pre[r * F + j]) : nil }
                if cand.count > kAux { cand.sort { $0.1 > $1.1 }; cand.removeLast(cand.count - kAux) }
                auxSelected[r] = cand
            }
            // ê_r = Σ a_j dec_j (no b_dec); L_aux = mean_r ‖e_r − ê_r‖² / mean_r ‖e_r − ē‖².
            var eMean = [Double](repeating: 0, count: D)
            for r in 0..<B { for i in 0..<D { eMean[i] += Double(e[r * D + i]) / Double(B) } }
            var denom: Double = 0
            for r in 0..<B { for i in 0..<D { let t = Double(e[r * D + i]) - eMean[i]; denom += t * t } }
            denom /= Double(B)
            if denom > 0 {
                dAux = [Float](repeating: 0, count: B * D)
                var num: Double = 0
                dec.withUnsafeBufferPointer { w in
                    dAux.withUnsafeMutableBufferPointer { dp in
                        for r in 0..<B {
                            let row = dp.baseAddress! + r * D  // first ê_r − e_r, then scaled
                            for (j, v) in auxSelected[r] { Kernels.axpy(v, w.baseAddress! + j * D, row, D) }
                            for i in 0..<D { row[i] -= e[r * D + i]; num += Double(row[i]) * Double(row[i]) }
                        }
                    }
                }
                auxLoss = num / Double(B) / denom
                let s = Float(2 * Double(settings.auxAlpha) / (Double(B) * denom))
                for i in 0..<dAux.count { dAux[i] *= s }
            }
        }
        dec.withUnsafeBufferPointer { w in
            gDec.withUnsafeMutableBufferPointer { gd in
                gEnc.withUnsafeMutableBufferPointer { ge in
                    e.withUnsafeBufferPointer { ep in
                        xc.withUnsafeBufferPointer { xp in
                            var dxhat = [Float](repeating: 0, count: D)
                            for r in 0..<B {
                                for i in 0..<D { dxhat[i] = sRec * ep[r * D + i] }
                                dxhat.withUnsafeBufferPointer { dh in
                                    for (j, v) in selected[r] {
                                        Kernels.axpy(v, dh.baseAddress!, gd.baseAddress! + j * D, D)
                                        let dp = Kernels.dot(w.baseAddress! + j * D, dh.baseAddress!, D)
                                        Kernels.axpy(dp, xp.baseAddress! + r * D, ge.baseAddress! + j * D, D)
                                        gBEnc[j] += dp
                                    }
                                }
                                for i in 0..<D { gBDec[i] += dxhat[i] }
                                if !dAux.isEmpty {
                                    dAux.withUnsafeBufferPointer { da in
                                        let row = da.baseAddress! + r * D
                                        for (j, v) in auxSelected[r] {
                                            Kernels.axpy(v, row, gd.baseAddress! + j * D, D)
                                            let dp = Kernels.dot(w.baseAddress! + j * D, row, D)
                                            Kernels.axpy(dp, xp.baseAddress! + r * D, ge.baseAddress! + j * D, D)
                                            gBEnc[j] += dp
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // b_dec also enters through xc = x − b_dec: −Σ_r Σ_j dpre_rj enc_j = −Σ_j gBEnc_j enc_j.
        enc.withUnsafeBufferPointer { w in
            gBDec.withUnsafeMutableBufferPointer { g in
                for j in 0..<F where gBEnc[j] != 0 { Kernels.axpy(-gBEnc[j], w.baseAddress! + j * D, g.baseAddress!, D) }
            }
        }
        // Remove each decoder row's gradient component along the row (it only changes the norm).
        for j in 0..<F {
            var p: Float = 0
            for i in 0..<D { p += gDec[j * D + i] * dec[j * D + i] }
            if p != 0 { for i in 0..<D { gDec[j * D + i] -= p * dec[j * D + i] } }
        }
        // Clip the global norm.
        var gn: Double = 0
        for g in [gEnc, gDec, gBEnc, gBDec] { for v in g { gn += Double(v) * Double(v) } }
        gn = gn.squareRoot()
        guard gn.isFinite else { throw SAEError(.nonFinite, "non-finite gradient at step \(step)") }
        let clip = gn > Double(settings.gradientClip) ? Float(Double(settings.gradientClip) / gn) : 1
        let lr = settings.learningRate(step: step)
        adamStep(&enc, gEnc, 0, lr: lr, scale: clip)
        adamStep(&dec, gDec, 1, lr: lr, scale: clip)
        adamStep(&bEnc, gBEnc, 2, lr: lr, scale: clip)
        adamStep(&bDec, gBDec, 3, lr: lr, scale: clip)
        for j in 0..<F {
            var n: Float = 0
            for i in 0..<D { n += dec[j * D + i] * dec[j * D + i] }
            let s = n > 0 ? 1 / n.squareRoot() : 0
            for i in 0..<D { dec[j * D + i] *= s }
        }
        // θ: EMA of the smallest selected activation, from threshold_start_step on.
        if step >= settings.effectiveThresholdStart(), minSelected.isFinite {
            theta = theta < 0 ? minSelected : settings.thresholdBeta * theta + (1 - settings.thresholdBeta) * minSelected
        }
        step += 1
        return SAEStepStats(step: step, tokens: step * B, mse: sse / Double(B), auxLoss: auxLoss, fvu: total > 0 ? sse / total : 0,
                            l0: Double(nnz) / Double(B), dead: deadList.count, lr: lr, threshold: theta)
    }

    func adamStep(_ p: inout [Float], _ g: [Float], _ slot: Int, lr: Float, scale: Float) {
        let t = Float(step + 1), b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        let c1 = 1 - pow(b1, t), c2s = (1 - pow(b2, t)).squareRoot()
        let stepSize = lr / c1
        var state = adam[slot]
        adam[slot] = AdamState(m: [], v: [])  // hand the buffers over without a copy
        state.m.withUnsafeMutableBufferPointer { m in
            state.v.withUnsafeMutableBufferPointer { v in
                for i in 0..<p.count {
                    let gi = g[i] * scale
                    m[i] = b1 * m[i] + (1 - b1) * gi
                    v[i] = b2 * v[i] + (1 - b2) * gi * gi
                    p[i] -= stepSize * m[i] / (v[i].squareRoot() / c2s + eps)
                }
            }
        }
        adam[slot] = state
    }

    /// The k-th largest value of `a` (1-based k ≤ a.count), reordering `a` (Hoare quickselect).
    static func kthLargest(_ a: inout [Float], _ k: Int) -> Float {
        var lo = 0, hi = a.count - 1
        let target = k - 1
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        while lo < hi {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let pivot = a[lo + Int((state >> 33) % UInt64(hi - lo + 1))]
            var i = lo, j = hi
            while i <= j {
                while a[i] > pivot { i += 1 }
                while a[j] < pivot { j -= 1 }
                if i <= j { a.swapAt(i, j); i += 1; j -= 1 }
            }
            if target <= j { hi = j } else if target >= i { lo = i } else { return a[target] }
        }
        return a[target]
    }

    /// The SAE in raw units: b_enc, b_dec and θ multiplied by the normalization factor (features scale
    /// with it; the weights do not). θ < 0 (never set) is an error: the run was shorter than the threshold start.
    public func finish() throws -> SparseAutoencoder {
        guard theta >= 0 else {
            throw SAEError(.missing, "the inference threshold was never set: train past step \(settings.effectiveThresholdStart())")
        }
        let nf = normFactor, F = settings.width
        let sae = try SparseAutoencoder(dIn: dIn, width: F, encoder: enc, encoderBias: bEnc.map { $0 * nf }, decoder: dec,
                                        decoderBias: bDec.map { $0 * nf }, threshold: [Float](repeating: theta * nf, count: F),
                                        k: settings.k, metadata: metadata)
        let tokens = Double(max(1, step * settings.batchSize))
        sae.logSparsity = fired.map { Float(log10(max(Double($0), 1e-10) / tokens)) }
        sae.training = [
            "trainer": .string("BatchTopK"), "batch_size": .number(Double(settings.batchSize)), "steps": .number(Double(step)),
            "training_tokens": .number(Double(step * settings.batchSize)), "lr": .number(Double(settings.effectiveLR())),
            "aux_alpha": .number(Double(settings.auxAlpha)), "aux_k": .number(Double(settings.auxK ?? dIn / 2)),
            "warmup_steps": .number(Double(settings.effectiveWarmup())), "decay_start": .number(settings.decayStart),
            "threshold_beta": .number(Double(settings.thresholdBeta)),
            "threshold_start_step": .number(Double(settings.effectiveThresholdStart())),
            "dead_tokens": .number(Double(settings.effectiveDeadTokens())), "norm_factor": .number(Double(nf)),
            "seed": .number(Double(settings.seed)),
        ]
        return sae
    }
}

/// Standard normal samples by Box–Muller (one per call; deterministic for a seeded generator).
struct GaussianSource {
    var rng: Xoshiro256
    init(seed: UInt64) { rng = Xoshiro256(seed: seed) }
    mutating func next() -> Float {
        let u1 = max(Double(rng.next() >> 11) / Double(1 << 53), 1e-300), u2 = Double(rng.next() >> 11) / Double(1 << 53)
        return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
    }
}
