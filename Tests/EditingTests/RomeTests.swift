import Editing
import Foundation
import InMemoryLogging
import Logging
import ModelRuntime
import Tensor
import Testing

@Suite struct RomeTests {
    static func templates(_ m: LanguageModel) throws -> ContextTemplates {
        try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2), .init(length: 6, count: 2)], seed: 3)
    }

    @Test func templatesAreDeterministicAndStored() throws {
        let m = try TinyEditModel.load()
        let a = try Self.templates(m), b = try Self.templates(m)
        #expect(a == b)
        #expect(a.prefixes.count == 5 && a.prefixes[0] == "")
        #expect(a.prefixes.dropFirst().allSatisfy { $0.hasSuffix(". ") && !$0.contains("{") && !$0.contains("}") })
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = EditState(directory: dir, baseHash: m.weightHash)
        let logged = InMemoryLogHandler()
        let logger = Logger(label: "test") { _ in logged }
        let stored = try state.templates(model: m, groups: a.groups, seed: 3, logger: logger)
        #expect(stored == a && logged.entries.count == 1)
        let again = try state.templates(model: m, groups: a.groups, seed: 3, logger: logger)
        #expect(again == a && logged.entries.count == 1, "a second load must not regenerate")
    }

    @Test func updateWritesTheOptimizedValueAtTheAveragedKey() throws {
        let m = try TinyEditModel.load()
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 15
        let editor = try RomeEditor(model: m, hparams: h, templates: try Self.templates(m), statistics: nil)
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let hash = m.weightHash
        let result = try editor.computeUpdate(request)
        #expect(m.weightHash == hash, "computing an update must not touch the weights")
        #expect(result.losses.count > 1)
        #expect(result.losses.last!.nll < result.losses.first!.nll)
        // r-ROME consistency: ΔW k* = δ, so W' k* = W k* + δ exactly up to rounding.
        let W = m.weights.layers[1].wDown
        func mv(_ k: [Float]) -> [Float] {
            (0..<W.shape[0]).map { i in (0..<W.shape[1]).reduce(Float(0)) { $0 + W.pointer[i * W.shape[1] + $1] * k[$1] } }
        }
        let before = mv(result.keyStar)
        let backup = try m.apply(result.update)
        let after = mv(result.keyStar)
        let delta = zip(after, before).map { $0 - $1 }
        #expect(abs(Vector.norm(delta) - result.deltaNorm) < 1e-3 * max(1, result.deltaNorm))
        #expect(m.weightHash != hash)
        try m.restore(backup)
        #expect(m.weightHash == hash, "restore must be bit-exact")
    }

    @Test func covarianceAdjustedUpdateUsesCInverse() throws {
        let m = try TinyEditModel.load()
        let ff = m.config.intermediate
        // A diagonal C: u ∝ C⁻¹k*.
        var moment = [Float](repeating: 0, count: ff * ff)
        for i in 0..<ff { moment[i * ff + i] = Float(1 + i % 7) }
        let stats = KeyStatistics(spec: KeyStatisticsSpec(modelHash: m.weightHash, layer: 1, tokens: 1), dim: ff, count: 1, moment: moment)
        var h = RomeHyperparameters(layer: 1)
        h.vNumGradSteps = 5
        h.mom2Ridge = 0
        let editor = try RomeEditor(model: m, hparams: h, templates: try Self.templates(m), statistics: stats)
        let r = try editor.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"))
        let expected = (0..<ff).map { r.keyStar[$0] / Float(1 + $0 % 7) }
        let n = Vector.norm(expected)
        #expect(Vector.maxAbsDifference(r.update.u, expected.map { $0 / n }) < 1e-5)
        #expect(abs(Vector.norm(r.update.u) - 1) < 1e-5)
    }

    /// The key gains uᵀk_i/uᵀk* average to 1 under each key averaging's weights, and `each` makes
    /// every gain 1: δ reaches every rewrite prompt whole, subject-initial bare prompts included.
    @Test(arguments: [RomeHyperparameters.KeyAveraging.templates, .groups, .each])
    func keyAveragingWeightsAndGains(_ averaging: RomeHyperparameters.KeyAveraging) throws {
        let m = try TinyEditModel.load()
        let ff = m.config.intermediate
        var moment = [Float](repeating: 0, count: ff * ff)
        for i in 0..<ff { moment[i * ff + i] = Float(1 + i % 5) }
        for i in 1..<ff { moment[i * ff + i - 1] = 0.3; moment[(i - 1) * ff + i] = 0.3 }
        let stats = KeyStatistics(spec: KeyStatisticsSpec(modelHash: m.weightHash, layer: 1, tokens: 1), dim: ff, count: 1, moment: moment)
        var h = RomeHyperparameters(layer: 1, keyAveraging: averaging)
        h.vNumGradSteps = 2
        let editor = try RomeEditor(model: m, hparams: h, templates: try Self.templates(m), statistics: stats)
        let r = try editor.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"))
        let g = r.keyGains.map(Double.init)
        #expect(g.count == 5)
        switch averaging {
        case .templates:
            #expect(abs(g.reduce(0, +) / 5 - 1) < 1e-4)
        case .groups:
            // Groups: the bare prompt, then 2 + 2 templates: weights 1/3, 1/6 × 4.
            #expect(abs(g[0] / 3 + g[1...].reduce(0, +) / 6 - 1) < 1e-4)
        case .each:
            for x in g { #expect(abs(x - 1) < 1e-3) }
        }
        #expect(abs(Vector.norm(r.update.u) - 1) < 1e-5)
    }

    @Test func badRequestsAreTypedErrorsAndLeaveWeightsUntouched() throws {
        let m = try TinyEditModel.load()
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 3
        let editor = try RomeEditor(model: m, hparams: h, templates: try Self.templates(m), statistics: nil)
        let hash = m.weightHash
        let cases: [(EditRequest, EditError.Code)] = [
            (EditRequest(subject: "Berlin", prompt: "Paris is in", targetNew: "Rome"), .subjectNotFound),
            (EditRequest(subject: "Paris", prompt: "Paris is in", targetNew: "Rome"), .promptPlaceholder),
            (EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "  "), .emptyTarget),
            (EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "Rome"), .targetUnchanged),
        ]
        for (req, code) in cases {
            #expect { try editor.computeUpdate(req) } throws: { ($0 as? EditError)?.code == code }
        }
        // NaN in the optimization: a poisoned weight in a layer after the edit site.
        let victim = m.weights.layers[2].wUp
        let saved = victim.data
        victim.mutate { $0[0] = .nan }
        #expect { try editor.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")) } throws: {
            ($0 as? EditError)?.code == .nonFinite || ($0 as? ModelError)?.code == .nonFinite
        }
        victim.mutate { buf in saved.withUnsafeBufferPointer { buf.baseAddress!.update(from: $0.baseAddress!, count: $0.count) } }
        #expect(m.weightHash == hash)
        // A malformed update is refused before any write.
        let bad = RankOneUpdate(parameter: m.weights.layers[1].wDown.name, layer: 1, u: [Float](repeating: .nan, count: m.config.intermediate),
                                r: [Float](repeating: 1, count: m.config.hidden))
        #expect(throws: EditError.self) { try m.apply(bad) }
        #expect(m.weightHash == hash)
    }

    @Test func hyperparametersAreRangeChecked() throws {
        var h = RomeHyperparameters(layer: 99)
        #expect(throws: EditError.self) { try h.validate(layers: 30) }
        h.layer = 3
        h.vLr = -1
        #expect(throws: EditError.self) { try h.validate(layers: 30) }
    }
}

@Suite struct ExportTests {
    @Test func editedModelSavesAndReloadsWithTheSameHash() throws {
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = try TinyEditModel.load(directory: dir)
        let ff = m.config.intermediate, d = m.config.hidden
        let update = RankOneUpdate(parameter: m.weights.layers[1].wDown.name, layer: 1,
                                   u: (0..<ff).map { Float($0 % 5) * 0.1 }, r: (0..<d).map { Float($0 % 3) - 1 })
        let base = m.weightHash
        try m.apply(update)
        let edited = m.weightHash
        #expect(edited != base)
        let out = dir.appendingPathComponent("edited.gguf").path
        try ModelExporter.writeGGUF(m, to: out)
        let back = try ModelLoader.load(path: out)
        #expect(back.weightHash == edited)
        #expect(back.tokenizer.encode("Paris is big") == m.tokenizer.encode("Paris is big"))
    }
}
