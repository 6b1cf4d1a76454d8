/// The editing methods, named as in configuration, hyperparameter directories and `--method`
/// (`rome`, `memit`, `alphaedit`, `encore`).
public enum EditMethod: String, CaseIterable, Sendable, Codable {
    case rome
    case memit
    case alphaedit
    case encore

    /// Parses a method name, in any case.
    public init(parsing s: String) throws {
        guard let m = EditMethod(rawValue: s.lowercased()) else { throw UnknownEditMethod(name: s) }
        self = m
    }

    /// The name events, results and reports carry (`ROME`, `MEMIT`, `AlphaEdit`, `ENCORE`).
    public var name: String {
        switch self {
        case .rome: return "ROME"
        case .memit: return "MEMIT"
        case .alphaedit: return "AlphaEdit"
        case .encore: return "ENCORE"
        }
    }

    /// Whether the method keeps state across edits (the kept edits' keys: AlphaEdit, ENCORE), stored
    /// with every snapshot and rebuilt from the head's lineage at start and after a rollback.
    public var keepsState: Bool { self == .alphaedit || self == .encore }

    /// Whether an event naming `eventMethod` is edited by this method (`MESA` is ROME refined through
    /// an SAE, accepted when `refined`).
    public func accepts(_ eventMethod: String, refined: Bool) -> Bool {
        eventMethod == name || (self == .rome && refined && eventMethod == "MESA")
    }

    /// The daemon's method when the configuration names none: the one that holds best over a long
    /// stream of edits on the default model (deploy/README.md, "The editing method").
    public static let daemonDefault = EditMethod.encore

    /// "rome, memit, alphaedit, encore".
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// A method name that is not one of `EditMethod`'s.
public struct UnknownEditMethod: Error, CustomStringConvertible, Sendable {
    public var name: String
    public var description: String { "unknown method \(name) (\(EditMethod.names))" }
}
