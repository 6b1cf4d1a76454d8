import Foundation
import Tensor

/// The v* objective of ROME (METHODS §1.4), evaluated on logits from a `DeltaPass`:
///
///     L = mean_i [ −(1/|t_i|) Σ_j log P(t_ij | …) ]  +  kl · mean_k KL(P_cur,k ‖ P_init,k)  +  wd · ‖δ‖
///
/// where i runs over rewriting prompts (teacher-forced, multi-token targets), k over KL prompts
/// (the next-token distribution at the subject's last token, against the unedited distribution),
/// and wd = weight_decay / ‖v_init‖² (the norm, not its square, as the reference code does).
public struct EditLoss: Sendable {
    /// For each rewriting prompt, the target token ids of its logit rows, in row order.
    public var rewriteTargets: [[Int32]]
    /// Number of KL rows, which follow the rewriting rows (one per KL prompt).
    public var klRows: Int
    public var klFactor: Float
    /// Coefficient of ‖δ‖.
    public var normWeight: Float
    /// log P_init for each KL row: [klRows][vocab]; set from the unedited forward.
    public var initialLogProbs: [[Float]] = []
    /// The weight of each KL row's term ([klRows]); nil: klFactor / klRows each (the mean).
    public var klRowWeights: [Double]?

    public init(rewriteTargets: [[Int32]], klRows: Int, klFactor: Float, normWeight: Float) {
        self.rewriteTargets = rewriteTargets
        self.klRows = klRows
        self.klFactor = klFactor
        self.normWeight = normWeight
    }

    public struct Value: Sendable, Equatable {
        public var nll: Double
        public var kl: Double
        public var norm: Double
        /// MESA's l1·‖enc(δ) − enc(0)‖₁ (0 without refinement).
        public var sparsity: Double = 0
        public var total: Double { nll + kl + norm + sparsity }
    }

    /// log-softmax of one row [vocab], in Double for the reduction.
    static func logSoftmax(_ row: UnsafePointer<Float>, _ n: Int) -> [Float] {
        let lse = Kernels.logSumExp(row, n)
        return (0..<n).map { row[$0] - lse }
    }

    /// Records the KL reference distributions from the unedited logits.
    public mutating func setReference(from logits: Tensor) {
        let V = logits.shape[1], first = rewriteTargets.reduce(0) { $0 + $1.count }
        initialLogProbs = logits.data.withUnsafeBufferPointer { p in
            (0..<klRows).map { Self.logSoftmax(p.baseAddress! + (first + $0) * V, V) }
        }
    }

    /// The loss and ∂L/∂logits [rows, vocab], and ∂L/∂δ of the norm term (added by the caller).
    public func evaluate(logits: Tensor, delta: [Float]) -> (value: Value, logitGradient: Tensor, normGradient: [Float]) {
        let V = logits.shape[1]
        var grad = [Float](repeating: 0, count: logits.count)
        var nll: Double = 0, kl: Double = 0
        let prompts = Double(max(1, rewriteTargets.count))
        logits.data.withUnsafeBufferPointer { lp in
            grad.withUnsafeMutableBufferPointer { gp in
                var row = 0
                for targets in rewriteTargets {
                    let w = 1 / (Double(targets.count) * prompts)
                    for t in targets {
                        let z = lp.baseAddress! + row * V, g = gp.baseAddress! + row * V
                        let lse = Kernels.logSumExp(z, V)
                        nll += w * Double(lse - z[Int(t)])
                        // ∂/∂z of −log softmax(z)[t] = softmax(z) − onehot(t).
                        for v in 0..<V { g[v] = Float(w) * Kernels.exp(z[v] - lse) }
                        g[Int(t)] -= Float(w)
                        row += 1
                    }
                }
                for k in 0..<klRows where k < initialLogProbs.count {
                    let z = lp.baseAddress! + row * V, g = gp.baseAddress! + row * V
                    let lse = Kernels.logSumExp(z, V)
                    let ref = initialLogProbs[k]
                    // KL(P‖Q) = Σ p (log p − log q); ∂/∂z_j = p_j ((log p_j − log q_j) − KL).
                    var d: Double = 0
                    for v in 0..<V {
                        let lp = z[v] - lse
                        d += Double(Kernels.exp(lp)) * Double(lp - ref[v])
                    }
                    let w = klRowWeights.map { k < $0.count ? $0[k] : 0 } ?? Double(klFactor) / Double(klRows)
                    kl += w * d
                    for v in 0..<V {
                        let lpv = z[v] - lse
                        g[v] = Float(w * Double(Kernels.exp(lpv)) * (Double(lpv - ref[v]) - d))
                    }
                    row += 1
                }
            }
        }
        let n = Vector.norm(delta)
        let normGrad = n > 0 ? delta.map { normWeight * $0 / n } : [Float](repeating: 0, count: delta.count)
        return (Value(nll: nll, kl: kl, norm: Double(normWeight * n)), Tensor(shape: logits.shape, data: grad), normGrad)
    }
}

/// Adam with PyTorch's defaults and bias correction, on one vector.
public struct Adam: Sendable {
    public var lr: Float
    public var beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8
    var m: [Float], v: [Float], t = 0
    public init(lr: Float, count: Int) { self.lr = lr; m = .init(repeating: 0, count: count); v = .init(repeating: 0, count: count) }

    public mutating func step(_ x: inout [Float], gradient g: [Float]) {
        t += 1
        let c1 = 1 - pow(beta1, Float(t)), c2 = 1 - pow(beta2, Float(t))
        let stepSize = lr / c1, c2s = c2.squareRoot()
        for i in 0..<x.count {
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
            // torch: denom = sqrt(v)/sqrt(1 − β2^t) + eps; x −= lr/(1 − β1^t) · m/denom.
            x[i] -= stepSize * m[i] / (v[i].squareRoot() / c2s + eps)
        }
    }
}
