import Contracts
import Foundation
import Testing

/// Decoding from the parsed value the schema validated: strict numbers, snake-case keys, clear paths.
@Suite struct JSONValueDecoderTests {
    struct Overrides: Decodable, Equatable {
        var learningRate: Double?
        var steps: Int?
        var klFactor: Float?
    }
    struct Doc: Decodable, Equatable {
        enum Command: String, Decodable { case rollback, snapshot }
        var id: String
        var to: UInt64?
        var command: Command
        var targetNew: [String: String]
        var hyperparameters: Overrides?
        var paraphrasePrompts: [String]?
        var dryRun: Bool?
    }

    func decode<T: Decodable>(_ text: String, as: T.Type = Doc.self) throws -> T {
        try JSONValueDecoder(keyStrategy: .convertFromSnakeCase).decode(T.self, from: try JSONValue.parse(text))
    }

    @Test func decodesWhatJSONDecoderDecodes() throws {
        let text = #"{"id":"a","to":18446744073709551615,"command":"rollback","target_new":{"str":"Rome"},"hyperparameters":{"learning_rate":0.5,"steps":20,"kl_factor":0.0625},"paraphrase_prompts":["x","y"],"dry_run":false}"#
        let ours = try decode(text)
        let foundation = try { () throws -> Doc in
            let d = JSONDecoder()
            d.keyDecodingStrategy = .convertFromSnakeCase
            return try d.decode(Doc.self, from: Data(text.utf8))
        }()
        #expect(ours == foundation)
        #expect(ours.to == UInt64.max && ours.hyperparameters?.klFactor == 0.0625)
    }

    @Test func numbersThatDoNotFitTheirTypeAreErrorsNotInfinityOrZero() throws {
        for (text, field) in [(#"{"learning_rate":1e400}"#, "learning_rate"), (#"{"learning_rate":1e-400}"#, "learning_rate"),
                              (#"{"kl_factor":1e39}"#, "kl_factor"), (#"{"kl_factor":1e-50}"#, "kl_factor"), (#"{"steps":2.5}"#, "steps"),
                              (#"{"steps":9223372036854775808}"#, "steps")] {
            #expect(throws: DecodingError.self, "\(field)") { try decode(text, as: Overrides.self) }
        }
        #expect(try decode(#"{"learning_rate":0,"steps":1e2,"kl_factor":-0.0}"#, as: Overrides.self) == Overrides(learningRate: 0, steps: 100, klFactor: 0))
        let big = #"{"id":"a","to":18446744073709551616,"command":"rollback","target_new":{}}"#
        do {
            _ = try decode(big)
            Issue.record("2^64 decoded as UInt64")
        } catch let DecodingError.dataCorrupted(c) {
            #expect(c.codingPath.map(\.stringValue) == ["to"] && c.debugDescription.contains("does not fit"))
        }
    }

    @Test func typeMismatchesAndMissingKeysNameTheField() throws {
        do {
            _ = try decode(#"{"id":"a","command":"rollback","target_new":{"str":5}}"#)
            Issue.record("decoded a number as a string")
        } catch let DecodingError.typeMismatch(_, c) {
            #expect(c.codingPath.map(\.stringValue) == ["targetNew", "str"])
        }
        #expect(throws: DecodingError.self) { try decode(#"{"command":"rollback","target_new":{}}"#) }
        #expect(throws: DecodingError.self) { try decode(#"{"id":"a","command":"reboot","target_new":{}}"#) }
    }

    @Test func snakeCaseConversionMatchesFoundation() {
        let cases = ["target_new": "targetNew", "a": "a", "_x_y_": "_xY_", "kl__factor": "klFactor", "issued_at": "issuedAt", "__": "__"]
        for (k, v) in cases { #expect(JSONValueDecoder.camelCaseForTesting(k) == v, "\(k)") }
    }

    @Test func duplicateKeysAreRefusedByTheParserWhenAsked() throws {
        let text = #"{"target_new":{"str":"Berlin"},"target_new":{"str":"Rome"}}"#
        #expect(throws: JSONParseError.self) { try JSONValue.parse(text, limits: JSONParseLimits(rejectDuplicateKeys: true)) }
        #expect(try JSONValue.parse(text)["target_new"]?["str"]?.stringValue == "Rome")
    }
}
