import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// The keys of the edits kept so far, Σ K Kᵀ per layer ([ff, ff] each): AlphaEdit's K_pK_pᵀ and
/// ENCORE's sequential preservation term. Stored with every snapshot as Float32 state blocks named
/// `blockName` ([n, ff] per layer), so that a restart or a rollback rebuilds exactly the same sums.
public final class KeyAccumulator: @unchecked Sendable {  // not thread-safe: mutated only by the edit in flight, on the one editing thread
    /// Σ K Kᵀ over kept edits, [ff, ff] per layer (without projectors).
    public private(set) var accumulated: [Int: [Double]]
    /// With projectors (AlphaEdit) instead: P·Σ K Kᵀ = Σ (PKᵀ)K per layer, [ff, ff], all its solve
    /// needs (no [ff, ff]·[ff, ff] product; two [ff, n] GEMMs per kept edit), and no plain sum is kept.
    public private(set) var projected: [Int: [Double]]
    let projectors: [Int: [Float]]
    public let layers: [Int]
    public let dim: Int
    public let blockName: String

    public init(layers: [Int], dim: Int, blockName: String, projectors: [Int: [Float]] = [:]) {
        let zeros = Dictionary(uniqueKeysWithValues: layers.map { ($0, [Double](repeating: 0, count: dim * dim)) })
        accumulated = projectors.isEmpty ? zeros : [:]
        projected = projectors.isEmpty ? [:] : zeros
        self.projectors = projectors
        self.layers = layers.sorted()
        self.dim = dim
        self.blockName = blockName
    }

    /// Adds the kept edits' keys: K_pK_pᵀ += KᵀK with K [n, ff] the keys as rows (one GEMM per layer),
    /// and with projectors P·K_pK_pᵀ += (PKᵀ)K.
    public func accumulate(_ keys: [Int: [[Double]]]) {
        for (layer, ks) in keys where !ks.isEmpty {
            let n = ks.count
            let flat = ks.flatMap { $0 }   // K [n, ff]
            if var a = accumulated[layer] {
                flat.withUnsafeBufferPointer { k in a.withUnsafeMutableBufferPointer { out in
                    BLAS.dgemm(transA: true, m: dim, n: dim, k: n, a: k.baseAddress!, lda: dim, b: k.baseAddress!, ldb: dim,
                               beta: 1, c: out.baseAddress!, ldc: dim)
                } }
                accumulated[layer] = a
            }
            if let p = projectors[layer], var pa = projected[layer] {
                var pk = [Double](repeating: 0, count: dim * n)   // PKᵀ [ff, n]
                let p = p.map(Double.init)   // [ff, ff]
                p.withUnsafeBufferPointer { pp in flat.withUnsafeBufferPointer { k in pk.withUnsafeMutableBufferPointer { out in
                    BLAS.dgemm(transB: true, m: dim, n: n, k: dim, a: pp.baseAddress!, lda: dim, b: k.baseAddress!, ldb: dim,
                               c: out.baseAddress!, ldc: n)
                } } }
                pk.withUnsafeBufferPointer { l in flat.withUnsafeBufferPointer { k in pa.withUnsafeMutableBufferPointer { out in
                    BLAS.dgemm(m: dim, n: dim, k: n, a: l.baseAddress!, lda: n, b: k.baseAddress!, ldb: dim, beta: 1, c: out.baseAddress!, ldc: dim)
                } } }
                projected[layer] = pa
            }
        }
    }

    /// The state blocks of `keys` as stored with a snapshot: Float32, one block per layer ([n, ff]).
    /// Kept edits accumulate exactly these values, so a rebuild from snapshots gives the same state.
    public func blocks(_ keys: [Int: [[Double]]]) -> [StateBlock] {
        keys.keys.sorted().compactMap { l in
            guard let ks = keys[l], let ff = ks.first?.count else { return nil }
            return StateBlock(name: blockName, layer: l, rows: ks.count, cols: ff, values: ks.flatMap { $0.map { Float($0) } })
        }
    }

    /// Resets, then accumulates the keys of every edit in `edits` (a lineage, oldest first).
    public func rebuild(_ edits: [[StateBlock]]) throws {
        reset()
        for blocks in edits {
            var keys: [Int: [[Double]]] = [:]
            for b in blocks where b.name == blockName {
                guard b.cols == dim, layers.contains(b.layer) else {
                    throw EditError(.state, "stored \(blockName) for layer \(b.layer) with width \(b.cols) do not fit this editor (layers \(layers), width \(dim))")
                }
                keys[b.layer] = (0..<b.rows).map { r in (0..<b.cols).map { Double(b.values[r * b.cols + $0]) } }
            }
            accumulate(keys)
        }
    }

    /// Forgets the accumulated keys (a rollback to the base model).
    public func reset() {
        for l in Array(accumulated.keys) { accumulated[l] = [Double](repeating: 0, count: dim * dim) }
        for l in Array(projected.keys) { projected[l] = [Double](repeating: 0, count: dim * dim) }
    }
}
