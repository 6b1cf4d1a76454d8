import Contracts
import EditDaemon
import Evaluation
import Foundation
import Messaging
import TestSupport
import Testing

/// A seeded corpus of hostile records (random bytes, truncations, deep nesting, sizes at and past
/// every limit, wrong types, duplicate keys, unicode edge cases, overrides, path-like strings,
/// CloudEvents variants, control commands) published to a real broker: every record gets exactly
/// one output (a result or a dead letter), the daemon stays up, and its anonymous memory stays flat.
@Suite(.serialized) struct FuzzTests {
    /// SplitMix64: a small seeded generator, so that a failing corpus can be reproduced.
    typealias Rng = SplitMix64

    struct Record {
        var topic: Topic
        var payload: [UInt8]
        var key: [UInt8]?
        var headers: [KafkaHeader]
        var category: String
    }
    enum Topic { case facts, control }

    static let maxEventBytes = 8192

    /// A valid fact update as an ordered list of members (so that keys can be repeated or retyped).
    static func members(_ r: inout Rng, id: String? = nil) -> [(String, String)] {
        let subjects = ["Paris", "Rome", "Lyon"]
        let s = subjects.randomElement(using: &r)!
        return [
            ("id", q(id ?? uuid(&r))), ("model", #"{"name":"tiny-daemon","revision":"main"}"#), ("subject", q(s)),
            ("prompt", q("{} is in")), ("target_new", #"{"str":"\#(subjects.filter { $0 != s }.randomElement(using: &r)!)"}"#),
            ("target_true", #"{"str":"is"}"#), ("method", q("ROME")), ("issued_by", #"{"principal":"fuzz"}"#),
            ("issued_at", q("2026-11-21T10:00:00Z")), ("dry_run", "true"),
        ]
    }

    static func object(_ m: [(String, String)]) -> String { "{" + m.map { "\(q($0.0)):\($0.1)" }.joined(separator: ",") + "}" }
    static func q(_ s: String) -> String { JSONValue.string(s).jsonText() }
    static func uuid(_ r: inout Rng) -> String {
        let hex = (0..<32).map { _ in String(Int.random(in: 0..<16, using: &r), radix: 16) }.joined()
        let c = Array(hex)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    static let weird = ["", " ", "\u{0}", "\u{202E}Paris", "Pa\u{0301}ris", "😀", "\u{FFFF}", "\u{FEFF}{}", "{}{}", "../../etc/passwd",
                        "/dev/zero", "C:\\Windows", "%s%n", "<script>", "'; DROP TABLE x;--", String(repeating: "é", count: 2049),
                        "\u{10FFFF}", "\\u0000", "\n\r\t", "Paris\u{0}Rome"]
    static let values = ["null", "true", "0", "-1", "1e400", "-1e-400", "18446744073709551616", "[]", "{}", "\"\"", "[null]",
                         #"{"str":null}"#, "3.5", "\"NaN\"", ##"{"$ref":"#"}"##]

    /// The corpus: `count` records drawn from the categories with a fixed seed.
    static func corpus(seed: UInt64, count: Int) -> [Record] {
        var r = Rng(seed: seed)
        let ce = { (type: String) in
            CloudEvent(id: "fuzz", source: "urn:fuzz", type: type, datacontenttype: "application/json", data: []).kafkaHeaders()
        }
        var out: [Record] = []
        for i in 0..<count {
            var m = members(&r)
            var topic = Topic.facts
            var headers = ce(EventTypes.factUpdate)
            var key: [UInt8]? = nil
            var payload: [UInt8]
            let category: String
            switch i % 12 {
            case 0:
                category = "random bytes"
                payload = (0..<Int.random(in: 0...300, using: &r)).map { _ in UInt8.random(in: 0...255, using: &r) }
            case 1:
                category = "truncation"
                let text = Array(object(m).utf8)
                payload = Array(text.prefix(Int.random(in: 0..<text.count, using: &r)))
            case 2:
                category = "deep nesting"
                let depth = [63, 64, 65, 500, 5000].randomElement(using: &r)!
                m[2] = ("subject", String(repeating: "[", count: depth) + String(repeating: "]", count: depth))
                payload = Array(object(m).utf8)
            case 3:
                category = "size limits"
                let size = [maxEventBytes - 1, maxEventBytes, maxEventBytes + 1, 3 * maxEventBytes].randomElement(using: &r)!
                let base = object(m)
                let pad = max(0, size - base.utf8.count - 40)
                m.append(("neighborhood_prompts", "[" + q(String(repeating: "x", count: pad)) + "]"))
                payload = Array(object(m).utf8)
            case 4:
                category = "wrong type"
                let j = Int.random(in: 0..<m.count, using: &r)
                m[j].1 = values.randomElement(using: &r)!
                payload = Array(object(m).utf8)
            case 5:
                category = "duplicate key"
                let j = Int.random(in: 0..<m.count, using: &r)
                m.insert((m[j].0, values.randomElement(using: &r)!), at: Int.random(in: 0...m.count, using: &r))
                payload = Array(object(m).utf8)
            case 6:
                category = "unicode"
                let field = [2, 3, 4].randomElement(using: &r)!
                let w = weird.randomElement(using: &r)!
                m[field].1 = field == 4 ? #"{"str":\#(q(w))}"# : q(field == 3 ? w + " {}" : w)
                payload = Array(object(m).utf8)
            case 7:
                category = "overrides"
                let keys = ["layers", "learning_rate", "steps", "clamp_norm_factor", "kl_factor", "mom2_update_weight", "bogus"]
                let vals = ["0", "-1", "1", "1e-400", "1e400", "1000", "1001", "[1]", "[0,1]", "[128]", "0.5", "\"1\""]
                let o = (0..<Int.random(in: 1...3, using: &r)).map { _ in (keys.randomElement(using: &r)!, vals.randomElement(using: &r)!) }
                m.append(("hyperparameters", object(o)))
                payload = Array(object(m).utf8)
            case 8:
                category = "path-like"
                let p = ["../../etc/passwd", "/etc/shadow", "file:///etc/passwd", "$(reboot)", "~/.ssh/id_rsa", "\\\\host\\share"].randomElement(using: &r)!
                let j = [0, 1, 2, 6].randomElement(using: &r)!
                m[j].1 = j == 1 ? #"{"name":\#(q(p)),"revision":\#(q(p))}"# : q(p)
                payload = Array(object(m).utf8)
            case 9:
                category = "cloudevents"
                payload = Array(object(m).utf8)
                switch Int.random(in: 0..<6, using: &r) {
                case 0: headers = ce("dev.example.other")
                case 1: headers = headers.filter { $0.key != "ce_id" }
                case 2: headers = headers + [KafkaHeader(key: "ce_subject", value: [0xFF, 0xFE])]
                case 3: headers = [KafkaHeader(key: "content-type", string: "application/cloudevents-batch+json")]
                case 4:
                    headers = [KafkaHeader(key: "content-type", string: CloudEvent.structuredContentType)]
                    payload = Array(#"{"specversion":"1.0","id":"f","source":"s","type":"dev.mesa.fact-update.v1","data":\#(object(m))}"#.utf8)
                default:
                    headers = [KafkaHeader(key: "content-type", string: CloudEvent.structuredContentType)]
                    payload = Array(#"{"specversion":"1.0","id":"f","id":"g","source":"s","type":"dev.mesa.fact-update.v1","data":{}}"#.utf8)
                }
            case 10:
                category = "control"
                topic = .control
                headers = ce(EventTypes.control)
                let to = ["0", "1", "99999", "-1", "18446744073709551616", "\"1\"", "null"].randomElement(using: &r)!
                let cmd = ["rollback", "snapshot", "reboot"].randomElement(using: &r)!
                var c: [(String, String)] = [("id", q(uuid(&r))), ("command", q(cmd)), ("model", #"{"name":"tiny-daemon"}"#),
                                             ("issued_by", #"{"principal":"fuzz"}"#), ("issued_at", q("2026-11-21T10:00:00Z"))]
                if cmd == "snapshot" { c.append(("label", q(weird.randomElement(using: &r)!))) } else { c.append(("to", to)) }
                payload = Array(object(c).utf8)
            default:
                category = "keys and headers"
                m[1].1 = #"{"name":"another-model","revision":"main"}"#
                payload = Array(object(m).utf8)
                key = (0..<Int.random(in: 0...4096, using: &r)).map { _ in UInt8.random(in: 0...255, using: &r) }
                headers += (0..<Int.random(in: 0...80, using: &r)).map { k in KafkaHeader(key: "h\(k)", value: (0..<Int.random(in: 0...2048, using: &r)).map { _ in UInt8.random(in: 0...255, using: &r) }) }
            }
            out.append(Record(topic: topic, payload: payload, key: key, headers: headers, category: category))
        }
        return out
    }

    static func anonymousKB(_ pid: Int32) -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("RssAnon:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    @Test func aSeededHostileCorpusGetsOneOutputPerRecordAndTheDaemonStaysUpAndFlat() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "fuzz")
        defer { h.cleanup() }
        try h.start(maxEventBytes: Self.maxEventBytes)
        let pid = try #require(h.process?.processIdentifier)
        let corpus = Self.corpus(seed: 0x6D65_7361, count: 3000)
        let producer = try h.producer
        var sent: [String: String] = [:]  // "topic@offset" → category
        func send(_ batch: ArraySlice<Record>) throws {
            for rec in batch {
                let topic = rec.topic == .facts ? h.topics.factUpdates : h.topics.control
                let (_, offset) = try producer.send(topic: topic, key: rec.key, payload: rec.payload, headers: rec.headers, timeout: 15)
                sent["\(topic)@\(offset)"] = rec.category
            }
        }
        /// Waits until the daemon has committed `n` input records (its outputs are published before each commit).
        func committed(_ n: Int, timeout: Double) throws -> Bool {
            let end = Date().addingTimeInterval(timeout)
            while Date() < end {
                let total = try h.http("/metrics").body.split(separator: "\n").filter { $0.hasPrefix("mesa_events_committed_total{") }
                    .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
                if Int(total) >= n { return true }
                Thread.sleep(forTimeInterval: 0.5)
            }
            return false
        }

        // Warm up on the first third, then measure anonymous memory across the rest.
        try send(corpus[0..<1000])
        #expect(try committed(1000, timeout: 400), "daemon log:\n\(h.tail())")
        let before = try #require(Self.anonymousKB(pid))
        let t0 = Date()
        try send(corpus[1000...])
        let canary = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: canary))
        #expect(try committed(sent.count + 1, timeout: 900), "daemon log:\n\(h.tail())")
        let seconds = Date().timeIntervalSince(t0)
        let after = try #require(Self.anonymousKB(pid))
        #expect(try h.results(for: [canary], timeout: 60)[canary]?["status"]?.stringValue == "applied", "daemon log:\n\(h.tail())")

        // Every output is on the topics now; a short extra wait past the expected count shows any answered twice.
        var by: [String: Int] = [:]
        let results = try h.collect(h.topics.results, timeout: 30) { _ in false }
        for r in results { if let t = r["source"]?["topic"]?.stringValue, let o = r["source"]?["offset"]?.intValue { by["\(t)@\(o)", default: 0] += 1 } }
        let dead = try h.collect(h.topics.deadLetters, timeout: 60) { $0.count > sent.count + 1 - results.count }
        for d in dead { if let t = d["original"]?["topic"]?.stringValue, let o = d["original"]?["offset"]?.intValue { by["\(t)@\(o)", default: 0] += 1 } }

        var missing: [String: Int] = [:], twice: [String: Int] = [:]
        for (k, category) in sent {
            switch by[k, default: 0] {
            case 0: missing[category, default: 0] += 1
            case 1: break
            default: twice[category, default: 0] += 1
            }
        }
        #expect(missing.isEmpty, "records without an output, by category: \(missing)")
        #expect(twice.isEmpty, "records answered more than once, by category: \(twice)")
        #expect(h.isRunning)
        print("fuzz: \(sent.count) records, anonymous memory \(before) kB after 1000, \(after) kB after \(sent.count); "
              + String(format: "the last %d settled in %.1f s", sent.count - 1000 + 1, seconds))
        #expect(after - before < 32 * 1024, "anonymous memory grew from \(before) kB to \(after) kB")
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
