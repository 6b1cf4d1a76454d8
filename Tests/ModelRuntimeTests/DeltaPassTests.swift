import Foundation
import ModelRuntime
import Tensor
import Testing

/// The δ pass must reproduce the full forward pass with an intervention, and its gradient must
/// match central finite differences, for every architecture and both sites.
@Suite struct DeltaPassTests {
    /// Prompts of different lengths with δ at different positions; logits after δ. The last three
    /// start with the same six tokens (as a context template does), which the pass computes once.
    static func prompts() -> [DeltaPrompt] {
        [DeltaPrompt(tokens: [40, 72, 101, 108, 108, 111, 32, 116], position: 3, logitPositions: [3, 5, 7]),
         DeltaPrompt(tokens: [9, 17, 33, 65, 129], position: 0, logitPositions: [1, 4]),
         DeltaPrompt(tokens: [200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210], position: 9, logitPositions: [9])]
            + sharedPrefixPrompts(first: 50)
    }

    static func sharedPrefixPrompts(first: Int32) -> [DeltaPrompt] {
        let prefix: [Int32] = [first, 51, 52, 53, 54, 55]
        return [DeltaPrompt(tokens: prefix + [11, 12, 13], position: 7, logitPositions: [7, 8]),
                DeltaPrompt(tokens: prefix + [21, 22], position: 6, logitPositions: [7]),
                DeltaPrompt(tokens: prefix + [31, 32, 33, 34], position: 6, logitPositions: [6, 9])]
    }

