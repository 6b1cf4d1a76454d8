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
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code.rawValue): \(message)" }
}
