@testable import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

/// Several facts' δ optimized together must give each fact what it gets alone (same stop rule), and a
/// fact that stops must leave the shared pass.
@Suite struct JointDeltaOptimizationTests {
    /// Prompts that end at the subject, so δ reaches the first target row directly and the tiny model's
    /// facts stop at different steps under either stop rule.
    static let requests = [
        EditRequest(subject: "Paris", prompt: "The home of {}", targetNew: "Rom"),
        EditRequest(subject: "Rome", prompt: "Home: {}", targetNew: "Rome"),
        EditRequest(subject: "Paris Rome", prompt: "{}", targetNew: "is"),
    ]
    static let site = Site(layer: 0, kind: .residOut)

    /// Each request's batch and its optimization (MEMIT's z settings on the tiny model), with the
    /// stop rule `stop` applied to every fact.
    static func facts(_ m: LanguageModel, requests: [EditRequest] = requests, stop: (inout DeltaOptimization) -> Void) throws -> [JointDeltaOptimization.Fact] {
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        let tok = EditTokenizer(model: m)
        return try requests.map { r in
            let batch = try RomeBatch(request: r, prefixes: templates.prefixes, tokenizer: tok, contextLength: m.config.contextLength)
            let hNorm = Vector.norm(try DeltaPass(model: m, site: site, prompts: batch.rewrite).residuals[0])
            var o = DeltaOptimization(steps: 30, lr: 1, weightDecay: 1e-3, klFactor: 0.0625, earlyStopLoss: 0,
                                      maxNorm: 4 * hNorm, referenceNorm: hNorm)
            stop(&o)
            return .init(optimization: o, batch: batch)
        }
    }

    /// One fact optimized on a pass of its own prompts (the one-at-a-time path).
    static func alone(_ m: LanguageModel, _ f: JointDeltaOptimization.Fact) throws -> DeltaOptimization.Outcome {
        let pass = try DeltaPass(model: m, site: site, prompts: f.batch.rewrite + f.batch.kl)
        return try f.optimization.run(pass: pass, batch: f.batch, refinement: nil)
    }

    static func together(_ m: LanguageModel, _ facts: [JointDeltaOptimization.Fact]) throws -> JointDeltaOptimization.Outcome {
        let pass = try DeltaPass(model: m, site: site, prompts: JointDeltaOptimization.prompts(of: facts.map(\.batch)))
        return try JointDeltaOptimization.run(facts, pass: pass)
    }

    static func relative(_ a: [Float], _ b: [Float]) -> Double {
        Double(Vector.norm(zip(a, b).map { $0 - $1 })) / Double(Vector.norm(b))
    }

    /// Same δ (1e-4 relative in norm), same final loss (1e-4 relative) and the same number of steps
    /// per fact, under the loss threshold (topChecks 0 here: a threshold of 2, the facts stop after 6,
    /// 5 and 30 steps) and under the most-probable early stop alone, stopping the first or the second
    /// time every target is on top (each fact counts its own).
    @Test(arguments: [0, 1, 2])
    func eachFactMatchesItsOptimizationAlone(topChecks: Int) throws {
        let m = try TinyEditModel.load()
        let facts = try Self.facts(m) { o in
            o.earlyStopLoss = topChecks == 0 ? 2 : 0
            o.stopWhenTop = topChecks > 0
            o.topChecks = max(1, topChecks)
        }
        let joint = try Self.together(m, facts)
        #expect(joint.facts.count == facts.count)
        for (i, f) in facts.enumerated() {
            let a = try Self.alone(m, f), j = joint.facts[i]
            #expect(j.losses.count == a.losses.count, "fact \(i): \(j.losses.count) steps together, \(a.losses.count) alone")
            #expect(Vector.norm(a.delta) > 0.1, "fact \(i): a zero δ would make the comparison vacuous")
            #expect(Self.relative(j.delta, a.delta) <= 1e-4, "fact \(i): δ differs by \(Self.relative(j.delta, a.delta)) relative")
            let la = try #require(a.losses.last).total, lj = try #require(j.losses.last).total
            #expect(abs(lj - la) <= 1e-4 * abs(la), "fact \(i): final loss \(lj) together, \(la) alone")
        }
        // Every step's forward holds exactly the prompts of the facts still running.
        let rows = facts.map { f in (f.batch.rewrite + f.batch.kl).reduce(0) { $0 + $1.tokens.count - $1.position } }
        for (s, r) in joint.rowsPerStep.enumerated() {
            let expected = zip(joint.facts, rows).reduce(0) { $0 + ($1.0.losses.count > s ? $1.1 : 0) }
            #expect(r == expected, "step \(s): \(r) rows, expected \(expected)")
        }
    }

