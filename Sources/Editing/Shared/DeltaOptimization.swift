import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// The δ optimization shared by ROME (δ on the MLP output) and MEMIT (δ on the residual): Adam on
/// token-averaged NLL + KL + weightDecay·‖δ‖/‖ref‖², early stop, and ‖δ‖ ≤ maxNorm after every step.
public struct DeltaOptimization: Sendable {
    public var steps: Int
    public var lr: Float
    public var weightDecay: Float
    public var klFactor: Float
    public var earlyStopLoss: Float
    public var maxNorm: Float
    /// The norm the weight decay is relative to (‖v_init‖ for ROME, ‖h_L‖ for MEMIT).
    public var referenceNorm: Float
    /// ENCORE's most-probable early stop (MPES): also stop once every target token is the most
    /// probable one at its position in every rewrite prompt (teacher-forced), instead of optimizing
    /// on to a loss threshold (over-optimization that inflates ‖δ‖ and the update).
    public var stopWhenTop = false
    /// With `stopWhenTop`: stop the n-th time every target is on top (ENCORE's |prob_cutoff|: 2 for
    /// Llama3-8B, 4 for GPT2-XL), so that the new object wins with some margin. 1: the first time.
    public var topChecks = 1
    /// The multiple of δ (or of its refined change) each prompt of the pass sees ([prompts]); nil: 1
    /// for every prompt. ROME's neighbour prompts see g_n·δ, the change the rank-one update will give them.
    public var promptScales: [Float]?
    /// The weight of each KL row ([KL prompts]; see `EditLoss.klRowWeights`); nil: the mean.
    public var klRowWeights: [Double]?
    /// Confines δ to a subspace chosen from the gradient at δ = 0 ([d] → orthonormal rows [m][d]):
    /// Adam then runs on the coefficients c [m] of δ = Σ c_i q_i, the decay and the clamp on ‖c‖ = ‖δ‖.
    /// Without a refinement only.
    public var subspace: (@Sendable ([Float]) throws -> OutputFeatureSubspace)?

    public init(steps: Int, lr: Float, weightDecay: Float, klFactor: Float, earlyStopLoss: Float, maxNorm: Float, referenceNorm: Float) {
        self.steps = steps
        self.lr = lr
        self.weightDecay = weightDecay
        self.klFactor = klFactor
        self.earlyStopLoss = earlyStopLoss
        self.maxNorm = maxNorm
        self.referenceNorm = referenceNorm
    }

    /// δ [d] and the loss of every evaluated step. `pass` holds the rewrite prompts, then the KL prompts.
    public func run(pass: DeltaPass, batch: RomeBatch) throws -> ([Float], [EditLoss.Value]) {
        let r = try run(pass: pass, batch: batch, refinement: nil)
        return (r.delta, r.losses)
    }

    public struct Outcome {
        /// δ [d] after the last evaluated step.
        public var delta: [Float]
        public var losses: [EditLoss.Value]
        /// With refinement: the change Δ_i each prompt saw at the final δ, [prompts][d] (the vectors to write).
        public var changes: [[Float]]?
        /// With refinement: latents of g = enc(δ) − enc(0) that are nonzero at the final δ; with a
        /// subspace, the dimension of the subspace.
        public var latents: Int?
        /// With a subspace: the latents whose decoder directions span it.
        public var subspaceLatents: [Int]?
    }

