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
