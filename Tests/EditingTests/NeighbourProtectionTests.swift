@testable import Editing
import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor
import Testing

/// ROME's neighbour protection (`neighbour_kl`; the SAE-mined variant is MESA design 1).
@Suite struct NeighbourProtectionTests {
    static let subjects = ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Vienna", "Lisbon", "Oslo", "Cairo", "Lima", "Athens"]

    static func editor(_ m: LanguageModel, neighbours: NeighbourSettings?, mesa: MesaHyperparameters? = nil,
                       sae: SparseAutoencoder? = nil) throws -> RomeEditor {
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 15
        h.earlyStopLoss = 0
        h.keyAveraging = .each
        h.neighbours = neighbours
        h.mesa = mesa
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        let e = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, sae: sae)
        e.neighbourCandidates = subjects
        return e
    }

    /// Bare-subject keys at the edit layer, by one forward pass per subject: [ff] each.
    static func key(_ m: LanguageModel, _ subject: String, layer: Int) throws -> [Float] {
        let sp = try EditTokenizer(model: m).subjectPrompt(prefix: "", prompt: "{}", subject: subject)
        let site = Site(layer: layer, kind: .mlpKey)
        let a = try m.forward(sp.tokens, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: layer)).activations[site]!.data
        let ff = m.config.intermediate
        return Array(a[(sp.subjectLast * ff)..<((sp.subjectLast + 1) * ff)])
    }

    @Test func keyGainMiningPicksTheSubjectsTheUpdateMovesMost() throws {
        let m = try TinyEditModel.load()
        let bank = try SubjectBank(model: m, layer: 1, subjects: Self.subjects + ["Rome", ""], limit: 100)
        #expect(bank.subjects == Self.subjects)
        var rng = Xoshiro256(seed: 2)
        let u = (0..<m.config.intermediate).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let brute = try Self.subjects.filter { $0 != "Paris" }.map { s in (s, abs(Vector.dot(u, try Self.key(m, s, layer: 1)))) }
            .sorted { $0.1 > $1.1 }.prefix(4).map(\.0)
        #expect(bank.mineByKeyGain(u: u, exclude: "Paris", count: 4) == brute)
    }

    @Test func saeOverlapMiningRanksByJaccardOfActiveLatents() throws {
        let m = try TinyEditModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let sae = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 40, site: site, bias: 0)
        let bank = try SubjectBank(model: m, layer: 1, subjects: Self.subjects, limit: 100, sae: sae)
        // Brute force: each subject's active latents from its own pass.
        func active(_ s: String) throws -> Set<Int> {
            let sp = try EditTokenizer(model: m).subjectPrompt(prefix: "", prompt: "{}", subject: s)
            let out = try m.forward(sp.tokens, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1)).activations[site]!.data
            let d = m.config.hidden
            let f = sae.encode(Array(out[(sp.subjectLast * d)..<((sp.subjectLast + 1) * d)]), rows: 1)
            return Set(f.indices.filter { f[$0] != 0 })
        }
        let own = try active("Paris")
        var scored: [(index: Int, subject: String, jaccard: Float)] = []
        for (i, s) in Self.subjects.enumerated() where s != "Paris" {
            let b = try active(s)
            let j = Float(own.intersection(b).count) / Float(max(1, own.union(b).count))
            scored.append((i, s, j))
        }
        scored.sort { $0.jaccard > $1.jaccard || ($0.jaccard == $1.jaccard && $0.index < $1.index) }
        let brute = scored.prefix(3).map(\.subject)
        #expect(try bank.mineByLatentOverlap(active: Array(own).sorted(), exclude: "Paris", count: 3) == brute)
        let overlaps = try bank.latentOverlaps(active: Array(own).sorted(), exclude: "Paris", count: 3)
        for (o, b) in zip(overlaps, scored.prefix(3)) { #expect(o.subject == b.subject && abs(o.overlap - b.jaccard) <= 1e-6) }
    }

    /// KL(P_base ‖ P_edited) of the next token after `prompt` filled with each subject, summed.
    static func spill(_ m: LanguageModel, _ update: LowRankUpdate, prompt: String, subjects: [String]) throws -> Double {
        let tok = EditTokenizer(model: m)
        func dists() throws -> [[Double]] {
            try subjects.map { s in
                let ids = try tok.subjectPrompt(prefix: "", prompt: prompt, subject: s).tokens
                let z = try m.forward(ids, options: ForwardOptions(logits: .last)).logits.data.map(Double.init)
                let mx = z.max()!, lse = mx + log(z.reduce(0) { $0 + exp($1 - mx) })
                return z.map { exp($0 - lse) }
            }
        }
        let before = try dists()
        let backup = try m.apply(update)
        let after = try dists()
        try m.restore(backup)
        var kl = 0.0
        for (p, q) in zip(before, after) {
            for (a, b) in zip(p, q) where a > 0 { kl += a * log(a / max(b, 1e-30)) }
        }
        return kl
    }

    /// With the neighbours' KL in the objective, the mined neighbours' next-token distributions move
    /// less under the written update than without it, and the edit still lands.
    @Test func protectedNeighboursMoveLessAndTheEditLands() throws {
        let m = try TinyEditModel.load()
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let hash = m.weightHash
        let plain = try Self.editor(m, neighbours: nil).computeUpdate(request)
        let protected = try Self.editor(m, neighbours: NeighbourSettings(count: 4, klFactor: 20)).computeUpdate(request)
        #expect(m.weightHash == hash)
        #expect(protected.neighbours.count == 4 && !protected.neighbours.contains("Paris") && plain.neighbours.isEmpty)
        #expect(protected.losses.last!.nll < protected.losses.first!.nll)
        let a = try Self.spill(m, plain.applied, prompt: request.prompt, subjects: protected.neighbours)
        let b = try Self.spill(m, protected.applied, prompt: request.prompt, subjects: protected.neighbours)
        #expect(b < a, "the protected neighbours' KL \(b) should be below the unprotected \(a)")
        // Factor 0 is plain ROME: the neighbour prompts add nothing to the objective or its gradient.
        let zero = try Self.editor(m, neighbours: NeighbourSettings(count: 4, klFactor: 0)).computeUpdate(request)
        #expect(Vector.maxAbsDifference(zero.update.r, plain.update.r) <= 1e-5 * Vector.norm(plain.update.r))
    }

    /// log p(token) after `prompt` filled with `subject`, by one plain pass on the model as it is.
    static func logProb(_ m: LanguageModel, prompt: String, subject: String, token: Int32) throws -> Double {
        let ids = try EditTokenizer(model: m).subjectPrompt(prefix: "", prompt: prompt, subject: subject).tokens
        let z = try m.forward(ids, options: ForwardOptions(logits: .last)).logits.data.map(Double.init)
        let mx = z.max()!, lse = mx + log(z.reduce(0) { $0 + exp($1 - mx) })
        return z[Int(token)] - lse
    }

    /// `shared_object` keeps, of the shortlist by key gain, the subjects whose own prompt gives the
    /// fact's current object the highest probability (brute force: one pass per subject), and the
    /// `neighbour_shift` signal equals the move of log p(new) − log p(current) that applying the
    /// written update to the weights gives those prompts.
    @Test func sharedObjectMiningAndTheNeighbourShift() throws {
        let m = try TinyEditModel.load()
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let settings = NeighbourSettings(count: 3, klFactor: 0, keyWeight: 10, mine: .sharedObject, shortlist: 7)
        let e = try Self.editor(m, neighbours: settings)
        let plain = try Self.editor(m, neighbours: nil).computeUpdate(request)
        let tok = EditTokenizer(model: m)
        let current = try tok.target("is")[0], new = try tok.target("Rome")[0]
        // Mining runs on the unprotected u, which is plain ROME's.
        let bank = try SubjectBank(model: m, layer: 1, subjects: Self.subjects, limit: 100)
        let shortlist = bank.mineByKeyGain(u: plain.update.u, exclude: "Paris", count: 7)
        let brute = try shortlist.map { ($0, try Self.logProb(m, prompt: request.prompt, subject: $0, token: current)) }
            .enumerated().sorted { $0.element.1 > $1.element.1 || ($0.element.1 == $1.element.1 && $0.offset < $1.offset) }
            .prefix(3).map(\.element.0)
        let r = try e.computeUpdate(request)
        #expect(r.neighbours == brute)
        let shift = try #require(r.neighbourShift), top = try #require(r.neighbourShiftMax)
        var moves: [Double] = []
        for s in r.neighbours {
            let before = try Self.logProb(m, prompt: request.prompt, subject: s, token: new) - Self.logProb(m, prompt: request.prompt, subject: s, token: current)
            let backup = try m.apply(r.applied)
            let after = try Self.logProb(m, prompt: request.prompt, subject: s, token: new) - Self.logProb(m, prompt: request.prompt, subject: s, token: current)
            try m.restore(backup)
            moves.append(after - before)
        }
        let mean = moves.reduce(0, +) / Double(moves.count)
        #expect(abs(shift - mean) <= 1e-3 + 1e-3 * abs(mean), "signal \(shift) against applied \(mean)")
        #expect(abs(top - moves.max()!) <= 1e-3 + 1e-3 * abs(moves.max()!))
        #expect(moves.contains { abs($0) > 1e-3 }, "the update should move some neighbour")
        // The editor publishes the signals through FactEditor; plain ROME only the size of its update.
        _ = try e.computeUpdates(together: [request])
        #expect(e.lastSignals["neighbour_shift"].map { abs($0 - shift) <= 1e-6 } == true)
        let p = try Self.editor(m, neighbours: nil)
        let (plainUpdates, _, _) = try p.computeUpdates(together: [request])
        #expect(p.lastSignals.keys.sorted() == ["update_norm"], "\(p.lastSignals)")
        #expect(abs((p.lastSignals["update_norm"] ?? 0) / plainUpdates[0].frobeniusNorm - 1) < 1e-12 && plainUpdates[0].frobeniusNorm > 0)
        // Without the probe the same edit, and no signal.
        var quiet = settings
        quiet.probe = false
        let q = try Self.editor(m, neighbours: quiet).computeUpdate(request)
        #expect(q.neighbours == r.neighbours && q.neighbourShift == nil && q.update == r.update)
        #expect(throws: EditError.self) {
            _ = try Self.editor(m, neighbours: NeighbourSettings(count: 3, klFactor: 0, keyWeight: 10, mine: .sharedObject, shortlist: 2))
        }
    }

    /// Design 3's subspace: the best-scoring latents (−W_dec[j]·g > 0) outside the excluded set,
    /// best first, with an orthonormal basis that spans their decoder directions.
    @Test func outputFeatureSubspaceKeepsThePromotingLatentsNoNeighbourUses() throws {
        let d = 8, f = 20
        let sae = try MesaTests.alwaysOnSAE(d: d, f: f, site: Site(layer: 1, kind: .mlpOut))
        var rng = Xoshiro256(seed: 4)
        let g = (0..<d).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let excluded: Set<Int> = [0, 3, 7]
        let space = OutputFeatureSubspace(sae: sae, gradient: g, excluded: excluded, count: 5)
        let row = { (j: Int) in Array(sae.decoder[(j * d)..<((j + 1) * d)]) }
        let brute = (0..<f).filter { !excluded.contains($0) }.map { ($0, -Vector.dot(row($0), g)) }.filter { $0.1 > 0 }
            .sorted { $0.1 > $1.1 }.prefix(5).map(\.0)
        #expect(space.latents == brute && space.latents.count == 5)
        #expect(space.basis.count == 5, "five random directions in 8 dimensions are independent")
        for (i, a) in space.basis.enumerated() {
            for (j, b) in space.basis.enumerated() { #expect(abs(Vector.dot(a, b) - (i == j ? 1 : 0)) <= 1e-5) }
        }
        for j in space.latents {
            var r = row(j)
            for q in space.basis { let c = Vector.dot(q, r); for k in 0..<d { r[k] -= c * q[k] } }
            #expect(Vector.norm(r) <= 1e-5 * Vector.norm(row(j)), "latent \(j)'s direction lies in the span")
        }
        // More latents than dimensions: the basis stops at D.
        #expect(OutputFeatureSubspace(sae: sae, gradient: g, excluded: [], count: f).basis.count <= d)
    }

    /// The output_features variant: δ lies in the span of its chosen latents' decoder directions, none
    /// of them active on a mined neighbour, the update is rank one and the edit's NLL falls.
    @Test func outputFeaturesEditStaysInItsSubspace() throws {
        let m = try TinyEditModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let sae = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 4 * m.config.hidden, site: site, bias: -0.3)
        let e = try Self.editor(m, neighbours: NeighbourSettings(count: 2, klFactor: 0),
                                mesa: MesaHyperparameters(sae: "t", l1: 0, variant: .outputFeatures, features: 6), sae: sae)
        #expect(e.hparams.neighbourProtection?.mining == .saeOverlap)
        let r = try e.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"))
        let chosen = try #require(r.outputLatents)
        #expect(!r.refined && r.applied.rank == 1 && r.neighbours.count == 2)
        #expect(!chosen.isEmpty && chosen.count <= 6 && r.deltaFeatures == chosen.count)
        // The neighbours' own active latents, by a pass of their own.
        let d = m.config.hidden
        for n in r.neighbours {
            let sp = try EditTokenizer(model: m).subjectPrompt(prefix: "", prompt: "{}", subject: n)
            let out = try m.forward(sp.tokens, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1)).activations[site]!.data
            let fn = sae.encode(Array(out[(sp.subjectLast * d)..<((sp.subjectLast + 1) * d)]), rows: 1)
            for j in chosen { #expect(fn[j] == 0, "latent \(j) is active on neighbour \(n)") }
        }
        // δ = r·uᵀk* lies in the span of the chosen decoder rows.
        let delta = r.update.r.map { $0 * r.denominator }
        var rest = delta.map(Double.init)
        var basis: [[Double]] = []
        for j in chosen {
            var v = (0..<d).map { Double(sae.decoder[j * d + $0]) }
            for q in basis { let c = zip(q, v).map { $0 * $1 }.reduce(0, +); for k in 0..<d { v[k] -= c * q[k] } }
            let n = (v.map { $0 * $0 }.reduce(0, +)).squareRoot()
            if n > 1e-6 { basis.append(v.map { $0 / n }) }
        }
        for q in basis { let c = zip(q, rest).map { $0 * $1 }.reduce(0, +); for k in 0..<d { rest[k] -= c * q[k] } }
        let restNorm = (rest.map { $0 * $0 }.reduce(0, +)).squareRoot()
        #expect(restNorm <= 1e-4 * Double(Vector.norm(delta)) && Vector.norm(delta) > 0)
        #expect(r.losses.last!.nll < r.losses.first!.nll)
    }

    /// A key SAE on the tiny model's mlp_key@1 whose even latents are rare (log10 frequency −3).
    static func keySAE(_ m: LanguageModel, frequencies: Bool = true) throws -> SparseAutoencoder {
        let f = 2 * m.config.intermediate
        let sae = try MesaTests.alwaysOnSAE(d: m.config.intermediate, f: f, site: Site(layer: 1, kind: .mlpKey), bias: -0.2)
        if frequencies { sae.logSparsity = (0..<f).map { $0 % 2 == 0 ? -3 : -1 } }
        return sae
    }

    /// Design 2's key parts: the rare latents active on at least half of the keys, and per key the
    /// sum of their decoder rows weighted by its code.
    @Test func subjectKeyFeaturesKeepTheRareLatentsOfMostKeys() throws {
        let m = try TinyEditModel.load()
        let sae = try Self.keySAE(m)
        let keys = try ["Paris", "Rome", "Oslo"].map { try Self.key(m, $0, layer: 1) }
        let got = try SubjectKeyFeatures(sae: sae, keys: keys, rarity: -2.5)
        let F = sae.width, D = sae.dIn
        let codes = keys.map { sae.encode($0, rows: 1) }
        let brute = (0..<F).filter { j in j % 2 == 0 && 2 * codes.filter { $0[j] > 0 }.count >= 3 }
        #expect(got.latents == brute && !brute.isEmpty)
        for (i, part) in got.parts.enumerated() {
            var want = [Float](repeating: 0, count: D)
            for j in brute where codes[i][j] > 0 { for k in 0..<D { want[k] += codes[i][j] * sae.decoder[j * D + k] } }
            #expect(Vector.maxAbsDifference(part, want) <= 1e-4 * max(1, Vector.norm(want)))
        }
        // Without firing frequencies the SAE cannot say which latents are rare.
        #expect(throws: EditError.self) { _ = try SubjectKeyFeatures(sae: try Self.keySAE(m, frequencies: false), keys: keys, rarity: -2.5) }
    }

    /// The key_features variant computes u from the key parts, optimizes each rewrite prompt with the
    /// gain the update gives it (so the edit lands), writes a rank-one update, and needs a key SAE of
    /// the right site.
    @Test func keyFeaturesDirectionComesFromTheSubjectsOwnKeyLatents() throws {
        let m = try TinyEditModel.load()
        let outSAE = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 40, site: Site(layer: 1, kind: .mlpOut), bias: 0)
        let mesa = MesaHyperparameters(sae: "t", l1: 0, variant: .keyFeatures, keySae: "k")
        var h = RomeHyperparameters(layer: 1)
        h.mom2Adjustment = false
        h.vNumGradSteps = 20
        h.earlyStopLoss = 0
        h.keyAveraging = .each
        h.mesa = mesa
        let templates = try ContextTemplates.generate(model: m, groups: [.init(length: 4, count: 2)], seed: 3)
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")
        let e = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, sae: outSAE, keySAE: try Self.keySAE(m))
        let r = try e.computeUpdate(request)
        let latents = try #require(r.keyLatents)
        #expect(!latents.isEmpty && latents.allSatisfy { $0 % 2 == 0 })
        #expect(!r.refined && r.applied.rank == 1 && r.losses.last!.nll < r.losses.first!.nll)
        // The gains differ from plain ROME's 1 under `each`: u is not the rewrite keys' equal-gain direction.
        #expect(r.keyGains.contains { abs($0 - 1) > 1e-3 })
        // The share of k* its own latents reconstruct: ‖k*_parts‖/‖k*‖, and none without them.
        let share = try #require(r.keyPartShare)
        #expect(share > 0 && share.isFinite)
        _ = try e.computeUpdates(together: [request])
        #expect(e.lastSignals["key_latents"] == Double(latents.count) && e.lastSignals["key_part_share"].map { abs($0 - share) < 1e-6 } == true)
        // Rarity −4 leaves no latent: u is ROME's own.
        var h4 = h
        h4.mesa?.keyRarity = -4
        let plain = try RomeEditor(model: m, hparams: h4, templates: templates, statistics: nil, sae: outSAE, keySAE: try Self.keySAE(m)).computeUpdate(request)
        #expect(plain.keyLatents == [] && plain.keyGains.allSatisfy { abs($0 - 1) <= 1e-3 } && plain.keyPartShare == nil)
        // A missing key SAE, or one of another site, is an error; so is the variant without key_sae.
        #expect(throws: EditError.self) { _ = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, sae: outSAE) }
        let wrongSite = try MesaTests.alwaysOnSAE(d: m.config.intermediate, f: 8, site: Site(layer: 0, kind: .mlpKey))
        #expect(throws: EditError.self) { _ = try RomeEditor(model: m, hparams: h, templates: templates, statistics: nil, sae: outSAE, keySAE: wrongSite) }
        #expect(throws: EditError.self) { try MesaHyperparameters(sae: "t", variant: .keyFeatures).validate() }
    }

    /// Woodbury's solve with hard-negative keys equals solving with C + (w/M)·Σ k_n k_nᵀ directly.
    @Test func negativeKeysSolveEqualsTheDirectSolve() throws {
        let ff = 6
        var rng = Xoshiro256(seed: 11)
        func r() -> Float { Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let keys = (0..<3).map { _ in (0..<ff).map { _ in r() } }
        let w: Float = 2.5
        let neg = try NegativeKeys(keys: keys, weight: w) { $0 }  // C = I
        let x = (0..<ff).map { _ in r() }
        let got = try neg.apply(x)
        var c = [Double](repeating: 0, count: ff * ff)
        for i in 0..<ff { c[i * ff + i] = 1 }
        for k in keys { for i in 0..<ff { for j in 0..<ff { c[i * ff + j] += Double(w) / 3 * Double(k[i] * k[j]) } } }
        let want = try LAPACK.solveSPD(c, x.map(Double.init), n: ff, nrhs: 1)
        for i in 0..<ff { #expect(abs(Double(got[i]) - want[i]) < 1e-5 * max(1, abs(want[i]))) }
    }

    /// Hard-negative keys shrink the mined neighbours' gains |uᵀk_n/uᵀk*| and keep the edit's own.
    @Test func negativeKeysShrinkTheNeighboursGains() throws {
        let m = try TinyEditModel.load()
        let request = EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome", targetTrue: "is")
        let plain = try Self.editor(m, neighbours: nil).computeUpdate(request)
        let keyed = try Self.editor(m, neighbours: NeighbourSettings(count: 4, klFactor: 0, keyWeight: 50)).computeUpdate(request)
        #expect(keyed.neighbours.count == 4)
        let tok = EditTokenizer(model: m)
        let prompts = try keyed.neighbours.map { n -> DeltaPrompt in
            let sp = try tok.subjectPrompt(prefix: "", prompt: request.prompt, subject: n)
            return DeltaPrompt(tokens: sp.tokens, position: sp.subjectLast, logitPositions: [sp.tokens.count - 1])
        }
        let keys = try DeltaPass(model: m, site: Site(layer: 1, kind: .mlpOut), prompts: prompts).keys
        func gains(_ r: RomeResult) -> [Float] { keys.map { abs(Vector.dot(r.update.u, $0) / r.denominator) } }
        let before = gains(plain), after = gains(keyed)
        #expect(after.reduce(0, +) < 0.5 * before.reduce(0, +), "neighbour gains \(after) against \(before)")
        // The edited subject's rewrite prompts keep gain 1 (equal-gain direction under C').
        for g in keyed.keyGains { #expect(abs(g - 1) < 1e-3) }
        #expect(keyed.losses.last!.nll < keyed.losses.first!.nll)
    }

    @Test func settingsAreChecked() throws {
        let m = try TinyEditModel.load()
        #expect(throws: EditError.self) { _ = try Self.editor(m, neighbours: NeighbourSettings(count: 0, klFactor: 1)) }
        #expect(throws: EditError.self) { _ = try Self.editor(m, neighbours: NeighbourSettings(count: 4, klFactor: -1)) }
        #expect(throws: EditError.self) { _ = try Self.editor(m, neighbours: NeighbourSettings(count: 4, klFactor: 1, mine: .saeOverlap)) }
        // The mined_neighbours MESA variant mines with the SAE and does not refine δ.
        let sae = try MesaTests.alwaysOnSAE(d: m.config.hidden, f: 40, site: Site(layer: 1, kind: .mlpOut), bias: 0)
        let e = try Self.editor(m, neighbours: nil, mesa: MesaHyperparameters(sae: "t", l1: 0, variant: .minedNeighbours), sae: sae)
        #expect(e.hparams.neighbourProtection?.mining == .saeOverlap)
        let r = try e.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome"))
        #expect(!r.refined && r.neighbours.count == 8 && r.applied.rank == 1)
        // Its uncertainty signals: the subject's reconstruction error and the neighbours' mean overlap.
        let c = try #require(r.coverage)
        #expect(c.subjectError.map { $0 >= 0 && $0.isFinite } == true)
        #expect(c.crowding.map { $0 >= 0 && $0 <= 1 } == true)
        // Without candidate subjects the editor says what it needs.
        let bare = try Self.editor(m, neighbours: NeighbourSettings(count: 2, klFactor: 1))
        bare.neighbourCandidates = []
        #expect(throws: EditError.self) { _ = try bare.computeUpdate(EditRequest(subject: "Paris", prompt: "{} is in", targetNew: "Rome")) }
    }
}
