import Foundation
import Tensor
import Tokenizers

/// Where a model came from and what it holds, for `mesa inspect`.
public struct ModelSource: Sendable {
    public enum Format: String, Sendable { case gguf, safetensors }
    public var format: Format
    public var path: String
    /// Tensor name → (storage type, row-major shape) as stored in the file.
    public var tensorTypes: [(name: String, type: String, shape: [Int])]
    /// Selected metadata for display (GGUF metadata or config.json entries), arrays summarized.
    public var metadata: [(key: String, value: String)]
}

public enum ModelLoader {
    /// Loads a model from a GGUF file, a safetensors file (config.json and tokenizer.json beside it),
    /// or a directory holding config.json + model.safetensors + tokenizer.json.
    /// The load's temporaries (dequantized tensors before they are fused) go back to the kernel.
    public static func load(path: String) throws -> LanguageModel {
        defer { ResidentMemory.release() }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError(.fileNotFound, "model not found", path: path)
        }
        if isDir.boolValue {
            let st = (path as NSString).appendingPathComponent("model.safetensors")
            if FileManager.default.fileExists(atPath: st) { return try loadSafetensors(path: st) }
            let ggufs = (try? FileManager.default.contentsOfDirectory(atPath: path))?.filter { $0.hasSuffix(".gguf") }.sorted() ?? []
            if let g = ggufs.first { return try loadGGUF(path: (path as NSString).appendingPathComponent(g)) }
            throw ModelError(.fileNotFound, "directory holds neither model.safetensors nor a .gguf file", path: path)
        }
        if path.hasSuffix(".safetensors") { return try loadSafetensors(path: path) }
        return try loadGGUF(path: path)
    }

    // MARK: GGUF

    public static func loadGGUF(path: String) throws -> LanguageModel {
        let g = try GGUFFile(path: path)
        guard let archName = g.string("general.architecture") else {
            throw ModelError(.missingMetadata, "GGUF lacks general.architecture", path: path)
        }
        guard let arch = Architecture(rawValue: archName) else {
            throw ModelError(.unsupportedArchitecture, "architecture \(archName) is not supported (llama, qwen2, gpt2 are)", path: path)
        }
        func req(_ key: String) throws -> Int {
            guard let v = g.int("\(archName).\(key)") else { throw ModelError(.missingMetadata, "GGUF lacks \(archName).\(key)", path: path) }
            return v
        }
        let hidden = try req("embedding_length")
        let heads = try req("attention.head_count")
        guard let embInfo = g.info("token_embd.weight") else { throw ModelError(.missingTensor, "tensor token_embd.weight is missing", path: path) }
        let vocab = embInfo.shape[0]
        let headDim = g.int("\(archName).attention.key_length") ?? (heads > 0 ? hidden / heads : 0)
        let eps = g.double("\(archName).attention.layer_norm_rms_epsilon") ?? g.double("\(archName).attention.layer_norm_epsilon") ?? 1e-5
        let config = ModelConfig(
            architecture: arch, vocabSize: vocab, hidden: hidden, intermediate: try req("feed_forward_length"),
            layers: try req("block_count"), heads: heads, kvHeads: g.int("\(archName).attention.head_count_kv") ?? heads,
            headDim: headDim, contextLength: try req("context_length"),
            ropeBase: g.double("\(archName).rope.freq_base") ?? 10000,
            // llama.cpp's converter permutes llama Wq/Wk rows for adjacent-pair rotation; qwen2 is stored for NeoX rotation.
            ropeStyle: arch == .gpt2 ? nil : (arch == .llama ? .interleaved : .neox),
            normEps: Float(eps), tiedEmbeddings: g.info("output.weight") == nil)
        try config.validate(path: path)

        @Sendable func tensor(_ name: String, _ shape: [Int]) throws -> Parameter {
            guard let info = g.info(name) else { throw ModelError(.missingTensor, "tensor \(name) is missing", path: path) }
            guard info.shape == shape else {
                throw ModelError(.shapeMismatch, "tensor \(name) has shape \(info.shape), expected \(shape)", path: path)
            }
            return Parameter(name: name, shape: shape, data: try g.floats(info))
        }
        @Sendable func optional(_ name: String, _ shape: [Int]) throws -> Parameter? { g.info(name) == nil ? nil : try tensor(name, shape) }

        let weights = try buildWeights(config: config, path: path, tensor: tensor, optional: optional)
        let tokenizer = try tokenizerFromGGUF(g)
        var meta: [(String, String)] = []
        for k in g.metadataKeys {
            guard let v = g.metadata[k] else { continue }
            let shown: String
            switch v {
            case .array(let a): shown = "[\(a.count) values]"
            case .string(let s): shown = s.count > 120 ? String(s.prefix(117)) + "..." : s
            case .uint(let u): shown = "\(u)"
            case .int(let i): shown = "\(i)"
            case .float(let f): shown = "\(f)"
            case .bool(let b): shown = "\(b)"
            }
            meta.append((k, shown))
        }
        let source = ModelSource(format: .gguf, path: path,
                                 tensorTypes: g.tensors.map { ($0.name, $0.type.name, $0.shape) },
                                 metadata: [("gguf.version", "\(g.version)")] + meta)
        return LanguageModel(config: config, weights: weights, tokenizer: tokenizer, source: source)
    }

    /// Builds the weight set from a tensor accessor keyed by GGUF names.
    static func buildWeights(config c: ModelConfig, path: String,
                             tensor: @Sendable (String, [Int]) throws -> Parameter,
                             optional: @Sendable (String, [Int]) throws -> Parameter?) throws -> ModelWeights {
        let d = c.hidden, q = c.heads * c.headDim, kv = c.kvHeads * c.headDim, ff = c.intermediate
        let gpt2 = c.architecture == .gpt2
        // Dequantize layers in parallel: each layer is independent.
        // Written from concurrentPerform's threads, every access under `lock`; read after it returns.
        nonisolated(unsafe) var layers = [LayerWeights?](repeating: nil, count: c.layers)
        nonisolated(unsafe) var firstError: Error?
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: c.layers) { i in
            let b = "blk.\(i)."
            do {
                var l = LayerWeights(
                    attnNorm: try tensor(b + "attn_norm.weight", [d]), attnNormBias: gpt2 ? try tensor(b + "attn_norm.bias", [d]) : nil,
                    wq: try tensor(b + "attn_q.weight", [q, d]), wk: try tensor(b + "attn_k.weight", [kv, d]),
                    wv: try tensor(b + "attn_v.weight", [kv, d]),
                    bq: try optional(b + "attn_q.bias", [q]), bk: try optional(b + "attn_k.bias", [kv]), bv: try optional(b + "attn_v.bias", [kv]),
                    wo: try tensor(b + "attn_output.weight", [d, q]), bo: try optional(b + "attn_output.bias", [d]),
                    mlpNorm: try tensor(b + "ffn_norm.weight", [d]), mlpNormBias: gpt2 ? try tensor(b + "ffn_norm.bias", [d]) : nil,
                    wGate: c.architecture.gatedMLP ? try tensor(b + "ffn_gate.weight", [ff, d]) : nil,
                    wUp: try tensor(b + "ffn_up.weight", [ff, d]), bUp: try optional(b + "ffn_up.bias", [ff]),
                    wDown: try tensor(b + "ffn_down.weight", [d, ff]), bDown: try optional(b + "ffn_down.bias", [d]))
                l.fuseProjections()
                lock.lock(); layers[i] = l; lock.unlock()
            } catch {
                lock.lock(); if firstError == nil { firstError = error }; lock.unlock()
            }
        }
        if let firstError { throw firstError }
        let emb = try tensor("token_embd.weight", [c.vocabSize, d])
        return ModelWeights(
            tokenEmbedding: emb,
            positionEmbedding: gpt2 ? try tensor("position_embd.weight", [c.contextLength, d]) : nil,
            layers: layers.map { $0! },
            outputNorm: try tensor("output_norm.weight", [d]),
            outputNormBias: gpt2 ? try tensor("output_norm.bias", [d]) : nil,
            output: c.tiedEmbeddings ? emb : try tensor("output.weight", [c.vocabSize, d]))
    }

    /// Loads only the tokenizer of a GGUF file (reads metadata, not tensors).
    public static func loadTokenizer(gguf path: String) throws -> BPETokenizer {
        try tokenizerFromGGUF(try GGUFFile(path: path))
    }

    static func tokenizerFromGGUF(_ g: GGUFFile) throws -> BPETokenizer {
        let model = g.string("tokenizer.ggml.model") ?? "gpt2"
        guard model == "gpt2" else {
            throw ModelError(.unsupportedArchitecture, "tokenizer model \(model) is not supported (byte-level BPE 'gpt2' is)", path: g.path)
        }
        guard let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap({ $0.string }), !tokens.isEmpty else {
            throw ModelError(.missingMetadata, "GGUF lacks tokenizer.ggml.tokens", path: g.path)
        }
        let merges = g.metadata["tokenizer.ggml.merges"]?.array?.compactMap { $0.string } ?? []
        let types = g.metadata["tokenizer.ggml.token_type"]?.array?.compactMap { $0.int } ?? []
        // Control (3) and user-defined (4) tokens are matched literally in text.
        let special = types.enumerated().filter { $0.element == 3 || $0.element == 4 }.map { Int32($0.offset) }
        let preName = g.string("tokenizer.ggml.pre")
        guard let pre = PreTokenizer.fromGGUF(preName) else {
            throw ModelError(.unsupportedArchitecture, "pre-tokenizer \(preName ?? "?") is not supported", path: g.path)
        }
        do {
            return try BPETokenizer(
                vocab: tokens, merges: merges, specialIds: special, preTokenizer: pre,
                bosId: g.int("tokenizer.ggml.bos_token_id").map(Int32.init), eosId: g.int("tokenizer.ggml.eos_token_id").map(Int32.init),
                addBOS: g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false)
        } catch let e as TokenizerError {
            throw ModelError(.malformed, "tokenizer: \(e.message)", path: g.path, cause: e)
        }
    }

    // MARK: safetensors + config.json

    public static func loadSafetensors(path: String) throws -> LanguageModel {
        let dir = (path as NSString).deletingLastPathComponent
        let configPath = (dir as NSString).appendingPathComponent("config.json")
        guard let configData = FileManager.default.contents(atPath: configPath),
              let cfg = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] else {
            throw ModelError(.missingMetadata, "config.json is missing or not a JSON object", path: configPath)
        }
        let st = try SafetensorsFile(path: path)
        func int(_ keys: String...) -> Int? { for k in keys { if let v = (cfg[k] as? NSNumber)?.intValue { return v } }; return nil }
        func dbl(_ keys: String...) -> Double? { for k in keys { if let v = (cfg[k] as? NSNumber)?.doubleValue { return v } }; return nil }
        let modelType = cfg["model_type"] as? String ?? ""
        let arch: Architecture
        switch modelType {
        case "llama", "mistral": arch = .llama
        case "qwen2": arch = .qwen2
        case "gpt2": arch = .gpt2
        default: throw ModelError(.unsupportedArchitecture, "model_type \(modelType.isEmpty ? "(none)" : modelType) is not supported (llama, mistral, qwen2, gpt2 are)", path: configPath)
        }
        guard let hidden = int("hidden_size", "n_embd"), let layers = int("num_hidden_layers", "n_layer"),
              let heads = int("num_attention_heads", "n_head") else {
            throw ModelError(.missingMetadata, "config.json lacks hidden_size / num_hidden_layers / num_attention_heads", path: configPath)
        }
        let prefix = st.entries.keys.contains { $0.hasPrefix("transformer.") } ? "transformer." : ""
        let vocab: Int
        if arch == .gpt2 {
            guard let e = st.entries[prefix + "wte.weight"] else { throw ModelError(.missingTensor, "tensor wte.weight is missing", path: path) }
            vocab = e.shape[0]
        } else {
            guard let e = st.entries["model.embed_tokens.weight"] else { throw ModelError(.missingTensor, "tensor model.embed_tokens.weight is missing", path: path) }
            vocab = e.shape[0]
        }
        let tied = (cfg["tie_word_embeddings"] as? Bool) ?? (arch == .gpt2) || st.entries["lm_head.weight"] == nil
        let config = ModelConfig(
            architecture: arch, vocabSize: vocab, hidden: hidden,
            intermediate: int("intermediate_size", "n_inner") ?? 4 * hidden, layers: layers, heads: heads,
            kvHeads: int("num_key_value_heads") ?? heads, headDim: int("head_dim") ?? hidden / heads,
            contextLength: int("max_position_embeddings", "n_positions", "n_ctx") ?? 2048,
            ropeBase: dbl("rope_theta") ?? 10000, ropeStyle: arch == .gpt2 ? nil : .neox,
            normEps: Float(dbl("rms_norm_eps", "layer_norm_epsilon") ?? 1e-5), tiedEmbeddings: tied)
        try config.validate(path: configPath)

        let names = hfNames(arch: arch, prefix: prefix, layers: layers)
        let d = config.hidden
        @Sendable func fetch(_ gguf: String, _ shape: [Int]) throws -> Parameter? {
            guard let spec = names[gguf] else { return nil }
            guard let e = st.entries[spec.name] else { return nil }
            var data = try st.floats(spec.name)
            var stored = e.shape
            if spec.transposed {
                // GPT-2 Conv1D stores [in, out]; mesa keeps [out, in].
                guard stored.count == 2 else { throw ModelError(.shapeMismatch, "tensor \(spec.name) is not a matrix", path: path) }
                data = transpose(data, rows: stored[0], cols: stored[1])
                stored = [stored[1], stored[0]]
            }
            if let split = spec.split {
                // Fused c_attn: rows [q; k; v] of width d each after transposition.
                guard stored.count >= 1, stored[0] == 3 * d else { throw ModelError(.shapeMismatch, "tensor \(spec.name) has shape \(stored), expected \(3 * d) rows", path: path) }
                let rowWidth = stored.count == 2 ? stored[1] : 1
                data = Array(data[(split * d * rowWidth)..<((split + 1) * d * rowWidth)])
                stored[0] = d
            }
            guard stored == shape else { throw ModelError(.shapeMismatch, "tensor \(spec.name) has shape \(stored), expected \(shape)", path: path) }
            return Parameter(name: gguf, shape: shape, data: data)
        }
        let weights = try buildWeights(
            config: config, path: path,
            tensor: { n, s in
                guard let p = try fetch(n, s) else {
                    throw ModelError(.missingTensor, "tensor \(names[n]?.name ?? n) is missing", path: path)
                }
                return p
            },
            optional: { n, s in try fetch(n, s) })

        let tokPath = (dir as NSString).appendingPathComponent("tokenizer.json")
        guard let tokData = FileManager.default.contents(atPath: tokPath) else {
            throw ModelError(.fileNotFound, "tokenizer.json is missing", path: tokPath)
        }
        let tokenizer: BPETokenizer
        // The stop token config.json names (an id, or a list whose first is the end of a turn), e.g. SmolLM2's <|im_end|>.
        let eos = (cfg["eos_token_id"] as? NSNumber ?? (cfg["eos_token_id"] as? [NSNumber])?.first).map { Int32(truncating: $0) }
        do { tokenizer = try BPETokenizer.fromTokenizerJSON(tokData, eosId: eos) } catch let e as TokenizerError {
            throw ModelError(.malformed, e.message, path: tokPath, cause: e)
        }
        let meta = cfg.keys.sorted().map { ($0, "\(cfg[$0]!)") }
        let source = ModelSource(format: .safetensors, path: path,
                                 tensorTypes: st.entries.values.sorted { $0.name < $1.name }.map { ($0.name, $0.dtype, $0.shape) },
                                 metadata: meta)
        return LanguageModel(config: config, weights: weights, tokenizer: tokenizer, source: source)
    }

    struct HFName { var name: String; var transposed = false; var split: Int? = nil }

    /// Maps mesa's canonical (GGUF) tensor names to Hugging Face checkpoint names.
    static func hfNames(arch: Architecture, prefix: String, layers: Int) -> [String: HFName] {
        var m: [String: HFName] = [:]
        if arch == .gpt2 {
            m["token_embd.weight"] = HFName(name: prefix + "wte.weight")
            m["position_embd.weight"] = HFName(name: prefix + "wpe.weight")
            m["output_norm.weight"] = HFName(name: prefix + "ln_f.weight")
            m["output_norm.bias"] = HFName(name: prefix + "ln_f.bias")
            m["output.weight"] = HFName(name: "lm_head.weight")
            for i in 0..<layers {
                let h = "\(prefix)h.\(i).", b = "blk.\(i)."
                m[b + "attn_norm.weight"] = HFName(name: h + "ln_1.weight")
                m[b + "attn_norm.bias"] = HFName(name: h + "ln_1.bias")
                for (k, part) in ["attn_q", "attn_k", "attn_v"].enumerated() {
                    m[b + part + ".weight"] = HFName(name: h + "attn.c_attn.weight", transposed: true, split: k)
                    m[b + part + ".bias"] = HFName(name: h + "attn.c_attn.bias", split: k)
                }
                m[b + "attn_output.weight"] = HFName(name: h + "attn.c_proj.weight", transposed: true)
                m[b + "attn_output.bias"] = HFName(name: h + "attn.c_proj.bias")
                m[b + "ffn_norm.weight"] = HFName(name: h + "ln_2.weight")
                m[b + "ffn_norm.bias"] = HFName(name: h + "ln_2.bias")
                m[b + "ffn_up.weight"] = HFName(name: h + "mlp.c_fc.weight", transposed: true)
                m[b + "ffn_up.bias"] = HFName(name: h + "mlp.c_fc.bias")
                m[b + "ffn_down.weight"] = HFName(name: h + "mlp.c_proj.weight", transposed: true)
                m[b + "ffn_down.bias"] = HFName(name: h + "mlp.c_proj.bias")
            }
        } else {
            m["token_embd.weight"] = HFName(name: "model.embed_tokens.weight")
            m["output_norm.weight"] = HFName(name: "model.norm.weight")
            m["output.weight"] = HFName(name: "lm_head.weight")
            for i in 0..<layers {
                let h = "model.layers.\(i).", b = "blk.\(i)."
                m[b + "attn_norm.weight"] = HFName(name: h + "input_layernorm.weight")
                for (g, hf) in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")] {
                    m[b + g + ".weight"] = HFName(name: h + "self_attn.\(hf).weight")
                    m[b + g + ".bias"] = HFName(name: h + "self_attn.\(hf).bias")
                }
                m[b + "ffn_norm.weight"] = HFName(name: h + "post_attention_layernorm.weight")
                m[b + "ffn_gate.weight"] = HFName(name: h + "mlp.gate_proj.weight")
                m[b + "ffn_up.weight"] = HFName(name: h + "mlp.up_proj.weight")
                m[b + "ffn_down.weight"] = HFName(name: h + "mlp.down_proj.weight")
            }
        }
        return m
    }

    static func transpose(_ m: [Float], rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m.count)
        for r in 0..<rows { for c in 0..<cols { out[c * rows + r] = m[r * cols + c] } }
        return out
    }
}
