@testable import Editing
import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor
import Testing

@Suite struct MesaTests {
    /// A lossless SAE of width 2d: latent pairs ±e_i, threshold 0, so dec(enc(x)) = x for every x.
    static func losslessSAE(d: Int, site: Site) throws -> SparseAutoencoder {
        var enc = [Float](repeating: 0, count: 2 * d * d)
        for i in 0..<d { enc[i * d + i] = 1; enc[(d + i) * d + i] = -1 }
        return try SparseAutoencoder(dIn: d, width: 2 * d, encoder: enc, encoderBias: .init(repeating: 0, count: 2 * d), decoder: enc,
                                     decoderBias: .init(repeating: 0, count: d), threshold: .init(repeating: 0, count: 2 * d), k: nil,
                                     metadata: SAEMetadata(modelName: "tiny", modelHash: nil, site: site, contextSize: 64, prependBos: false))
    }

    /// An SAE whose latents are all on near the origin (b_enc = 5, θ = 0): enc is affine there, so the
    /// refinement is linear in δ and its gradient must match finite differences exactly.
    static func alwaysOnSAE(d: Int, f: Int, site: Site, bias: Float = 5) throws -> SparseAutoencoder {
        var rng = Xoshiro256(seed: 9)
        func r() -> Float { Float(Int(rng.next() % 2001) - 1000) / 4000 }
        return try SparseAutoencoder(dIn: d, width: f, encoder: (0..<(f * d)).map { _ in r() }, encoderBias: .init(repeating: bias, count: f),
                                     decoder: (0..<(f * d)).map { _ in r() }, decoderBias: (0..<d).map { _ in r() },
                                     threshold: .init(repeating: 0, count: f), k: nil,
                                     metadata: SAEMetadata(modelName: "tiny", modelHash: nil, site: site, contextSize: 64, prependBos: false))
    }

    @Test func noChangeAtZeroDelta() throws {
        let d = 8
        let sae = try Self.alwaysOnSAE(d: d, f: 20, site: Site(layer: 1, kind: .mlpOut))
        let h: [[Float]] = [(0..<d).map { Float($0) / 10 }, (0..<d).map { -Float($0) / 7 }]
        let ref = SAERefinement(sae: sae, l1: 0.01, activations: h)
        let s = ref.evaluate([Float](repeating: 0, count: d))
        // enc(0) is subtracted, so δ = 0 leaves every prompt's activation unchanged (the public code adds enc(0)).
        #expect(s.changes.allSatisfy { $0.allSatisfy { $0 == 0 } } && s.l1Norm == 0)
    }

    @Test func gradientMatchesFiniteDifferencesWhereTheRefinementIsSmooth() throws {
        let d = 8, f = 20, n = 3
        let sae = try Self.alwaysOnSAE(d: d, f: f, site: Site(layer: 1, kind: .mlpOut))
        var rng = Xoshiro256(seed: 4)
        func r() -> Float { Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let h = (0..<n).map { _ in (0..<d).map { _ in r() } }
        let ref = SAERefinement(sae: sae, l1: 0.05, activations: h)
        let c = (0..<n).map { _ in (0..<d).map { _ in r() } }  // L = Σ_i c_i·Δ_i + l1‖g‖₁
        func loss(_ delta: [Float]) -> Double {
            let s = ref.evaluate(delta)
            var v = Double(ref.l1) * s.l1Norm
            for i in 0..<n { for k in 0..<d { v += Double(c[i][k] * s.changes[i][k]) } }
            return v
        }
        let delta = (0..<d).map { _ in r() * 0.3 }
        let g = ref.gradient(ref.evaluate(delta), changeGradients: c)
        for k in 0..<d {
            var p = delta, m = delta
            p[k] += 1e-2; m[k] -= 1e-2
            let fd = (loss(p) - loss(m)) / 2e-2
            #expect(abs(fd - Double(g[k])) < 2e-3 * max(1, abs(fd)), "component \(k): finite difference \(fd), gradient \(g[k])")
        }
    }

    static func editor(_ m: LanguageModel, sae: SparseAutoencoder?, averaging: RomeHyperparameters.KeyAveraging,
                       variant: MesaVariant = .neutral, clamp: Float? = nil) throws -> RomeEditor {
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 12
        h.keyAveraging = averaging
        if let clamp { h.clampNormFactor = clamp }
        if sae != nil { h.mesa = MesaHyperparameters(sae: "test", l1: 0, variant: variant) }
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        return try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, sae: sae)
    }

