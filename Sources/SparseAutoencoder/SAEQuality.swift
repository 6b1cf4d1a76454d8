import Foundation
import ModelRuntime
import Tensor

/// Quality figures of an SAE on held-out data, in inference form (global θ, no batch dependence).
public struct SAEQuality: Codable, Sendable, Equatable {
    /// Fraction of variance unexplained on held-out activations.
    public var fvu: Double
    /// Mean active latents per held-out token.
    public var l0: Double
    /// Latents that never fired on the held-out activations.
    public var deadOnHeldOut: Int
    public var heldOutTokens: Int
    /// Next-token cross-entropy (nats) on held-out text: unedited, with x̂ spliced in, with the site zeroed.
    public var lossClean: Double
    public var lossSpliced: Double
    public var lossZero: Double
    /// (lossZero − lossSpliced) / (lossZero − lossClean).
    public var lossRecovered: Double
    public var lossTokens: Int
}

extension SparseAutoencoder {
    /// FVU, L0 and never-firing latents on activations x [rows, D] (raw units).
    public func reconstructionQuality(_ x: [Float], rows: Int) -> (fvu: Double, l0: Double, dead: Int) {
        let D = dIn, F = width
        var sse: Double = 0, nnz = 0
        var mean = [Double](repeating: 0, count: D)
        for r in 0..<rows { for i in 0..<D { mean[i] += Double(x[r * D + i]) / Double(rows) } }
        var total: Double = 0
        for r in 0..<rows { for i in 0..<D { let t = Double(x[r * D + i]) - mean[i]; total += t * t } }
        var firedAny = [Bool](repeating: false, count: F)
        let chunk = 256
        var start = 0
        while start < rows {
            let n = min(chunk, rows - start)
            let part = Array(x[(start * D)..<((start + n) * D)])
            let f = encode(part, rows: n)
            let xh = decode(f, rows: n)
            for i in 0..<(n * D) { let t = Double(part[i] - xh[i]); sse += t * t }
            for r in 0..<n { for j in 0..<F where f[r * F + j] != 0 { nnz += 1; firedAny[j] = true } }
            start += n
        }
        return (total > 0 ? sse / total : 0, Double(nnz) / Double(max(1, rows)), firedAny.filter { !$0 }.count)
    }

    /// Mean next-token cross-entropy over positions ≥ `skipFirst` of `sequences`: clean, with the site's
    /// activation replaced by the SAE's reconstruction at those positions, and with it replaced by 0.
    public func spliceLosses(model: LanguageModel, sequences: [[Int32]], skipFirst: Int) throws -> (clean: Double, spliced: Double, zero: Double, tokens: Int) {
        let site = metadata.site
        try check(site: site, width: model.width(of: site.kind))
        let D = dIn
        var clean = 0.0, spliced = 0.0, zero = 0.0, count = 0
        func loss(_ logits: Tensor, _ ids: [Int32]) -> Double {
            let V = logits.shape[1]
            var s = 0.0
            logits.data.withUnsafeBufferPointer { lp in
                for t in skipFirst..<(ids.count - 1) {
                    let row = lp.baseAddress! + t * V
                    s += Double(Kernels.logSumExp(row, V) - row[Int(ids[t + 1])])
                }
            }
            return s
        }
        for ids in sequences where ids.count > skipFirst + 1 {
            let base = try model.forward(ids, options: ForwardOptions(capture: [site], logits: .all))
            clean += loss(base.logits, ids)
            let x = base.activations[site]!.data  // [T, D]
            let T = ids.count
            let kept = Array(x[(skipFirst * D)...])
            let xh = decode(encode(kept, rows: T - skipFirst), rows: T - skipFirst)
            var toSAE: [Intervention] = [], toZero: [Intervention] = []
            for t in skipFirst..<T {
                let o = (t - skipFirst) * D
                toSAE.append(Intervention(site: site, position: t, vector: (0..<D).map { xh[o + $0] - kept[o + $0] }))
                toZero.append(Intervention(site: site, position: t, vector: (0..<D).map { -kept[o + $0] }))
            }
            spliced += loss(try model.forward(ids, options: ForwardOptions(interventions: toSAE, logits: .all)).logits, ids)
            zero += loss(try model.forward(ids, options: ForwardOptions(interventions: toZero, logits: .all)).logits, ids)
            count += T - 1 - skipFirst
        }
        let n = Double(max(1, count))
        return (clean / n, spliced / n, zero / n, count)
    }

    /// Held-out FVU/L0 on `heldOut` activations [rows, D] and the loss recovered on `sequences`.
    public func quality(model: LanguageModel, heldOut: [Float], rows: Int, sequences: [[Int32]], skipFirst: Int) throws -> SAEQuality {
        let r = reconstructionQuality(heldOut, rows: rows)
        let l = try spliceLosses(model: model, sequences: sequences, skipFirst: skipFirst)
        let gap = l.zero - l.clean
        return SAEQuality(fvu: r.fvu, l0: r.l0, deadOnHeldOut: r.dead, heldOutTokens: rows, lossClean: l.clean, lossSpliced: l.spliced,
                          lossZero: l.zero, lossRecovered: gap != 0 ? (l.zero - l.spliced) / gap : 0, lossTokens: l.tokens)
    }
}

/// Feeds a cache to a trainer in shuffled epochs (a fresh permutation per epoch, seeded).
public struct SAETrainingRun {
    public let trainer: BatchTopKTrainer
    public let cache: ActivationCache

    public init(trainer: BatchTopKTrainer, cache: ActivationCache) throws {
        guard cache.dim == trainer.dIn else { throw SAEError(.shape, "the cache holds width \(cache.dim), the SAE expects \(trainer.dIn)") }
        guard cache.rows >= trainer.settings.batchSize else { throw SAEError(.settings, "the cache has \(cache.rows) rows, fewer than one batch") }
        self.trainer = trainer
        self.cache = cache
    }

    /// Runs every step; `progress` after each, `shouldStop` polled between steps (false if stopped).
    public func run(progress: ((SAEStepStats, Double) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> Bool {
        let s = trainer.settings, B = s.batchSize, D = cache.dim
        var rng = Xoshiro256(seed: s.seed &+ 1)
        var order = Array(0..<cache.rows)
        order.shuffle(using: &rng)
        var pos = 0
        var batch = [Float](repeating: 0, count: B * D)
        let start = Date()
        if !trainer.initialized {
            // Normalization from up to 100 batches' worth of rows, spread over the cache.
            let n = min(cache.rows, 100 * B)
            var sample = [Float](repeating: 0, count: n * D)
            sample.withUnsafeMutableBufferPointer { cache.read(rows: order[0..<n], into: $0.baseAddress!) }
            try trainer.initialize(sample: sample, rows: n)
        }
        while trainer.step < s.steps {
            if shouldStop?() == true { return false }
            if pos + B > order.count { order.shuffle(using: &rng); pos = 0 }
            batch.withUnsafeMutableBufferPointer { cache.read(rows: order[pos..<(pos + B)], into: $0.baseAddress!) }
            pos += B
            let stats = try trainer.step(batch)
            progress?(stats, Date().timeIntervalSince(start))
        }
        return true
    }
}
