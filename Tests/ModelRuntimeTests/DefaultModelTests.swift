import Foundation
import ModelRuntime
import Tensor
import Testing

/// The real-model smoke test that runs in CI: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to
/// Float32) against logits, activations and scores from transformers on the same dequantized weights.
@Suite(.serialized) struct DefaultModelTests {
    static let model: Result<LanguageModel, Error> = Result { try ModelLoader.load(path: try TestPaths.defaultModel) }
    // Never mutated: a constant JSON document, not Sendable only because its values are `Any`.
    nonisolated(unsafe) static let fixture = try! TestPaths.json("smollm2-logits.json") as! [String: Any]

    /// |got − want| ≤ abs + rel·|want|.
    static func close(_ got: Float, _ want: Float, abs tol: Float, rel: Float = 0) -> Bool {
        Swift.abs(got - want) <= tol + rel * Swift.abs(want)
    }

    @Test func lastPositionLogitsMatchReference() throws {
        let m = try Self.model.get()
        let prompts = Self.fixture["prompts"] as! [[String: Any]]
        #expect(prompts.count >= 10)
        let stride = (Self.fixture["probe_stride"] as! NSNumber).intValue
        var worst: Float = 0
        for p in prompts {
            let text = p["text"] as! String
            let ids = (p["ids"] as! [NSNumber]).map { $0.int32Value }
            #expect(m.tokenizer.encode(text) == ids, "tokenization of \(text.debugDescription)")
            let row = try m.forward(ids).logitRow(0)
            let argmax = row.indices.max { row[$0] < row[$1] }!
            #expect(argmax == (p["argmax"] as! NSNumber).intValue, "argmax for \(text.debugDescription)")
            for pair in p["top"] as! [[NSNumber]] {
                worst = max(worst, abs(row[pair[0].intValue] - pair[1].floatValue))
            }
            for (i, v) in (p["probe_logits"] as! [NSNumber]).enumerated() {
                worst = max(worst, abs(row[i * stride] - v.floatValue))
            }
            let lse = row.withUnsafeBufferPointer { Kernels.logSumExp($0.baseAddress!, $0.count) }
            #expect(abs(lse - (p["logsumexp"] as! NSNumber).floatValue) < 1e-3)
        }
        #expect(worst < 1e-3, "max |Δlogit| over top-20 and probe logits = \(worst)")
    }

    @Test func activationSitesMatchReference() throws {
        let m = try Self.model.get()
        let h = Self.fixture["hidden"] as! [String: Any]
        let ids = (h["ids"] as! [NSNumber]).map { $0.int32Value }
        let pos = (h["position"] as! NSNumber).intValue
        let layers = h["layers"] as! [String: [String: [NSNumber]]]
        var capture: Set<Site> = []
        for (l, kinds) in layers { for k in kinds.keys { capture.insert(Site(layer: Int(l)!, kind: SiteKind(rawValue: k)!)) } }
        let r = try m.forward(ids, options: ForwardOptions(capture: capture, logits: .none))
        for (l, kinds) in layers {
            for (k, values) in kinds {
                let site = Site(layer: Int(l)!, kind: SiteKind(rawValue: k)!)
                let got = r.activations[site]!.row(pos)
                let want = values.map { $0.floatValue }
                #expect(got.count == want.count)
                let bad = zip(got, want).filter { !Self.close($0, $1, abs: 1e-3, rel: 1e-4) }.count
                #expect(bad == 0, "\(site): \(bad) values outside 1e-3 + 1e-4·|ref|; max Δ \(Vector.maxAbsDifference(got, want))")
            }
        }
    }

    @Test func targetScoresMatchReference() throws {
        let m = try Self.model.get()
        for s in Self.fixture["scores"] as! [[String: Any]] {
            let p = (s["prompt_ids"] as! [NSNumber]).map { $0.int32Value }
            let t = (s["target_ids"] as! [NSNumber]).map { $0.int32Value }
            #expect(m.tokenizer.encode(s["prompt"] as! String) == p)
            #expect(m.tokenizer.encode(s["target"] as! String) == t)
            let r = try m.score(prompt: p, target: t)
            #expect(abs(r.meanNLL - (s["nll"] as! NSNumber).doubleValue) < 1e-3, "\(s["prompt"]!) → \(s["target"]!)")
        }
    }

    @Test func greedyCompletionIsSensible() throws {
        let m = try Self.model.get()
        let g = try m.generate(prompt: m.tokenizer.encode("The capital of France is"), maxTokens: 6)
        #expect(g.text.contains("Paris"), "got \(g.text.debugDescription)")
    }

    @Test func promptLongerThanContextIsATypedError() throws {
        let m = try Self.model.get()
        let long = [Int32](repeating: 504, count: m.config.contextLength + 1)
        #expect { try m.generate(prompt: long, maxTokens: 1) } throws: { ($0 as? ModelError)?.code == .contextOverflow }
    }
}
