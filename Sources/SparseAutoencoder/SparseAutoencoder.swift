import Foundation
import ModelRuntime
import Tensor

/// Why an SAE could not be loaded, trained or used.
public struct SAEError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        /// A file is missing or unreadable.
        case io
        /// A file is not what it claims to be: bad JSON, bad safetensors, a checksum mismatch.
        case corrupt
        /// Shapes disagree with each other or with the activation site.
        case shape
        /// A tensor or setting the architecture needs is absent (e.g. the JumpReLU threshold).
        case missing
        /// Settings out of range.
        case settings
        /// Training produced a non-finite value.
        case nonFinite
    }

    public var code: Code
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) { self.code = code; self.message = message; self.cause = cause }
    public var description: String { "\(code.rawValue): \(message)" }
    /// Equal when the code and message are: the cause is not Equatable, and the message quotes it.
    public static func == (a: SAEError, b: SAEError) -> Bool { a.code == b.code && a.message == b.message }
}

/// What an SAE was trained on; written to `cfg.json` in SAELens' keys.
public struct SAEMetadata: Codable, Sendable, Equatable {
    public var modelName: String
    /// The weight hash of the model whose activations it was trained on.
    public var modelHash: String?
    public var site: Site
    /// SAELens' hook name for the site, e.g. "blocks.7.hook_mlp_out".
    public var hookName: String
    public var contextSize: Int
    public var prependBos: Bool

    public init(modelName: String, modelHash: String?, site: Site, contextSize: Int, prependBos: Bool) {
        self.modelName = modelName
        self.modelHash = modelHash
        self.site = site
        self.hookName = Self.hookName(site)
        self.contextSize = contextSize
        self.prependBos = prependBos
    }

    /// TransformerLens' hook names, which SAELens configs use.
    public static func hookName(_ site: Site) -> String {
        switch site.kind {
        case .mlpOut: return "blocks.\(site.layer).hook_mlp_out"
        case .residOut: return "blocks.\(site.layer).hook_resid_post"
        case .residIn: return "blocks.\(site.layer).hook_resid_pre"
        case .mlpKey: return "blocks.\(site.layer).mlp.hook_post"
        }
    }

    /// The site a hook name denotes (nil if it is not one of the four).
    public static func site(hookName: String) -> Site? {
        let parts = hookName.split(separator: ".")
        guard parts.count >= 3, parts[0] == "blocks", let layer = Int(parts[1]) else { return nil }
        switch parts.dropFirst(2).joined(separator: ".") {
        case "hook_mlp_out": return Site(layer: layer, kind: .mlpOut)
        case "hook_resid_post": return Site(layer: layer, kind: .residOut)
        case "hook_resid_pre": return Site(layer: layer, kind: .residIn)
        case "mlp.hook_post": return Site(layer: layer, kind: .mlpKey)
        default: return nil
        }
    }
}

/// A sparse autoencoder in inference form (SAELens "jumprelu", the form BatchTopK is saved in):
///
///     f = JumpReLU_θ((x − b_dec)·W_encᵀ + b_enc),   JumpReLU_θ(a) = a·1[a > max(θ, 0)]
///     x̂ = f·W_dec + b_dec
///
/// Shapes: D = `dIn` (activation width), F = `width` (latents). Weights are stored row-major with one
/// row per latent, so both matrices are [F, D]: `encoder` row j is latent j's encoder direction
/// (dictionary_learning's `encoder.weight`; SAELens' `W_enc` is its transpose) and `decoder` row j
/// its unit-norm decoder direction (SAELens' `W_dec`; dictionary_learning's `decoder.weight`ᵀ).
/// The biases and θ act on raw activations (normalization is folded in when a trainer saves).
public final class SparseAutoencoder: @unchecked Sendable {  // not thread-safe: its `var`s are set while it is loaded or trained, on one thread; shared read-only afterwards
    public let dIn: Int
    public let width: Int
    /// [F, D]
    public internal(set) var encoder: [Float]
    /// [F]
    public internal(set) var encoderBias: [Float]
    /// [F, D]
    public internal(set) var decoder: [Float]
    /// [D]
    public internal(set) var decoderBias: [Float]
    /// [F] per-latent threshold (BatchTopK: one global θ repeated).
    public internal(set) var threshold: [Float]
    /// The k it was trained with (mean active latents per token), if known.
    public var k: Int?
    public var metadata: SAEMetadata
    /// Training settings and quality figures, kept in cfg.json under "mesa".
    public var training: [String: JSONScalar] = [:]
    /// log10 firing frequency of each latent on the training tokens ([F]), if known (SAELens' sparsity.safetensors).
    public var logSparsity: [Float]?
    /// A TopK SAE (EleutherAI's sparsify): each token keeps its `topK` largest ReLU pre-activations
    /// instead of those above θ (the threshold is unused).
    public let topK: Int?

