import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

/// The CI smoke test of the edit engine on the default model: one short ROME edit (no covariance,
/// two templates, ten steps) must flip the fact and be undone bit-exactly.
@Suite struct RealModelEditTests {
    @Test func romeEditFlipsAFactAndRestoresExactly() throws {
        let m = try ModelLoader.load(path: try EditTestPaths.defaultModel())
        var h = RomeHyperparameters(layer: 7)
        h.mom2Adjustment = false
        h.vNumGradSteps = 10
        h.contextTemplates = [.init(length: 5, count: 2)]
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 0)
        #expect(templates.prefixes.count == 3)
        let editor = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil)
        let score = CounterFactScorer.make(m)
        let prompt = "The Eiffel Tower is located in"
        let before = try score(prompt, ["Rome", "Paris"])
        #expect(before[0] > before[1], "the unedited model prefers Paris")
        let hash = m.weightHash
        let result = try editor.computeUpdate(EditRequest(subject: "Eiffel Tower", prompt: "The {} is located in", targetNew: "Rome", targetTrue: "Paris"))
        #expect(result.losses.last!.nll < 0.5 * result.losses.first!.nll)
        let backup = try m.apply(result.update)
        let after = try score(prompt, ["Rome", "Paris"])
        #expect(after[0] < after[1], "after the edit Rome is more likely than Paris: \(after)")
        #expect(exp(-after[0]) > 0.3)
        // An unrelated fact survives.
        let other = try score("The capital of Japan is", ["Tokyo", "Rome"])
        #expect(other[0] < other[1])
        try m.restore(backup)
        #expect(m.weightHash == hash)
        #expect(try score(prompt, ["Rome", "Paris"]) == before)
    }

    /// ENCORE's most-probable early stop on the default model: MEMIT's z optimization (δ on the
    /// residual after layer 7) ends as soon as "Rome" is on top in every context, well before the
    /// step budget a loss-only rule (threshold 0) would spend.
    @Test func mostProbableEarlyStopEndsWhenTheTargetLeadsEverywhere() throws {
        let m = try ModelLoader.load(path: try EditTestPaths.defaultModel())
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 5, count: 2)], seed: 0)
        let request = EditRequest(subject: "Eiffel Tower", prompt: "The {} is located in", targetNew: "Rome", targetTrue: "Paris")
        let batch = try RomeBatch(request: request, prefixes: templates.prefixes, tokenizer: EditTokenizer(model: m), contextLength: m.config.contextLength)
        let pass = try DeltaPass(model: m, site: Site(layer: 7, kind: .residOut), prompts: batch.rewrite + batch.kl)
        let hNorm = Vector.norm(pass.residuals[0])
        var o = DeltaOptimization(steps: 15, lr: 0.5, weightDecay: 1e-3, klFactor: 0.0625, earlyStopLoss: 0, maxNorm: 0.75 * hNorm, referenceNorm: hNorm)
        let full = try o.run(pass: pass, batch: batch, refinement: nil)
        o.stopWhenTop = true
        let mpes = try o.run(pass: pass, batch: batch, refinement: nil)
        #expect(full.losses.count == 15 && mpes.losses.count < 15, "steps: \(mpes.losses.count) with MPES, \(full.losses.count) without")
        #expect(DeltaOptimization.targetsOnTop(try pass.forward(delta: mpes.delta), batch.rewriteTargets))
        #expect(Vector.norm(mpes.delta) < Vector.norm(full.delta), "the early stop writes a smaller change")
        // ENCORE's counter: stop the third time every target is on top, so at least two steps later.
        o.topChecks = 3
        let later = try o.run(pass: pass, batch: batch, refinement: nil)
        #expect(later.losses.count >= min(15, mpes.losses.count + 2), "steps: \(later.losses.count) with 3 checks, \(mpes.losses.count) with 1")
        #expect(later.losses.last!.nll < mpes.losses.last!.nll, "the later stop wins with a larger margin")
    }
}
