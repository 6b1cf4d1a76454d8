import Foundation

/// ΔW = L·R of one down projection W [rows, cols]: L [rows, rank], R [rank, cols], row-major. The compact
/// form of every edit: ROME is rank 1 (L = r, R = uᵀ), MEMIT/AlphaEdit of N facts rank N per layer.
/// It is what the editing methods compute, what snapshots store and what replays apply.
public struct LowRankUpdate: Codable, Sendable, Equatable {
    public var parameter: String
    public var layer: Int
    public var rows: Int
    public var cols: Int
    public var rank: Int
    /// [rows, rank]
    public var left: [Float]
    /// [rank, cols]
    public var right: [Float]

    public init(parameter: String, layer: Int, rows: Int, cols: Int, rank: Int, left: [Float], right: [Float]) {
        self.parameter = parameter
        self.layer = layer
        self.rows = rows
        self.cols = cols
        self.rank = rank
        self.left = left
        self.right = right
    }
}

extension LowRankUpdate {
    /// ‖left · right‖_F, from the two factors' Gram matrices: tr((LᵀL)(RRᵀ)), each [rank, rank].
    public var frobeniusNorm: Double {
        var left = [Double](repeating: 0, count: rank * rank)   // LᵀL
        var right = [Double](repeating: 0, count: rank * rank)  // RRᵀ
        for a in 0..<rank {
            for b in 0..<rank {
                var l = 0.0, r = 0.0
                for i in 0..<rows { l += Double(self.left[i * rank + a]) * Double(self.left[i * rank + b]) }
                for j in 0..<cols { r += Double(self.right[a * cols + j]) * Double(self.right[b * cols + j]) }
                left[a * rank + b] = l
                right[a * rank + b] = r
            }
        }
        return zip(left, right).reduce(0) { $0 + $1.0 * $1.1 }.squareRoot()
    }
}
