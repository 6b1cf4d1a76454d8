import Tensor

/// Named activation sites of a decoder layer, where the editor reads and writes vectors.
public enum SiteKind: String, CaseIterable, Codable, Sendable {
    /// Residual stream entering layer l ([T, d]).
    case residIn = "resid_in"
    /// Residual stream leaving layer l ([T, d]).
    case residOut = "resid_out"
    /// MLP key: the input to the down projection ([T, d_ff]).
    case mlpKey = "mlp_key"
    /// MLP output: the output of the down projection, before the residual add ([T, d]).
    case mlpOut = "mlp_out"
}

public struct Site: Hashable, Codable, Sendable, CustomStringConvertible {
    public var layer: Int
    public var kind: SiteKind
    public init(layer: Int, kind: SiteKind) { self.layer = layer; self.kind = kind }
    public var description: String { "\(kind.rawValue)@\(layer)" }
}

/// Adds `vector` to the activation at `site` for token `position` (an index into this call's tokens).
public struct Intervention: Sendable {
    public var site: Site
    public var position: Int
    public var vector: [Float]
    public init(site: Site, position: Int, vector: [Float]) { self.site = site; self.position = position; self.vector = vector }
}

/// Which positions to compute logits for.
public enum LogitSelection: Sendable, Equatable {
    case none, last, all
    case positions([Int])
}

/// What a forward pass should capture and change.
public struct ForwardOptions: Sendable {
    public var capture: Set<Site>
    public var interventions: [Intervention]
    public var logits: LogitSelection
    /// Stop after this layer (no logits; a KV cache is filled only up to it). Layer statistics need
    /// only the layers up to the one they read.
    public var stopAfterLayer: Int?
    /// Lengths of independent sequences packed one after another into the tokens (no KV cache): each
    /// starts at position 0 and attends only within itself, so one pass streams the weights once for
    /// many short prompts. Nil: the tokens are one sequence.
    public var segments: [Int]?
    /// Start at a layer from a residual stream captured earlier instead of from the embeddings: a
    /// pass over the same tokens whose lower layers are unchanged (the quality guard's canary after an
    /// edit above them) skips them. No KV cache; no captures or interventions below the layer.
    public var resume: ResumePoint?
    /// One KV cache per sequence (per segment, or one for unsegmented tokens; not with `cache`): each
    /// sequence continues its cache from its `start` (attending to the keys and values already at
    /// positions 0..<start, its positions counted from there) and leaves its own keys and values at
    /// every layer the pass runs. Packed prompts then leave each prompt's cache as its own pass would
    /// have filled it, for later passes that attend to it; prompts that share a prefix continue a copy
    /// of the prefix's cache (`KVCache.copyPrefix`).
    public var segmentCaches: [SegmentCache]?
    public init(capture: Set<Site> = [], interventions: [Intervention] = [], logits: LogitSelection = .last, stopAfterLayer: Int? = nil,
                segments: [Int]? = nil, resume: ResumePoint? = nil, segmentCaches: [SegmentCache]? = nil) {
        self.capture = capture
        self.interventions = interventions
        self.logits = logits
        self.stopAfterLayer = stopAfterLayer
        self.segments = segments
        self.resume = resume
        self.segmentCaches = segmentCaches
    }
}

/// A sequence's KV cache in a packed pass: the sequence occupies positions `start..<start + n` of
/// `cache`, whose positions 0..<start hold the keys and values of what precedes it.
public struct SegmentCache: Sendable {
    public var cache: KVCache
    public var start: Int
    public init(_ cache: KVCache, start: Int = 0) {
        self.cache = cache
        self.start = start
    }
}

/// Where a forward pass starts: layer `layer`, whose input is `residual` [T, d] (the `resid_in`
/// capture of that layer from a pass over the same tokens).
public struct ResumePoint: Sendable {
    public var layer: Int
    public var residual: Tensor
    public init(layer: Int, residual: Tensor) {
        self.layer = layer
        self.residual = residual
    }
}

public struct ForwardResult: Sendable {
    /// [rows, vocab] for the positions in `logitPositions`.
    public var logits: Tensor
    public var logitPositions: [Int]
    /// Captured activations, each [T, width] over this call's tokens (captured after interventions).
    public var activations: [Site: Tensor]

    /// Logits of the i-th selected row.
    public func logitRow(_ i: Int) -> [Float] { logits.row(i) }
}