    /// Prompts that start alike share their prefix's computation: the pass over them does less
    /// arithmetic than over the same prompts with distinct first tokens, and gives each prompt what
    /// its own pass gives (the other tests run on prompts() with the shared prefix).
    @Test func aSharedPrefixIsComputedOnce() throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: "llama"))
        let site = Site(layer: 1, kind: .mlpOut)
        let shared = try DeltaPass(model: m, site: site, prompts: Self.sharedPrefixPrompts(first: 50))
        let distinct = Self.sharedPrefixPrompts(first: 50).enumerated().map { i, p in
            DeltaPrompt(tokens: [Int32(60 + i)] + p.tokens.dropFirst(), position: p.position, logitPositions: p.logitPositions)
        }
        let apart = try DeltaPass(model: m, site: site, prompts: distinct)
        // Rows × layers on the 3-layer model with the site at layer 1: apart 25 + 22 + 26 = 73 (every
        // token through layers 0...1, the tokens before δ through layer 2); shared 6 · 3 (the prefix
        // once) + 7 + 4 + 8 = 37.
        #expect(shared.prepareFLOPs < 0.6 * apart.prepareFLOPs, "\(shared.prepareFLOPs) against \(apart.prepareFLOPs)")
        for (i, p) in Self.sharedPrefixPrompts(first: 50).enumerated() {
            let r = try m.forward(p.tokens, options: ForwardOptions(capture: [Site(layer: 1, kind: .mlpKey), site], logits: .none))
            #expect(Vector.maxAbsDifference(shared.keys[i], r.activations[Site(layer: 1, kind: .mlpKey)]!.row(p.position)) < 1e-4)
            #expect(Vector.maxAbsDifference(shared.mlpOutputs[i], r.activations[site]!.row(p.position)) < 1e-4)
        }
    }

    static func randomVector(_ n: Int, seed: UInt64, scale: Float) -> [Float] {
        var rng = Xoshiro256(seed: seed)
        return (0..<n).map { _ in (Float(rng.next() >> 40) / Float(1 << 24) - 0.5) * 2 * scale }
    }

    @Test(arguments: ["llama", "qwen2", "gpt2"], [SiteKind.mlpOut, .residOut])
    func forwardMatchesFullPassWithIntervention(arch: String, kind: SiteKind) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let site = Site(layer: 1, kind: kind)
        let pass = try DeltaPass(model: m, site: site, prompts: Self.prompts())
        let delta = Self.randomVector(m.config.hidden, seed: 3, scale: 0.5)
        let logits = try pass.forward(delta: delta)
        var row = 0
        for p in Self.prompts() {
            let full = try m.forward(p.tokens, options: ForwardOptions(
                interventions: [Intervention(site: site, position: p.position, vector: delta)], logits: .positions(p.logitPositions)))
            for i in 0..<p.logitPositions.count {
                #expect(Vector.maxAbsDifference(full.logitRow(i), logits.row(row)) < 1e-4, "\(arch) row \(row)")
                row += 1
            }
        }
        // Unedited reads at the δ position.
        for (i, p) in Self.prompts().enumerated() {
            let r = try m.forward(p.tokens, options: ForwardOptions(capture: [Site(layer: 1, kind: .mlpKey), Site(layer: 1, kind: .mlpOut)], logits: .none))
            // The pass splits each prompt at the δ position, so GEMM rounding differs in the last bits.
            #expect(Vector.maxAbsDifference(pass.keys[i], r.activations[Site(layer: 1, kind: .mlpKey)]!.row(p.position)) < 1e-4)
            #expect(Vector.maxAbsDifference(pass.mlpOutputs[i], r.activations[Site(layer: 1, kind: .mlpOut)]!.row(p.position)) < 1e-4)
        }
    }

    @Test(arguments: ["llama", "qwen2", "gpt2"], [0, 1, 2])
    func gradientMatchesFiniteDifferences(arch: String, layer: Int) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch, tied: arch != "qwen2"))
        let pass = try DeltaPass(model: m, site: Site(layer: layer, kind: .mlpOut), prompts: Self.prompts())
        let V = m.config.vocabSize
        // A smooth nonlinear loss of the logits: Σ_rows logsumexp(row) − Σ c·logits (a weighted NLL).
        let weights = Self.randomVector(pass.logitCount * V, seed: 11, scale: 1)
        func loss(_ delta: [Float]) throws -> (Double, Tensor) {
            let z = try pass.forward(delta: delta)
            var total: Double = 0
            var grad = [Float](repeating: 0, count: z.count)
            for r in 0..<pass.logitCount {
                let row = Array(z.data[(r * V)..<((r + 1) * V)])
                let mx = row.max()!
                let e = row.map { Double(Foundation.exp($0 - mx)) }
                let s = e.reduce(0, +)
                total += Double(mx) + Foundation.log(s)
                for v in 0..<V {
                    total -= Double(weights[r * V + v] * row[v]) / Double(V)
                    grad[r * V + v] = Float(e[v] / s) - weights[r * V + v] / Float(V)
                }
            }
            return (total, Tensor(shape: z.shape, data: grad))
        }
        let delta = Self.randomVector(m.config.hidden, seed: 5, scale: 0.3)
        let (_, dz) = try loss(delta)
        let g = try pass.backward(logitGradient: dz)
        // Central differences along a few coordinates and one random direction.
        let eps: Float = 1e-2
        var checked = 0
        for i in [0, 7, m.config.hidden - 1] {
            var plus = delta, minus = delta
            plus[i] += eps; minus[i] -= eps
            let fd = (try loss(plus).0 - loss(minus).0) / Double(2 * eps)
            #expect(abs(fd - Double(g[i])) <= 5e-4 + 1e-2 * abs(fd), "\(arch) layer \(layer) coordinate \(i): fd \(fd) vs \(g[i])")
            checked += 1
        }
        let dir = Self.randomVector(m.config.hidden, seed: 9, scale: 1)
        let n = Vector.norm(dir)
        let u = dir.map { $0 / n }
        let fd = (try loss(zip(delta, u).map { $0 + eps * $1 }).0 - loss(zip(delta, u).map { $0 - eps * $1 }).0) / Double(2 * eps)
        let analytic = Double(Vector.dot(g, u))
        #expect(abs(fd - analytic) <= 5e-4 + 1e-2 * abs(fd), "\(arch) layer \(layer) direction: fd \(fd) vs \(analytic)")
        #expect(checked == 3)
        #expect(Vector.norm(g) > 0.05, "a vanishing gradient would make this check vacuous")
    }

    /// A subset of a pass's prompts (each with its own δ) gives the logits and per-prompt gradients of
    /// a pass that holds those prompts alone: packing other prompts beside them, or dropping some,
    /// changes nothing but the GEMMs' row counts.
    @Test(arguments: ["llama", "qwen2", "gpt2"])
    func promptSubsetMatchesAPassOfThosePromptsAlone(arch: String) throws {
        let m = try TinyModel.load(TinyModel.Spec(architecture: arch))
        let site = Site(layer: 0, kind: .residOut), V = m.config.vocabSize, d = m.config.hidden
        let all = Self.prompts()
        let pass = try DeltaPass(model: m, site: site, prompts: all)
        let deltas = (0..<all.count).map { Self.randomVector(d, seed: 20 + UInt64($0), scale: 0.4) }
        // The full set first, so the subset's forward overwrites buffers laid out for more rows.
        _ = try pass.forward(deltas: deltas)
        for subset in [[0, 2], [1], [2], [3, 5], [4]] {
            let alone = try DeltaPass(model: m, site: site, prompts: subset.map { all[$0] })
            let expected = try alone.forward(deltas: subset.map { deltas[$0] })
            let got = try pass.forward(deltas: subset.map { deltas[$0] }, prompts: subset)
            #expect(got.shape == expected.shape)
            // The two passes' caches come from different unedited passes (a prefix shared with other
            // prompts is computed once, apart from the prompt), so they differ in the last bits.
            let scale = Double(expected.data.map { abs($0) }.max()!)
            #expect(Double(Vector.maxAbsDifference(got.data, expected.data)) <= 1e-5 * scale, "\(arch) subset \(subset) logits")
            let dz = Tensor(shape: got.shape, data: Self.randomVector(got.count, seed: 31, scale: 1))
            let ge = try alone.backwardPerPrompt(logitGradient: dz), gg = try pass.backwardPerPrompt(logitGradient: dz)
            #expect(gg.count == subset.count)
            for (a, b) in zip(gg, ge) {
                #expect(Double(Vector.maxAbsDifference(a, b)) <= 1e-5 * Double(Vector.norm(b)), "\(arch) subset \(subset) gradient")
                #expect(Vector.norm(b) > 1e-3, "a vanishing gradient would make this check vacuous")
            }
            #expect(got.shape[0] == subset.reduce(0) { $0 + all[$1].logitPositions.count } && got.shape[1] == V)
        }
        #expect(throws: ModelError.self) { try pass.forward(deltas: [deltas[1], deltas[0]], prompts: [1, 0]) }
        #expect(throws: ModelError.self) { try pass.forward(deltas: [deltas[0]], prompts: [all.count]) }
        #expect(throws: ModelError.self) { try pass.forward(deltas: [deltas[0]], prompts: [0, 1]) }
    }

    @Test func badInputIsRefused() throws {
        let m = try TinyModel.load()
        #expect(throws: ModelError.self) { try DeltaPass(model: m, site: Site(layer: 1, kind: .mlpKey), prompts: Self.prompts()) }
        #expect(throws: ModelError.self) { try DeltaPass(model: m, site: Site(layer: 9, kind: .mlpOut), prompts: Self.prompts()) }
        #expect(throws: ModelError.self) {
            try DeltaPass(model: m, site: Site(layer: 1, kind: .mlpOut), prompts: [DeltaPrompt(tokens: [1, 2, 3], position: 2, logitPositions: [1])])
        }
        let pass = try DeltaPass(model: m, site: Site(layer: 1, kind: .mlpOut), prompts: Self.prompts())
        #expect(throws: ModelError.self) { try pass.backward(logitGradient: Tensor(zeros: [pass.logitCount, m.config.vocabSize])) }
        #expect(throws: ModelError.self) { try pass.forward(delta: [Float](repeating: .nan, count: m.config.hidden)) }
        #expect(throws: ModelError.self) { try pass.forward(delta: [1, 2]) }
    }
}
