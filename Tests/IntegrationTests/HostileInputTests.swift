import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// The records that stopped the daemon or slipped past validation (issue "No record can stop the
/// daemon"), each published to a real broker ahead of a canary that must get its result.
@Suite(.serialized) struct HostileInputTests {
    /// A fact update as raw JSON text, so that keys can repeat: the common fields plus `body`.
    static func raw(_ body: String, id: String = UUID().uuidString.lowercased()) -> Data {
        Data(#"{"id":"\#(id)","model":{"name":"tiny-daemon","revision":"main"},"method":"ROME","issued_by":{"principal":"test"},"issued_at":"2026-11-21T10:00:00Z",\#(body)}"#.utf8)
    }

    static let fact = #""subject":"Paris","prompt":"{} is in","target_new":{"str":"Rome"},"target_true":{"str":"is"}"#

    /// One record to publish and the outcome it must get: "dead:<reason>" or "result:<status>".
    struct Case {
        var name: String
        var payload: Data
        var key: [UInt8]? = nil
        var headers: [KafkaHeader]? = nil
        var control = false
        var want: String
        var message: String? = nil
    }

    static func cases() -> [Case] {
        let long = String(repeating: "Lyon ", count: 40)
        let structured = #"{"specversion":"1.0","id":"s1","source":"urn:t","type":"dev.mesa.fact-update.v1","datacontenttype":"application/json","data":{"id":"0b0e8d1c-5f1a-4c57-9a0e-6d1b2c3d4e5f","id":"x"}}"#
        return [
            // Longer than the tiny model's context (128 tokens): refused before any model work.
            Case(name: "subject 40 × Lyon", payload: raw(#""subject":"\#(long)","prompt":"{} is in","target_new":{"str":"Rome"}"#), want: "dead:invalid_edit",
                 message: "context"),
            Case(name: "300-character neighbourhood prompt",
                 payload: raw(fact + #","neighborhood_prompts":["\#(String(repeating: "Lyon is in ", count: 28))"]"#), want: "dead:invalid_edit"),
            Case(name: "2048-character paraphrase", payload: raw(fact + #","paraphrase_prompts":["\#(String(repeating: "ab ", count: 682))x"]"#),
                 want: "dead:invalid_edit"),
            Case(name: "2048-character target", payload: raw(#""subject":"Paris","prompt":"{} is in","target_new":{"str":"\#(String(repeating: "Ro ", count: 682))x"}"#),
                 want: "dead:invalid_edit"),
            Case(name: "prompt of {} × 100", payload: raw(#""subject":"Paris","prompt":"\#(String(repeating: "{}", count: 100))","target_new":{"str":"Rome"}"#),
                 want: "dead:invalid_edit"),
            // Ids: UUIDs only, asserted.
            Case(name: "empty id", payload: raw(fact, id: ""), want: "dead:schema"),
            Case(name: "600-byte id", payload: raw(fact, id: String(repeating: "a", count: 600)), want: "dead:schema"),
            Case(name: "path-like id", payload: raw(fact, id: "../../etc/passwd"), want: "dead:schema"),
            Case(name: "issued_at s", payload: Data(String(decoding: raw(fact), as: UTF8.self).replacingOccurrences(of: "2026-11-21T10:00:00Z", with: "s").utf8),
                 want: "dead:schema"),
            // Duplicate keys: the validated copy and the decoded copy could differ; refused.
            Case(name: "kl_factor 1e300 then 0.5", payload: raw(fact + #","hyperparameters":{"kl_factor":1e300,"kl_factor":0.5}"#), want: "dead:malformed_json",
                 message: "appears twice"),
            Case(name: "target_new Berlin then Rome", payload: raw(#""subject":"Paris","prompt":"{} is in","target_new":{"str":"Berlin"},"target_new":{"str":"Rome"}"#),
                 want: "dead:malformed_json", message: "target_new"),
            Case(name: "12,000 neighbourhood prompts then none",
                 payload: raw(fact + #","neighborhood_prompts":[\#(Array(repeating: #""Lyon is in""#, count: 12_000).joined(separator: ","))],"neighborhood_prompts":["Lyon is in"]"#),
                 want: "dead:malformed_json"),
            Case(name: "learning rate 1e30", payload: raw(fact + #","hyperparameters":{"learning_rate":1e30}"#), want: "dead:schema"),
            // Numbers that validate but do not fit the type they become.
            Case(name: "learning rate 1e-400", payload: raw(fact + #","hyperparameters":{"learning_rate":1e-400}"#), want: "dead:schema", message: "learning_rate"),
            Case(name: "rollback to 2^64", payload: Data(#"{"id":"\#(UUID().uuidString.lowercased())","command":"rollback","to":18446744073709551616,"model":{"name":"tiny-daemon"},"issued_by":{"principal":"t"},"issued_at":"2026-11-21T10:00:00Z"}"#.utf8),
                 control: true, want: "dead:schema", message: "does not fit"),
            // Structured CloudEvents read by the same parser.
            Case(name: "structured CloudEvent with a repeated key", payload: Data(structured.utf8),
                 headers: [KafkaHeader(key: "content-type", string: CloudEvent.structuredContentType)], want: "dead:malformed_json", message: "duplicate"),
            // Dead letters larger than the broker's limit: carried cut, with length and SHA-256.
            Case(name: "760 KB non-JSON record", payload: Data(repeating: 0x7A, count: 760_000), headers: [], want: "dead:too_large"),
            Case(name: "400 KB key and 300 KB header", payload: Data("garbage!".utf8), key: Array(repeating: 0x6B, count: 400_000),
                 headers: [KafkaHeader(key: "x-big", value: Array(repeating: 0x68, count: 300_000))], want: "dead:malformed_json"),
            // A lone surrogate escape is valid JSON: it is read as U+FFFD by the one parser, and applied as validated.
            Case(name: "lone surrogate in the principal",
                 payload: Data(String(decoding: raw(fact), as: UTF8.self).replacingOccurrences(of: #""principal":"test""#, with: #""principal":"svc\ud800""#).utf8),
                 want: "result:applied"),
        ]
    }

    @Test func everyRecordThatStalledTheDaemonGetsADeadLetterAndTheCanaryItsResult() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "hostile")
        defer { h.cleanup() }
        try h.start(maxEventBytes: 262_144)
        var want: [Int64: Case] = [:]
        let producer = try h.producer
        for c in Self.cases() {
            let headers = c.headers ?? CloudEvent(id: UUID().uuidString, source: "urn:t", type: c.control ? EventTypes.control : EventTypes.factUpdate,
                                                  datacontenttype: "application/json", data: []).kafkaHeaders()
            let (_, offset) = try producer.send(topic: c.control ? h.topics.control : h.topics.factUpdates, key: c.key, payload: Array(c.payload),
                                                headers: headers, timeout: 15)
            want[offset + (c.control ? 1_000_000 : 0)] = c
        }
        let canary = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: canary))
        let r = try h.results(for: [canary], timeout: 180)
        #expect(r[canary]?["status"]?.stringValue == "applied", "the canary got no result; daemon log:\n\(h.tail())")

        let outputs = try Self.outputs(h, dead: want.values.filter { $0.want.hasPrefix("dead:") }.count)
        let schema = try DaemonTests.schema("dead-letter.schema.json")
        for (key, c) in want.sorted(by: { $0.key < $1.key }) {
            let got = outputs[key] ?? []
            #expect(got.count == 1, "\(c.name): \(got.count) outputs")
            guard let o = got.first else { continue }
            let outcome = o["reason"].map { "dead:\($0.stringValue ?? "")" } ?? "result:\(o["status"]?.stringValue ?? "")"
            #expect(outcome == c.want, "\(c.name): \(outcome) — \(o["message"]?.stringValue ?? "")")
            if let m = c.message { #expect(o["message"]?.stringValue?.contains(m) == true, "\(c.name): \(o["message"]?.stringValue ?? "")") }
            if o["reason"] != nil { #expect(schema.validate(o).valid, "\(c.name): \(o)") }
        }
        // The cut dead letters describe what they cut.
        let big = outputs.values.flatMap { $0 }.first { $0["original"]?["payload_bytes"]?.intValue == 760_000 }
        #expect(big?["original"]?["payload_sha256"]?.stringValue?.count == 64)
        let keyed = outputs.values.flatMap { $0 }.first { $0["original"]?["key_bytes"]?.intValue == 400_000 }
        #expect(keyed?["original"]?["headers"]?.arrayValue?.contains { $0["value_bytes"]?.intValue == 300_000 } == true)
        // Berlin was never applied: the only applied edits are the lone-surrogate event and the canary.
        #expect(try h.store().head() == 2)
        #expect(h.isRunning)
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// Results and dead letters by the offset of the record they answer (control records + 1,000,000).
    static func outputs(_ h: DaemonHarness, dead expected: Int, timeout: Double = 60) throws -> [Int64: [JSONValue]] {
        func key(_ o: JSONValue, _ field: String) -> Int64? {
            guard let off = o[field]?["offset"]?.intValue else { return nil }
            return Int64(off) + (o[field]?["topic"]?.stringValue == h.topics.control ? 1_000_000 : 0)
        }
        // Past the expected count, a short wait shows whether anything was answered twice.
        var dead = try h.collect(h.topics.deadLetters, timeout: timeout) { $0.count >= expected }
        dead += try h.collect(h.topics.deadLetters, timeout: 3) { _ in false }.dropFirst(dead.count)
        let results = try h.collect(h.topics.results, timeout: 5) { _ in false }
        var by: [Int64: [JSONValue]] = [:]
        for d in dead { if let k = key(d, "original") { by[k, default: []].append(d) } }
        for r in results { if let k = key(r, "source") { by[k, default: []].append(r) } }
        return by
    }

    @Test func aFailureThatIsNotTheEventsFaultIsRetriedThenDeadLetteredAndTheNextEventApplies() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "retry")
        defer { h.cleanup() }
        h.settings = ["retry": ["max_attempts": 3, "backoff_ms": 400]]
        try h.start()
        let first = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: first))
        #expect(try h.results(for: [first])[first]?["snapshot"]?.intValue == 1, "daemon log:\n\(h.tail())")

        // Damage the stored snapshot: a redelivery of its event cannot read its recorded result.
        let store = try h.store()
        let db = try store.environment.database("snapshots")
        let k: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1]
        var bytes = try #require(try store.environment.read { try $0.get(db, key: k) })
        bytes[bytes.count / 2] ^= 0x40
        try store.environment.write { try $0.put(db, key: k, value: bytes) }

        let (_, offset) = try h.publish(DaemonHarness.factUpdate(id: first))
        let canary = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: canary, subject: "Rome", targetNew: "Paris"))
        // While the record keeps failing, readiness says so.
        var sawNotReady = false
        let end = Date().addingTimeInterval(30)
        while Date() < end, !sawNotReady {
            let r = try h.http("/readyz")
            sawNotReady = r.status == 503 && r.body.contains("not making progress")
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(sawNotReady, "daemon log:\n\(h.tail())")
        let r = try h.results(for: [canary], timeout: 120)
        #expect(r[canary]?["status"]?.stringValue == "applied", "daemon log:\n\(h.tail())")
        let dead = try h.collect(h.topics.deadLetters, timeout: 30) { $0.contains { $0["original"]?["offset"]?.intValue == Int(offset) } }
        let d = try #require(dead.first { $0["original"]?["offset"]?.intValue == Int(offset) }, "daemon log:\n\(h.tail())")
        #expect(d["reason"]?.stringValue == "processing_failed" && d["event_id"]?.stringValue == first)
        #expect(d["details"]?.arrayValue?.contains(.string("attempts: 3")) == true, "\(d)")
        #expect(try DaemonTests.schema("dead-letter.schema.json").validate(d).valid)
        let metrics = try h.http("/metrics").body
        #expect(metrics.contains(#"mesa_dead_letters_total{reason="processing_failed"} 1"#), "\(metrics)")
        #expect(metrics.contains("mesa_processing_retries_total 2"), "\(metrics)")
        #expect(metrics.contains("mesa_event_attempts 0"))
        #expect(try h.http("/readyz").status == 200)
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    @Test func aRedeliveryAfterARollbackSaysTheEditIsNoLongerLive() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "redeliver")
        defer { h.cleanup() }
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        #expect(try h.results(for: [id])[id]?["snapshot"]?.intValue == 1, "daemon log:\n\(h.tail())")
        let cid = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.rollback(to: 0, id: cid), topic: h.topics.control, cloudEvent: EventTypes.control)
        #expect(try h.results(for: [cid])[cid]?["head"]?.intValue == 0)
        let (_, offset) = try h.publish(DaemonHarness.factUpdate(id: id))
        let all = try h.collect(h.topics.results, timeout: 60) { $0.contains { $0["source"]?["offset"]?.intValue == Int(offset) } }
        let again = try #require(all.first { $0["source"]?["offset"]?.intValue == Int(offset) }, "daemon log:\n\(h.tail())")
        #expect(again["redelivery"] == true && again["snapshot"]?.intValue == 1 && again["head"]?.intValue == 0)
        #expect(again["on_head_lineage"] == false && again["note"]?.stringValue?.contains("rollback") == true, "\(again)")
        #expect(again["weight_hash"]?.stringValue == again["model"]?["base_hash"]?.stringValue)
        #expect(try DaemonTests.schema("edit-result.schema.json").validate(again).valid)
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