    /// The shared refinement's gradient, with a gradient on the shared change itself (the neutral
    /// variant's weight decay), matches finite differences.
    @Test func sharedGradientMatchesFiniteDifferences() throws {
        let d = 8, f = 20, n = 3
        let sae = try Self.alwaysOnSAE(d: d, f: f, site: Site(layer: 1, kind: .mlpOut))
        var rng = Xoshiro256(seed: 5)
        func r() -> Float { Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let ref = SAERefinement(sae: sae, l1: 0.05, sharedActivation: (0..<d).map { _ in r() }, prompts: n)
        let c = (0..<n).map { _ in (0..<d).map { _ in r() } }  // L = Σ_i c_i·Δ + e·Δ + l1‖g‖₁
        let e = (0..<d).map { _ in r() }
        func loss(_ delta: [Float]) -> Double {
            let s = ref.evaluate(delta)
            #expect(s.changes.count == n && s.changes.allSatisfy { $0 == s.changes[0] })
            var v = Double(ref.l1) * s.l1Norm
            for k in 0..<d { v += Double(e[k] * s.changes[0][k]); for i in 0..<n { v += Double(c[i][k] * s.changes[i][k]) } }
            return v
        }
        let delta = (0..<d).map { _ in r() * 0.3 }
        let g = ref.gradient(ref.evaluate(delta), changeGradients: c, shared: e)
        for k in 0..<d {
            var p = delta, m = delta
            p[k] += 1e-2; m[k] -= 1e-2
            let fd = (loss(p) - loss(m)) / 2e-2
            #expect(abs(fd - Double(g[k])) < 2e-3 * max(1, abs(fd)), "component \(k): finite difference \(fd), gradient \(g[k])")
        }
    }

    /// ΔW·k [rows] for a low-rank update.
    static func deltaW(_ u: LowRankUpdate, _ k: [Float]) -> [Float] {
        var rk = [Float](repeating: 0, count: u.rank)  // R k
        for j in 0..<u.rank { for c in 0..<u.cols { rk[j] += u.right[j * u.cols + c] * k[c] } }
        var out = [Float](repeating: 0, count: u.rows)  // L (R k)
        for row in 0..<u.rows { for j in 0..<u.rank { out[row] += u.left[row * u.rank + j] * rk[j] } }
        return out
    }

    /// The neutral variant writes the one change it optimized, as ROME's rank-one update: every rewrite
    /// prompt's MLP output moves by that same change (equal gains under `each`), the clamp holds on it,
    /// and the diagnostics are reported.
    @Test func neutralVariantWritesTheChangeItOptimizedAsARankOneUpdate() throws {
        let m = try TinyEditModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let sae = try Self.alwaysOnSAE(d: m.config.hidden, f: 48, site: site)
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let editor = try Self.editor(m, sae: sae, averaging: .each, clamp: 0.5)
        let r = try editor.computeUpdate(request)
        #expect(r.refined && r.applied.rank == 1 && r.applied == r.update.lowRank)
        let batch = try editor.batch(for: request)
        let pass = try DeltaPass(model: m, site: site, prompts: batch.rewrite)
        let delivered = pass.keys.map { Self.deltaW(r.applied, $0) }
        for v in delivered.dropFirst() { #expect(Vector.maxAbsDifference(v, delivered[0]) < 1e-3 * max(1, Vector.norm(delivered[0]))) }
        // The clamp acts on the written change: ‖Δ‖ ≤ 0.5·‖v_init‖.
        #expect(Vector.norm(delivered[0]) <= 0.5 * r.valueInitNorm * 1.001, "‖Δ‖ \(Vector.norm(delivered[0])), limit \(0.5 * r.valueInitNorm)")
        let ratio = try #require(r.writtenToDelta)
        #expect(abs(Double(ratio) - Double(Vector.norm(delivered[0]) / r.deltaNorm)) < 1e-3 * Double(ratio))
        let condition = try #require(r.keyGramCondition)
        #expect(condition >= 1 && condition.isFinite)
        // Plain ROME has no refinement diagnostics.
        #expect(try Self.editor(m, sae: nil, averaging: .each).computeUpdate(request).writtenToDelta == nil)
    }

    /// Through a lossless SAE the neutral variant is ROME under either key averaging.
    @Test func neutralVariantThroughALosslessSAEIsROMEUnderEachKeyAveraging() throws {
        let m = try TinyEditModel.load()
        let sae = try Self.losslessSAE(d: m.config.hidden, site: Site(layer: 1, kind: .mlpOut))
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let plain = try Self.editor(m, sae: nil, averaging: .each).computeUpdate(request)
        let mesa = try Self.editor(m, sae: sae, averaging: .each).computeUpdate(request)
        #expect(mesa.applied.rank == 1 && abs(mesa.deltaNorm - plain.deltaNorm) < 1e-3 * plain.deltaNorm)
        #expect(Vector.maxAbsDifference(mesa.update.r, plain.update.r) < 2e-3 * Vector.norm(plain.update.r))
        #expect(abs(try #require(mesa.writtenToDelta) - 1) < 1e-4)
    }

    /// The per-prompt variant: the vectors written are the ones the optimization evaluated, ΔW k_i = Δ_i
    /// for every rewrite prompt.
    @Test func refinedUpdateDeliversEachPromptsRefinedChange() throws {
        let m = try TinyEditModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let sae = try Self.alwaysOnSAE(d: m.config.hidden, f: 48, site: site)
        let editor = try Self.editor(m, sae: sae, averaging: .each, variant: .perPrompt)
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let hash = m.weightHash
        let r = try editor.computeUpdate(request)
        #expect(m.weightHash == hash)
        #expect(r.refined && editor.method == "ROME+MESA")
        #expect(r.losses.last!.nll < r.losses.first!.nll)
        let batch = try editor.batch(for: request)
        #expect(r.applied.rank == batch.rewrite.count)
        // Applying ΔW changes each rewrite prompt's MLP output by exactly ΔW k_i.
        let pass = try DeltaPass(model: m, site: site, prompts: batch.rewrite)
        let u = r.applied
        let delivered = pass.keys.map { Self.deltaW(u, $0) }
        // All prompts get changes refined from one δ: they differ from each other only where f_i + g crosses 0.
        #expect(delivered.allSatisfy { Vector.norm($0) > 0 })
        let backup = try m.apply(u)
        let after = try DeltaPass(model: m, site: site, prompts: batch.rewrite)
        for i in 0..<batch.rewrite.count {
            let got = zip(after.mlpOutputs[i], pass.mlpOutputs[i]).map { $0 - $1 }
            #expect(Vector.maxAbsDifference(got, delivered[i]) < 1e-3 * max(1, Vector.norm(delivered[i])))
        }
        try m.restore(backup)
        #expect(m.weightHash == hash)
    }

    /// Through a lossless SAE with no L1 the refined change is δ itself, so MESA reproduces ROME.
    @Test func losslessSAEReproducesROME() throws {
        let m = try TinyEditModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let sae = try Self.losslessSAE(d: m.config.hidden, site: site)
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let plain = try Self.editor(m, sae: nil, averaging: .templates).computeUpdate(request)
        let mesa = try Self.editor(m, sae: sae, averaging: .templates).computeUpdate(request)
        #expect(mesa.refined && !plain.refined && mesa.applied.rank == 1)
        #expect(abs(mesa.losses.first!.nll - plain.losses.first!.nll) < 1e-9)
        // Adam is invariant to the gradient's scale (the straight-through pass doubles it here), so the
        // trajectories agree up to Adam's ε.
        #expect(abs(mesa.deltaNorm - plain.deltaNorm) < 1e-3 * plain.deltaNorm, "‖δ‖ \(mesa.deltaNorm) vs \(plain.deltaNorm)")
        #expect(Vector.maxAbsDifference(mesa.update.r, plain.update.r) < 2e-3 * Vector.norm(plain.update.r))
        let c = try #require(mesa.coverage)
        #expect(c.outside < 1e-6, "a lossless SAE covers every change (outside \(c.outside))")
    }

    @Test func refinementNeedsAnSAEThatFitsTheSite() throws {
        let m = try TinyEditModel.load()
        let wrongSite = try Self.losslessSAE(d: m.config.hidden, site: Site(layer: 2, kind: .mlpOut))
        #expect(throws: EditError.self) { _ = try Self.editor(m, sae: wrongSite, averaging: .each) }
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.mesa = MesaHyperparameters(sae: "missing")
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 1)], seed: 3)
        #expect(throws: EditError.self) { _ = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil) }
        h.mesa?.fallback = true
        let e = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, fallbackReason: "no such SAE")
        #expect(e.method == "ROME" && e.settings["mesa_fallback"] == "no such SAE")
    }
}

