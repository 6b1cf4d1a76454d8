import Foundation
import ModelRuntime
import Tensor

/// The δ optimizations of several facts (one batch edit) run together: one `DeltaPass` holds every
/// fact's rewrite and KL prompts, and each step runs one forward and one backward over the prompts of
/// the facts still running, packed into the same matrix products (ragged, no padding). Each fact keeps
/// its own `DeltaOptimization` (steps, learning rate, clamp, stop rule), loss, Adam state, δ and count
/// of on-top evaluations (the most-probable early stop's `topChecks`), and follows exactly the schedule
/// it would follow alone: prompts never attend to each other, so a fact's logits do not depend on
/// which other facts share the step. A fact that stops leaves the batch: its prompts are not in any
/// later step (in the backward of the step it stops at, its rows carry a zero gradient).
public enum JointDeltaOptimization {
    /// One fact: its optimization settings and its tokenized prompts.
    public struct Fact: Sendable {
        public var optimization: DeltaOptimization
        public var batch: RomeBatch

        public init(optimization: DeltaOptimization, batch: RomeBatch) {
            self.optimization = optimization
            self.batch = batch
        }
    }

    public struct Outcome {
        /// Per fact, in order: δ [d] after its last evaluated step and the loss of each of its steps.
        public var facts: [DeltaOptimization.Outcome]
        /// Batch rows R of each step's forward (Σ (T − p) over the running facts' prompts).
        public var rowsPerStep: [Int]
        /// Wall-clock seconds of the steps' parts: "forward" (the pass to the logits), "loss" (every
        /// fact's loss, its logit gradient and stop test), "backward" (to ∂L/∂δ) and "descend" (Adam);
        /// and their arithmetic, "forward_gflop" and "backward_gflop".
        public var phases: [String: Double] = [:]
    }

    /// The prompts of the shared pass: each fact's rewrite prompts, then its KL prompts, fact after fact.
    public static func prompts(of batches: [RomeBatch]) -> [DeltaPrompt] {
        batches.flatMap { $0.rewrite + $0.kl }
    }

    /// Runs every fact's optimization to its own stop. `pass` must hold `prompts(of:)` of the facts' batches.
    public static func run(_ facts: [Fact], pass: DeltaPass) throws -> Outcome {
        guard !facts.isEmpty else { throw EditError(.hyperparameters, "no facts to optimize") }
        guard pass.prompts == prompts(of: facts.map(\.batch)) else {
            throw EditError(.state, "the δ pass does not hold the facts' prompts in order")
        }
        let d = pass.model.config.hidden, V = pass.model.config.vocabSize, n = facts.count
        // Per fact: its first prompt in the pass, its prompt count, its logit rows (targets, then KL).
        var first: [Int] = [], promptCount: [Int] = [], logitRows: [Int] = []
        var at = 0
        for f in facts {
            let ps = f.batch.rewrite + f.batch.kl
            first.append(at)
            promptCount.append(ps.count)
            logitRows.append(ps.reduce(0) { $0 + $1.logitPositions.count })
            at += ps.count
        }
        let rowsOf = pass.prompts.map { $0.tokens.count - $0.position }
        var losses = facts.map { f in
            EditLoss(rewriteTargets: f.batch.rewriteTargets, klRows: f.batch.kl.count, klFactor: f.optimization.klFactor,
                     normWeight: f.optimization.weightDecay / (f.optimization.referenceNorm * f.optimization.referenceNorm))
        }
        var deltas = [[Float]](repeating: [Float](repeating: 0, count: d), count: n)   // [n][d]
        var adams = facts.map { Adam(lr: $0.optimization.lr, count: d) }
        var history = [[EditLoss.Value]](repeating: [], count: n)
        var onTop = [Int](repeating: 0, count: n)   // per fact: evaluations with every target on top
        var rowsPerStep: [Int] = []
        var running = Array(0..<n)
        var step = 0
        var clock = PhaseClock()
        while !running.isEmpty {
            // The running facts' prompts, each with its fact's δ.
            var subset: [Int] = [], vectors: [[Float]] = []
            for f in running {
                for k in 0..<promptCount[f] {
                    subset.append(first[f] + k)
                    vectors.append(deltas[f])
                }
            }
            rowsPerStep.append(subset.reduce(0) { $0 + rowsOf[$1] })
            // logits [Σ_running logitRows, V], fact after fact.
            let logits = try pass.forward(deltas: vectors, prompts: subset)
            clock.lap("forward")
            var gradient = [Float](repeating: 0, count: logits.count)   // ∂L/∂logits, zero for facts that stop now
            var descending: [(fact: Int, slot: Int, normGradient: [Float])] = []
            var row = 0, slot = 0
            for f in running {
                let rows = logitRows[f], opt = facts[f].optimization
                let own = Tensor(shape: [rows, V], data: Array(logits.data[(row * V)..<((row + rows) * V)]))
                if step == 0 { losses[f].setReference(from: own) }
                let (value, dLogits, dNorm) = losses[f].evaluate(logits: own, delta: deltas[f])
                history[f].append(value)
                guard value.total.isFinite else { throw EditError(.nonFinite, "fact \(f)'s edit loss became non-finite at step \(step)") }
                if !opt.isFinal(value, logits: own, targets: facts[f].batch.rewriteTargets, step: step, onTop: &onTop[f]) {
                    gradient.replaceSubrange((row * V)..<((row + rows) * V), with: dLogits.data)
                    descending.append((f, slot, dNorm))
                }
                row += rows
                slot += promptCount[f]
            }
            running = descending.map(\.fact)
            clock.lap("loss")
            if descending.isEmpty { break }
            // ∂L/∂δ per prompt of this step, [subset.count][d]; a fact's gradient is the sum over its
            // prompts in order (as `DeltaPass.backward` sums a shared δ's rows).
            let perPrompt = try pass.backwardPerPrompt(logitGradient: Tensor(shape: logits.shape, data: gradient))
            clock.lap("backward")
            for (f, s, dNorm) in descending {
                var g = [Float](repeating: 0, count: d)
                g.withUnsafeMutableBufferPointer { gp in
                    for k in 0..<promptCount[f] { perPrompt[s + k].withUnsafeBufferPointer { Kernels.add(gp.baseAddress!, $0.baseAddress!, count: d) } }
                }
                try facts[f].optimization.descend(&deltas[f], adam: &adams[f], gradient: g, normGradient: dNorm, step: step)
            }
            clock.lap("descend")
            step += 1
        }
        let outcomes = (0..<n).map { DeltaOptimization.Outcome(delta: deltas[$0], losses: history[$0], changes: nil, latents: nil) }
        var phases = clock.phases
        phases["forward_gflop"] = pass.forwardFLOPs / 1e9
        phases["backward_gflop"] = pass.backwardFLOPs / 1e9
        return Outcome(facts: outcomes, rowsPerStep: rowsPerStep, phases: phases)
    }
}
