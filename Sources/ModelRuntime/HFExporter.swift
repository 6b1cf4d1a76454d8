import Foundation
import Tokenizers

/// Writes a resident (possibly edited) Llama-family model as a Hugging Face transformers checkpoint:
/// `model.safetensors` (Float32, transformers' tensor names and layout), `config.json`
/// (`LlamaForCausalLM`), `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`.
///
/// A model loaded from a Llama GGUF holds Wq/Wk in llama.cpp's row order (interleaved RoPE); they
/// are written in transformers' order (`RoPERowLayout.toHF`), so its rotate-half RoPE gives the
/// same logits. The tokenizer of a GGUF is rebuilt from its vocabulary and merges as
/// ops/reference/make_fixtures.py builds the reference tokenizer; a model loaded from a checkpoint
/// directory keeps its own tokenizer files.
public enum HFExporter {
    /// The checkpoint's tensors by transformers name, in the order `ModelWeights.all` lists them.
    /// Shapes are row-major, linear weights [out, in].
    public static func tensors(_ model: LanguageModel) throws -> [(name: String, shape: [Int], data: [Float])] {
        let c = model.config
        guard c.architecture == .llama else {
            throw ModelError(.unsupportedArchitecture, "the transformers export is implemented for the Llama family (architecture llama); this model is \(c.architecture.rawValue)")
        }
        let names = ModelLoader.hfNames(arch: c.architecture, prefix: "", layers: c.layers)
        let interleaved = c.ropeStyle == .interleaved
        return try model.weights.all.map { p in
            guard let hf = names[p.name]?.name else {
                throw ModelError(.missingTensor, "tensor \(p.name) has no transformers name")
            }
            var data = p.data
            if interleaved, let heads = qkHeads(p.name, c) {
                // [heads·headDim, cols] with cols = hidden (weights) or 1 (biases).
                data = RoPERowLayout.toHF(data, heads: heads, headDim: c.headDim, cols: p.count / (heads * c.headDim))
            }
            return (hf, p.shape, data)
        }
    }

    /// The head count of a Wq / Wk tensor (or bias) named in GGUF style; nil for other tensors.
    static func qkHeads(_ name: String, _ c: ModelConfig) -> Int? {
        if name.hasSuffix(".attn_q.weight") || name.hasSuffix(".attn_q.bias") { return c.heads }
        if name.hasSuffix(".attn_k.weight") || name.hasSuffix(".attn_k.bias") { return c.kvHeads }
        return nil
    }

