import Contracts
import EditDaemon
import Foundation
import Messaging
import Testing

/// A refused event keeps the error that refused it as its cause; the dead letter's text is unchanged.
@Suite struct RejectionCauseTests {
    func body(_ text: String) throws -> JSONValue {
        let m = KafkaMessage(topic: "t", partition: 0, offset: 0, key: nil, payload: Array(text.utf8), headers: [])
        return try EventReader.body(m, expectedType: "dev.mesa.fact-update.v1", maxBytes: 65_536)
    }

    @Test func invalidJSONKeepsTheParserError() throws {
        let r = try #require(throws: Rejection.self) { _ = try body(#"{"id": "x", "#) }
        #expect(r.reason == .malformedJSON && r.message.hasPrefix("the event is not valid JSON: "), "\(r)")
        #expect(r.cause is JSONParseError, "\(String(describing: r.cause))")
        let twice = try #require(throws: Rejection.self) { _ = try body(#"{"id": "x", "id": "y"}"#) }
        #expect(twice.message.contains("appears twice") && twice.cause is JSONParseError)
    }

    @Test func anUndecodableEventKeepsTheDecoderError() throws {
        let v = try body(#"{"id": 7}"#)
        let r = try #require(throws: Rejection.self) { _ = try EventReader.decode(FactUpdate.self, from: v, what: "fact update") }
        #expect(r.reason == .schema && r.message.hasPrefix("the fact update does not decode: "), "\(r)")
        #expect(r.cause is DecodingError, "\(String(describing: r.cause))")
    }
}
