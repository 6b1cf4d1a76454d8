import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// ENCORE's per-layer state (Gupta et al., "Lifelong Sequential Knowledge Editing without Model
/// Degradation", arXiv 2502.01636; METHODS §9): MEMIT's normal equations with the kept edits' keys
/// preserved beside the general ones (sequential MEMIT: an old edit's key is held at its written
/// value like any other key) and a Frobenius-norm term μ‖ΔW‖²_F on each update, which bounds the
/// norm growth of the edited matrices: X = (λC + μI + K_pK_pᵀ + KKᵀ)⁻¹K. With μ = 0 and no kept
/// edits it is MEMIT. The third part of ENCORE, the most-probable early stop of z, is the shared
/// `early_stop_top` setting.
public final class EncoreState: Sendable {
    /// The kept edits' keys (K_pK_pᵀ).
    public let kept: KeyAccumulator
    /// μ, absolute (the paper's `update_norm_lambda`).
    public let mu: Double

    public init(layers: [Int], dim: Int, mu: Double) throws {
        guard mu >= 0, mu.isFinite else { throw EditError(.hyperparameters, "update_norm_lambda must be finite and non-negative") }
        kept = KeyAccumulator(layers: layers, dim: dim, blockName: Self.blockName)
        self.mu = mu
    }

    public static let blockName = "encore.keys"
}
