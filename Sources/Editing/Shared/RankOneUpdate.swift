import Foundation
import ModelRuntime
import Tensor

/// A rank-one weight update ΔW = r uᵀ of one down projection W [d, ff]: the compact form that is
/// stored, shipped and replayed (d + ff floats instead of d·ff).
public struct RankOneUpdate: Codable, Sendable, Equatable {
    /// Canonical name of the edited tensor, e.g. "blk.7.ffn_down.weight".
    public var parameter: String
    public var layer: Int
    /// [ff], the key-side vector (unit norm for ROME).
    public var u: [Float]
    /// [d], the value-side vector.
    public var r: [Float]

    public init(parameter: String, layer: Int, u: [Float], r: [Float]) {
        self.parameter = parameter
        self.layer = layer
        self.u = u
        self.r = r
    }
}

/// The exact prior values of a tensor an update touched: restoring them undoes the update bit for
/// bit (subtracting ΔW again would not, in floating point).
public struct WeightBackup: Sendable {
    public var parameter: String
    public var values: [Float]
}

extension RankOneUpdate {
    /// As a rank-1 low-rank update: L = r [d, 1], R = uᵀ [1, ff].
    public var lowRank: LowRankUpdate {
        LowRankUpdate(parameter: parameter, layer: layer, rows: r.count, cols: u.count, rank: 1, left: r, right: u)
    }
}

extension LanguageModel {
    /// W += r uᵀ. Returns what restores W exactly.
    @discardableResult
    public func apply(_ update: RankOneUpdate) throws -> WeightBackup { try apply(update.lowRank) }

    /// W += L·R for the down projection the update names (rank 1 by `sger`, higher ranks by one
    /// `sgemm`): the one code path every edit, replay and rollback goes through. Returns what
    /// restores W exactly.
    @discardableResult
    public func apply(_ u: LowRankUpdate) throws -> WeightBackup {
        guard u.layer >= 0, u.layer < config.layers else { throw EditError(.hyperparameters, "no layer \(u.layer)") }
        let w = weights.layers[u.layer].wDown
        guard w.name == u.parameter, w.shape == [u.rows, u.cols], u.rank >= 1,
              u.left.count == u.rows * u.rank, u.right.count == u.rank * u.cols else {
            throw EditError(.hyperparameters, "update of \(u.parameter) [\(u.rows), \(u.cols)] rank \(u.rank) does not fit \(w.name) \(w.shape)")
        }
        guard u.left.allSatisfy(\.isFinite), u.right.allSatisfy(\.isFinite) else { throw EditError(.nonFinite, "the update has non-finite values") }
        let backup = WeightBackup(parameter: w.name, values: w.data)
        w.mutate { buf in
            u.left.withUnsafeBufferPointer { l in u.right.withUnsafeBufferPointer { r in
                if u.rank == 1 {
                    BLAS.sger(m: u.rows, n: u.cols, x: l.baseAddress!, y: r.baseAddress!, a: buf.baseAddress!, lda: u.cols)
                } else {
                    BLAS.sgemm(m: u.rows, n: u.cols, k: u.rank, a: l.baseAddress!, lda: u.rank, b: r.baseAddress!, ldb: u.cols,
                               beta: 1, c: buf.baseAddress!, ldc: u.cols)
                }
            } }
        }
        return backup
    }

    /// Puts back the values saved by `apply`.
    public func restore(_ backup: WeightBackup) throws {
        guard let p = weights.all.first(where: { $0.name == backup.parameter }), p.count == backup.values.count else {
            throw EditError(.state, "no tensor \(backup.parameter) of \(backup.values.count) values to restore")
        }
        p.mutate { buf in backup.values.withUnsafeBufferPointer { buf.baseAddress!.update(from: $0.baseAddress!, count: $0.count) } }
    }
}
