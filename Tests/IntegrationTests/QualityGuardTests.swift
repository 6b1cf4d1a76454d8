import Contracts
import EditDaemon
import Editing
import Foundation
import Messaging
import ModelRuntime
import TestSupport
import Tensor
import Testing

/// The quality guard in the daemon: edits that damage the canary set are undone bit-exactly and
/// dead-lettered, and the stream ends with the weights of a stream that never held them.
@Suite(.serialized) struct QualityGuardTests {
    static let text = """
        The river rises in the hills north of the town and flows south through farmland before it reaches the sea. \
        In the eighteenth century the town grew around its mills, and a canal was dug to carry grain to the port.
        """

    func guarded(_ label: String) throws -> DaemonHarness {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: label)
        let canary = h.dir.appendingPathComponent("canary.json")
        let doc: [String: Any] = ["facts": [["prompt": "Paris is in", "answer": "France"]], "text": Self.text]
        try JSONSerialization.data(withJSONObject: doc).write(to: canary)
        h.settings = ["quality_guard": ["enabled": true, "canary_file": canary.path, "perplexity_tokens": 64, "max_perplexity_rise": 0.25]]
        return h
    }

    /// Starting the canary pass at the first edited layer from the cached residual gives exactly the
    /// figures of a full pass, after an edit above that layer and after one below it (which must
    /// invalidate the cache).
    @Test func resumedCanaryPassGivesTheFullPassFigures() throws {
        let m = try TinyModel.load()
        let canary = CanarySet(facts: [.init(prompt: "Paris is in", answer: "France"), .init(prompt: "Rome is the capital of", answer: "Italy")],
                               text: Self.text)
        let full = try QualityGuard(model: m, canary: canary, perplexityTokens: 64, maxAccuracyDrop: 2, maxPerplexityRise: 0.03)
        let resumed = try QualityGuard(model: m, canary: canary, perplexityTokens: 64, maxAccuracyDrop: 2, maxPerplexityRise: 0.03)
        resumed.startLayer = 1
        #expect(try resumed.measure(m) == full.base)
        func bump(_ layer: Int, _ scale: Float) throws {
            let w = m.weights.layers[layer].wDown
            let (rows, cols) = (w.shape[0], w.shape[1])
            try m.apply(LowRankUpdate(parameter: w.name, layer: layer, rows: rows, cols: cols, rank: 1,
                                      left: (0..<rows).map { Float($0 % 5) * scale }, right: (0..<cols).map { Float(($0 * 3) % 7) * 0.1 }))
        }
        try bump(2, 0.05)
        let afterHigh = try full.measure(m)
        #expect(afterHigh != full.base)
        #expect(try resumed.measure(m) == afterHigh)
        try bump(0, 0.2)
        let afterLow = try full.measure(m)
        #expect(afterLow.perplexity != afterHigh.perplexity)
        #expect(try resumed.measure(m) == afterLow, "an edit below the start layer must refresh the cached residual")
    }

    /// The default canary set takes only facts whose prompt fits the cap (the pass costs per token), on
    /// the default model and ROME's known facts.
    @Test func defaultCanaryFactsHaveShortPrompts() throws {
        let m = try ModelLoader.load(path: try TestPaths.defaultModel())
        let data = TestPaths.sharedData
        let canary = try CanarySet.build(model: m, knownFacts: data.appendingPathComponent("counterfact/known_1000.json"),
                                         wikitext: data.appendingPathComponent("corpus/wikitext-2/tokens.valid.txt"), count: 12, tokens: 16, seed: 0)
        let tok = EditTokenizer(model: m)
        #expect(canary.facts.count == 12)
        for f in canary.facts { #expect(tok.prompt(f.prompt).count <= CanarySet.defaultMaxPromptTokens, "\(f.prompt)") }
        let guarded = try QualityGuard(model: m, canary: canary, perplexityTokens: 16, maxAccuracyDrop: 2, maxPerplexityRise: 0.03)
        #expect(guarded.base.accuracy == 100)
        #expect(guarded.passTokens <= 12 * CanarySet.defaultMaxPromptTokens + 17)
    }

    @Test func damagingEditsAreUndoneAndDeadLetteredAndTheStreamEndsAsIfTheyWereNeverSent() throws {
        let good1 = DaemonHarness.factUpdate(id: tid("qg-1"), subject: "Paris", targetNew: "Rome")
        // A hard target, a large step, no KL term and a clamp that allows a huge change: the edit wrecks the text's perplexity.
        let bad = DaemonHarness.factUpdate(id: tid("qg-bad"), subject: "Rome", targetNew: "qz xv qz xv qz xv",
                                           extra: ["hyperparameters": ["learning_rate": 1, "steps": 60, "clamp_norm_factor": 100, "kl_factor": 0]])
        let good2 = DaemonHarness.factUpdate(id: tid("qg-2"), subject: "Lyon", targetNew: "Paris")

        let x = try guarded("qg-x")
        defer { x.cleanup() }
        try x.start()
        try x.publish(good1)
        let (_, badOffset) = try x.publish(bad)
        try x.publish(good2)
        let rx = try x.results(for: [tid("qg-1"), tid("qg-2")])
        let r1 = try #require(rx[tid("qg-1")], "daemon log:\n\(x.tail())"), r2 = try #require(rx[tid("qg-2")])
        #expect(r1["status"]?.stringValue == "applied" && r2["snapshot"]?.intValue == 2 && r2["parent"]?.intValue == 1)
        let canary = try #require(r2["canary"])
        #expect(canary["accuracy"] != nil && canary["base_perplexity"] != nil)
        #expect(try DaemonTests.schema("edit-result.schema.json").validate(r2).valid)
        let dead = try x.collect(x.topics.deadLetters, timeout: 30) { $0.contains { $0["original"]?["offset"]?.intValue == Int(badOffset) } }
        let d = try #require(dead.first { $0["original"]?["offset"]?.intValue == Int(badOffset) }, "daemon log:\n\(x.tail())")
        #expect(d["reason"]?.stringValue == "quality_gate" && d["event_id"]?.stringValue == tid("qg-bad"), "\(d)")
        #expect(d["message"]?.stringValue?.contains("perplexity") == true)
        #expect(d["details"]?.arrayValue?.contains { $0.stringValue?.hasPrefix("base_perplexity") == true } == true)
        let metrics = try x.http("/metrics").body
        #expect(metrics.contains(#"mesa_dead_letters_total{reason="quality_gate"} 1"#) && metrics.contains(#"mesa_canary_perplexity{weights="head"}"#))
        let hashX = try #require(r2["weight_hash"]?.stringValue)
        #expect(try x.store().head() == 2)
        #expect(x.terminate() == 0, "\(x.tail())")

        // `mesa health` reads the same state and prints the head's figures, as the daemon published them.
        let (status, out) = try x.mesa(["health", "--config", try x.writeConfig().path, "--json"])
        #expect(status == 0, "\(out)")
        let health = try JSONValue.parse(String(out[out.firstIndex(of: "{")!...]))
        #expect(health["head"] == .number(JSONNumber(2)) && health["weight_hash"]?.stringValue == hashX && health["within_limits"] == true, "\(out)")
        #expect(health["perplexity"] == canary["perplexity"], "\(out)")

        // The same stream without the damaging event.
        let y = try guarded("qg-y")
        defer { y.cleanup() }
        try y.start()
        try y.publish(good1)
        try y.publish(good2)
        let ry = try y.results(for: [tid("qg-2")])
        #expect(ry[tid("qg-2")]?["weight_hash"]?.stringValue == hashX, "daemon log:\n\(y.tail())")
        #expect(y.terminate() == 0, "\(y.tail())")
    }
}
