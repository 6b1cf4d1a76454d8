import Foundation
import ModelRuntime
import Tokenizers

/// Paths the tests read: committed fixtures, shared data, the installed default model.
enum TestPaths {
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = repoRoot.appendingPathComponent("Tests/Fixtures")

    static func fixture(_ name: String) -> URL { fixtures.appendingPathComponent(name) }

    /// The default model (`MESA_MODEL`, else the one installed under `MESA_HOME`); model tests fail
    /// (not skip) when it is missing, because CI installs it.
    static var defaultModel: String {
        get throws {
            let env = ProcessInfo.processInfo.environment
            if let m = env["MESA_MODEL"], !m.isEmpty { return m }
            let home = env["MESA_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
                ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/share/mesa")
            return try ModelLocator.defaultModelPath(home: home)
        }
    }

    static func json(_ name: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: fixture(name)))
    }

    static func temporaryDirectory() throws -> URL {
        let u = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }
}

/// A tiny random model written as GGUF on the fly, so the fast suite needs no real model.
enum TinyModel {
    struct Spec {
        var architecture = "llama"
        var hidden = 32
        var intermediate = 48
        var layers = 3
        var heads = 4
        var kvHeads = 2
        var context = 64
        var tied = true
        var seed: UInt64 = 7
    }

    /// A byte-level vocabulary: the 256 byte tokens, a few merges, and two special tokens.
    static func vocabulary() -> (tokens: [String], merges: [String], types: [Int]) {
        var tokens = (0..<256).map { String(ByteLevel.byteToScalar[$0]) }
        var merges: [String] = []
        for (l, r) in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "c")] {
            merges.append("\(l) \(r)")
            tokens.append(l + r)
        }
        var types = [Int](repeating: 1, count: tokens.count)
        tokens += ["<|endoftext|>", "<|im_start|>"]
        types += [3, 3]
        return (tokens, merges, types)
    }

    static func write(_ spec: Spec = Spec(), to dir: URL, mutate: ((inout GGUFWriter) -> Void)? = nil) throws -> String {
        var rng = Xoshiro256(seed: spec.seed)
        func randn(_ n: Int, _ std: Float) -> [Float] {
            (0..<n).map { _ in
                // Box–Muller from two uniforms.
                let u1 = max(Double(rng.next() >> 11) * 0x1.0p-53, 1e-12), u2 = Double(rng.next() >> 11) * 0x1.0p-53
                return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)) * std
            }
        }
        let (tokens, merges, types) = vocabulary()
        var spec = spec
        if spec.architecture == "gpt2" { spec.kvHeads = spec.heads }
        let a = spec.architecture, d = spec.hidden, ff = spec.intermediate, hd = d / spec.heads
        var w = GGUFWriter()
        w.set("general.architecture", .string(a))
        w.set("\(a).block_count", .uint(UInt64(spec.layers)))
        w.set("\(a).context_length", .uint(UInt64(spec.context)))
        w.set("\(a).embedding_length", .uint(UInt64(d)))
        w.set("\(a).feed_forward_length", .uint(UInt64(ff)))
        w.set("\(a).attention.head_count", .uint(UInt64(spec.heads)))
        w.set("\(a).attention.head_count_kv", .uint(UInt64(spec.kvHeads)))
        w.set("\(a).rope.freq_base", .float(10000))
        w.set("\(a).attention.layer_norm_rms_epsilon", .float(1e-5))
        w.set("\(a).attention.layer_norm_epsilon", .float(1e-5))
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("smollm"))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.merges", .array(merges.map { .string($0) }))
        w.set("tokenizer.ggml.token_type", .array(types.map { .int(Int64($0)) }))
        w.set("tokenizer.ggml.bos_token_id", .uint(UInt64(tokens.count - 2)))
        w.set("tokenizer.ggml.eos_token_id", .uint(UInt64(tokens.count - 2)))
        let v = tokens.count
        w.add("token_embd.weight", shape: [v, d], data: randn(v * d, 0.5))
        if a == "gpt2" { w.add("position_embd.weight", shape: [spec.context, d], data: randn(spec.context * d, 0.1)) }
        let kvd = spec.kvHeads * hd
        for i in 0..<spec.layers {
            let b = "blk.\(i)."
            w.add(b + "attn_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
            w.add(b + "attn_q.weight", shape: [d, d], data: randn(d * d, 0.3))
            w.add(b + "attn_k.weight", shape: [kvd, d], data: randn(kvd * d, 0.3))
            w.add(b + "attn_v.weight", shape: [kvd, d], data: randn(kvd * d, 0.3))
            w.add(b + "attn_output.weight", shape: [d, d], data: randn(d * d, 0.3))
            w.add(b + "ffn_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
            if a == "gpt2" {
                for n in ["attn_norm.bias", "ffn_norm.bias", "attn_output.bias", "ffn_down.bias"] { w.add(b + n, shape: [d], data: randn(d, 0.1)) }
                for n in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] { w.add(b + n, shape: [d], data: randn(d, 0.1)) }
                w.add(b + "ffn_up.bias", shape: [ff], data: randn(ff, 0.1))
            } else {
                w.add(b + "ffn_gate.weight", shape: [ff, d], data: randn(ff * d, 0.3))
            }
            if a == "qwen2" {
                w.add(b + "attn_q.bias", shape: [d], data: randn(d, 0.1))
                w.add(b + "attn_k.bias", shape: [kvd], data: randn(kvd, 0.1))
                w.add(b + "attn_v.bias", shape: [kvd], data: randn(kvd, 0.1))
            }
            w.add(b + "ffn_up.weight", shape: [ff, d], data: randn(ff * d, 0.3))
            w.add(b + "ffn_down.weight", shape: [d, ff], data: randn(d * ff, 0.3))
        }
        w.add("output_norm.weight", shape: [d], data: randn(d, 0.1).map { 1 + $0 })
        if a == "gpt2" { w.add("output_norm.bias", shape: [d], data: randn(d, 0.1)) }
        if !spec.tied { w.add("output.weight", shape: [v, d], data: randn(v * d, 0.5)) }
        mutate?(&w)
        let path = dir.appendingPathComponent("tiny-\(a).gguf").path
        try w.write(to: path)
        return path
    }

    static func load(_ spec: Spec = Spec()) throws -> LanguageModel {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        return try ModelLoader.load(path: try write(spec, to: dir))
    }
}

