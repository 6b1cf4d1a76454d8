import Foundation
import ModelRuntime
import Tensor
import Testing
import Tokenizers

/// The writers behind `mesa export`: transformers checkpoints (Wq/Wk row order, config, tokenizer)
/// and PEFT LoRA factors, on the tiny GGUF models, the tiny transformers fixtures and the default model.
@Suite(.serialized) struct ExportFormatTests {
    @Test func ropeRowLayoutMovesAdjacentPairsToHalves() {
        // One head of 6 rows, 1 column: llama.cpp row 2i + j is transformers row 3j + i.
        #expect(RoPERowLayout.toHF([0, 1, 2, 3, 4, 5], heads: 1, headDim: 6, cols: 1) == [0, 2, 4, 1, 3, 5])
        #expect(RoPERowLayout.toGGUF([0, 2, 4, 1, 3, 5], heads: 1, headDim: 6, cols: 1) == [0, 1, 2, 3, 4, 5])
        // Two heads of 4 rows, 2 columns: rows move whole, heads stay apart.
        let w: [Float] = (0..<16).map(Float.init)   // [8, 2]
        #expect(RoPERowLayout.toHF(w, heads: 2, headDim: 4, cols: 2) == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
        #expect(RoPERowLayout.toGGUF(RoPERowLayout.toHF(w, heads: 2, headDim: 4, cols: 2), heads: 2, headDim: 4, cols: 2) == w)
    }