    /// As `run(pass:batch:)`; with `refinement`, each prompt sees its SAE-refined change Δ_i(δ) instead
    /// of δ, and the loss adds the refinement's L1 term.
    public func run(pass: DeltaPass, batch: RomeBatch, refinement: SAERefinement?) throws -> Outcome {
        let d = pass.model.config.hidden
        var loss = EditLoss(rewriteTargets: batch.rewriteTargets, klRows: batch.kl.count, klFactor: klFactor,
                            normWeight: weightDecay / (referenceNorm * referenceNorm))
        loss.klRowWeights = klRowWeights
        if let s = promptScales, s.count != pass.prompts.count {
            throw EditError(.state, "\(s.count) prompt scales for \(pass.prompts.count) prompts")
        }
        // Per-prompt vectors: scale_i·v_i; the gradient of each prompt's vector scales back the same way.
        func scaled(_ vs: [[Float]]) -> [[Float]] {
            guard let s = promptScales else { return vs }
            return zip(vs, s).map { v, c in c == 1 ? v : v.map { $0 * c } }
        }
        func forward(_ state: SAERefinement.State?, _ delta: [Float]) throws -> Tensor {
            if let state { return try pass.forward(deltas: scaled(state.changes)) }
            if promptScales != nil { return try pass.forward(deltas: scaled(Array(repeating: delta, count: pass.prompts.count))) }
            return try pass.forward(delta: delta)
        }
        func plainGradient(_ dLogits: Tensor) throws -> [Float] {
            guard promptScales != nil else { return try pass.backward(logitGradient: dLogits) }
            let per = scaled(try pass.backwardPerPrompt(logitGradient: dLogits))
            var g = [Float](repeating: 0, count: d)
            for row in per { for k in 0..<d { g[k] += row[k] } }
            return g
        }
        if subspace != nil, refinement != nil { throw EditError(.state, "a δ subspace and an SAE refinement do not combine") }
        var delta = [Float](repeating: 0, count: d)
        var adam = Adam(lr: lr, count: d)
        // With `subspace`: its basis [m][d] (chosen at the first step), δ's coefficients [m] and their Adam.
        var basis: [[Float]]?, chosen: [Int]?, coefficients: [Float] = []
        var losses: [EditLoss.Value] = []
        var last: SAERefinement.State?
        var onTop = 0
        // A shared refinement writes its change Δ(δ): the decay and the clamp act on Δ, not on δ.
        let onChange = refinement?.shared == true
        for it in 0..<steps {
            let state = refinement?.evaluate(delta)
            last = state
            let logits = try forward(state, delta)
            if it == 0 { loss.setReference(from: logits) }
            var (value, dLogits, dNorm) = loss.evaluate(logits: logits, delta: onChange ? state!.changes[0] : delta)
            if let state, let refinement { value.sparsity = Double(refinement.l1) * state.l1Norm }
            losses.append(value)
            guard value.total.isFinite else { throw EditError(.nonFinite, "the edit loss became non-finite at step \(it)") }
            if isFinal(value, logits: logits, targets: batch.rewriteTargets, step: it, onTop: &onTop) { break }
            let g: [Float]
            if let state, let refinement {
                g = refinement.gradient(state, changeGradients: scaled(try pass.backwardPerPrompt(logitGradient: dLogits)),
                                        shared: onChange ? dNorm : nil)
            } else {
                g = try plainGradient(dLogits)
            }
            if let choose = subspace {
                if basis == nil {
                    let space = try choose(g)
                    let b = space.basis
                    chosen = space.latents
                    guard !b.isEmpty, b.allSatisfy({ $0.count == d }) else { throw EditError(.state, "the δ subspace is empty or not [m][\(d)]") }
                    basis = b
                    coefficients = [Float](repeating: 0, count: b.count)
                    adam = Adam(lr: lr, count: b.count)
                }
                let q = basis!
                let project = { (v: [Float]) in q.map { Vector.dot($0, v) } }
                try descend(&coefficients, adam: &adam, gradient: project(g), normGradient: project(dNorm), step: it, clamp: maxNorm)
                delta = [Float](repeating: 0, count: d)
                for (c, row) in zip(coefficients, q) { for k in 0..<d { delta[k] += c * row[k] } }
                continue
            }
            try descend(&delta, adam: &adam, gradient: g, normGradient: onChange ? [Float](repeating: 0, count: d) : dNorm, step: it,
                        clamp: onChange ? nil : maxNorm)
            if onChange, let refinement { clampChange(&delta, refinement) }
        }
        return Outcome(delta: delta, losses: losses, changes: last?.changes, latents: last.map { $0.g.filter { $0 != 0 }.count } ?? basis?.count,
                       subspaceLatents: chosen)
    }

    /// Shrinks δ until the shared change it produces has ‖Δ(δ)‖ ≤ maxNorm (Δ is not linear in δ: the
    /// SAE's thresholds switch latents on and off, so the scale is found by a few rescalings).
    func clampChange(_ delta: inout [Float], _ refinement: SAERefinement) {
        for _ in 0..<8 {
            let n = Vector.norm(refinement.evaluate(delta).changes[0])
            guard n > maxNorm * 1.0001, n.isFinite else { return }
            for i in 0..<delta.count { delta[i] *= maxNorm / n }
        }
    }

    /// Whether the loss `value` evaluated at step `step` (logits [rows, vocab], the rewrite rows first)
    /// ends the optimization: every target on top for the `topChecks`-th time (with `stopWhenTop`;
    /// `onTop` is the optimization's count of such evaluations, from 0), the edit objective below
    /// `earlyStopLoss`, or the last step.
    func isFinal(_ value: EditLoss.Value, logits: Tensor, targets: [[Int32]], step: Int, onTop: inout Int) -> Bool {
        if stopWhenTop, Self.targetsOnTop(logits, targets) {
            onTop += 1
            if onTop >= topChecks { return true }
        }
        // Early stop on the edit objective (NLL + KL + decay): MESA's L1 term does not vanish at a
        // solved edit and would otherwise keep every refined edit running to the last step.
        return value.total - value.sparsity < Double(earlyStopLoss) || step == steps - 1
    }

    /// One Adam step on δ [d] with `gradient` + `normGradient` (both [d]), then the clamp ‖δ‖ ≤ `clamp`
    /// (maxNorm unless given; nil: no clamp here).
    func descend(_ delta: inout [Float], adam: inout Adam, gradient: [Float], normGradient: [Float], step: Int) throws {
        try descend(&delta, adam: &adam, gradient: gradient, normGradient: normGradient, step: step, clamp: maxNorm)
    }

    func descend(_ delta: inout [Float], adam: inout Adam, gradient: [Float], normGradient: [Float], step: Int, clamp: Float?) throws {
        var g = gradient
        for i in 0..<g.count { g[i] += normGradient[i] }
        guard g.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the gradient became non-finite at step \(step)") }
        adam.step(&delta, gradient: g)
        guard let clamp else { return }
        let n = Vector.norm(delta)
        if n > clamp { for i in 0..<delta.count { delta[i] *= clamp / n } }
    }

    /// Whether each target token is the argmax of its logit row. `logits` [rows, vocab]: the rewrite
    /// prompts' target positions first, in the order of `targets` flattened.
    public static func targetsOnTop(_ logits: Tensor, _ targets: [[Int32]]) -> Bool {
        let v = logits.shape[1]
        return logits.data.withUnsafeBufferPointer { l in
            var row = 0
            for t in targets {
                for token in t {
                    let p = l.baseAddress! + row * v
                    let target = p[Int(token)]
                    for j in 0..<v where p[j] > target { return false }
                    row += 1
                }
            }
            return true
        }
    }
}
