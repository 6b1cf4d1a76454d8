import Contracts
import Foundation
import Messaging

/// How the daemon reads an event: one parse of the record's JSON body, whose value is what the
/// schema validates and what the event is decoded from.
public enum EventReader {
    /// The event's JSON body (the CloudEvents data in binary or structured mode, or the plain payload),
    /// parsed once: this value is what the schema validates and what the event is decoded from. A key
    /// that appears twice in one object is refused: readers disagree on which copy counts.
    public static func body(_ m: KafkaMessage, expectedType: String, maxBytes: Int) throws -> JSONValue {
        guard m.payload.count <= maxBytes else {
            throw Rejection(.tooLarge, "the event has \(m.payload.count) bytes; the limit is \(maxBytes)")
        }
        var data = m.payload
        let envelope: CloudEvent?
        do { envelope = try CloudEvent.decode(m) } catch { throw Rejection(.malformedJSON, "invalid CloudEvents envelope: \(error)", cause: error) }
        if let ce = envelope {
            guard ce.type == expectedType else {
                throw Rejection(.unknownType, "CloudEvents type \(ce.type) on \(m.topic); expected \(expectedType)", eventId: ce.id)
            }
            data = ce.data
        }
        guard String(validating: data, as: UTF8.self) != nil else {
            throw Rejection(.malformedJSON, "the event is not UTF-8 text", eventId: envelope?.id)
        }
        do {
            return try JSONValue.parse(data, limits: JSONParseLimits(maxDepth: 64, maxInputBytes: maxBytes, rejectDuplicateKeys: true))
        } catch {
            if case .duplicateKey(let key) = error.kind {
                throw Rejection(.malformedJSON, "the event is ambiguous: the key \"\(key)\" appears twice in one object (byte \(error.offset)); "
                                + "JSON readers disagree on which copy counts, so each key must appear once", eventId: envelope?.id, cause: error)
            }
            throw Rejection(.malformedJSON, "the event is not valid JSON: \(error)", eventId: envelope?.id, cause: error)
        }
    }

    /// Decodes a validated document from the same parsed value.
    public static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue, what: String) throws -> T {
        do { return try JSONValueDecoder(keyStrategy: .convertFromSnakeCase).decode(type, from: value) } catch {
            throw Rejection(.schema, "the \(what) does not decode: \(describe(error))", eventId: eventId(value), cause: error)
        }
    }

    /// A decoding error as one line: the field's path and what is wrong with it.
    static func describe(_ error: Error) -> String {
        // The document's own (snake_case) names, not the Swift properties'.
        func snake(_ name: String) -> String {
            name.reduce(into: "") { out, c in
                if c.isUppercase { out += "_" + c.lowercased() } else { out.append(c) }
            }
        }
        func path(_ keys: [CodingKey]) -> String {
            keys.isEmpty ? "the document" : keys.map { $0.intValue.map { "[\($0)]" } ?? snake($0.stringValue) }.joined(separator: ".")
        }
        switch error as? DecodingError {
        case .typeMismatch(_, let c)?, .valueNotFound(_, let c)?, .dataCorrupted(let c)?: return "\(path(c.codingPath)): \(c.debugDescription)"
        case .keyNotFound(let k, let c)?: return "\(path(c.codingPath + [k])) is missing"
        default: return "\(error)"
        }
    }

    /// The document's id when it is a string of a length the store can index (for dead letters).
    public static func eventId(_ value: JSONValue) -> String? {
        guard let id = value["id"]?.stringValue, (1...256).contains(id.utf8.count) else { return nil }
        return id
    }
}
