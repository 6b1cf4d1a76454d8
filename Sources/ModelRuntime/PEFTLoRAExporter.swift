import Foundation
import Tensor

/// Writes accumulated low-rank weight updates as a PEFT LoRA adapter (the form transformers' PEFT and
/// vLLM's `/v1/load_lora_adapter` load): `adapter_config.json` and `adapter_model.safetensors` with
/// `base_model.model.model.layers.{i}.{mlp|self_attn}.{proj}.lora_A.weight` [r, in] and
/// `lora_B.weight` [out, r] per module, `lora_alpha` = r so PEFT's scale alpha/r is 1 and the
/// adapter adds exactly B·A.
///
/// The updates ΔW_k = L_k·R_k (L_k [out, r_k], R_k [r_k, in]) of one tensor concatenate into
/// B = [L_1 | L_2 | …] [out, Σr_k] and A = [R_1; R_2; …] [Σr_k, in], so B·A = Σ_k L_k·R_k. PEFT
/// has one `r` per adapter: a module whose total rank is below the largest is padded with zero
/// columns of B and zero rows of A (B·A unchanged). `target_modules` × `layers_to_transform` is
/// the set PEFT adapts: a combination no update touched gets zero factors, so the file covers it.
public enum PEFTLoRAExporter {
    /// The factors of one adapted module, in transformers' layout (Wq / Wk rows un-permuted).
    public struct Module: Sendable {
        /// GGUF-style tensor name, e.g. "blk.7.ffn_down.weight".
        public var parameter: String
        public var layer: Int
        /// transformers' submodule and projection, e.g. ("mlp", "down_proj").
        public var block: String
        public var projection: String
        public var rows: Int
        public var cols: Int
        /// Σ r_k of the updates (before padding to the adapter's r).
        public var rank: Int
        /// [rows, rank]
        public var b: [Float]
        /// [rank, cols]
        public var a: [Float]

        /// The adapter's tensor name prefix, e.g. "base_model.model.model.layers.7.mlp.down_proj".
        public var peftPrefix: String { "base_model.model.model.layers.\(layer).\(block).\(projection)" }
    }

    /// GGUF tensor kind → (transformers submodule, projection).
    static let projections: [String: (String, String)] = [
        "ffn_down": ("mlp", "down_proj"), "ffn_up": ("mlp", "up_proj"), "ffn_gate": ("mlp", "gate_proj"),
        "attn_q": ("self_attn", "q_proj"), "attn_k": ("self_attn", "k_proj"), "attn_v": ("self_attn", "v_proj"),
        "attn_output": ("self_attn", "o_proj"),
    ]

    /// Groups `updates` (in the order they were applied) by tensor and concatenates their factors.
    /// Throws when an update names no linear projection of `config`'s model, or does not fit it, or
    /// when a module's rank r makes the factors r·(out + in) larger than the tensor out·in.
    public static func modules(_ updates: [LowRankUpdate], config c: ModelConfig) throws -> [Module] {
        guard c.architecture == .llama else {
            throw ModelError(.unsupportedArchitecture, "the PEFT LoRA export is implemented for the Llama family (architecture llama); this model is \(c.architecture.rawValue)")
        }
        var order: [String] = []
        var groups: [String: [LowRankUpdate]] = [:]
        for u in updates {
            if groups[u.parameter] == nil { order.append(u.parameter) }
            groups[u.parameter, default: []].append(u)
        }
        let q = c.heads * c.headDim, kv = c.kvHeads * c.headDim
        return try order.map { name in
            let parts = name.split(separator: ".")
            guard parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0, layer < c.layers, parts[3] == "weight",
                  let (block, projection) = projections[String(parts[2])] else {
                throw ModelError(.invalidInput, "update of \(name): not a linear projection of a decoder layer, so not expressible as a LoRA module")
            }
            let shapes: [String: [Int]] = ["ffn_down": [c.hidden, c.intermediate], "ffn_up": [c.intermediate, c.hidden],
                                           "ffn_gate": [c.intermediate, c.hidden], "attn_q": [q, c.hidden], "attn_k": [kv, c.hidden],
                                           "attn_v": [kv, c.hidden], "attn_output": [c.hidden, q]]
            let shape = shapes[String(parts[2])]!
            let list = groups[name]!
            for u in list where [u.rows, u.cols] != shape || u.left.count != u.rows * u.rank || u.right.count != u.rank * u.cols || u.rank < 1 {
                throw ModelError(.shapeMismatch, "update of \(name) [\(u.rows), \(u.cols)] rank \(u.rank) does not fit the model's \(shape)")
            }
            let rows = shape[0], cols = shape[1], rank = list.reduce(0) { $0 + $1.rank }
            try checkRank(rank, parameter: name, rows: rows, cols: cols)
            // B [rows, rank]: row i is [L_1 row i | L_2 row i | …]; A [rank, cols]: R_1 rows, then R_2 rows, …
            var b = [Float](repeating: 0, count: rows * rank)
            var a: [Float] = []
            a.reserveCapacity(rank * cols)
            var offset = 0
            for u in list {
                for i in 0..<rows { for j in 0..<u.rank { b[i * rank + offset + j] = u.left[i * u.rank + j] } }
                a += u.right
                offset += u.rank
            }
            if c.ropeStyle == .interleaved, parts[2] == "attn_q" || parts[2] == "attn_k" {
                // ΔW's rows follow W's: llama.cpp's order in the model, transformers' in the adapter.
                b = RoPERowLayout.toHF(b, heads: parts[2] == "attn_q" ? c.heads : c.kvHeads, headDim: c.headDim, cols: rank)
            }
            return Module(parameter: name, layer: layer, block: block, projection: projection, rows: rows, cols: cols, rank: rank, b: b, a: a)
        }
    }

