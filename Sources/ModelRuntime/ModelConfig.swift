import Tensor

/// Supported decoder architectures.
public enum Architecture: String, Codable, Sendable {
    /// Llama family: Llama, SmolLM/SmolLM2, Mistral-style (RMSNorm, RoPE, GQA, gated SiLU MLP).
    case llama
    /// Qwen2: the Llama layout plus q/k/v biases.
    case qwen2
    /// GPT-2: LayerNorm, learned positions, fused QKV with biases, GELU MLP.
    case gpt2

    public var usesRMSNorm: Bool { self != .gpt2 }
    public var gatedMLP: Bool { self != .gpt2 }
}

/// Hyperparameters of a loaded model, keyed like the checkpoint's config.
public struct ModelConfig: Codable, Equatable, Sendable {
    public var architecture: Architecture
    public var vocabSize: Int
    /// d_model.
    public var hidden: Int
    /// d_ff, the width of the MLP key (the input of the down projection).
    public var intermediate: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var contextLength: Int
    public var ropeBase: Double
    /// nil for architectures without rotary embeddings (GPT-2).
    public var ropeStyle: RoPE.Style?
    public var normEps: Float
    public var tiedEmbeddings: Bool

    public init(architecture: Architecture, vocabSize: Int, hidden: Int, intermediate: Int, layers: Int, heads: Int,
                kvHeads: Int, headDim: Int? = nil, contextLength: Int, ropeBase: Double = 10000, ropeStyle: RoPE.Style?,
                normEps: Float, tiedEmbeddings: Bool) {
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.hidden = hidden
        self.intermediate = intermediate
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim ?? hidden / heads
        self.contextLength = contextLength
        self.ropeBase = ropeBase
        self.ropeStyle = ropeStyle
        self.normEps = normEps
        self.tiedEmbeddings = tiedEmbeddings
    }

    /// Checks internal consistency; thrown errors name the offending field.
    public func validate(path: String? = nil) throws {
        func fail(_ m: String) -> ModelError { ModelError(.malformed, "invalid model configuration: \(m)", path: path) }
        guard vocabSize > 0, hidden > 0, intermediate > 0, layers > 0, heads > 0, kvHeads > 0, headDim > 0 else {
            throw fail("sizes must be positive")
        }
        guard heads % kvHeads == 0 else { throw fail("heads (\(heads)) must be a multiple of kv heads (\(kvHeads))") }
        guard contextLength > 0 else { throw fail("context length must be positive") }
        if ropeStyle != nil && headDim % 2 != 0 { throw fail("rotary head dimension must be even") }
        guard normEps > 0, normEps.isFinite else { throw fail("norm epsilon must be positive") }
    }

    /// Parameter count (tied embeddings counted once).
    public var parameterCount: Int {
        let attn = hidden * heads * headDim * 2 + hidden * kvHeads * headDim * 2
        let mlp = hidden * intermediate * (architecture.gatedMLP ? 3 : 2)
        let emb = vocabSize * hidden * (tiedEmbeddings ? 1 : 2) + (architecture == .gpt2 ? contextLength * hidden : 0)
        return emb + layers * (attn + mlp + 2 * hidden)
    }
}
