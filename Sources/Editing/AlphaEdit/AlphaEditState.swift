import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// AlphaEdit's per-layer state (METHODS §2.2): the null-space projectors P = ÛÛᵀ of the key
/// statistics (fixed per model and layer) and the accumulated K_pK_pᵀ of the edits kept so far.
public final class AlphaEditState: Sendable {
    /// [ff, ff] per layer, Float32 (computed in Double; an entry's rounding, ~6e-8 of the largest,
    /// is far below the solve's own error, and the five layers of the default model take 47 MB
    /// instead of 94).
    public let projectors: [Int: [Float]]
    /// Null-space dimension per layer.
    public let nullity: [Int: Int]
    /// The kept edits' keys (K_pK_pᵀ).
    public let kept: KeyAccumulator
    public let dim: Int
    /// α in (P(KKᵀ + K_pK_pᵀ) + αI) per layer.
    public let alpha: [Int: Double]
    /// tr(PC) per layer: the key energy in the null space (the expected ‖Pk‖² of a key from the statistics).
    public let nullEnergy: [Int: Double]


    /// P from the eigenvectors of C whose eigenvalues, smallest first, add up to at most
    /// `nullspaceEnergy` of the trace: a threshold relative to the spectrum (the public code's
    /// absolute 2e-2 makes P = I or 0 depending on how the statistics were normalized).
    /// α is `l2`, or `l2` · tr(PC) per layer when `relative`.
    public init(statistics: [Int: KeyStatistics], nullspaceEnergy: Double, l2: Double, relative: Bool = false) throws {
        guard nullspaceEnergy > 0, nullspaceEnergy < 1, l2 > 0 else {
            throw EditError(.hyperparameters, "nullspace_energy must be in (0, 1) and l2 positive")
        }
        guard let ff = statistics.values.first?.dim else { throw EditError(.state, "AlphaEdit needs key statistics") }
        var p: [Int: [Float]] = [:], k: [Int: Int] = [:], e: [Int: Double] = [:]
        for (layer, s) in statistics {
            let c = s.moment.map(Double.init)
            let (values, vectors) = try LAPACK.symmetricEigen(c, n: ff)   // ascending; row i = eigenvector i
            let trace = values.reduce(0) { $0 + max(0, $1) }
            var kept = 0, energy = 0.0
            while kept < ff, energy + max(0, values[kept]) <= nullspaceEnergy * trace {
                energy += max(0, values[kept])
                kept += 1
            }
            guard kept > 0 else { throw EditError(.degenerateKey, "layer \(layer): no eigenvalue below \(nullspaceEnergy) of the trace") }
            // P = Σ_{i<kept} v_i v_iᵀ = VₖᵀVₖ, Vₖ [kept, ff] the kept eigenvectors as rows.
            var proj = [Double](repeating: 0, count: ff * ff)
            vectors.withUnsafeBufferPointer { v in proj.withUnsafeMutableBufferPointer { out in
                BLAS.dgemm(transA: true, m: ff, n: ff, k: kept, a: v.baseAddress!, lda: ff, b: v.baseAddress!, ldb: ff,
                           c: out.baseAddress!, ldc: ff)
            } }
            p[layer] = proj.map(Float.init)
            k[layer] = kept
            e[layer] = energy
        }
        projectors = p
        nullity = k
        nullEnergy = e
        alpha = e.mapValues { relative ? l2 * $0 : l2 }
        kept = KeyAccumulator(layers: Array(statistics.keys), dim: ff, blockName: Self.blockName, projectors: p)
        dim = ff
    }

    /// How much of each layer's null space the kept edits' keys occupy, cheaply: the share of the
    /// system's diagonal mass tr(P K_pK_pᵀ) / (tr(P K_pK_pᵀ) + α · nullity) (0 before any edit; near 1
    /// when the accumulated keys dominate α over the whole null space and new edits must trade off
    /// against old ones).
    public func fill() -> [Int: Double] {
        var out: [Int: Double] = [:]
        for (layer, pa) in kept.projected {
            guard let al = alpha[layer], let n = nullity[layer] else { continue }
            let t = (0..<dim).reduce(0.0) { $0 + pa[$1 * dim + $1] }   // tr(P·K_pK_pᵀ)
            out[layer] = t / (t + al * Double(n))
        }
        return out
    }

    /// Adds the kept edits' keys (`KeyAccumulator.accumulate`).
    public func accumulate(_ keys: [Int: [[Double]]]) { kept.accumulate(keys) }

    public static let blockName = "alphaedit.keys"
}
