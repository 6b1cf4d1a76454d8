import Foundation
import Messaging
import Testing

@Suite struct CloudEventTests {
    private func message(_ payload: [UInt8], headers: [KafkaHeader]) -> KafkaMessage {
        KafkaMessage(topic: "t", partition: 0, offset: 7, key: nil, payload: payload, headers: headers)
    }

    @Test func binaryModeRoundTrips() throws {
        let event = CloudEvent(id: "1", source: "urn:s", type: "t.v1", time: Date(timeIntervalSince1970: 1_700_000_000.5),
                               subject: "subj", datacontenttype: "text/plain", dataschema: "urn:schema",
                               extensions: ["traceparent": "00-ab-cd-01"], data: "hello".bytes)
        let headers = event.kafkaHeaders()
        #expect(headers.map(\.key) == ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject",
                                       "ce_dataschema", "ce_traceparent", "content-type"])
        #expect(headers.first { $0.key == "ce_time" }?.stringValue == "2023-11-14T22:13:20.500Z")
        #expect(try CloudEvent.decode(message(event.data, headers: headers)) == event)
    }

    @Test func binaryModeWithoutOptionalAttributes() throws {
        let headers = [KafkaHeader(key: "ce_specversion", string: "1.0"), KafkaHeader(key: "ce_id", string: "x"),
                       KafkaHeader(key: "ce_source", string: "/s"), KafkaHeader(key: "ce_type", string: "t"),
                       KafkaHeader(key: "ce_time", string: "2024-05-01T14:30:00+02:00")]
        let e = try #require(try CloudEvent.decode(message([1, 2, 3], headers: headers)))
        #expect(e.id == "x" && e.source == "/s" && e.type == "t" && e.specversion == "1.0")
        #expect(e.time == Date(timeIntervalSince1970: 1_714_566_600))
        #expect(e.subject == nil && e.datacontenttype == nil && e.extensions.isEmpty)
        #expect(e.data == [1, 2, 3])
    }

    @Test func structuredModeWithJSONData() throws {
        let json = #"""
        {"specversion":"1.0","id":"A234-1234-1234","source":"https://example.com/facts","type":"mesa.fact.update",
         "time":"2024-05-01T12:30:00.125Z","datacontenttype":"application/json","subject":"Eiffel Tower",
         "partitionkey":"paris","sequence":42,
         "data":{"subject":"Eiffel Tower","relation":"located in","target":"Rome"}}
        """#
        let m = message(json.bytes, headers: [KafkaHeader(key: "content-type", string: "application/cloudevents+json; charset=UTF-8")])
        let e = try #require(try CloudEvent.decode(m))
        #expect(e.id == "A234-1234-1234" && e.type == "mesa.fact.update" && e.subject == "Eiffel Tower")
        #expect(e.time == Date(timeIntervalSince1970: 1_714_566_600.125))
        #expect(e.extensions == ["partitionkey": "paris", "sequence": "42"])
        let data = try #require(try JSONSerialization.jsonObject(with: Data(e.data)) as? [String: String])
        #expect(data == ["subject": "Eiffel Tower", "relation": "located in", "target": "Rome"])
    }

    @Test func structuredModeWithBase64AndTextData() throws {
        let ct = [KafkaHeader(key: "Content-Type", string: "application/cloudevents+json")]
        let b64 = #"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAEC/w=="}"#
        #expect(try CloudEvent.decode(message(b64.bytes, headers: ct))?.data == [0, 1, 2, 255])
        let text = #"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"plain words"}"#
        #expect(try CloudEvent.decode(message(text.bytes, headers: ct))?.data == "plain words".bytes)
        let none = #"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#
        #expect(try CloudEvent.decode(message(none.bytes, headers: ct))?.data == [])
    }

    @Test func structuredPayloadRoundTrips() throws {
        let json = CloudEvent(id: "9", source: "s", type: "t", datacontenttype: "application/json", data: #"{"a":[1,2]}"#.bytes)
        let binary = CloudEvent(id: "10", source: "s", type: "t", datacontenttype: "application/octet-stream", data: [0, 255, 7])
        for event in [json, binary] {
            let m = message(try event.structuredPayload(), headers: [KafkaHeader(key: "content-type", string: CloudEvent.structuredContentType)])
            #expect(try CloudEvent.decode(m) == event)
        }
    }

    @Test func plainRecordsAreNotCloudEvents() throws {
        #expect(try CloudEvent.decode(message(#"{"id":"1","source":"s","type":"t","specversion":"1.0"}"#.bytes, headers: [])) == nil)
        #expect(try CloudEvent.decode(message("x".bytes, headers: [KafkaHeader(key: "content-type", string: "application/json"),
                                                                  KafkaHeader(key: "trace", string: "1")])) == nil)
    }

    @Test(arguments: [
        ("binary without ce_id", [("ce_specversion", "1.0"), ("ce_source", "s"), ("ce_type", "t")], ""),
        ("binary with specversion 0.3", [("ce_specversion", "0.3"), ("ce_id", "1"), ("ce_source", "s"), ("ce_type", "t")], ""),
        ("binary with a bad time", [("ce_specversion", "1.0"), ("ce_id", "1"), ("ce_source", "s"), ("ce_type", "t"), ("ce_time", "yesterday")], ""),
        ("binary without specversion", [("ce_id", "1"), ("ce_source", "s"), ("ce_type", "t")], ""),
        ("structured, not JSON", [("content-type", "application/cloudevents+json")], "{not json"),
        ("structured, an array", [("content-type", "application/cloudevents+json")], "[1]"),
        ("structured without type", [("content-type", "application/cloudevents+json")], #"{"specversion":"1.0","id":"1","source":"s"}"#),
        ("structured, id not a string", [("content-type", "application/cloudevents+json")], #"{"specversion":"1.0","id":1,"source":"s","type":"t"}"#),
        ("structured, bad base64", [("content-type", "application/cloudevents+json")], #"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"%%"}"#),
        ("batch", [("content-type", "application/cloudevents-batch+json")], "[]"),
    ])
    func malformedEventsThrow(_ name: String, _ headers: [(String, String)], _ payload: String) {
        let m = message(payload.bytes, headers: headers.map { KafkaHeader(key: $0.0, string: $0.1) })
        #expect(throws: CloudEventError.self, "\(name)") { try CloudEvent.decode(m) }
    }

    @Test func nonUTF8OrNullHeadersThrow() {
        let base = [KafkaHeader(key: "ce_specversion", string: "1.0"), KafkaHeader(key: "ce_source", string: "s"),
                    KafkaHeader(key: "ce_type", string: "t")]
        #expect(throws: CloudEventError.self) { try CloudEvent.decode(message([], headers: base + [KafkaHeader(key: "ce_id", value: [0xff, 0xfe])])) }
        #expect(throws: CloudEventError.self) { try CloudEvent.decode(message([], headers: base + [KafkaHeader(key: "ce_id", value: nil)])) }
    }
}
