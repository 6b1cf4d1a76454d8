import EditDaemon
import Editing
import Foundation
import ModelRuntime
import Storage
import Tensor
import TestSupport
import Testing

/// `mesa export` on the tiny model (3 layers, hidden 32, MLP 48, 4 heads / 2 KV heads of 8): a
/// snapshot store written through ModelHost (no broker), with a rollback in it.
@Suite(.serialized) struct SnapshotExportTests {
    /// A tiny model in a temporary directory with a snapshot store where the daemon keeps it:
    /// snapshot 1 (layer 1, rank 1) → 2 (layer 2, rank 2) → rollback to 1 → 3 (layer 1, rank 1,
    /// parent 1). Snapshot 3's lineage is 1, 3: snapshot 2 is on an abandoned branch.
    final class Fixture {
        let dir: URL
        let modelPath: String
        let stateDir: URL
        let lmdb: URL
        let store: SnapshotStore
        var hashes: [UInt64: String] = [:]

        init(label: String) throws {
            dir = try TestPaths.temporaryDirectory("export-\(label)")
            modelPath = dir.appendingPathComponent("tiny-export.gguf").path
            try TinyModel.write(to: modelPath)
            let model = try ModelLoader.load(path: modelPath)
            stateDir = dir.appendingPathComponent("state")
            lmdb = EditState(directory: stateDir, baseHash: model.weightHash).snapshotStore
            store = try SnapshotStore(path: lmdb.path)
            let host = try ModelHost(model: model, modelName: "tiny-export", store: store)
            hashes[0] = host.baseHash
            try edit(host, [Self.update(layer: 1, rank: 1, seed: 1)], id: "e1")
            try edit(host, [Self.update(layer: 2, rank: 2, seed: 2)], id: "e2")
            try host.rollback(to: 1, commandId: "r1")
            try edit(host, [Self.update(layer: 1, rank: 1, seed: 3)], id: "e3")
        }

        deinit { try? FileManager.default.removeItem(at: dir) }

        /// Applies `updates` through the host and commits them as one snapshot.
        func edit(_ host: ModelHost, _ updates: [LowRankUpdate], id: String) throws {
            let before = host.model.weightHash
            for u in updates { try host.apply(u) }
            let draft = SnapshotDraft(eventId: id, source: nil, method: "test", hyperparameters: "{}", hashBefore: before,
                                      hashAfter: host.model.weightHash, blas: ModelHost.blasInfo, factors: updates)
            let r = try host.commit(draft, result: { _ in "{}" })
            hashes[r.seq] = r.hashAfter
        }

        /// A seeded random update of blk.`layer`.ffn_down.weight: L [32, rank], R [rank, 48].
        static func update(layer: Int, rank: Int, seed: UInt64) -> LowRankUpdate {
            var rng = Xoshiro256(seed: seed)
            func uniform(_ n: Int) -> [Float] { (0..<n).map { _ in Float(Double(rng.next() >> 11) * 0x1.0p-53 - 0.5) * 0.2 } }
            return LowRankUpdate(parameter: "blk.\(layer).ffn_down.weight", layer: layer, rows: 32, cols: 48, rank: rank,
                                 left: uniform(32 * rank), right: uniform(rank * 48))
        }

        func freshModel() throws -> LanguageModel { try ModelLoader.load(path: modelPath) }

        func export(_ seq: UInt64, _ format: ExportFormat, to name: String, model: LanguageModel? = nil) throws -> (ExportSummary, String) {
            let out = dir.appendingPathComponent(name).path
            let s = try SnapshotExporter.export(model: try model ?? freshModel(), modelName: "tiny-export", store: store, snapshot: seq,
                                                format: format, to: out)
            return (s, out)
        }

        /// The weights of snapshot `seq`, materialized by the host.
        func materialized(_ seq: UInt64) throws -> LanguageModel {
            let m = try freshModel()
            let host = try ModelHost(model: m, modelName: "tiny-export", store: store, attach: false)
            try host.materialize(seq)
            return m
        }
    }

