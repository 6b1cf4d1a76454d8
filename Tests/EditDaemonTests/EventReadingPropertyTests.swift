import Contracts
import EditDaemon
import Evaluation
import Foundation
import Messaging
import Testing

/// Properties of the JSON parser, the validator and the daemon's event reading, checked on seeded
/// random inputs for a bounded time (a few seconds each; `MESA_PROPERTY_SECONDS` raises it):
/// - any JSON value round-trips through its text;
/// - mutated event bytes never crash the parser, the validator or the decoder;
/// - what passes the fact-update schema decodes, and the decoded fields are the validated ones
///   (the property the duplicate-key bypass broke).
@Suite struct EventReadingPropertyTests {
    typealias Rng = SplitMix64

    static var budget: Double { Double(ProcessInfo.processInfo.environment["MESA_PROPERTY_SECONDS"] ?? "") ?? 3 }

    static let schemas = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Schemas")

    static func value(_ r: inout Rng, depth: Int = 0) -> JSONValue {
        let scalars: [Unicode.Scalar] = ["a", "\u{0}", "\"", "\\", "é", "\u{FFFD}", "😀", "\u{2028}", "{", "}", " "]
        switch Int.random(in: 0..<(depth > 4 ? 4 : 6), using: &r) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &r))
        case 2:
            let literals = ["0", "-0", "1e400", "-1.5e-400", "123456789012345678901234567890", "0.1", "-7", "18446744073709551616"]
            return .number(JSONNumber(literal: literals.randomElement(using: &r)!)!)
        case 3:
            var s = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0...8, using: &r) { s.append(scalars.randomElement(using: &r)!) }
            return .string(String(s))
        case 4: return .array((0..<Int.random(in: 0...4, using: &r)).map { _ in value(&r, depth: depth + 1) })
        default:
            let pairs = (0..<Int.random(in: 0...4, using: &r)).map { i in ("k\(i)", value(&r, depth: depth + 1)) }
            return .object(JSONObject(pairs))
        }
    }

    @Test func everyValueRoundTripsThroughItsText() throws {
        var r = Rng(seed: 1)
        let end = Date().addingTimeInterval(Self.budget)
        var n = 0
        while Date() < end {
            let v = Self.value(&r)
            #expect(try JSONValue.parse(v.jsonText(), limits: JSONParseLimits(rejectDuplicateKeys: true)) == v, "\(v.jsonText())")
            n += 1
        }
        #expect(n > 100)
    }

    static let event = Array(#"{"id":"6f1c2a9e-3b7d-4e52-9a41-0c8d5e7f2b13","model":{"name":"tiny-daemon","revision":"main"},"subject":"Paris","prompt":"{} is in","target_new":{"str":"Rome"},"target_true":{"str":"is"},"method":"ROME","hyperparameters":{"learning_rate":0.5,"steps":20,"kl_factor":0.0625},"paraphrase_prompts":["Where is Paris? It is in"],"issued_by":{"principal":"t"},"issued_at":"2026-11-21T10:00:00Z","dry_run":false}"#.utf8)

    /// Byte-level mutations that keep much of the structure: flips, deletions, duplications of a slice,
    /// insertions of JSON punctuation and escapes.
    static func mutate(_ b: [UInt8], _ r: inout Rng) -> [UInt8] {
        var b = b
        let pieces = [#"\u0000"#, #"\ud800"#, #","target_new":{"str":"Berlin"}"#, "1e400", "-", "\"", "{", "}", "[", "]", ",", ":",
                      #","steps":1e999"#, #","id":"x""#, "é"].map { Array($0.utf8) }
        for _ in 0..<Int.random(in: 1...4, using: &r) where !b.isEmpty {
            let i = Int.random(in: 0..<b.count, using: &r)
            switch Int.random(in: 0..<4, using: &r) {
            case 0: b[i] ^= UInt8(1 << Int.random(in: 0..<8, using: &r))
            case 1: b.removeSubrange(i..<min(b.count, i + Int.random(in: 1...8, using: &r)))
            case 2:
                let j = min(b.count, i + Int.random(in: 1...40, using: &r))
                b.insert(contentsOf: b[i..<j], at: Int.random(in: 0...b.count, using: &r))
            default: b.insert(contentsOf: pieces.randomElement(using: &r)!, at: i)
            }
        }
        return b
    }

    @Test func whatValidatesDecodesToTheValidatedFields() throws {
        let schema = try SchemaCatalog(directory: Self.schemas).schema("fact-update.schema.json")
        var r = Rng(seed: 2)
        let end = Date().addingTimeInterval(Self.budget)
        var tried = 0, valid = 0, rejected = 0
        while Date() < end {
            let bytes = Self.mutate(Self.event, &r)
            let m = KafkaMessage(topic: "t", partition: 0, offset: Int64(tried), key: nil, payload: bytes, headers: [])
            tried += 1
            let v: JSONValue
            do { v = try EventReader.body(m, expectedType: "dev.mesa.fact-update.v1", maxBytes: 65_536) } catch is Rejection {
                rejected += 1
                continue
            }
            guard schema.validate(v).valid else { continue }
            valid += 1
            do {
                let e = try EventReader.decode(FactUpdate.self, from: v, what: "fact update")
                #expect(e.id == v["id"]?.stringValue && e.subject == v["subject"]?.stringValue && e.prompt == v["prompt"]?.stringValue)
                #expect(e.targetNew.str == v["target_new"]?["str"]?.stringValue && e.targetTrue?.str == v["target_true"]?["str"]?.stringValue)
                #expect(e.hyperparameters?.steps.map { JSONValue.number(JSONNumber($0)) } == v["hyperparameters"]?["steps"])
                for x in [e.hyperparameters?.learningRate, e.hyperparameters?.klFactor].compactMap({ $0 }) { #expect(x.isFinite && x >= 0) }
            } catch let rej as Rejection {
                // Only numbers whose binary value is not finite (or underflows) may validate and still not decode.
                #expect(rej.message.contains("does not fit"), "\(rej.message) for \(String(decoding: bytes, as: UTF8.self))")
            }
        }
        print("event reading: \(tried) mutated events, \(rejected) rejected by the reader, \(valid) valid")
        #expect(tried > 100 && valid > 0 && rejected > 0)
    }
}
