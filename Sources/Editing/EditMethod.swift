/// The editing methods, named as in configuration, hyperparameter directories and `--method`
/// (`rome`, `memit`, `alphaedit`).
public enum EditMethod: String, CaseIterable, Sendable, Codable {
    case rome
    case memit
    case alphaedit

    /// Parses a method name, in any case.
    public init(parsing s: String) throws {
        guard let m = EditMethod(rawValue: s.lowercased()) else { throw UnknownEditMethod(name: s) }
        self = m
    }

    /// The name events and results carry (`ROME`, `MEMIT`, `AlphaEdit`).
    public var name: String {
        switch self {
        case .rome: return "ROME"
        case .memit: return "MEMIT"
        case .alphaedit: return "AlphaEdit"
        }
    }

    /// Whether several facts can be edited in one computation (MEMIT, AlphaEdit); ROME edits one at a time.
    public var editsTogether: Bool { self != .rome }

    /// Whether an event naming `eventMethod` is edited by this method (`MESA` is ROME refined through
    /// an SAE, accepted when `refined`).
    public func accepts(_ eventMethod: String, refined: Bool) -> Bool {
        eventMethod == name || (self == .rome && refined && eventMethod == "MESA")
    }
}

/// A method name that is not one of `EditMethod`'s.
public struct UnknownEditMethod: Error, CustomStringConvertible, Sendable {
    public var name: String
    public var description: String {
        "unknown method \(name) (\(EditMethod.allCases.map(\.rawValue).joined(separator: ", ")))"
    }
}
