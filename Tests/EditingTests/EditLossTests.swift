import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

@Suite struct EditLossTests {
    /// ∂L/∂logits of NLL + KL against central differences on random logits.
    @Test func logitGradientMatchesFiniteDifferences() {
        var rng = Xoshiro256(seed: 4)
        let V = 11
        func rand() -> Float { Float(rng.next() >> 40) / Float(1 << 24) * 4 - 2 }
        let targets: [[Int32]] = [[3, 5], [7]]
        var loss = EditLoss(rewriteTargets: targets, klRows: 1, klFactor: 0.5, normWeight: 0.1)
        let reference = Tensor(shape: [4, V], data: (0..<(4 * V)).map { _ in rand() })
        loss.setReference(from: reference)
        let z = Tensor(shape: [4, V], data: (0..<(4 * V)).map { _ in rand() })
        let delta: [Float] = [0.3, -0.4]
        let (value, grad, normGrad) = loss.evaluate(logits: z, delta: delta)
        #expect(abs(value.norm - 0.1 * 0.5) < 1e-6)
        #expect(Vector.maxAbsDifference(normGrad, [0.1 * 0.6, -0.1 * 0.8]) < 1e-6)
        let eps: Float = 1e-2
        for i in [0, 3, 5, 12, 18, 33, 40, 43] {
            var p = z, m = z
            p.data[i] += eps; m.data[i] -= eps
            let fd = (loss.evaluate(logits: p, delta: delta).value.total - loss.evaluate(logits: m, delta: delta).value.total) / Double(2 * eps)
            #expect(abs(fd - Double(grad.data[i])) < 2e-4, "logit \(i): fd \(fd) vs \(grad.data[i])")
        }
        // At the reference distribution the KL term and its gradient vanish.
        var zero = EditLoss(rewriteTargets: [], klRows: 1, klFactor: 1, normWeight: 0)
        let one = Tensor(shape: [1, V], data: Array(reference.data[(3 * V)...]))
        zero.setReference(from: one)
        let (v0, g0, _) = zero.evaluate(logits: one, delta: [0])
        #expect(abs(v0.kl) < 1e-6 && g0.data.allSatisfy { abs($0) < 1e-6 })
    }

    /// The real model's δ-gradient against the PyTorch fixture (float64 reference), both sites.
    @Test func realModelGradientMatchesPyTorch() throws {
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: EditTestPaths.fixture("smollm2-delta-grad.json"))) as! [String: Any]
        let m = try ModelLoader.load(path: try EditTestPaths.defaultModel())
        for case let c as [String: Any] in fixture["cases"] as! [Any] {
            let name = c["name"] as! String
            func prompts(_ key: String) -> [(tokens: [Int32], position: Int, targets: [(Int, Int32)])] {
                (c[key] as! [[String: Any]]).map { p in
                    ((p["tokens"] as! [Int]).map(Int32.init), p["position"] as! Int,
                     ((p["targets"] as? [[Int]]) ?? []).map { ($0[0], Int32($0[1])) })
                }
            }
            let rewrite = prompts("rewrite_prompts"), kl = prompts("kl_prompts")
            let batch = rewrite.map { DeltaPrompt(tokens: $0.tokens, position: $0.position, logitPositions: $0.targets.map(\.0)) }
                + kl.map { DeltaPrompt(tokens: $0.tokens, position: $0.position, logitPositions: [$0.position]) }
            let site = Site(layer: c["layer"] as! Int, kind: SiteKind(rawValue: c["site"] as! String)!)
            let pass = try DeltaPass(model: m, site: site, prompts: batch)
            var loss = EditLoss(rewriteTargets: rewrite.map { $0.targets.map(\.1) }, klRows: kl.count,
                                klFactor: Float(c["kl_factor"] as! Double), normWeight: Float(c["norm_weight"] as! Double))
            loss.setReference(from: try pass.forward(delta: [Float](repeating: 0, count: m.config.hidden)))
            let delta = (c["delta"] as! [Double]).map(Float.init)
            let (value, dz, dn) = loss.evaluate(logits: try pass.forward(delta: delta), delta: delta)
            var grad = try pass.backward(logitGradient: dz)
            for i in grad.indices { grad[i] += dn[i] }
            let ref = c["loss_f64"] as! [String: Double]
            #expect(abs(value.nll - ref["nll"]!) < 2e-3 * max(1, ref["nll"]!), "\(name) nll \(value.nll) vs \(ref["nll"]!)")
            #expect(abs(value.kl - ref["kl"]!) < 1e-4 + 1e-2 * ref["kl"]!, "\(name) kl \(value.kl) vs \(ref["kl"]!)")
            #expect(abs(value.norm - ref["norm"]!) < 1e-6 + 1e-4 * ref["norm"]!, "\(name) norm")
            let g64 = (c["grad_f64"] as! [Double]).map(Float.init)
            let diff = zip(grad, g64).map { $0 - $1 }
            let rel = Vector.norm(diff) / Vector.norm(g64)
            #expect(rel < 5e-3, "\(name): relative L2 error of the gradient \(rel)")
        }
    }
}