    static func json(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    @Test func theFixtureHasARollbackSoTheLineageIsNotTheJournal() throws {
        let f = try Fixture(label: "lineage")
        #expect(try f.store.lineage(to: 3).map(\.seq) == [1, 3])
        #expect(try f.store.journal().map(\.kind) == [.base, .edit, .edit, .rollback, .edit])
        #expect(Set(f.hashes.values).count == 4)
    }

    @Test func aGGUFExportLoadsBackWithTheSnapshotsHash() throws {
        let f = try Fixture(label: "gguf")
        for seq: UInt64 in [0, 2, 3] {
            let (s, out) = try f.export(seq, .gguf, to: "s\(seq).gguf")
            #expect(s.weightHash == f.hashes[seq] && s.verification != nil)
            let back = try ModelLoader.load(path: out)
            #expect(back.weightHash == f.hashes[seq], "snapshot \(seq)")
            let g = try GGUFFile(path: out)
            #expect(g.string("mesa.snapshot") == "\(seq)" && g.string("mesa.weight_hash") == f.hashes[seq])
        }
    }

    @Test func aSafetensorsExportLoadsBackWithTheSnapshotsHashAndTheSameLogits() throws {
        let f = try Fixture(label: "safetensors")
        let (s, out) = try f.export(3, .safetensors, to: "s3")
        #expect(s.files == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
        let back = try ModelLoader.load(path: out)
        #expect(back.config.ropeStyle == .neox && back.config.tiedEmbeddings)
        // The rows of Wq/Wk are in transformers' order: the plain hash differs, llama.cpp's order gives the snapshot's.
        #expect(back.weightHash != f.hashes[3])
        #expect(HFExporter.ggufLayoutHash(back) == f.hashes[3])

        let st = try SafetensorsFile(path: out + "/model.safetensors")
        #expect(st.entries.count == 2 + 3 * 9 && st.entries["lm_head.weight"] == nil)
        #expect(st.entries["model.layers.1.mlp.down_proj.weight"]?.shape == [32, 48])
        #expect(st.entries["model.layers.0.self_attn.k_proj.weight"]?.shape == [16, 32])
        #expect(st.metadata["format"] == "pt" && st.metadata["mesa.weight_hash"] == f.hashes[3])
        let config = try Self.json(out + "/config.json")
        #expect(config["architectures"] as? [String] == ["LlamaForCausalLM"] && config["model_type"] as? String == "llama")
        #expect(config["hidden_size"] as? Int == 32 && config["intermediate_size"] as? Int == 48 && config["num_hidden_layers"] as? Int == 3)
        #expect(config["num_attention_heads"] as? Int == 4 && config["num_key_value_heads"] as? Int == 2 && config["head_dim"] as? Int == 8)
        #expect(config["rope_theta"] as? Double == 10000 && config["rms_norm_eps"] as? Double == 1e-5)
        #expect(config["tie_word_embeddings"] as? Bool == true && config["vocab_size"] as? Int == 267)

        // Rotate-half RoPE on the un-permuted weights gives the interleaved RoPE's logits on llama.cpp's order.
        let edited = try f.materialized(3)
        let text = "Paris is 12 Rome<|endoftext|> is Rome"
        let ids = edited.tokenizer.encode(text)
        #expect(back.tokenizer.encode(text) == ids && ids.count > 10)
        let want = try edited.forward(ids, options: ForwardOptions(logits: .all)).logits.data
        let got = try back.forward(ids, options: ForwardOptions(logits: .all)).logits.data
        let scale = want.map(abs).max()!
        let worst = zip(got, want).map { abs($0 - $1) }.max()!
        #expect(worst <= 1e-5 * scale, "max |Δlogit| \(worst) of max |logit| \(scale)")
    }

    @Test func theLoRAFactorsReproduceTheEditedTensors() throws {
        let f = try Fixture(label: "lora")
        // Snapshot 3: lineage 1 → 3, both on layer 1 (rank 1 + 1); snapshot 2's layer 2 is on the abandoned branch.
        let (s3, out3) = try f.export(3, .peftLora, to: "lora3")
        #expect(s3.adapterRank == 2 && s3.modules.map(\.parameter) == ["blk.1.ffn_down.weight"])
        let config = try Self.json(out3 + "/adapter_config.json")
        #expect(config["peft_type"] as? String == "LORA" && config["r"] as? Int == 2 && config["lora_alpha"] as? Int == 2)
        #expect(config["target_modules"] as? [String] == ["down_proj"] && config["layers_to_transform"] as? [Int] == [1])
        #expect(config["base_model_name_or_path"] as? String == "tiny-export")
        try checkAdapter(out3, snapshot: 3, fixture: f, layers: [1], rank: 2)

        // Snapshot 2: layer 1 rank 1 and layer 2 rank 2; r = 2, layer 1's factors padded with zeros.
        let (s2, out2) = try f.export(2, .peftLora, to: "lora2")
        #expect(s2.adapterRank == 2 && s2.modules.map(\.rank) == [1, 2])
        try checkAdapter(out2, snapshot: 2, fixture: f, layers: [1, 2], rank: 2)
    }

    /// base + B·A (read from the adapter file) equals each down projection of the materialized
    /// snapshot within 1e-5 × max |W|, and the other layers' are the base's.
    func checkAdapter(_ dir: String, snapshot: UInt64, fixture f: Fixture, layers: [Int], rank r: Int) throws {
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        #expect(st.entries.count == 2 * layers.count)
        let base = try f.freshModel(), edited = try f.materialized(snapshot)
        for l in 0..<3 {
            let w0 = base.weights.layers[l].wDown.data, w = edited.weights.layers[l].wDown.data   // [32, 48]
            let prefix = "base_model.model.model.layers.\(l).mlp.down_proj"
            guard layers.contains(l) else {
                #expect(w0 == w && st.entries[prefix + ".lora_A.weight"] == nil)
                continue
            }
            #expect(st.entries[prefix + ".lora_A.weight"]?.shape == [r, 48] && st.entries[prefix + ".lora_B.weight"]?.shape == [32, r])
            let a = try st.floats(prefix + ".lora_A.weight"), b = try st.floats(prefix + ".lora_B.weight")
            var worst: Float = 0, scale: Float = 0, change: Float = 0
            for i in 0..<32 {
                for j in 0..<48 {
                    var ba: Float = 0
                    for k in 0..<r { ba += b[i * r + k] * a[k * 48 + j] }
                    worst = max(worst, abs(w0[i * 48 + j] + ba - w[i * 48 + j]))
                    scale = max(scale, abs(w[i * 48 + j]))
                    change = max(change, abs(w[i * 48 + j] - w0[i * 48 + j]))
                }
            }
            #expect(change > 1e-3, "layer \(l) was edited")
            #expect(worst <= 1e-5 * scale, "layer \(l): max |W0 + BA − W| = \(worst), max |W| = \(scale)")
        }
    }

    @Test func refusals() throws {
        let f = try Fixture(label: "refusals")
        #expect { _ = try f.export(9, .gguf, to: "nine.gguf") } throws: { "\($0)".contains("no snapshot 9 in the store") && "\($0)".contains("1…3") }
        #expect { _ = try f.export(0, .peftLora, to: "base-lora") } throws: { "\($0)".contains("changes no weight") }
        // A store of another base model.
        let otherPath = f.dir.appendingPathComponent("other.gguf").path
        try TinyModel.write(to: otherPath, seed: 8)
        let other = try ModelLoader.load(path: otherPath)
        #expect { _ = try f.export(3, .safetensors, to: "other", model: other) } throws: { "\($0)".contains("the snapshot store belongs to base model \(f.hashes[0]!.prefix(16))") }
        // An existing --out is kept.
        _ = try f.export(3, .gguf, to: "exists.gguf")
        #expect { _ = try f.export(3, .gguf, to: "exists.gguf") } throws: { "\($0)".contains("already exists") }
        // No partial output is left behind by a refusal.
        let left = try FileManager.default.contentsOfDirectory(atPath: f.dir.path).filter { $0.contains("partial") || $0 == "nine.gguf" || $0 == "other" }
        #expect(left.isEmpty, "\(left)")
    }

    @Test func aLineageWhoseFactorsOutgrowTheTensorIsRefusedAsLoRA() throws {
        let f = try Fixture(label: "rank")
        let host = try ModelHost(model: try f.freshModel(), modelName: "tiny-export", store: f.store)
        // blk.0.ffn_down [32, 48]: rank 19 fits (19·80 = 1520 ≤ 1536 values), 12 + 8 = 20 does not (1600).
        try host.rollback(to: 0, commandId: "r0")
        try f.edit(host, [Fixture.update(layer: 0, rank: 12, seed: 4)], id: "e4")
        try f.edit(host, [Fixture.update(layer: 0, rank: 7, seed: 5)], id: "e5")
        try f.edit(host, [Fixture.update(layer: 0, rank: 1, seed: 6)], id: "e6")
        #expect(try f.store.lineage(to: 6).map(\.seq) == [4, 5, 6])
        let (s5, _) = try f.export(5, .peftLora, to: "rank19")
        #expect(s5.adapterRank == 19)
        #expect { _ = try f.export(6, .peftLora, to: "rank20") } throws: { e in
            "\(e)".contains("blk.0.ffn_down.weight [32, 48] have total rank 20") && "\(e)".contains("--format safetensors or gguf")
        }
        // The whole model is still exportable.
        let (s6, _) = try f.export(6, .safetensors, to: "rank20-model")
        #expect(s6.weightHash == f.hashes[6])
    }