    public init(dIn: Int, width: Int, encoder: [Float], encoderBias: [Float], decoder: [Float], decoderBias: [Float],
                threshold: [Float], k: Int?, metadata: SAEMetadata, topK: Int? = nil) throws {
        guard dIn > 0, width > 0 else { throw SAEError(.shape, "an SAE needs positive dimensions (d_in \(dIn), d_sae \(width))") }
        if let topK, !(1...width).contains(topK) { throw SAEError(.settings, "a TopK SAE needs 1 ≤ k ≤ d_sae (k \(topK), d_sae \(width))") }
        func check(_ name: String, _ a: [Float], _ n: Int) throws {
            guard a.count == n else { throw SAEError(.shape, "\(name) has \(a.count) values, expected \(n) (d_in \(dIn), d_sae \(width))") }
            guard a.allSatisfy(\.isFinite) else { throw SAEError(.corrupt, "\(name) holds non-finite values") }
        }
        try check("W_enc", encoder, width * dIn)
        try check("b_enc", encoderBias, width)
        try check("W_dec", decoder, width * dIn)
        try check("b_dec", decoderBias, dIn)
        try check("threshold", threshold, width)
        self.dIn = dIn
        self.width = width
        self.encoder = encoder
        self.encoderBias = encoderBias
        self.decoder = decoder
        self.decoderBias = decoderBias
        self.threshold = threshold
        self.k = k
        self.metadata = metadata
        self.topK = topK
    }

    /// Pre-activations (x − b_dec)·W_encᵀ + b_enc for `rows` inputs: x [rows, D] → [rows, F].
    public func preActivations(_ x: UnsafePointer<Float>, rows: Int) -> [Float] {
        let D = dIn, F = width
        var centered = [Float](repeating: 0, count: rows * D)  // [rows, D]
        for r in 0..<rows { for i in 0..<D { centered[r * D + i] = x[r * D + i] - decoderBias[i] } }
        var pre = [Float](repeating: 0, count: rows * F)
        for r in 0..<rows { for j in 0..<F { pre[r * F + j] = encoderBias[j] } }
        centered.withUnsafeBufferPointer { c in
            encoder.withUnsafeBufferPointer { w in
                pre.withUnsafeMutableBufferPointer { p in
                    BLAS.sgemm(transB: true, m: rows, n: F, k: D, a: c.baseAddress!, lda: D, b: w.baseAddress!, ldb: D,
                               beta: 1, c: p.baseAddress!, ldc: F)
                }
            }
        }
        return pre
    }

    /// f = JumpReLU_θ(pre) for x [rows, D] → [rows, F]; for a TopK SAE, the k largest positive
    /// pre-activations of each row (ties to the lower index), the rest 0.
    public func encode(_ x: [Float], rows: Int) -> [Float] {
        precondition(x.count == rows * dIn)
        var f = x.withUnsafeBufferPointer { preActivations($0.baseAddress!, rows: rows) }
        let F = width
        if let k = topK {
            for r in 0..<rows {
                let row = r * F
                let kept = Set((0..<F).sorted { f[row + $0] > f[row + $1] || (f[row + $0] == f[row + $1] && $0 < $1) }.prefix(k))
                for j in 0..<F where !kept.contains(j) || !(f[row + j] > 0) { f[row + j] = 0 }
            }
            return f
        }
        for r in 0..<rows {
            for j in 0..<F where !(f[r * F + j] > max(threshold[j], 0)) { f[r * F + j] = 0 }
        }
        return f
    }

