@testable import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

/// ROME facts edited together: one joint δ optimization per run of non-conflicting facts, updates in
/// order, each fact's update equal to the one it gets alone on the weights its run starts from.
@Suite struct RomeBatchTests {
    static func editor(_ m: LanguageModel) throws -> RomeEditor {
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 10
        h.keyAveraging = .each
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        return try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil)
    }

    static func close(_ a: LowRankUpdate, _ b: LowRankUpdate) -> Bool {
        a.rank == b.rank && a.parameter == b.parameter
            && Vector.maxAbsDifference(a.left, b.left) <= 1e-4 * max(1e-6, Vector.norm(b.left))
            && Vector.maxAbsDifference(a.right, b.right) <= 1e-4 * max(1e-6, Vector.norm(b.right))
    }

    @Test func jointUpdatesEqualOneAtATimeOnTheWeightsTheirRunStartsFrom() throws {
        let m = try TinyEditModel.load()
        let e = try Self.editor(m)
        #expect(e.editsTogether)
        let hash = m.weightHash
        // The second Paris fact moves the first one's subject: it starts a second run.
        let requests = [EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"),
                        EditRequest(subject: "Tokyo", prompt: "{} is in", targetNew: "Lima"),
                        EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Oslo")]
        let joint = try e.computeUpdates(together: requests)
        #expect(m.weightHash == hash, "computing must leave the weights as they were")
        #expect(joint.updates.count == 3 && joint.updates.allSatisfy { $0.rank == 1 })
        let runs = Int(joint.phases["runs"] ?? 0)
        #expect(runs >= 2)
        // Facts of the first run: alone on the unedited weights.
        let firstRun = runs == 2 ? 2 : 1
        for i in 0..<firstRun {
            #expect(Self.close(joint.updates[i], try e.computeUpdate(requests[i]).applied), "fact \(i)")
        }
        // The last fact: alone on the weights holding the earlier runs' updates.
        let backups = try joint.updates.prefix(2).map { try m.apply($0) }
        let alone = try e.computeUpdate(requests[2]).applied
        for b in backups.reversed() { try m.restore(b) }
        #expect(Self.close(joint.updates[2], alone))
        #expect(m.weightHash == hash)
    }

    @Test func refinedOrProtectedEditorsEditOneFactAtATime() throws {
        let m = try TinyEditModel.load()
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.neighbours = NeighbourSettings(count: 2, klFactor: 1)
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        let e = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil)
        #expect(!e.editsTogether)
        #expect(throws: EditError.self) {
            _ = try e.computeUpdates(together: [EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"),
                                                EditRequest(subject: "Tokyo", prompt: "{} is in", targetNew: "Lima")])
        }
    }
}
