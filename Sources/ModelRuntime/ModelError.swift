/// An error loading or running a model, with a stable code for callers and a message for people.
public struct ModelError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        case fileNotFound, ioError, badMagic, unsupportedVersion, truncated, malformed
        case unsupportedTensorType, unsupportedArchitecture, missingTensor, shapeMismatch, missingMetadata
        case contextOverflow, invalidInput, nonFinite
    }
    public var code: Code
    public var message: String
    public var path: String?
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, path: String? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.cause = cause
    }

    /// Equal when the code, message and path are: the cause is not Equatable, and the message quotes it.
    public static func == (a: ModelError, b: ModelError) -> Bool { a.code == b.code && a.message == b.message && a.path == b.path }

    public var description: String {
        if let path { return "\(message) [\(code.rawValue)] (\(path))" }
        return "\(message) [\(code.rawValue)]"
    }
}
