/// The editing methods mesa runs. The raw value names a method in hyperparameter files
/// (`deploy/hparams/<method>/<model>.json`), configuration and the command line; `label` names it
/// in fact updates, results and reports.
public enum EditMethod: String, CaseIterable, Sendable, Codable {
    case rome, memit, alphaedit, encore

    public var label: String {
        switch self {
        case .rome: return "ROME"
        case .memit: return "MEMIT"
        case .alphaedit: return "AlphaEdit"
        case .encore: return "ENCORE"
        }
    }

    /// Whether several fact updates can be edited in one computation (the MEMIT family).
    public var editsTogether: Bool { self != .rome }

    /// Whether the method keeps state across edits (the kept edits' keys), stored with every snapshot
    /// and rebuilt from the head's lineage at start and after a rollback.
    public var keepsState: Bool { self == .alphaedit || self == .encore }

    /// "rome, memit, alphaedit, encore".
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// The method named `name`, or a clear error listing the ones there are.
    public init(parsing name: String) throws {
        guard let m = EditMethod(rawValue: name) else { throw EditError(.hyperparameters, "unknown method \(name) (\(Self.names))") }
        self = m
    }
}