/// The tiny Hugging Face models' weights, rebuilt from the formula in ops/reference/make_fixtures.py
/// (`tiny_weight_values`) and the manifest in each fixture's reference.json, so no weight file is
/// committed: draw i of a tensor is splitmix64 step i from the FNV-1a-64 hash of its name.
enum TinyWeights {
    static func values(name: String, count: Int) -> [Float] {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        let isNorm = (name.contains("norm") || name.contains("ln_")) && name.hasSuffix("weight")
        return (0..<count).map { _ in
            h &+= 0x9E37_79B9_7F4A_7C15
            var z = h
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            let k = Int(z >> 56) - 128
            if isNorm { return 1 + Float((k + 128) % 25 - 12) / 128 }
            return name.hasSuffix("bias") ? Float(k) / 1024 : Float(k) / 512
        }
    }

    /// A temporary copy of fixture `dir` (config.json, tokenizer.json) with model.safetensors rebuilt.
    static func materialize(_ dir: String, manifest: [[String: Any]]) throws -> URL {
        let out = try TestPaths.temporaryDirectory()
        for f in ["config.json", "tokenizer.json"] {
            try FileManager.default.copyItem(at: TestPaths.fixture(dir).appendingPathComponent(f), to: out.appendingPathComponent(f))
        }
        let tensors = manifest.map { e -> (name: String, shape: [Int], data: [Float]) in
            let name = e["name"] as! String, shape = e["shape"] as! [Int]
            return (name, shape, values(name: name, count: shape.reduce(1, *)))
        }
        let dtype = SafetensorsFile.StoredType(rawValue: manifest.first?["dtype"] as? String ?? "F32") ?? .f32
        precondition(manifest.allSatisfy { ($0["dtype"] as? String) == dtype.rawValue }, "\(dir): mixed dtypes")
        try SafetensorsFile.write(tensors, dtype: dtype, metadata: ["format": "pt"], to: out.appendingPathComponent("model.safetensors").path)
        return out
    }
}