    @Test func theCommandFindsTheDaemonsStoreAndReportsRefusals() throws {
        let f = try Fixture(label: "cli")
        let h = try DaemonHarness(bootstrap: "127.0.0.1:9", label: "export-cli")
        defer { h.cleanup() }
        let out = f.dir.appendingPathComponent("cli.gguf").path
        let (ok, text) = try h.mesa(["export", "--model", f.modelPath, "--state-dir", f.stateDir.path, "--snapshot", "3",
                                     "--format", "gguf", "--out", out])
        #expect(ok == 0 && text.contains("exported snapshot 3 of tiny-export as gguf") && text.contains("weight hash \(f.hashes[3]!)"), "\(text)")
        #expect(text.contains("lineage 1 → 3") && text.contains("check loaded back"), "\(text)")
        #expect(try ModelLoader.load(path: out).weightHash == f.hashes[3])
        let lora = f.dir.appendingPathComponent("cli-lora").path
        let (okLora, textLora) = try h.mesa(["export", "--model", f.modelPath, "--store", f.lmdb.path, "--snapshot", "3",
                                             "--format", "peft-lora", "--out", lora, "--base-model", "org/tiny"])
        #expect(okLora == 0 && textLora.contains("adapter r 2, lora_alpha 2: blk.1.ffn_down.weight rank 2"), "\(textLora)")
        #expect(try Self.json(lora + "/adapter_config.json")["base_model_name_or_path"] as? String == "org/tiny")
        let (bad, badText) = try h.mesa(["export", "--model", f.modelPath, "--state-dir", f.stateDir.path, "--snapshot", "7",
                                         "--format", "safetensors", "--out", f.dir.appendingPathComponent("x").path])
        #expect(bad == 1 && badText.contains("error: no snapshot 7 in the store"), "\(badText)")
        let (wrong, wrongText) = try h.mesa(["export", "--model", f.modelPath, "--state-dir", f.stateDir.path, "--snapshot", "1",
                                             "--format", "onnx", "--out", f.dir.appendingPathComponent("y").path])
        #expect(wrong != 0 && wrongText.contains("onnx"), "\(wrongText)")
    }
}
