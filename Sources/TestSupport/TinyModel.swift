import Foundation
import ModelRuntime
import Tokenizers

/// Paths shared by the test targets.
public enum TestPaths {
    /// The package root (this file is Sources/TestSupport/TinyModel.swift).
    public static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    public static func fixture(_ name: String) -> URL { repoRoot.appendingPathComponent("Tests/Fixtures").appendingPathComponent(name) }
    public static var sharedData: URL { repoRoot.deletingLastPathComponent().appendingPathComponent("shared/data") }

    /// mesa's data directory, as ops/test.sh sets it: `MESA_HOME`, else ~/.local/share/mesa.
    public static var home: URL {
        ProcessInfo.processInfo.environment["MESA_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/share/mesa")
    }

    /// `MESA_MODEL`, else the installed default model (an error when it is missing).
    public static func defaultModel() throws -> String {
        if let m = ProcessInfo.processInfo.environment["MESA_MODEL"], !m.isEmpty { return m }
        return try ModelLocator.defaultModelPath(home: home)
    }

    public static func temporaryDirectory(_ label: String) throws -> URL {
        let u = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }
}

public enum TinyModel {
    /// Writes a random llama-layout GGUF model with a byte-level vocabulary plus a few merges
    /// ("Paris", " Rome", " is" tokenize to few tokens) to `path`: 3 layers, hidden 32, MLP 48.
    public static func write(to path: String, addBOS: Bool = false, seed: UInt64 = 7, layers: Int = 3) throws {
        var rng = Xoshiro256(seed: seed)
        func randn(_ n: Int, _ std: Float) -> [Float] {
            (0..<n).map { _ in
                let u1 = max(Double(rng.next() >> 11) * 0x1.0p-53, 1e-12), u2 = Double(rng.next() >> 11) * 0x1.0p-53
                return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)) * std
            }
        }
        var tokens = (0..<256).map { String(ByteLevel.byteToScalar[$0]) }
        var merges: [String] = []
        for (l, r) in [("Ġ", "R"), ("o", "m"), ("ĠR", "om"), ("ĠRom", "e"), ("P", "a"), ("Pa", "r"), ("i", "s"), ("Ġ", "i"), ("Ġi", "s")] {
            merges.append("\(l) \(r)")
            tokens.append(l + r)
        }
        var types = [Int](repeating: 1, count: tokens.count)
        tokens += ["<|endoftext|>", "<s>"]
        types += [3, 3]
        let d = 32, ff = 48, heads = 4, kvHeads = 2, hd = d / heads, v = tokens.count
        var w = GGUFWriter()
        let a = "llama"
        w.set("general.architecture", .string(a))
        w.set("\(a).block_count", .uint(UInt64(layers)))
        w.set("\(a).context_length", .uint(128))
        w.set("\(a).embedding_length", .uint(UInt64(d)))
        w.set("\(a).feed_forward_length", .uint(UInt64(ff)))
        w.set("\(a).attention.head_count", .uint(UInt64(heads)))
        w.set("\(a).attention.head_count_kv", .uint(UInt64(kvHeads)))
        w.set("\(a).rope.freq_base", .float(10000))
        w.set("\(a).attention.layer_norm_rms_epsilon", .float(1e-5))
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("smollm"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.merges", .array(merges.map { .string($0) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int(Int64($0)) }))
        w.set("tokenizer.ggml.bos_token_id", .uint(UInt64(v - 1)))
        w.set("tokenizer.ggml.eos_token_id", .uint(UInt64(v - 2)))
        w.set("tokenizer.ggml.add_bos_token", .bool(addBOS))
        w.add("token_embd.weight", shape: [v, d], data: randn(v * d, 0.5))
        for i in 0..<layers {
            let b = "blk.\(i)."
            w.add(b + "attn_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
            w.add(b + "attn_q.weight", shape: [d, d], data: randn(d * d, 0.3))
            w.add(b + "attn_k.weight", shape: [kvHeads * hd, d], data: randn(kvHeads * hd * d, 0.3))
            w.add(b + "attn_v.weight", shape: [kvHeads * hd, d], data: randn(kvHeads * hd * d, 0.3))
            w.add(b + "attn_output.weight", shape: [d, d], data: randn(d * d, 0.3))
            w.add(b + "ffn_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
            w.add(b + "ffn_gate.weight", shape: [ff, d], data: randn(ff * d, 0.3))
            w.add(b + "ffn_up.weight", shape: [ff, d], data: randn(ff * d, 0.3))
            w.add(b + "ffn_down.weight", shape: [d, ff], data: randn(d * ff, 0.3))
        }
        w.add("output_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
        try w.write(to: path)
    }

    /// Writes the model into `directory` (a fresh temporary one by default, removed afterwards) and loads it.
    public static func load(addBOS: Bool = false, seed: UInt64 = 7, layers: Int = 3, directory: URL? = nil) throws -> LanguageModel {
        let dir = try directory ?? TestPaths.temporaryDirectory("tiny-model")
        defer { if directory == nil { try? FileManager.default.removeItem(at: dir) } }
        let path = dir.appendingPathComponent("tiny.gguf").path
        try write(to: path, addBOS: addBOS, seed: seed, layers: layers)
        return try ModelLoader.load(path: path)
    }
}

extension TinyModel {
    /// A ROME hyperparameter file for the tiny model (`Schemas/rome-hparams.schema.json`): layer 1,
    /// two 4-token templates, no covariance statistics (so no corpus is needed). `steps` Adam steps;
    /// `earlyStop` 0 turns early stopping off, so every edit takes a predictable time.
    public static func romeHyperparameters(model name: String, steps: Int = 8, earlyStop: Double = 0.05) throws -> Data {
        let h: [String: Any] = [
            "method": "rome", "model": name, "layer": 1, "context_templates": [["length": 4, "count": 2]], "template_seed": 0,
            "key_averaging": "templates", "v_num_grad_steps": steps, "v_lr": 0.5, "v_weight_decay": 0.001, "clamp_norm_factor": 4,
            "kl_factor": 0.0625, "early_stop_loss": earlyStop, "mom2_adjustment": false, "mom2_tokens": 1000, "mom2_sequence_length": 64,
            "mom2_seed": 0, "mom2_ridge": 0.0001,
        ]
        return try JSONSerialization.data(withJSONObject: h, options: [.sortedKeys])
    }
}

extension TinyModel {
    /// An AlphaEdit (or MEMIT) hyperparameter file for the tiny model (`Schemas/memit-hparams.schema.json`):
    /// layers 0 and 1, one 4-token template group, key statistics over 2,000 corpus tokens.
    public static func memitHyperparameters(model name: String, method: String, steps: Int = 8) throws -> Data {
        var h: [String: Any] = [
            "method": method, "model": name, "layers": [0, 1], "context_templates": [["length": 4, "count": 2]],
            "template_seed": 0, "v_num_grad_steps": steps, "v_lr": 0.5, "v_weight_decay": 0.001, "clamp_norm_factor": 4, "kl_factor": 0.0625,
            "early_stop_loss": 0.05, "mom2_update_weight": 100, "mom2_tokens": 2000, "mom2_sequence_length": 64, "mom2_seed": 0,
            "mom2_ridge": 0.01,
        ]
        if method == "alphaedit" { h["nullspace_energy"] = 0.3; h["l2"] = 1 }
        if method == "encore" { h["update_norm_lambda"] = 0.5; h["early_stop_top"] = true }
        return try JSONSerialization.data(withJSONObject: h, options: [.sortedKeys])
    }
}
