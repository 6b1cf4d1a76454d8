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

    public init(_ code: Code, _ message: String, path: String? = nil) {
        self.code = code
        self.message = message
        self.path = path
    }

    public var description: String {
        if let path { return "\(message) [\(code.rawValue)] (\(path))" }
        return "\(message) [\(code.rawValue)]"
    }
}