    /// x̂ = f·W_dec + b_dec for f [rows, F] → [rows, D] (only nonzero latents are read).
    public func decode(_ f: [Float], rows: Int) -> [Float] {
        precondition(f.count == rows * width)
        let D = dIn, F = width
        var out = [Float](repeating: 0, count: rows * D)
        decoder.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer { o in
                for r in 0..<rows {
                    let dst = o.baseAddress! + r * D
                    for i in 0..<D { dst[i] = decoderBias[i] }
                    for j in 0..<F where f[r * F + j] != 0 { Kernels.axpy(f[r * F + j], w.baseAddress! + j * D, dst, D) }
                }
            }
        }
        return out
    }

    /// Σ_j c_j·W_dec[j] for c [F] (no bias): the decoder's linear part.
    public func decodeLinear(_ c: [Float]) -> [Float] {
        var out = [Float](repeating: 0, count: dIn)
        decoder.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer { o in
                for j in 0..<width where c[j] != 0 { Kernels.axpy(c[j], w.baseAddress! + j * dIn, o.baseAddress!, dIn) }
            }
        }
        return out
    }

    /// Checks that this SAE reads `site` of a model with activation width `width`.
    public func check(site: Site, width activationWidth: Int) throws {
        guard dIn == activationWidth else {
            throw SAEError(.shape, "the SAE has d_in \(dIn) but \(site) of this model has width \(activationWidth)")
        }
        guard metadata.site == site else {
            throw SAEError(.shape, "the SAE was trained on \(metadata.site) (\(metadata.hookName)), not \(site)")
        }
    }

    /// How much of a change Δ = v_after − v_before the SAE represents as a change of its latents:
    /// Δ̂ = dec(enc(v_after)) − dec(enc(v_before)), outside = ‖Δ − Δ̂‖² / ‖Δ‖², coverage = max(0, 1 − outside).
    /// Vectors are [D].
    public func coverage(before: [Float], after: [Float]) -> SAECoverage {
        let both = before + after
        let rec = decode(encode(both, rows: 2), rows: 2)
        var num: Double = 0, den: Double = 0
        for i in 0..<dIn {
            let delta = Double(after[i] - before[i])
            let deltaHat = Double(rec[dIn + i] - rec[i])
            num += (delta - deltaHat) * (delta - deltaHat)
            den += delta * delta
        }
        let outside = den > 0 ? num / den : 0
        var r = SAECoverage(outside: outside, coverage: max(0, 1 - outside), changeNorm: den.squareRoot())
        r.subjectError = reconstructionError(before, reconstruction: Array(rec[0..<dIn]))
        return r
    }

    /// ‖x − x̂‖² / ‖x − b_dec‖² for x [D] (x̂ = dec(enc(x)) when not given): the share of x's
    /// deviation from the SAE's centre that its latents do not reproduce (a per-vector FVU).
    public func reconstructionError(_ x: [Float], reconstruction: [Float]? = nil) -> Double {
        let rec = reconstruction ?? decode(encode(x, rows: 1), rows: 1)
        var num: Double = 0, den: Double = 0
        for i in 0..<dIn {
            let e = Double(x[i] - rec[i]), c = Double(x[i] - decoderBias[i])
            num += e * e
            den += c * c
        }
        return den > 0 ? num / den : 0
    }
}

/// The part of an edit's change the SAE can express (see `SparseAutoencoder.coverage`), and the
/// per-edit uncertainty signals the SAE gives.
public struct SAECoverage: Codable, Sendable, Equatable {
    /// The SAE's relative reconstruction error of the edited subject's unedited activation at the site
    /// (`reconstructionError`): high when the subject lies outside what the SAE represents.
    public var subjectError: Double?
    /// With neighbours mined by SAE overlap: the mean Jaccard overlap of the mined neighbours' active
    /// latents with the subject's (how crowded the subject's features are).
    public var crowding: Double?
    /// ‖Δ − Δ̂‖²/‖Δ‖²: 0 when the SAE reproduces the change, ≥ 1 when it misses it entirely.
    public var outside: Double
    /// max(0, 1 − outside).
    public var coverage: Double
    /// ‖Δ‖.
    public var changeNorm: Double
}

/// A JSON scalar for free-form settings in cfg.json.
public enum JSONScalar: Codable, Sendable, Equatable, CustomStringConvertible {
    case number(Double), string(String), bool(Bool)

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else { self = .string(try c.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .bool(let b): try c.encode(b)
        }
    }

    public var description: String {
        switch self {
        case .number(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : String(d)
        case .string(let s): return s
        case .bool(let b): return String(b)
        }
    }

    public var double: Double? { if case .number(let d) = self { return d }; return nil }
}
