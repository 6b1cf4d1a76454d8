import Contracts
import Foundation
import Testing

@Suite struct JSONValueTests {
    @Test func numbersKeepExactDecimalValue() throws {
        let value = try JSONValue.parse("[1, 1.0, 10e-1, 0.1, 1e400, 98249283749234923498293171823948729348710298301928331, -0, 2.50]")
        let numbers = try #require(value.arrayValue).compactMap { element -> JSONNumber? in
            if case .number(let number) = element { return number }
            return nil
        }
        #expect(numbers[0] == numbers[1])
        #expect(numbers[1] == numbers[2])
        #expect(numbers[3].description == "0.1")
        #expect(numbers[4].isInteger)
        #expect(numbers[4].description == "1e+400")
        #expect(numbers[5].isInteger)
        #expect(numbers[5] < numbers[4])
        #expect(numbers[6] == JSONNumber(0))
        #expect(numbers[7].description == "2.5")
        #expect(JSONValue.number(numbers[0]).hashValue == JSONValue.number(numbers[1]).hashValue)
    }

    @Test func exactComparisonAndMultipleOf() throws {
        let a = try #require(JSONNumber(literal: "972783798187987123879878123.18878137"))
        let b = try #require(JSONNumber(literal: "972783798187987123879878123.188781371"))
        #expect(a < b)
        #expect(JSONNumber(literal: "19.99")!.isMultiple(of: JSONNumber(literal: "0.01")!))
        #expect(!JSONNumber(literal: "0.3")!.isMultiple(of: JSONNumber(literal: "0.2")!))
        #expect(JSONNumber(literal: "1e308")!.isMultiple(of: JSONNumber(literal: "0.5")!))
        #expect(!JSONNumber(literal: "1e308")!.isMultiple(of: JSONNumber(literal: "0.123456789")!))
        #expect(JSONNumber(literal: "123456789012345678901234567890")!.isMultiple(of: JSONNumber(literal: "10")!))
        #expect(JSONNumber(literal: "-7")! < JSONNumber(literal: "-6.5")!)
        #expect(JSONNumber(literal: "01") == nil)
        #expect(JSONNumber(literal: "1.") == nil)
    }

    @Test func objectsCompareUnorderedAndBoolIsNotNumber() throws {
        let first = try JSONValue.parse(#"{"a": 1, "b": [true, null]}"#)
        let second = try JSONValue.parse(#"{"b": [true, null], "a": 1.0}"#)
        #expect(first == second)
        #expect(first.hashValue == second.hashValue)
        #expect(JSONValue.bool(true) != JSONValue.number(JSONNumber(1)))
        #expect(first.objectValue?.keys == ["a", "b"])
    }

    @Test func duplicateKeysLastWinsOrError() throws {
        let value = try JSONValue.parse(#"{"a": 1, "b": 2, "a": 3}"#)
        #expect(value.objectValue?.keys == ["a", "b"])
        #expect(value["a"] == 3)
        #expect(throws: JSONParseError.self) {
            try JSONValue.parse(#"{"a": 1, "a": 2}"#, limits: JSONParseLimits(rejectDuplicateKeys: true))
        }
        do {
            _ = try JSONValue.parse(#"{"a": 1, "a": 2}"#, limits: JSONParseLimits(rejectDuplicateKeys: true))
        } catch {
            #expect(error.kind == .duplicateKey("a"))
        }
    }

    @Test func hundredThousandDeepArrayIsABoundedError() {
        let depth = 100_000
        let text = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        do {
            _ = try JSONValue.parse(Array(text.utf8))
            Issue.record("expected a depth error")
        } catch {
            #expect(error.kind == .depthLimitExceeded(limit: 512))
            #expect(error.offset == 512)
        }
        // Within a raised limit the same structure parses iteratively (no recursion).
        let shallow = String(repeating: "[", count: 2_000) + String(repeating: "]", count: 2_000)
        #expect((try? JSONValue.parse(Array(shallow.utf8), limits: JSONParseLimits(maxDepth: 2_000))) != nil)
    }

    @Test func inputSizeLimit() {
        let bytes = [UInt8](repeating: UInt8(ascii: " "), count: 2_000) + Array("1".utf8)
        do {
            _ = try JSONValue.parse(bytes, limits: JSONParseLimits(maxInputBytes: 1_000))
            Issue.record("expected a size error")
        } catch {
            #expect(error.kind == .inputTooLarge(size: 2_001, limit: 1_000))
        }
    }

    @Test func syntaxErrorsAreTyped() {
        let cases: [(String, JSONParseError.Kind)] = [
            ("[1, 2", .unexpectedEndOfInput),
            ("[1 2]", .unexpectedByte(UInt8(ascii: "2"))),
            ("{\"a\" 1}", .unexpectedByte(UInt8(ascii: "1"))),
            ("\"\\x\"", .invalidEscape),
            ("\"a\u{01}\"", .controlCharacterInString),
            ("1 2", .trailingContent),
            ("-", .invalidNumber),
        ]
        for (text, kind) in cases {
            do {
                _ = try JSONValue.parse(text)
                Issue.record("expected an error for \(text)")
            } catch {
                #expect(error.kind == kind, "\(text)")
            }
        }
        do {
            _ = try JSONValue.parse([0x22, 0xC3, 0x28, 0x22])
            Issue.record("expected invalid UTF-8")
        } catch {
            #expect(error.kind == .invalidUTF8)
        }
    }

    @Test func stringsAndEscapesRoundTrip() throws {
        let value = try JSONValue.parse(#"["tab\there", "\u00e9\ud83d\ude00", "quote\"back\\slash", "\ud800 lone"]"#)
        #expect(value[0] == "tab\there")
        #expect(value[1] == "é😀")
        #expect(value[3] == "\u{FFFD} lone")
        let text = value.jsonText()
        #expect(try JSONValue.parse(text) == value)
        #expect(JSONValue.object(JSONObject([("n", 1.5), ("s", "x")])).jsonText() == #"{"n":1.5,"s":"x"}"#)
    }

    @Test func stringEqualityIsByCodePoint() {
        #expect(JSONValue.string("\u{e9}") != JSONValue.string("e\u{301}"))
    }
}
