import Foundation

/// Why an edit was refused or failed. Every failure leaves the weights untouched.
public struct EditError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Codable, Sendable {
        /// The prompt has no `{}` placeholder, or more than one.
        case promptPlaceholder = "prompt_placeholder"
        /// The subject is empty or does not occur where the prompt says.
        case subjectNotFound = "subject_not_found"
        /// The target is empty, or tokenizes to nothing.
        case emptyTarget = "empty_target"
        /// target_new equals target_true.
        case targetUnchanged = "target_unchanged"
        /// The inputs do not fit the model's context.
        case tooLong = "too_long"
        /// A NaN or infinity appeared in the optimization or the closed form.
        case nonFinite = "non_finite"
        /// The closed form's denominator uᵀk* vanished (the key lies outside the statistics' span).
        case degenerateKey = "degenerate_key"
        /// Hyperparameters out of range or inconsistent with the model.
        case hyperparameters
        /// Layer statistics or context templates are missing or do not match the model.
        case state
        /// An I/O failure while reading or writing edit state.
        case io
    }
    public var code: Code
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) { self.code = code; self.message = message; self.cause = cause }
    public var description: String { "\(code.rawValue): \(message)" }
    /// Equal when the code and message are: the cause is not Equatable, and the message quotes it.
    public static func == (a: EditError, b: EditError) -> Bool { a.code == b.code && a.message == b.message }
}