    /// Refuses a rank r whose factors r·(rows + cols) hold more values than the tensor rows·cols.
    public static func checkRank(_ rank: Int, parameter: String, rows: Int, cols: Int) throws {
        guard rank * (rows + cols) <= rows * cols else {
            throw ModelError(.invalidInput, """
                the lineage's updates of \(parameter) [\(rows), \(cols)] have total rank \(rank): its LoRA factors \
                (\(rank) × (\(rows) + \(cols)) = \(rank * (rows + cols)) values) would be larger than the tensor \
                (\(rows * cols) values), so a LoRA adapter is the wrong form; export the whole model \
                (--format safetensors or gguf) instead. The largest rank that fits is \(rows * cols / (rows + cols)).
                """)
        }
    }

    /// The adapter's r: the largest total rank of `modules`.
    public static func adapterRank(_ modules: [Module]) -> Int { modules.map(\.rank).max() ?? 0 }

    /// The adapter's tensors: every target projection × every adapted layer, each padded to rank `r`.
    /// lora_A [r, in], lora_B [out, r].
    public static func tensors(_ modules: [Module]) -> [(name: String, shape: [Int], data: [Float])] {
        let r = adapterRank(modules)
        let layers = Set(modules.map(\.layer)).sorted()
        let byKey = Dictionary(modules.map { ("\($0.layer).\($0.projection)", $0) }, uniquingKeysWith: { a, _ in a })
        var kinds: [String: Module] = [:]
        for m in modules where kinds[m.projection] == nil { kinds[m.projection] = m }
        var out: [(name: String, shape: [Int], data: [Float])] = []
        for (projection, template) in kinds.sorted(by: { $0.key < $1.key }) {
            for layer in layers {
                let prefix = "base_model.model.model.layers.\(layer).\(template.block).\(projection)"
                let rows = template.rows, cols = template.cols
                var a = [Float](repeating: 0, count: r * cols)      // [r, cols]
                var b = [Float](repeating: 0, count: rows * r)      // [rows, r]
                if let m = byKey["\(layer).\(projection)"] {
                    for i in 0..<m.rank { for j in 0..<cols { a[i * cols + j] = m.a[i * cols + j] } }
                    for i in 0..<rows { for j in 0..<m.rank { b[i * r + j] = m.b[i * m.rank + j] } }
                }
                out.append((prefix + ".lora_A.weight", [r, cols], a))
                out.append((prefix + ".lora_B.weight", [rows, r], b))
            }
        }
        return out
    }

    /// `adapter_config.json` for `modules`.
    public static func adapterConfig(_ modules: [Module], baseModel: String) -> [String: Any] {
        let r = adapterRank(modules)
        return [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel, "revision": NSNull(),
            "r": r, "lora_alpha": r, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": false, "use_rslora": false, "use_dora": false,
            "init_lora_weights": true, "inference_mode": true, "modules_to_save": NSNull(), "rank_pattern": [String: Int](),
            "alpha_pattern": [String: Int](), "target_modules": Set(modules.map(\.projection)).sorted(),
            "layers_to_transform": Set(modules.map(\.layer)).sorted(), "layers_pattern": "layers",
        ]
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (Float32) into the existing
    /// directory `dir`. Throws when there is nothing to write.
    public static func write(_ modules: [Module], baseModel: String, metadata: [String: String] = [:], to dir: String) throws {
        guard !modules.isEmpty else {
            throw ModelError(.invalidInput, "no weight updates to export: the snapshot's lineage is empty (snapshot 0 is the base model) or changes no tensor")
        }
        // Padding to the adapter's r must not make a smaller module's factors outgrow its tensor.
        for m in modules { try checkRank(adapterRank(modules), parameter: m.parameter, rows: m.rows, cols: m.cols) }
        let url = URL(fileURLWithPath: dir)
        var meta = metadata
        meta["format"] = "pt"
        do {
            try SafetensorsFile.write(tensors(modules), dtype: .f32, metadata: meta, to: url.appendingPathComponent("adapter_model.safetensors").path)
            try HFExporter.json(adapterConfig(modules, baseModel: baseModel)).write(to: url.appendingPathComponent("adapter_config.json"), options: .atomic)
        } catch let e as ModelError { throw e } catch {
            throw ModelError(.ioError, "cannot write the adapter: \(error)", path: dir, cause: error)
        }
    }

    /// ΔW = B·A of a module, [rows, cols], in transformers' row order.
    public static func delta(_ m: Module) -> [Float] {
        var out = [Float](repeating: 0, count: m.rows * m.cols)
        m.b.withUnsafeBufferPointer { b in m.a.withUnsafeBufferPointer { a in out.withUnsafeMutableBufferPointer { c in
            BLAS.sgemm(m: m.rows, n: m.cols, k: m.rank, a: b.baseAddress!, lda: m.rank, b: a.baseAddress!, ldb: m.cols,
                       c: c.baseAddress!, ldc: m.cols)
        } } }
        return out
    }
}
