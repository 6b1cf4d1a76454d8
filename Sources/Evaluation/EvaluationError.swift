/// An error from loading CounterFact data, scoring a case or writing a report.
///
/// `code` classifies the failure for programmatic handling; `description` is a one-line message
/// for people that names the record (its index in the file and, when known, its `case_id`) and
/// the offending field, e.g.
/// `bad record: record 3 (case_id 17), field requested_rewrite.prompt: must contain "{}" exactly once`.
public struct EvaluationError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What kind of failure this is.
    public enum Code: String, Sendable, Equatable, CaseIterable {
        /// The file could not be read.
        case unreadable
        /// The bytes are not JSON, or the top level is not an array.
        case malformed
        /// The file holds an empty array, so there is nothing to evaluate and no layout to detect.
        case empty
        /// A record matches neither the ROME nor the MEND layout.
        case unknownLayout
        /// A record's layout differs from the layout of the file's first record.
        case mixedLayouts
        /// A record has a missing, mistyped, empty or inconsistent field.
        case badRecord
        /// A `CandidateScorer` returned the wrong number of values or a NaN.
        case invalidScores
        /// A report file could not be written.
        case unwritable
    }

    /// What kind of failure this is.
    public var code: Code
    /// What went wrong, without the location prefix.
    public var message: String
    /// Zero-based index of the offending record in its file, if the error concerns one record.
    public var recordIndex: Int?
    /// The offending record's `case_id`, if it could be read.
    public var caseId: Int?
    /// Dotted path of the offending field inside the record (e.g. `requested_rewrite.subject`).
    public var field: String?
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, recordIndex: Int? = nil, caseId: Int? = nil, field: String? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.recordIndex = recordIndex
        self.caseId = caseId
        self.field = field
        self.cause = cause
    }

    /// Equal when everything but the cause is: the cause is not Equatable, and the message quotes it.
    public static func == (a: EvaluationError, b: EvaluationError) -> Bool {
        a.code == b.code && a.message == b.message && a.recordIndex == b.recordIndex && a.caseId == b.caseId && a.field == b.field
    }

    public var description: String {
        var location: [String] = []
        if let recordIndex {
            location.append(caseId.map { "record \(recordIndex) (case_id \($0))" } ?? "record \(recordIndex)")
        } else if let caseId {
            location.append("case_id \(caseId)")
        }
        if let field { location.append("field \(field)") }
        let prefix = Self.label(code)
        return location.isEmpty ? "\(prefix): \(message)" : "\(prefix): \(location.joined(separator: ", ")): \(message)"
    }

    private static func label(_ code: Code) -> String {
        switch code {
        case .unreadable: return "unreadable"
        case .malformed: return "malformed"
        case .empty: return "empty"
        case .unknownLayout: return "unknown layout"
        case .mixedLayouts: return "mixed layouts"
        case .badRecord: return "bad record"
        case .invalidScores: return "invalid scores"
        case .unwritable: return "unwritable"
        }
    }
}