@Suite struct SAELayerChoiceTests {
    @Test func scoresAreFractionsAndTheRecommendationFollowsTheSweep() throws {
        let m = try TinyEditModel.load()
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        let requests = [EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is"),
                        EditRequest(subject: "Rome", prompt: "{} is the capital of", targetNew: "Paris", targetTrue: "is")]
        var scores: [SAELayerScore] = []
        for layer in [0, 1] {
            let sae = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 24, site: Site(layer: layer, kind: .mlpOut), bias: 1e4)
            #expect(throws: EditError.self) { _ = try SAELayerChoice.score(model: m, sae: sae, layer: layer, requests: requests, templates: templates) }
            sae.logSparsity = [Float](repeating: -3, count: 24)
            let s = try SAELayerChoice.score(model: m, sae: sae, layer: layer, requests: requests, templates: templates)
            // Every latent of this SAE is on for every input: all sets are equal, and each latent fires on
            // 100% of the edit prompts against 0.1% of Wikipedia tokens.
            #expect(s.common == 1 && s.jaccard == 1 && abs(s.contrast) < 1e-12 && s.specificity == 1 && s.activeMean == 24)
            scores.append(s)
        }
        scores[1].specificity = 0.5
        #expect(SAELayerChoice.recommend(scores: scores, sweepS: [0: 80, 1: 90]) == 1, "layer 0 is more than 2 S points behind")
        #expect(SAELayerChoice.recommend(scores: scores, sweepS: [0: 89, 1: 90]) == 0)
        #expect(SAELayerChoice.recommend(scores: scores, sweepS: [:]) == 0)
        let wrong = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 24, site: Site(layer: 2, kind: .mlpOut))
        #expect(throws: EditError.self) { _ = try SAELayerChoice.score(model: m, sae: wrong, layer: 1, requests: requests, templates: templates) }
    }
}

