import Contracts
import Foundation

/// An event that cannot be processed: it becomes a dead letter with this reason and message.
public struct Rejection: Error, Sendable, CustomStringConvertible {
    public var reason: DeadLetterReason
    public var message: String
    public var details: [String]
    public var eventId: String?
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ reason: DeadLetterReason, _ message: String, details: [String] = [], eventId: String? = nil, cause: (any Error)? = nil) {
        self.reason = reason
        self.message = message
        self.details = details
        self.eventId = eventId
        self.cause = cause
    }
    public var description: String { "\(reason.rawValue): \(message)" }
}

/// JSON coding shared by the daemon's records: snake_case keys, sorted output.
enum JSONCoding {
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

}