    /// A fact whose loss threshold is met early stops at the step it stops at alone and its prompts
    /// leave the pass, while the other fact runs on to its last step: both δ as alone.
    @Test func aFactThatStopsEarlyLeavesThePassAndKeepsItsDelta() throws {
        let m = try TinyEditModel.load()
        var facts = try Self.facts(m) { $0.steps = 12 }
        facts.removeLast()
        // Fact 0's threshold sits between its own losses at steps 2 and 3 (alone, no early stop), so it
        // stops after evaluating step 3; fact 1 has no threshold.
        let curve = try Self.alone(m, facts[0]).losses.map(\.total)
        try #require(curve.count == 12 && curve[0] > curve[1] && curve[1] > curve[2] && curve[2] > curve[3])
        facts[0].optimization.earlyStopLoss = Float((curve[2] + curve[3]) / 2)
        try #require(curve[3] < Double(facts[0].optimization.earlyStopLoss) && Double(facts[0].optimization.earlyStopLoss) < curve[2])
        let a0 = try Self.alone(m, facts[0]), a1 = try Self.alone(m, facts[1])
        #expect(a0.losses.count == 4 && a1.losses.count == 12)

        let joint = try Self.together(m, facts)
        #expect(joint.facts[0].losses.count == 4 && joint.facts[1].losses.count == 12)
        let rows = facts.map { f in (f.batch.rewrite + f.batch.kl).reduce(0) { $0 + $1.tokens.count - $1.position } }
        #expect(joint.rowsPerStep == [Int](repeating: rows[0] + rows[1], count: 4) + [Int](repeating: rows[1], count: 8))
        #expect(Self.relative(joint.facts[0].delta, a0.delta) <= 1e-4)
        #expect(Self.relative(joint.facts[1].delta, a1.delta) <= 1e-4)
        #expect(Self.relative(a1.delta, a0.delta) > 0.1, "the facts must differ for the check to mean anything")
    }

    @Test func aPassWithOtherPromptsIsRefused() throws {
        let m = try TinyEditModel.load()
        let facts = try Self.facts(m) { _ in }
        let pass = try DeltaPass(model: m, site: Self.site, prompts: JointDeltaOptimization.prompts(of: [facts[1].batch, facts[0].batch]))
        #expect(throws: EditError.self) { try JointDeltaOptimization.run(Array(facts.prefix(2)), pass: pass) }
        #expect(throws: EditError.self) { try JointDeltaOptimization.run([], pass: pass) }
    }

    /// MEMIT with several requests (the joint optimization) gives each request the ‖δ‖, final loss and
    /// step count it gets edited alone, in one pass or split by the row limit (the requests' prompts
    /// take 8, 8 and 11 rows: a limit of 16 makes groups of 2 and 1).
    @Test(arguments: [512, 16])
    func memitBatchMatchesEachRequestAlone(rowLimit: Int) throws {
        let m = try TinyEditModel.load()
        let editor = try MemitTests.editor(m)
        editor.jointRowLimit = rowLimit
        let rows = try Self.facts(m) { _ in }.map { f in (f.batch.rewrite + f.batch.kl).reduce(0) { $0 + $1.tokens.count - $1.position } }
        try #require(rows == [8, 8, 11], "the groups this test means to form")
        let joint = try editor.computeUpdates(Self.requests)
        var steps = 0.0
        for (i, r) in Self.requests.enumerated() {
            let a = try editor.computeUpdates([r])
            steps += a.phases["z_steps"]!
            #expect(abs(Double(joint.deltaNorms[i] - a.deltaNorms[0])) <= 1e-4 * Double(a.deltaNorms[0]), "request \(i) ‖δ‖")
            #expect(abs(joint.finalLosses[i] - a.finalLosses[0]) <= 1e-4 * abs(a.finalLosses[0]), "request \(i) final loss")
        }
        #expect(joint.phases["z_steps"] == steps / Double(Self.requests.count))
    }

    /// The readings of a batch edit's prompts (keys and residuals at the subject) packed into shared
    /// passes, in one or in several packs, equal one forward per prompt (1e-5 relative).
    @Test(arguments: [1024, 12])
    func packedReadingsMatchOneForwardPerPrompt(packTokens: Int) throws {
        let m = try TinyEditModel.load()
        let editor = try MemitTests.editor(m)
        editor.packTokens = packTokens
        let tok = EditTokenizer(model: m)
        let prompts = try Self.requests.flatMap { r in
            try editor.templates.prefixes.map { try tok.subjectPrompt(prefix: $0, prompt: r.prompt + " and more", subject: r.subject) }
        }
        let sites: Set<Site> = [Site(layer: 0, kind: .mlpKey), Site(layer: 1, kind: .mlpKey), Site(layer: 1, kind: .residOut)]
        let packed = try editor.reads(prompts, sites: sites, packed: true), alone = try editor.reads(prompts, sites: sites, packed: false)
        for s in sites {
            #expect(packed[s]!.count == prompts.count)
            for (a, b) in zip(packed[s]!, alone[s]!) {
                #expect(Double(Vector.maxAbsDifference(a, b)) <= 1e-5 * Double(Vector.norm(b)), "\(s)")
            }
        }
    }

    /// What MEMIT's z step hands on per request (h_L and v0 at the bare prompt, the change, the losses)
    /// is the same together as alone: NAS and the coverage read h_L and v0 from the right prompt.
    @Test func memitSolvedZTogetherMatchesAlone() throws {
        let m = try TinyEditModel.load()
        let editor = try MemitTests.editor(m)
        let (together, phases) = try editor.optimizeZTogether(Self.requests)
        #expect(together.count == Self.requests.count)
        for part in ["pass", "forward", "loss", "backward"] { #expect(phases[part] != nil, "\(part) is timed") }
        #expect((phases["forward_gflop"] ?? 0) > 0 && (phases["backward_gflop"] ?? 0) > 0, "the steps' arithmetic is counted")
        for (i, r) in Self.requests.enumerated() {
            let a = try editor.optimizeZ(r), j = together[i]
            #expect(j.hL == a.hL && j.v0 == a.v0, "request \(i): h_L and v0 are read before any step, the same prompt's")
            #expect(Self.relative(j.change, a.change) <= 1e-4, "request \(i) change")
            #expect(j.losses.count == a.losses.count)
        }
        #expect(Self.relative(together[0].hL, together[1].hL) > 0.01, "the requests' readings must differ for the check to mean anything")
    }
}
