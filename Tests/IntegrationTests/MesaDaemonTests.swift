import Contracts
import EditDaemon
import Foundation
import ModelRuntime
import SparseAutoencoder
import TestSupport
import Testing

/// `mesa serve` with MESA refinement on the tiny model: results carry the SAE and its coverage; an
/// unusable SAE stops the daemon at start with a clear error, or with `fallback` it serves plain ROME
/// and says why in every result.
@Suite(.serialized) struct MesaDaemonTests {
    /// A lossless SAE at mlp_out@1 of the tiny model (latent pairs ±e_i), in SAELens layout.
    static func writeSAE(to dir: URL, dIn: Int, layer: Int = 1) throws {
        var enc = [Float](repeating: 0, count: 2 * dIn * dIn)
        for i in 0..<dIn { enc[i * dIn + i] = 1; enc[(dIn + i) * dIn + i] = -1 }
        let sae = try SparseAutoencoder(dIn: dIn, width: 2 * dIn, encoder: enc, encoderBias: .init(repeating: 0, count: 2 * dIn), decoder: enc,
                                        decoderBias: .init(repeating: 0, count: dIn), threshold: .init(repeating: 0, count: 2 * dIn), k: nil,
                                        metadata: SAEMetadata(modelName: DaemonHarness.modelName, modelHash: nil, site: Site(layer: layer, kind: .mlpOut),
                                                              contextSize: 64, prependBos: false))
        sae.logSparsity = .init(repeating: -1, count: 2 * dIn)
        try sae.save(to: dir)
    }

    @Test func refinedEditsReportTheirSAEAndAnUnusableSAEIsRefusedOrFallenBackFrom() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "mesa")
        defer { h.cleanup() }
        let hidden = try ModelLoader.load(path: h.modelPath).config.hidden
        let saeDir = h.dir.appendingPathComponent("sae")
        try Self.writeSAE(to: saeDir, dIn: hidden)
        let schema = try DaemonTests.schema("edit-result.schema.json")

        h.mesa = ["sae": saeDir.path]
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        let r = try #require(try h.results(for: [id])[id], "no result; daemon log:\n\(h.tail())")
        #expect(schema.validate(r).valid, "\(r)")
        #expect(r["method"]?.stringValue == "ROME+MESA" && r["refinement"]?["sae"]?.stringValue == saeDir.path)
        let coverage = try #require(r["refinement"]?["coverage"]?.doubleValue)
        #expect(coverage > 0.999, "a lossless SAE covers the whole change (\(coverage))")
        #expect(h.tail(200).contains("MESA refinement through"))
        #expect(h.terminate() == 0, "\(h.tail())")

        // A corrupt SAE without fallback: the daemon refuses to start and says why.
        let weights = saeDir.appendingPathComponent("sae_weights.safetensors")
        let bytes = try Data(contentsOf: weights)
        try bytes.prefix(bytes.count / 3).write(to: weights)
        #expect(throws: HarnessError.self) { try h.start(timeout: 30) }
        #expect(h.exited(with: 1), "a refusal is a clean exit, not a crash:\n\(h.launchLog)")
        #expect(h.launchLog.contains("is unusable"), "\(h.launchLog)")

        // With fallback: plain ROME, and every result says why refinement is off.
        h.mesa = ["sae": saeDir.path, "fallback": true]
        try h.start()
        let id2 = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id2, subject: "Rome", targetNew: "Paris"))
        let r2 = try #require(try h.results(for: [id2])[id2], "no result; daemon log:\n\(h.tail())")
        #expect(schema.validate(r2).valid, "\(r2)")
        #expect(r2["status"]?.stringValue == "applied" && r2["method"]?.stringValue == "ROME")
        #expect(r2["refinement"]?["fallback"]?.stringValue?.contains("corrupt") == true, "\(r2)")
        #expect(h.terminate() == 0, "\(h.tail())")

        // An SAE for another site (layer 2) does not fit the edit at layer 1: refused.
        try Self.writeSAE(to: saeDir, dIn: hidden, layer: 2)
        h.mesa = ["sae": saeDir.path]
        #expect(throws: HarnessError.self) { try h.start(timeout: 30) }
        #expect(h.exited(with: 1), "a refusal is a clean exit, not a crash:\n\(h.launchLog)")
        #expect(h.launchLog.contains("mlp_out@2"), "\(h.launchLog)")
    }
}