@Suite struct MemitMesaTests {
    /// MEMIT and AlphaEdit refine z through an SAE at resid_out of the last edited layer; through a
    /// lossless SAE the refined change is δ, so the updates match the unrefined ones.
    @Test func losslessSAEReproducesMEMITAndTheSiteIsChecked() throws {
        let m = try TinyEditModel.load()
        let layers = [0, 1]
        var h = MemitHyperparameters(layers: layers, contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 12,
                                     clampNormFactor: 4, mom2UpdateWeight: 0.5, mom2Ridge: 0)
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        let stats = Dictionary(uniqueKeysWithValues: layers.map { ($0, MemitTests.statistics(m, layer: $0)) })
        let requests = [EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")]
        let plain = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats).computeUpdates(requests)
        h.mesa = MesaHyperparameters(sae: "lossless", l1: 0)
        let sae = try MesaTests.losslessSAE(d: m.config.hidden, site: Site(layer: 1, kind: .residOut))
        let editor = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, sae: sae)
        #expect(editor.method == "MEMIT+MESA")
        let refined = try editor.computeUpdates(requests)
        #expect(abs(refined.deltaNorms[0] - plain.deltaNorms[0]) < 1e-3 * plain.deltaNorms[0], "‖δ‖ \(refined.deltaNorms[0]) vs \(plain.deltaNorms[0])")
        for (a, b) in zip(refined.updates, plain.updates) {
            #expect(Vector.maxAbsDifference(a.left, b.left) < 2e-3 * max(1e-6, Vector.norm(b.left)))
        }
        #expect(try #require(editor.lastCoverage).outside < 1e-6)
        // An mlp_out SAE (the public code's site) is refused for MEMIT's residual δ.
        let wrong = try MesaTests.losslessSAE(d: m.config.hidden, site: Site(layer: 1, kind: .mlpOut))
        #expect(throws: EditError.self) { _ = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, sae: wrong) }
    }
}
