import Foundation

/// Method state that an edit adds and that must follow the weights through snapshots, restarts and
/// rollbacks: e.g. AlphaEdit's keys of the edit, per layer, whose outer products accumulate in its
/// null-space system. `values` [rows, cols] row-major.
public struct StateBlock: Codable, Sendable, Equatable {
    /// What the block is, e.g. "alphaedit.keys".
    public var name: String
    public var layer: Int
    public var rows: Int
    public var cols: Int
    public var values: [Float]

    public init(name: String, layer: Int, rows: Int, cols: Int, values: [Float]) {
        self.name = name
        self.layer = layer
        self.rows = rows
        self.cols = cols
        self.values = values
    }
}
