import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

@Suite struct MemitTests {
    /// A positive-definite C for layer `l` of the tiny model: diag(1 + i % 5) with 0.3 off the diagonal.
    static func statistics(_ m: LanguageModel, layer l: Int, scale: Float = 1) -> KeyStatistics {
        let ff = m.config.intermediate
        var c = [Float](repeating: 0, count: ff * ff)
        for i in 0..<ff { c[i * ff + i] = scale * Float(1 + i % 5) }
        for i in 1..<ff { c[i * ff + i - 1] = 0.3 * scale; c[(i - 1) * ff + i] = 0.3 * scale }
        return KeyStatistics(spec: KeyStatisticsSpec(modelHash: m.weightHash, layer: l, tokens: 1), dim: ff, count: 1, moment: c)
    }

    static func editor(_ m: LanguageModel, layers: [Int] = [0, 1], lambda: Double = 0.5, scale: Float = 1) throws -> MemitEditor {
        var h = MemitHyperparameters(layers: layers, contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 20,
                                     clampNormFactor: 4, mom2UpdateWeight: lambda, mom2Ridge: 0)
        h.earlyStopLoss = 0.01
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        return try MemitEditor(model: m, hparams: h, templates: templates,
                               statistics: Dictionary(uniqueKeysWithValues: layers.map { ($0, statistics(m, layer: $0, scale: scale)) }))
    }

    @Test func batchEditSpreadsRankNUpdatesAndRaisesEveryTarget() throws {
        let m = try TinyEditModel.load()
        let requests = [EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"),
                        EditRequest(subject: "Rome", prompt: "{} is in", targetNew: "Paris")]
        let score = CounterFactScorer.make(m)
        let before = try requests.map { try score($0.prompt.replacingOccurrences(of: "{}", with: $0.subject), [$0.targetNew])[0] }
        let hash = m.weightHash
        let r = try Self.editor(m).computeUpdates(requests)
        #expect(m.weightHash == hash, "computing MEMIT updates must leave the weights as they were")
        #expect(r.updates.map(\.layer) == [0, 1])
        for u in r.updates { #expect(u.rank == 2 && u.rows == m.config.hidden && u.cols == m.config.intermediate) }
        for u in r.updates { try m.apply(u) }
        let after = try requests.map { try score($0.prompt.replacingOccurrences(of: "{}", with: $0.subject), [$0.targetNew])[0] }
        for (b, a) in zip(before, after) { #expect(a < b - 0.5, "target NLL \(b) → \(a)") }
    }

    @Test func lowRankUpdateOfRankOneMatchesTheRankOnePathBitForBit() throws {
        let a = try TinyEditModel.load(), b = try TinyEditModel.load()
        let w = a.weights.layers[1].wDown
        let r = (0..<w.shape[0]).map { Float($0) * 0.01 - 0.1 }, u = (0..<w.shape[1]).map { Float(($0 * 7) % 11) * 0.02 }
        try a.apply(RankOneUpdate(parameter: w.name, layer: 1, u: u, r: r))
        try b.apply(LowRankUpdate(parameter: w.name, layer: 1, rows: w.shape[0], cols: w.shape[1], rank: 1, left: r, right: u))
        #expect(a.weightHash == b.weightHash)
    }

    @Test func singularSystemIsATypedErrorAndLeavesTheWeights() throws {
        let m = try TinyEditModel.load()
        let hash = m.weightHash
        // C = 0 and no ridge: λC + KKᵀ has rank 1 < d_ff.
        let e = try Self.editor(m, layers: [1], scale: 0)
        #expect { try e.computeUpdates([EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")]) } throws: {
            ($0 as? EditError)?.code == .degenerateKey
        }
        #expect(m.weightHash == hash)
        #expect(throws: EditError.self) { try MemitHyperparameters(layers: [2, 1]).validate(layers: 3) }
    }
}