    /// Writes the checkpoint into the existing directory `dir`. `metadata` goes into the
    /// safetensors header (with `format: pt`, which transformers expects).
    public static func write(_ model: LanguageModel, to dir: String, metadata: [String: String] = [:]) throws {
        let c = model.config
        let tensors = try tensors(model)
        let url = URL(fileURLWithPath: dir)
        var meta = metadata
        meta["format"] = "pt"
        do {
            try SafetensorsFile.write(tensors, dtype: .f32, metadata: meta, to: url.appendingPathComponent("model.safetensors").path)
        } catch let e as ModelError { throw e } catch {
            throw ModelError(.ioError, "cannot write model.safetensors: \(error)", path: dir, cause: error)
        }
        var files: [String: Data] = [:]
        switch model.source.format {
        case .gguf:
            let g = try GGUFFile(path: model.source.path)
            let tok = try tokenizerFiles(g, contextLength: c.contextLength)
            files = tok.files
            files["config.json"] = try json(config(c, special: tok.special))
        case .safetensors:
            let srcDir = URL(fileURLWithPath: model.source.path).deletingLastPathComponent()
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
                if let d = FileManager.default.contents(atPath: srcDir.appendingPathComponent(name).path) { files[name] = d }
            }
            guard files["tokenizer.json"] != nil else {
                throw ModelError(.fileNotFound, "tokenizer.json is missing", path: srcDir.appendingPathComponent("tokenizer.json").path)
            }
            let special = SpecialTokens(bos: model.tokenizer.bosId.map(Int.init), eos: model.tokenizer.eosId.map(Int.init), pad: nil,
                                        bosText: nil, eosText: nil, padText: nil, unkText: nil, addBOS: model.tokenizer.addBOS)
            files["config.json"] = try json(config(c, special: special))
        }
        for (name, data) in files {
            do { try data.write(to: url.appendingPathComponent(name), options: .atomic) } catch {
                throw ModelError(.ioError, "cannot write \(name): \(error)", path: dir, cause: error)
            }
        }
    }

    /// Ids and texts of the special tokens the config files name.
    public struct SpecialTokens: Sendable, Equatable {
        public var bos: Int?, eos: Int?, pad: Int?
        public var bosText: String?, eosText: String?, padText: String?, unkText: String?
        public var addBOS: Bool
    }

    /// `config.json` of a `LlamaForCausalLM` with the model's dimensions. Both the transformers 4.x
    /// top-level `rope_theta` and 5.x `rope_parameters` are written, as the tiny fixtures have them.
    public static func config(_ c: ModelConfig, special: SpecialTokens) -> [String: Any] {
        // ModelConfig keeps eps as Float32 (as GGUF stores it): write its shortest decimal, 1e-05, not 9.99999974e-06.
        let eps = Double("\(c.normEps)") ?? Double(c.normEps)
        return [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": c.vocabSize, "hidden_size": c.hidden, "intermediate_size": c.intermediate,
            "num_hidden_layers": c.layers, "num_attention_heads": c.heads, "num_key_value_heads": c.kvHeads, "head_dim": c.headDim,
            "hidden_act": "silu", "max_position_embeddings": c.contextLength, "rms_norm_eps": eps,
            "rope_theta": c.ropeBase, "rope_parameters": ["rope_theta": c.ropeBase, "rope_type": "default"],
            "attention_bias": false, "attention_dropout": 0.0, "mlp_bias": false, "pretraining_tp": 1, "initializer_range": 0.02,
            "tie_word_embeddings": c.tiedEmbeddings, "use_cache": true, "torch_dtype": "float32", "dtype": "float32",
            "bos_token_id": special.bos.map { $0 as Any } ?? NSNull(), "eos_token_id": special.eos.map { $0 as Any } ?? NSNull(),
            "pad_token_id": special.pad.map { $0 as Any } ?? NSNull(),
        ]
    }

    /// `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` rebuilt from a GGUF's
    /// tokenizer metadata: a byte-level BPE over `tokenizer.ggml.tokens` / `merges` (no unk, no
    /// dropout, `ignore_merges` false), no normalizer, the pre-tokenizer `tokenizer.ggml.pre` names,
    /// a ByteLevel decoder, and the CONTROL (3) and USER_DEFINED (4) tokens as special added tokens.
    public static func tokenizerFiles(_ g: GGUFFile, contextLength: Int) throws -> (files: [String: Data], special: SpecialTokens) {
        func bad(_ m: String) -> ModelError { ModelError(.unsupportedArchitecture, "cannot rebuild tokenizer.json: \(m)", path: g.path) }
        let model = g.string("tokenizer.ggml.model") ?? "gpt2"
        guard model == "gpt2" else { throw bad("tokenizer model \(model) is not byte-level BPE ('gpt2')") }
        guard let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap({ $0.string }), !tokens.isEmpty else {
            throw ModelError(.missingMetadata, "GGUF lacks tokenizer.ggml.tokens", path: g.path)
        }
        let merges = g.metadata["tokenizer.ggml.merges"]?.array?.compactMap { $0.string } ?? []
        let types = g.metadata["tokenizer.ggml.token_type"]?.array?.compactMap { $0.int } ?? []
        let preName = g.string("tokenizer.ggml.pre")
        guard let pre = PreTokenizer.fromGGUF(preName) else { throw bad("pre-tokenizer \(preName ?? "?") is not supported") }

        var vocab: [String: Int] = [:]
        for (i, t) in tokens.enumerated() {
            if let first = vocab[t] { throw bad("token \(t.debugDescription) appears twice (ids \(first) and \(i)); a tokenizer.json vocabulary cannot hold both") }
            vocab[t] = i
        }
        let mergePairs: [[String]] = try merges.map { m in
            guard let space = m.firstIndex(of: " ") else { throw bad("merge \(m.debugDescription) is not two tokens") }
            return [String(m[..<space]), String(m[m.index(after: space)...])]
        }
        let added: [[String: Any]] = types.enumerated().filter { $0.element == 3 || $0.element == 4 }.map { i, _ in
            ["id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true]
        }
        func id(_ key: String) -> Int? { g.int("tokenizer.ggml.\(key)").flatMap { $0 >= 0 && $0 < tokens.count ? $0 : nil } }
        let bos = id("bos_token_id"), eos = id("eos_token_id"), pad = id("padding_token_id"), unk = id("unknown_token_id")
        let addBOS = g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false
        let addEOS = g.metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false
        let special = SpecialTokens(bos: bos, eos: eos, pad: pad, bosText: bos.map { tokens[$0] }, eosText: eos.map { tokens[$0] },
                                    padText: pad.map { tokens[$0] }, unkText: unk.map { tokens[$0] }, addBOS: addBOS)

        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        let preTokenizer: [String: Any]
        switch pre {
        case .gpt2: preTokenizer = byteLevel
        case .smollm:
            preTokenizer = ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel]]
        case .llama3, .qwen2:
            let digits = pre == .llama3 ? "\\p{N}{1,3}" : "\\p{N}"
            let pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\(digits)| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
            preTokenizer = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false],
            ]]
        }
        let postProcessor: Any
        if addBOS || addEOS {
            // BOS (and EOS) around every sequence, as llama.cpp adds them.
            var single: [[String: Any]] = [], pair: [[String: Any]] = [], specials: [String: Any] = [:]
            func tok(_ i: Int?, _ typeId: Int) -> [String: Any]? {
                guard let i else { return nil }
                specials[tokens[i]] = ["id": tokens[i], "ids": [i], "tokens": [tokens[i]]]
                return ["SpecialToken": ["id": tokens[i], "type_id": typeId]]
            }
            for (seq, typeId) in [("A", 0), ("B", 1)] {
                var part: [[String: Any]] = []
                if addBOS, let b = tok(bos, typeId) { part.append(b) }
                part.append(["Sequence": ["id": seq, "type_id": typeId]])
                if addEOS, let e = tok(eos, typeId) { part.append(e) }
                if seq == "A" { single = part }
                pair += part
            }
            postProcessor = ["type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials]
        } else {
            postProcessor = ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true]
        }
        let tokenizer: [String: Any] = [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added, "normalizer": NSNull(),
            "pre_tokenizer": preTokenizer, "post_processor": postProcessor,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": mergePairs],
        ]
        var tokenizerConfig: [String: Any] = [
            "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": addBOS, "add_eos_token": addEOS,
            "clean_up_tokenization_spaces": false, "model_max_length": contextLength,
        ]
        for (key, text) in [("bos_token", special.bosText), ("eos_token", special.eosText), ("pad_token", special.padText), ("unk_token", special.unkText)] {
            if let text { tokenizerConfig[key] = text }
        }
        if let template = g.string("tokenizer.chat_template") { tokenizerConfig["chat_template"] = template }
        var generation: [String: Any] = [:]
        for (key, v) in [("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)] { if let v { generation[key] = v } }
        return (["tokenizer.json": try json(tokenizer, pretty: false), "tokenizer_config.json": try json(tokenizerConfig),
                 "generation_config.json": try json(generation)], special)
    }

    /// The weight hash (`ModelWeights.hash`) of `model` with its Wq / Wk (and biases) in llama.cpp's
    /// row order: for a Llama model loaded from a transformers checkpoint, the hash it had as the
    /// GGUF it was exported from. Other models: their plain weight hash.
    public static func ggufLayoutHash(_ model: LanguageModel) -> String {
        let c = model.config
        guard c.architecture == .llama, c.ropeStyle == .neox else { return model.weightHash }
        var w = model.weights
        func relaid(_ p: Parameter?, _ heads: Int) -> Parameter? {
            guard let p else { return nil }
            // [heads·headDim, cols]
            return Parameter(name: p.name, shape: p.shape,
                             data: RoPERowLayout.toGGUF(p.data, heads: heads, headDim: c.headDim, cols: p.count / (heads * c.headDim)))
        }
        for i in w.layers.indices {
            w.layers[i].wq = relaid(w.layers[i].wq, c.heads)!
            w.layers[i].wk = relaid(w.layers[i].wk, c.kvHeads)!
            w.layers[i].bq = relaid(w.layers[i].bq, c.heads)
            w.layers[i].bk = relaid(w.layers[i].bk, c.kvHeads)
        }
        return w.hash
    }

    static func json(_ object: Any, pretty: Bool = true) throws -> Data {
        var data = try JSONSerialization.data(withJSONObject: object, options: pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes])
        data.append(0x0A)
        return data
    }
}
