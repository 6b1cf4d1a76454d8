import Foundation

extension BPETokenizer {
    /// Builds a tokenizer from a Hugging Face `tokenizer.json` (BPE model, byte-level). `eosId` (the
    /// checkpoint config's `eos_token_id`) wins over the guess from the added tokens' names.
    public static func fromTokenizerJSON(_ data: Data, eosId configEOS: Int32? = nil) throws -> BPETokenizer {
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TokenizerError("tokenizer.json is not a JSON object")
        }
        guard let model = root["model"] as? [String: Any] else { throw TokenizerError("tokenizer.json has no model") }
        if let type = model["type"] as? String, type != "BPE" {
            throw TokenizerError("unsupported tokenizer model type \(type); only byte-level BPE is supported")
        }
        guard let vocabMap = model["vocab"] as? [String: Any] else { throw TokenizerError("tokenizer.json model has no vocab") }
        var entries: [(String, Int)] = []
        for (k, v) in vocabMap {
            guard let id = (v as? NSNumber)?.intValue else { throw TokenizerError("vocab id of \(k.debugDescription) is not a number") }
            entries.append((k, id))
        }
        var added: [(String, Int, Bool)] = []
        for a in root["added_tokens"] as? [[String: Any]] ?? [] {
            if let c = a["content"] as? String, let id = (a["id"] as? NSNumber)?.intValue {
                added.append((c, id, (a["special"] as? Bool) ?? false))
            }
        }
        let size = max(entries.map { $0.1 }.max() ?? -1, added.map { $0.1 }.max() ?? -1) + 1
        guard size > 0, size <= 10_000_000 else { throw TokenizerError("implausible vocabulary size \(size)") }
        var vocab = [String](repeating: "", count: size)
        for (t, id) in entries where id >= 0 { vocab[id] = t }
        for (t, id, _) in added where id >= 0 { vocab[id] = t }

        var merges: [String] = []
        for m in model["merges"] as? [Any] ?? [] {
            if let s = m as? String { merges.append(s) } else if let pair = m as? [String], pair.count == 2 { merges.append(pair[0] + " " + pair[1]) } else {
                throw TokenizerError("malformed merge entry \(m)")
            }
        }
        let pre = try preTokenizer(from: root["pre_tokenizer"])
        // Added tokens are matched literally whether or not they are marked special.
        let specialIds = added.map { Int32($0.1) }

        var bos: Int32?, addBOS = false
        if let post = root["post_processor"] as? [String: Any] {
            let processors = (post["type"] as? String) == "Sequence" ? (post["processors"] as? [[String: Any]] ?? []) : [post]
            for p in processors where (p["type"] as? String) == "TemplateProcessing" {
                if let single = p["single"] as? [[String: Any]], let first = single.first,
                   let st = first["SpecialToken"] as? [String: Any], let name = st["id"] as? String,
                   let id = added.first(where: { $0.0 == name })?.1 {
                    bos = Int32(id); addBOS = true
                }
            }
        }
        let eos = configEOS.flatMap { $0 >= 0 && Int($0) < size ? $0 : nil } ?? added.first(where: { ["<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>"].contains($0.0) }).map { Int32($0.1) }
        if bos == nil { bos = added.first(where: { ["<s>", "<|begin_of_text|>", "<|endoftext|>"].contains($0.0) }).map { Int32($0.1) } }
        return try BPETokenizer(vocab: vocab, merges: merges, specialIds: specialIds, preTokenizer: pre,
                                bosId: bos, eosId: eos, addBOS: addBOS)
    }

    /// Recognizes the pre-tokenizer configurations mesa implements.
    static func preTokenizer(from spec: Any?) throws -> PreTokenizer {
        guard let spec = spec as? [String: Any], let type = spec["type"] as? String else { return .gpt2 }
        switch type {
        case "ByteLevel":
            return .gpt2
        case "Sequence":
            let parts = spec["pretokenizers"] as? [[String: Any]] ?? []
            let types = parts.compactMap { $0["type"] as? String }
            if types.contains("Digits"), types.contains("ByteLevel") { return .smollm }
            if let split = parts.first(where: { $0["type"] as? String == "Split" }),
               let pattern = (split["pattern"] as? [String: Any])?["Regex"] as? String {
                if pattern.contains("\\p{N}{1,3}") { return .llama3 }
                if pattern.contains("\\p{N}") && pattern.contains("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+") { return .qwen2 }
            }
            if types == ["ByteLevel"] { return .gpt2 }
            throw TokenizerError("unsupported pre-tokenizer sequence \(types)")
        default:
            throw TokenizerError("unsupported pre-tokenizer \(type)")
        }
    }
}
