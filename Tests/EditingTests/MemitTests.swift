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

    static func editor(_ m: LanguageModel, layers: [Int] = [0, 1], lambda: Double = 0.5, scale: Float = 1,
                       solver: SpreadSolver = .memit) throws -> MemitEditor {
        var h = MemitHyperparameters(layers: layers, contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 20,
                                     clampNormFactor: 4, mom2UpdateWeight: lambda, mom2Ridge: 0)
        h.earlyStopLoss = 0.01
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        return try MemitEditor(model: m, hparams: h, templates: templates,
                               statistics: Dictionary(uniqueKeysWithValues: layers.map { ($0, statistics(m, layer: $0, scale: scale)) }),
                               solver: solver)
    }

    static func encore(_ m: LanguageModel, mu: Double, layers: [Int] = [0, 1]) throws -> MemitEditor {
        try editor(m, layers: layers, solver: .encore(try EncoreState(layers: layers, dim: m.config.intermediate, mu: mu)))
    }

    /// ‖ΔW k‖ for an update and a key [ff].
    static func moved(_ u: LowRankUpdate, _ k: [Double]) -> Double {
        var out = [Double](repeating: 0, count: u.rows)
        for i in 0..<u.rank {
            let dot = (0..<u.cols).reduce(0.0) { $0 + Double(u.right[i * u.cols + $1]) * k[$1] }
            for r in 0..<u.rows { out[r] += Double(u.left[r * u.rank + i]) * dot }
        }
        return out.reduce(0) { $0 + $1 * $1 }.squareRoot()
    }

    static func frobenius(_ u: LowRankUpdate) -> Double {
        var sum = 0.0
        for r in 0..<u.rows {
            for c in 0..<u.cols {
                var v = 0.0
                for i in 0..<u.rank { v += Double(u.left[r * u.rank + i]) * Double(u.right[i * u.cols + c]) }
                sum += v * v
            }
        }
        return sum.squareRoot()
    }

    static let paris = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")
    static let rome = EditRequest(subject: "Rome", prompt: "{} is in", targetNew: "Paris")

    /// NAS: the anchor is the (trimmed) mean ‖v0 + Δ‖ of base-model edits; a target whose ‖v*‖ equals
    /// the anchor is left as it is, a smaller anchor shrinks the written change, and a v* more than twice
    /// the anchor is dropped (z = h_L: no update). Without a computed anchor the editor refuses.
    @Test func normAnchorRescalesTheTargetValue() throws {
        let m = try TinyEditModel.load()
        let plain = try Self.editor(m, layers: [1])
        var h = plain.hparams
        h.normAnchorSamples = 1
        let nas = try MemitEditor(model: m, hparams: h, templates: plain.templates, statistics: plain.statistics)
        #expect { try nas.computeUpdates([Self.paris]) } throws: { ($0 as? EditError)?.code == .state }
        let (anchor, norms) = try nas.normAnchor(for: [Self.paris, Self.rome])
        #expect(norms.count == 2 && anchor == (norms[0] + norms[1]) / 2)
        let own = try nas.normAnchor(for: [Self.paris]).mean
        let base = try #require(try plain.computeUpdates([Self.paris]).updates.first)
        nas.normAnchor = own
        let same = try #require(try nas.computeUpdates([Self.paris]).updates.first)
        #expect(abs(Self.frobenius(same) / Self.frobenius(base) - 1) < 1e-4)
        nas.normAnchor = 0.9 * own
        let smaller = try #require(try nas.computeUpdates([Self.paris]).updates.first)
        #expect(Self.frobenius(smaller) < 0.999 * Self.frobenius(base))
        nas.normAnchor = 0.4 * own
        let dropped = try #require(try nas.computeUpdates([Self.paris]).updates.first)
        #expect(Self.frobenius(dropped) < 1e-3 * Self.frobenius(base), "v* beyond twice the anchor is dropped")
    }

    /// AlphaEdit's accumulator keeps P·Σ KKᵀ beside Σ KKᵀ (so a solve needs no [ff, ff] product): after
    /// several accumulations and a rebuild it equals P times the plain sum.
    @Test func projectedAccumulatorEqualsTheProjectedSum() throws {
        let m = try TinyEditModel.load()
        let ff = m.config.intermediate
        let state = try AlphaEditState(statistics: [1: Self.statistics(m, layer: 1)], nullspaceEnergy: 0.3, l2: 1)
        let p = try #require(state.projectors[1]).map(Double.init)   // [ff, ff], as the accumulator uses it
        var x: UInt64 = 5   // a 64-bit LCG: values in [-0.5, 0.5)
        func draw() -> Double { x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407; return Double(x >> 11) / Double(1 << 53) - 0.5 }
        // Keys exact in Float32, as stored state blocks hold them, so a rebuild accumulates the same values.
        let edits = (0..<3).map { i in [1: (0...i).map { _ in (0..<ff).map { _ in Double(Float(draw())) } }] }
        for e in edits { state.accumulate(e) }
        // The plain sum Σ KKᵀ, [ff, ff].
        var a = [Double](repeating: 0, count: ff * ff)
        for e in edits { for k in e[1]! { for i in 0..<ff { for j in 0..<ff { a[i * ff + j] += k[i] * k[j] } } } }
        #expect(state.kept.accumulated.isEmpty, "AlphaEdit keeps only the projected sum")
        func check(_ acc: KeyAccumulator) throws {
            let pa = try #require(acc.projected[1])
            let scale = a.map(abs).max()!
            for i in 0..<ff {
                for j in 0..<ff {
                    let want = (0..<ff).reduce(0.0) { $0 + p[i * ff + $1] * a[$1 * ff + j] }
                    #expect(abs(pa[i * ff + j] - want) <= 1e-12 * scale * Double(ff))
                }
            }
        }
        try check(state.kept)
        try state.kept.rebuild(edits.map { state.kept.blocks($0) })
        try check(state.kept)
        state.kept.reset()
        #expect(state.kept.projected[1]!.allSatisfy { $0 == 0 })
    }

    /// ENCORE with μ = 0 and no kept edits solves MEMIT's system: the same updates, bit for bit.
    @Test func encoreWithoutNormTermOrKeptEditsIsMemit() throws {
        let m = try TinyEditModel.load()
        let a = try Self.editor(m).computeUpdates([Self.paris, Self.rome])
        let b = try Self.encore(m, mu: 0).computeUpdates([Self.paris, Self.rome])
        #expect(a.updates == b.updates)
        #expect(try Self.encore(m, mu: 0).method == "ENCORE")
        #expect(throws: EditError.self) { try EncoreState(layers: [0], dim: 4, mu: -1) }
    }

    /// The Frobenius-norm term μ‖ΔW‖² shrinks every layer's update, and more with a larger μ; the edit
    /// still lands at a moderate μ.
    @Test func encoreNormTermShrinksTheUpdates() throws {
        let m = try TinyEditModel.load()
        let plain = try Self.encore(m, mu: 0).computeUpdates([Self.paris]).updates.map(Self.frobenius)
        let some = try Self.encore(m, mu: 0.5).computeUpdates([Self.paris])
        let more = try Self.encore(m, mu: 5).computeUpdates([Self.paris]).updates.map(Self.frobenius)
        for (p, (s, x)) in zip(plain, zip(some.updates.map(Self.frobenius), more)) {
            #expect(s < p && x < s, "‖ΔW‖: μ=0 \(p), μ=0.5 \(s), μ=5 \(x)")
        }
        let score = CounterFactScorer.make(m)
        let before = try score("Paris is in", ["Rome"])[0]
        for u in some.updates { try m.apply(u) }
        #expect(try score("Paris is in", ["Rome"])[0] < before - 0.5)
    }

    /// Sequential ENCORE: a kept edit's keys join the preserved ones, so the next edit moves the earlier
    /// edit's key less than MEMIT's update does; the stored state blocks rebuild the same sums.
    @Test func encoreKeptKeysProtectEarlierEditsAndRebuildExactly() throws {
        let m = try TinyEditModel.load()
        let state = try EncoreState(layers: [0, 1], dim: m.config.intermediate, mu: 0.1)
        let enc = try Self.editor(m, solver: .encore(state))
        let first = try enc.computeUpdates(together: [Self.paris])
        for u in first.updates { try m.apply(u) }
        let blocks = enc.pendingState()
        #expect(blocks.map(\.name) == ["encore.keys", "encore.keys"] && blocks.map(\.layer) == [0, 1])
        enc.keep()
        let kept = state.kept.accumulated
        #expect(kept[1]!.contains { $0 != 0 })
        let rebuilt = KeyAccumulator(layers: [0, 1], dim: m.config.intermediate, blockName: EncoreState.blockName)
        try rebuilt.rebuild([blocks])
        #expect(rebuilt.accumulated == kept)

        let keyA = try #require(blocks.first { $0.layer == 1 }).values.map(Double.init)
        let withKept = try enc.computeUpdates([Self.rome]).updates
        let without = try Self.encore(m, mu: 0.1).computeUpdates([Self.rome]).updates
        let a = Self.moved(try #require(withKept.first { $0.layer == 1 }), keyA)
        let b = Self.moved(try #require(without.first { $0.layer == 1 }), keyA)
        #expect(a < 0.9 * b, "‖ΔW k_A‖ with A's keys kept \(a), without \(b)")
        state.kept.reset()
        #expect(state.kept.accumulated[1]!.allSatisfy { $0 == 0 })
    }

    /// Entity-key preservation: C_e is the mean second moment of the names' bare last-token keys (checked
    /// against one unpacked forward per name), and with λ·ρ·C_e in ENCORE's solve the update moves those
    /// keys less while the edit still lands. Without its statistics, with AlphaEdit's solver or with a bad
    /// weight the editor refuses.
    @Test func entityKeysAreTheNamesMomentAndMoveLess() throws {
        let m = try TinyEditModel.load()
        let names = ["Rome", "London", "Berlin", "Madrid", "Tokyo", "Vienna", "Lisbon", "Oslo", "Cairo", "Dublin",
                     "Prague", "Warsaw", "Athens", "Moscow", "Sydney", "Lima"]
        let settings = EntityKeySettings(weight: 4, subjects: names.count)
        let plain = try Self.encore(m, mu: 0.1, layers: [1])
        let ce = try #require(try plain.entityStatistics(names: names, settings: settings, modelHash: m.weightHash, layers: [1])[1])
        #expect(ce.spec.population == "entities" && ce.count == names.count && ce.spec.key.hasSuffix("-entities"))
        let ff = m.config.intermediate, site = Site(layer: 1, kind: .mlpKey), tok = EditTokenizer(model: m)
        let keys = try names.map { n -> [Double] in
            let sp = try tok.subjectPrompt(prefix: "", prompt: "{}", subject: n)
            return try m.forward(sp.tokens, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1))
                .activations[site]!.row(sp.subjectLast).map(Double.init)
        }
        var worst = 0.0, largest = 0.0
        for i in 0..<ff {
            for j in 0..<ff {
                let direct = keys.reduce(0.0) { $0 + $1[i] * $1[j] } / Double(names.count)
                worst = max(worst, abs(direct - Double(ce.moment[i * ff + j])))
                largest = max(largest, abs(direct))
            }
        }
        // Packed and unpacked passes differ by Float32 rounding of the keys (~1e-6 relative).
        #expect(worst < 1e-4 * largest, "C_e differs from the direct mean by \(worst) (largest entry \(largest))")

        var h = plain.hparams
        h.entityKeys = settings
        let guarded = try MemitEditor(model: m, hparams: h, templates: plain.templates, statistics: plain.statistics,
                                      solver: .encore(try EncoreState(layers: [1], dim: ff, mu: 0.1)))
        #expect { try guarded.computeUpdates([Self.paris]) } throws: { ($0 as? EditError)?.code == .state }
        guarded.entityStatistics = [1: ce]
        let protected = try guarded.computeUpdates([Self.paris]).updates[0]
        let unprotected = try plain.computeUpdates([Self.paris]).updates[0]
        let others = zip(names, keys).filter { $0.0 != "Paris" }.map(\.1)
        let a = others.reduce(0.0) { $0 + Self.moved(protected, $1) }, b = others.reduce(0.0) { $0 + Self.moved(unprotected, $1) }
        #expect(a < 0.8 * b, "Σ‖ΔW k_n‖ over the names: with C_e \(a), without \(b)")
        let score = CounterFactScorer.make(m)
        let before = try score("Paris is in", ["Rome"])[0]
        let backup = try m.apply(protected)
        let after = try score("Paris is in", ["Rome"])[0]
        try m.restore(backup)
        #expect(after < before, "the protected edit lowers the new object's NLL (\(before) → \(after))")

        #expect(throws: EditError.self) {
            try MemitEditor(model: m, hparams: h, templates: plain.templates, statistics: plain.statistics,
                            solver: .alphaEdit(try AlphaEditState(statistics: plain.statistics, nullspaceEnergy: 0.3, l2: 1)))
        }
        for bad in [EntityKeySettings(weight: 0), EntityKeySettings(weight: .infinity), EntityKeySettings(weight: 1, subjects: 8)] {
            var hb = h
            hb.entityKeys = bad
            #expect(throws: EditError.self) { try hb.validate(layers: m.config.layers) }
        }
    }

    /// `second_solve`: an edit whose regularized update leaves its new object below the top token gets a
    /// second z and spread on the edited weights (one more update per layer), which raises the new
    /// object further; an edit that lands gets none; the weights are restored either way.
    @Test func secondSolveRetriesOnlyEditsThatDidNotLand() throws {
        let m = try TinyEditModel.load()
        let hash = m.weightHash
        func editor(lambda: Double, second: Bool, steps: Int = 20, check: SecondSolveCheck? = nil) throws -> MemitEditor {
            let e = try Self.editor(m, lambda: lambda, solver: .encore(try EncoreState(layers: [0, 1], dim: m.config.intermediate, mu: 0.1)))
            var h = e.hparams
            h.secondSolve = second
            h.secondSolveCheck = check
            h.optimization.vNumGradSteps = steps
            return try MemitEditor(model: m, hparams: h, templates: e.templates, statistics: e.statistics,
                                   solver: .encore(try EncoreState(layers: [0, 1], dim: m.config.intermediate, mu: 0.1)))
        }
        let score = CounterFactScorer.make(m)
        let tok = EditTokenizer(model: m)
        let bare = try tok.subjectPrompt(prefix: "", prompt: Self.paris.prompt, subject: Self.paris.subject)
        func topAfter(_ updates: [LowRankUpdate], _ target: String) throws -> (top: Bool, nll: Double) {
            let backups = try updates.map { try m.apply($0) }
            defer { for b in backups.reversed() { try? m.restore(b) } }
            let logits = try m.forward(bare.tokens, options: ForwardOptions(logits: .last)).logits
            return (DeltaOptimization.targetsOnTop(logits, [[try tok.target(target)[0]]]), try score("Paris is in", [target])[0])
        }
        // The tiny model's z cannot make "Rome" its top token (NLL ≈ 9 after the edit), so this edit
        // always misses: the second solve must lower the NLL further, for a weak (λ = 50) and a
        // heavily regularized (λ = 2000) first solve.
        for lambda in [50.0, 2000] {
            let first = try editor(lambda: lambda, second: false).computeUpdates([Self.paris])
            let once = try topAfter(first.updates, "Rome")
            try #require(!once.top)
            let retried = try editor(lambda: lambda, second: true).computeUpdates([Self.paris])
            #expect(retried.updates.count == 4 && retried.phases["second_solve_requests"] == 1)
            #expect(Array(retried.updates.prefix(2)).map(\.right) == first.updates.map(\.right), "the first spread is unchanged")
            let twice = try topAfter(retried.updates, "Rome")
            #expect(twice.nll < once.nll - 0.01, "λ = \(lambda): the second solve raises the new object (NLL \(once.nll) → \(twice.nll))")
            #expect(m.weightHash == hash)
        }
        // A new object that is already the top token lands at once: no second update. The request is the
        // first of a few whose top next token is a whole word with its leading space.
        var landing: EditRequest?
        search: for subject in ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo"] {
            for prompt in ["{} is in", "{} is a", "{} was", "{} lives in", "The city of {} is", "{} plays"] {
                let sp = try tok.subjectPrompt(prefix: "", prompt: prompt, subject: subject)
                let logits = try m.forward(sp.tokens, options: ForwardOptions(logits: .last)).logits.data
                let id = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
                let text = m.tokenizer.decode([id])
                let word = text.trimmingCharacters(in: .whitespaces)
                if text.hasPrefix(" "), !word.isEmpty, (try? tok.target(word)) == [id] {
                    landing = EditRequest(subject: subject, prompt: prompt, targetNew: word)
                    break search
                }
            }
        }
        let request = try #require(landing)
        let kept = try editor(lambda: 0.5, second: true).computeUpdates([request])
        #expect(kept.updates.count == 2 && kept.phases["second_solve_requests"] == 0)
        // In a batch only the request that missed is solved again: rank-2 first updates, rank-1 second ones.
        let batch = try editor(lambda: 50, second: true).computeUpdates([request, Self.paris])
        #expect(batch.updates.map(\.rank) == [2, 2, 1, 1] && batch.phases["second_solve_requests"] == 1)
        #expect(m.weightHash == hash)

        // second_solve_check contexts: a request whose new object holds the top after its bare prompt
        // and not after some context-template prompt, once a weak (λ = 2000) first spread is in place,
        // is solved again under contexts and not under bare; one that holds everywhere is not.
        let weak = try editor(lambda: 2000, second: false)
        func templated(_ r: EditRequest) throws -> [SubjectPrompt] {
            try weak.templates.prefixes.map { try tok.subjectPrompt(prefix: $0, prompt: r.prompt, subject: r.subject) }
        }
        func afterFirst(_ r: EditRequest) throws -> (bare: Bool, every: Bool, first: [LowRankUpdate]) {
            let first = try weak.computeUpdates([r]).updates
            let backups = try first.map { try m.apply($0) }
            defer { for b in backups.reversed() { try? m.restore(b) } }
            let t = try templated(r)
            return (try weak.landed(r, prompts: [t[0]]), try weak.landed(r, prompts: t), first)
        }
        var behindPrefix: (EditRequest, [LowRankUpdate])?, everywhere: (EditRequest, [LowRankUpdate])?
        search2: for subject in ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo"] {
            for prompt in ["{} is in", "{} is a", "{} was", "{} lives in", "The city of {} is", "{} plays"] {
                let sp = try tok.subjectPrompt(prefix: "", prompt: prompt, subject: subject)
                let logits = try m.forward(sp.tokens, options: ForwardOptions(logits: .last)).logits.data
                let id = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
                let text = m.tokenizer.decode([id]), word = text.trimmingCharacters(in: .whitespaces)
                guard text.hasPrefix(" "), !word.isEmpty, (try? tok.target(word)) == [id] else { continue }
                let r = EditRequest(subject: subject, prompt: prompt, targetNew: word)
                let probe = try afterFirst(r)
                guard probe.bare else { continue }
                if probe.every { everywhere = everywhere ?? (r, probe.first) } else { behindPrefix = behindPrefix ?? (r, probe.first) }
                if behindPrefix != nil && everywhere != nil { break search2 }
            }
        }
        let (prefixed, prefixedFirst) = try #require(behindPrefix, "a request that holds on its bare prompt only")
        for check in [SecondSolveCheck.bare, .contexts] {
            let result = try editor(lambda: 2000, second: true, check: check).computeUpdates([prefixed])
            #expect(result.phases["second_solve_requests"] == (check == .contexts ? 1 : 0), "\(check)")
            #expect(result.updates.count == (check == .contexts ? 4 : 2), "\(check)")
            #expect(Array(result.updates.prefix(2)).map(\.right) == prefixedFirst.map(\.right), "the first spread is unchanged")
        }
        if let (held, _) = everywhere {
            #expect(try editor(lambda: 2000, second: true, check: .contexts).computeUpdates([held]).phases["second_solve_requests"] == 0)
        }
        // A prompt list that holds a miss is a miss: Paris → Rome never lands on the tiny model.
        #expect(try !weak.landed(Self.paris, prompts: [bare]))
        #expect(m.weightHash == hash)
    }

    /// landing_slack τ: X = A⁻¹K(τI + KᵀA⁻¹K)⁻¹ with A the solve's matrix without KKᵀ. For one request
    /// and one layer G = kᵀA⁻¹k is a scalar g, R is the same for every τ, and the right factor of τ is
    /// the closed form's ((A + kkᵀ)⁻¹k, τ = 1) times (1 + g)/(τ + g): one g must fit τ = 0 and τ = ½.
    /// Under a heavy λ the closed form barely moves the target and τ = 0 lands it; a batch of two
    /// over two layers solves too.
    @Test func landingSlackScalesTheSolveAndLandsTheShare() throws {
        let m = try TinyEditModel.load()
        func editor(lambda: Double, slack: Double?, layers: [Int] = [1]) throws -> MemitEditor {
            let state = { try EncoreState(layers: layers, dim: m.config.intermediate, mu: 0.1) }
            let e = try Self.editor(m, layers: layers, lambda: lambda, solver: .encore(try state()))
            var h = e.hparams
            h.landingSlack = slack
            try h.validate(layers: m.config.layers)
            return try MemitEditor(model: m, hparams: h, templates: e.templates, statistics: e.statistics, solver: .encore(try state()))
        }
        func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }
        let closed = try editor(lambda: 50, slack: nil).computeUpdates([Self.paris]).updates[0]
        #expect(try editor(lambda: 50, slack: nil).settings["landing_slack"] == nil, "the closed form keeps the signature it had before τ")
        #expect(try editor(lambda: 50, slack: 0.5).settings["landing_slack"] == "0.5", "a run's signature and report name its τ")
        var scale: [Double: Double] = [:]
        for tau in [0.0, 0.5] {
            let u = try editor(lambda: 50, slack: tau).computeUpdates([Self.paris]).updates[0]
            #expect(u.left == closed.left, "R does not depend on τ")
            let c = dot(u.right, closed.right) / dot(closed.right, closed.right)
            let off = zip(u.right, closed.right).reduce(0.0) { $0 + pow(Double($1.0) - c * Double($1.1), 2) }.squareRoot()
            #expect(off / dot(u.right, u.right).squareRoot() < 1e-5, "τ = \(tau): not parallel to the closed form")
            scale[tau] = c
        }
        let g = 1 / (scale[0]! - 1)
        #expect(g > 0 && abs(scale[0.5]! - (1 + g) / (0.5 + g)) < 1e-5 * scale[0.5]!, "scales \(scale), g \(g)")

        let score = CounterFactScorer.make(m)
        let before = try score("Paris is in", ["Rome"])[0]
        func nllAfter(_ updates: [LowRankUpdate]) throws -> Double {
            let backups = try updates.map { try m.apply($0) }
            defer { for b in backups.reversed() { try? m.restore(b) } }
            return try score("Paris is in", ["Rome"])[0]
        }
        let weak = try nllAfter(try editor(lambda: 2000, slack: nil).computeUpdates([Self.paris]).updates)
        let exact = try nllAfter(try editor(lambda: 2000, slack: 0).computeUpdates([Self.paris]).updates)
        let free = try nllAfter(try editor(lambda: 0.5, slack: nil).computeUpdates([Self.paris]).updates)
        #expect(before - weak < 0.2 * (before - free) && exact < weak - 0.5 * (before - free),
                "NLL before \(before), λ 2000 closed form \(weak), λ 2000 τ = 0 \(exact), λ 0.5 closed form \(free)")
        let batch = try editor(lambda: 50, slack: 0, layers: [0, 1]).computeUpdates([Self.paris, Self.rome])
        #expect(batch.updates.count == 2 && batch.updates.allSatisfy { $0.rank == 2 && $0.right.allSatisfy(\.isFinite) })
        #expect(throws: EditError.self) {
            var h = try editor(lambda: 50, slack: nil).hparams
            h.landingSlack = 1.5
            try h.validate(layers: m.config.layers)
        }
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

    /// The most-probable early stop's test: every target token the maximum of its logit row.
    @Test func targetsOnTopReadsTheRewriteRowsInOrder() {
        let v = 5
        var logits = Tensor(shape: [3, v], data: [Float](repeating: 0, count: 3 * v))
        for (row, token) in [(0, 1), (1, 4), (2, 2)] { logits.data[row * v + token] = 1 }
        #expect(DeltaOptimization.targetsOnTop(logits, [[1, 4], [2]]))
        #expect(!DeltaOptimization.targetsOnTop(logits, [[1], [3, 2]]))
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

    /// A NaN that reaches the last layer's solve (here through AlphaEdit's accumulated keys) is a
    /// typed error, and the earlier layer's update, applied while the later keys were computed, is undone.
    @Test func nonFiniteAlphaEditStateIsATypedErrorAndLeavesTheWeights() throws {
        let m = try TinyEditModel.load()
        let hash = m.weightHash
        let ff = m.config.intermediate
        let stats = Dictionary(uniqueKeysWithValues: [0, 1].map { ($0, Self.statistics(m, layer: $0)) })
        let state = try AlphaEditState(statistics: stats, nullspaceEnergy: 0.3, l2: 1)
        var poisoned = [Double](repeating: 0, count: ff)
        poisoned[3] = .nan
        state.accumulate([1: [poisoned]])
        var h = MemitHyperparameters(layers: [0, 1], contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 5, clampNormFactor: 4)
        h.earlyStopLoss = 0
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        let editor = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, solver: .alphaEdit(state))
        #expect { try editor.computeUpdates([EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")]) } throws: {
            [.nonFinite, .degenerateKey].contains(($0 as? EditError)?.code)
        }
        #expect(m.weightHash == hash)
    }

    /// Key-side neighbour protection in AlphaEdit's solve: the mined neighbours' keys (in the edit's
    /// prompt) move less under the protected update than under the plain one, the protected update
    /// still raises the new object, and the settings are checked.
    @Test func alphaEditNeighbourKeysMoveLessAndTheEditLands() throws {
        let m = try TinyEditModel.load()
        let stats = Self.statistics(m, layer: 1)
        var h = MemitHyperparameters(layers: [1], contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 20, clampNormFactor: 4)
        h.earlyStopLoss = 0.01
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        func editor(_ neighbours: NeighbourSettings?) throws -> MemitEditor {
            var hh = h
            hh.neighbours = neighbours
            let e = try MemitEditor(model: m, hparams: hh, templates: templates, statistics: [1: stats],
                                    solver: .alphaEdit(try AlphaEditState(statistics: [1: stats], nullspaceEnergy: 0.3, l2: 1)))
            e.neighbourCandidates = ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Vienna", "Lisbon", "Oslo", "Cairo"]
            return e
        }
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")
        let plain = try editor(nil).computeUpdates([request])
        let guarded = try editor(NeighbourSettings(count: 3, klFactor: 0, keyWeight: 30))
        let protected = try guarded.computeUpdates([request])
        let mined = try #require(guarded.lastNeighbours.first)
        #expect(mined.count == 3 && !mined.contains("Paris"))
        // Their keys in the edit's prompt, on the unedited weights.
        let tok = EditTokenizer(model: m)
        let site = Site(layer: 1, kind: .mlpKey)
        var plainMoved = 0.0, protectedMoved = 0.0
        for n in mined {
            let sp = try tok.subjectPrompt(prefix: "", prompt: request.prompt, subject: n)
            let k = try m.forward(sp.tokens, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1))
                .activations[site]!.row(sp.subjectLast).map(Double.init)
            plainMoved += Self.moved(plain.updates[0], k)
            protectedMoved += Self.moved(protected.updates[0], k)
        }
        #expect(protectedMoved < 0.8 * plainMoved, "the neighbours' keys move \(protectedMoved) against \(plainMoved)")
        let score = CounterFactScorer.make(m)
        let before = try score("Paris is in", ["Rome"])[0]
        let backup = try m.apply(protected.updates[0])
        let after = try score("Paris is in", ["Rome"])[0]
        try m.restore(backup)
        #expect(after < before, "the protected edit lowers the new object's NLL (\(before) → \(after))")
        // Key side only, by key gain, with a positive weight.
        for bad in [NeighbourSettings(count: 3, klFactor: 1, keyWeight: 30), NeighbourSettings(count: 3, klFactor: 0),
                    NeighbourSettings(count: 3, klFactor: 0, keyWeight: 30, mine: .saeOverlap)] {
            var hb = h
            hb.neighbours = bad
            #expect(throws: EditError.self) { try hb.validate(layers: m.config.layers) }
        }
    }

    /// Banks prepared on the base weights: one pass gives every layer's bank the keys a per-layer build
    /// reads (tolerance 1e-5), and an editor whose banks were prepared before the weights changed mines
    /// what an editor on the base weights mines, where one that builds them lazily on the edited weights
    /// may not (a resumed run or a restarted daemon must repeat the first one's choices).
    @Test func neighbourBanksPreparedOnTheBaseWeightsAreTheOnesMinedFrom() throws {
        let m = try TinyEditModel.load()
        let hash = m.weightHash
        let names = ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Vienna", "Lisbon", "Oslo", "Cairo", "Paris", ""]
        let banks = try SubjectBank.banks(model: m, layers: [0, 1], subjects: names, limit: 9)
        for l in [0, 1] {
            let single = try SubjectBank(model: m, layer: l, subjects: names, limit: 9)
            let bank = try #require(banks[l])
            #expect(bank.subjects == single.subjects && bank.subjects.count == 9 && !bank.subjects.contains("Cairo"))
            let u = (0..<m.config.intermediate).map { Float(($0 * 7) % 11) - 5 }
            let a = bank.keyGains(u: u, exclude: "", count: 9), b = single.keyGains(u: u, exclude: "", count: 9)
            #expect(a.map(\.subject) == b.map(\.subject))
            for (x, y) in zip(a, b) { #expect(abs(x.score - y.score) <= 1e-5 * max(1, abs(y.score))) }
        }
        var h = MemitHyperparameters(layers: [0, 1], contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 10, clampNormFactor: 4)
        h.neighbours = NeighbourSettings(count: 3, klFactor: 0, keyWeight: 30)
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        let stats = [0: Self.statistics(m, layer: 0), 1: Self.statistics(m, layer: 1)]
        func editor() throws -> MemitEditor {
            let e = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, solver: .memit)
            e.neighbourCandidates = names
            return e
        }
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")
        let prepared = try editor()
        try prepared.prepareNeighbourBanks()
        let base = try #require(prepared.neighbourBanks[1])
        // A change to layer 0's down projection (an earlier edit) moves every layer-1 key.
        let ff = m.config.intermediate, d = m.config.hidden
        let w = m.weights.layers[0].wDown
        let earlier = LowRankUpdate(parameter: w.name, layer: 0, rows: d, cols: ff, rank: 1,
                                    left: (0..<d).map { Float($0 % 3) - 1 }, right: (0..<ff).map { 0.5 * (Float($0 % 5) - 2) })
        let backup = try m.apply(earlier)
        let lazy = try editor()
        _ = try prepared.computeUpdates([request])
        _ = try lazy.computeUpdates([request])
        try m.restore(backup)
        #expect(m.weightHash == hash)
        #expect(prepared.neighbourBanks[1] === base, "the prepared bank is the one mined from")
        let u = (0..<ff).map { Float(($0 * 7) % 11) - 5 }
        let fromBase = base.keyGains(u: u, exclude: "", count: 9), fromEdited = try #require(lazy.neighbourBanks[1]).keyGains(u: u, exclude: "", count: 9)
        let moved = zip(fromBase.sorted { $0.subject < $1.subject }, fromEdited.sorted { $0.subject < $1.subject }).map { abs($0.score - $1.score) }.max() ?? 0
        #expect(moved > 1e-3, "a bank built on the edited weights reads other keys (largest gain change \(moved))")
    }

    /// AlphaEdit: P is a projector onto the low-energy eigenspace of C, the update vanishes on the
    /// high-energy directions (ΔW = R·Xᵀ with X in range(P)), and it still makes the edit.
    @Test func alphaEditUpdatesStayInTheNullSpaceAndEdit() throws {
        let m = try TinyEditModel.load()
        let ff = m.config.intermediate
        let stats = Self.statistics(m, layer: 1)
        let state = try AlphaEditState(statistics: [1: stats], nullspaceEnergy: 0.3, l2: 1)
        let p = try #require(state.projectors[1]).map(Double.init)   // [ff, ff]
        let k = try #require(state.nullity[1])
        #expect(k > 0 && k < ff)
        var p2 = [Double](repeating: 0, count: ff * ff)
        for i in 0..<ff { for j in 0..<ff { var acc = 0.0; for t in 0..<ff { acc += p[i * ff + t] * p[t * ff + j] }; p2[i * ff + j] = acc } }
        // P is stored in Float32: each entry rounded by up to 6e-8, so P² = P within ~ff · 6e-8.
        #expect(zip(p, p2).map { abs($0 - $1) }.max()! < 1e-6, "P² = P")

        var h = MemitHyperparameters(layers: [1], contextTemplates: [.init(length: 4, count: 2)], vNumGradSteps: 20, clampNormFactor: 4)
        h.earlyStopLoss = 0.01
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: 3)
        let editor = try MemitEditor(model: m, hparams: h, templates: templates, statistics: [1: stats], solver: .alphaEdit(state))
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")
        let score = CounterFactScorer.make(m)
        let before = try score("Paris is in", ["Rome"])[0]
        let r = try editor.computeUpdates([request])
        let u = try #require(r.updates.first)
        // The top eigenvector of C lies outside range(P): ΔW v ≈ 0.
        let (values, vectors) = try LAPACK.symmetricEigen(stats.moment.map(Double.init), n: ff)
        let top = Array(vectors[((ff - 1) * ff)..<(ff * ff)])
        #expect(values.last! > values.first!)
        let rv = (0..<u.rank).map { i in (0..<ff).reduce(0.0) { $0 + Double(u.right[i * ff + $1]) * top[$1] } }
        let rightNorm = u.right.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        #expect(rv.map(abs).max()! < 1e-4 * rightNorm)
        try m.apply(u)
        #expect(try score("Paris is in", ["Rome"])[0] < before - 0.5)
        state.accumulate(r.keysAfter)
        #expect(state.kept.projected[1]!.contains { $0 != 0 })
    }
}