    /// Max |a − b| relative to max |b|.
    static func relativeDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
    }

    @Test(arguments: [true, false])
    func aTinyGGUFExportedForTransformersGivesTheSameLogits(tied: Bool) throws {
        var spec = TinyModel.Spec()
        spec.tied = tied
        let src = try TestPaths.temporaryDirectory(), dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: src); try? FileManager.default.removeItem(at: dir) }
        // The exporter reads the tokenizer from the source GGUF.
        let m = try ModelLoader.load(path: try TinyModel.write(spec, to: src))
        try HFExporter.write(m, to: dir.path)
        let st = try SafetensorsFile(path: dir.appendingPathComponent("model.safetensors").path)
        #expect((st.entries["lm_head.weight"] != nil) == !tied)
        #expect(st.entries.values.allSatisfy { $0.dtype == "F32" })
        let back = try ModelLoader.load(path: dir.path)
        #expect(back.config.tiedEmbeddings == tied && back.config.ropeStyle == .neox && back.config.contextLength == 64)
        #expect(HFExporter.ggufLayoutHash(back) == m.weightHash && back.weightHash != m.weightHash)
        // Wq of layer 0: transformers' rows are llama.cpp's, un-permuted. [32, 32]
        #expect(try st.floats("model.layers.0.self_attn.q_proj.weight") == RoPERowLayout.toHF(m.weights.layers[0].wq.data, heads: 4, headDim: 8, cols: 32))
        #expect(try st.floats("model.layers.0.self_attn.v_proj.weight") == m.weights.layers[0].wv.data)
        let ids = m.tokenizer.encode("the cat in the hat<|endoftext|> the other")
        #expect(back.tokenizer.encode("the cat in the hat<|endoftext|> the other") == ids)
        let want = try m.forward(ids, options: ForwardOptions(logits: .all)).logits.data
        let got = try back.forward(ids, options: ForwardOptions(logits: .all)).logits.data
        #expect(Self.relativeDifference(got, want) <= 1e-5)
    }

    @Test func aTransformersModelIsWrittenBackAsItWasRead() throws {
        let ref = try TestPaths.json("tiny-llama/reference.json") as! [String: Any]
        let built = try TinyWeights.materialize("tiny-llama", manifest: ref["weights"] as! [[String: Any]])
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: built); try? FileManager.default.removeItem(at: dir) }
        let m = try ModelLoader.load(path: built.path)
        try HFExporter.write(m, to: dir.path)
        let back = try ModelLoader.load(path: dir.path)
        // Already in transformers' order: nothing is permuted, and the tokenizer is copied.
        #expect(back.weightHash == m.weightHash)
        #expect(try Data(contentsOf: dir.appendingPathComponent("tokenizer.json")) == Data(contentsOf: built.appendingPathComponent("tokenizer.json")))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as! [String: Any]
        #expect(config["tie_word_embeddings"] as? Bool == false && config["vocab_size"] as? Int == 400)
    }

    @Test func otherArchitecturesAreRefused() throws {
        var spec = TinyModel.Spec()
        spec.architecture = "qwen2"
        let m = try TinyModel.load(spec)
        #expect { _ = try HFExporter.tensors(m) } throws: { "\($0)".contains("implemented for the Llama family") }
    }

    /// The rebuilt tokenizer.json of SmolLM2 tokenizes the golden cases of the reference tokenizer.
    @Test func theDefaultModelsTokenizerJSONMatchesTheReference() throws {
        struct Case: Decodable { var text: String; var ids: [Int32] }
        struct Cases: Decodable { var cases: [Case] }
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: TestPaths.fixture("smollm2-tokenizer.json"))).cases
        let g = try GGUFFile(path: try TestPaths.defaultModel)
        let (files, special) = try HFExporter.tokenizerFiles(g, contextLength: 8192)
        #expect(special.bos == 1 && special.eos == 2 && special.eosText == "<|im_end|>" && !special.addBOS)
        let doc = try JSONSerialization.jsonObject(with: files["tokenizer.json"]!) as! [String: Any]
        #expect((doc["added_tokens"] as! [Any]).count == 17)
        #expect(((doc["model"] as! [String: Any])["merges"] as! [[String]]).count == 48900)
        let tok = try BPETokenizer.fromTokenizerJSON(files["tokenizer.json"]!)
        #expect(tok.preTokenizer == .smollm && tok.vocabularySize == 49152 && !tok.addBOS)
        let wrong = cases.filter { tok.encode($0.text) != $0.ids }
        #expect(cases.count >= 2000 && wrong.isEmpty, "\(wrong.count) of \(cases.count) differ, e.g. \(wrong.first?.text.debugDescription ?? "")")
        let config = try JSONSerialization.jsonObject(with: files["tokenizer_config.json"]!) as! [String: Any]
        #expect(config["eos_token"] as? String == "<|im_end|>" && config["bos_token"] as? String == "<|im_start|>")
    }

    /// Snapshot 0 of the default model as a transformers checkpoint: the logits of the reference
    /// (transformers on the dequantized GGUF, which un-permutes Wq/Wk itself) on the exported layout.
    @Test func theDefaultModelExportedForTransformersMatchesTheReferenceLogits() throws {
        let m = try ModelLoader.load(path: try TestPaths.defaultModel)
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try HFExporter.write(m, to: dir.path)
        let back = try ModelLoader.load(path: dir.path)
        #expect(HFExporter.ggufLayoutHash(back) == m.weightHash)
        // The stop token is config.json's <|im_end|>, not the first added token <|endoftext|>.
        #expect(back.tokenizer.eosId == 2 && m.tokenizer.eosId == 2)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as! [String: Any]
        #expect(config["rope_theta"] as? Double == 100000 && config["rms_norm_eps"] as? Double == 1e-5)
        #expect(config["num_key_value_heads"] as? Int == 3 && config["tie_word_embeddings"] as? Bool == true)
        #expect(config["eos_token_id"] as? Int == 2 && config["bos_token_id"] as? Int == 1)
        let fixture = try TestPaths.json("smollm2-logits.json") as! [String: Any]
        var worst: Float = 0
        for p in (fixture["prompts"] as! [[String: Any]]).prefix(4) {
            let ids = (p["ids"] as! [NSNumber]).map { $0.int32Value }
            let row = try back.forward(ids).logitRow(0)
            for pair in p["top"] as! [[NSNumber]] { worst = max(worst, abs(row[pair[0].intValue] - pair[1].floatValue)) }
        }
        #expect(worst < 1e-3, "max |Δlogit| over the top-20 = \(worst)")
    }

    @Test func loraFactorsOfWqAreInTransformersRowOrder() throws {
        let m = try TinyModel.load()
        let c = m.config
        // ΔWq = L·R, L [32, 2], R [2, 32], in llama.cpp's row order as the model holds Wq.
        var rng = Xoshiro256(seed: 3)
        let l = (0..<64).map { _ in Float(rng.next() % 1000) / 1000 - 0.5 }, r = (0..<64).map { _ in Float(rng.next() % 1000) / 1000 - 0.5 }
        let u = LowRankUpdate(parameter: "blk.0.attn_q.weight", layer: 0, rows: 32, cols: 32, rank: 2, left: l, right: r)
        let modules = try PEFTLoRAExporter.modules([u], config: c)
        #expect(modules.count == 1 && modules[0].projection == "q_proj" && modules[0].block == "self_attn")
        var lr = [Float](repeating: 0, count: 32 * 32)
        for i in 0..<32 { for j in 0..<32 { lr[i * 32 + j] = l[i * 2] * r[j] + l[i * 2 + 1] * r[32 + j] } }
        let want = RoPERowLayout.toHF(lr, heads: 4, headDim: 8, cols: 32)
        #expect(Self.relativeDifference(PEFTLoRAExporter.delta(modules[0]), want) <= 1e-6)
        let names = PEFTLoRAExporter.tensors(modules).map(\.name)
        #expect(names == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])
    }

    @Test func loraRefusesWhatIsNotALinearProjectionAndTooLargeARank() throws {
        let c = try TinyModel.load().config
        let norm = LowRankUpdate(parameter: "output_norm.weight", layer: 0, rows: 32, cols: 1, rank: 1, left: [Float](repeating: 0, count: 32), right: [0])
        #expect { _ = try PEFTLoRAExporter.modules([norm], config: c) } throws: { "\($0)".contains("not a linear projection") }
        let wrongShape = LowRankUpdate(parameter: "blk.0.ffn_down.weight", layer: 0, rows: 48, cols: 32, rank: 1,
                                       left: [Float](repeating: 0, count: 48), right: [Float](repeating: 0, count: 32))
        #expect { _ = try PEFTLoRAExporter.modules([wrongShape], config: c) } throws: { "\($0)".contains("does not fit the model's [32, 48]") }
        // [32, 48]: 19 · 80 = 1520 ≤ 1536 values, 20 · 80 = 1600 > 1536.
        try PEFTLoRAExporter.checkRank(19, parameter: "w", rows: 32, cols: 48)
        #expect { try PEFTLoRAExporter.checkRank(20, parameter: "w", rows: 32, cols: 48) } throws: { "\($0)".contains("The largest rank that fits is 19") }
    }
}
