import Contracts
import Foundation
import Testing

/// Hostile inputs end in a bounded, typed failure: no stack overflow, no hang.
@Suite struct BoundedFailureTests {
    @Test func catastrophicBacktrackingPatternIsCutOff() throws {
        let schema = try CompiledSchema(["pattern": "^(a+)+$"], options: ValidatorOptions(patternTimeBudget: 0.05))
        let hostile = JSONValue.string(String(repeating: "a", count: 64) + "b")
        let clock = ContinuousClock()
        let start = clock.now
        let result = schema.validate(hostile)
        let elapsed = clock.now - start
        #expect(!result.valid)
        #expect(result.limitExceeded == .patternTimeBudget)
        #expect(result.errors.first?.keyword == "pattern")
        #expect(elapsed < .seconds(2))
        // The same pattern still works on ordinary input.
        #expect(schema.validate("aaaa").valid)
        #expect(!schema.validate("aaab").valid)
        #expect(schema.validate("aaab").limitExceeded == nil)
    }

    @Test func longStringsAreNotSearchedByTheRegexEngine() throws {
        let schema = try CompiledSchema(["pattern": "(x|y)+z"], options: ValidatorOptions(maxPatternInputLength: 1_000))
        let result = schema.validate(.string(String(repeating: "x", count: 5_000)))
        #expect(!result.valid)
        #expect(result.limitExceeded == .patternInputLength)
        // Inside `not` a limit still fails the validation (fail closed), it is not inverted.
        let negated = try CompiledSchema(["not": ["pattern": "(x|y)+z"]], options: ValidatorOptions(maxPatternInputLength: 1_000))
        #expect(!negated.validate(.string(String(repeating: "x", count: 5_000))).valid)
    }

    @Test func simplePatternsAreLinearTime() throws {
        let schema = try CompiledSchema(["pattern": "^[a-z]*[a-z]*[a-z]*b$"])
        let result = schema.validate(.string(String(repeating: "a", count: 200_000)))
        #expect(!result.valid)
        #expect(result.limitExceeded == nil)
    }

    @Test func recursiveReferenceLoopsHitTheDepthLimit() throws {
        for schemaValue: JSONValue in [
            ["$ref": "#"],
            ["$defs": ["a": ["$ref": "#/$defs/b"], "b": ["allOf": [["$ref": "#/$defs/a"]]]], "$ref": "#/$defs/a"],
        ] {
            let schema = try CompiledSchema(schemaValue, options: ValidatorOptions(maxEvaluationDepth: 200))
            let result = schema.validate(["anything": 1])
            #expect(!result.valid)
            #expect(result.limitExceeded == .evaluationDepth)
            #expect(result.errors.last?.message.contains("evaluation depth limit of 200") == true)
        }
    }

    @Test func deepInstanceWithRecursiveSchemaIsBounded() throws {
        let depth = 5_000
        let text = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        let instance = try JSONValue.parse(Array(text.utf8), limits: JSONParseLimits(maxDepth: depth))
        let schema = try CompiledSchema(["type": "array", "items": ["$ref": "#"]])
        let result = schema.validate(instance)
        #expect(!result.valid)
        #expect(result.limitExceeded == .evaluationDepth)
        let shallow = try JSONValue.parse("[[[[]]], []]")
        #expect(schema.validate(shallow).valid)
    }

    @Test func tenMegabyteInstance() throws {
        // ~10 MB: 40,000 records of ~260 bytes.
        var text = "["
        for index in 0..<40_000 {
            if index > 0 { text += "," }
            text += #"{"id":\#(index),"name":"record-\#(index)","tags":["alpha","beta","gamma"],"score":\#(index % 100).25,"#
            text += #""note":"\#(String(repeating: "x", count: 160))"}"#
        }
        text += "]"
        let bytes = Array(text.utf8)
        #expect(bytes.count > 10_000_000)
        let instance = try JSONValue.parse(bytes)
        let schema = try CompiledSchema([
            "type": "array",
            "items": [
                "type": "object",
                "required": ["id", "name"],
                "properties": [
                    "id": ["type": "integer", "minimum": 0],
                    "name": ["type": "string", "pattern": "^record-[0-9]+$"],
                    "tags": ["type": "array", "items": ["enum": ["alpha", "beta", "gamma"]], "uniqueItems": true],
                    "score": ["type": "number", "maximum": 100],
                    "note": ["type": "string", "maxLength": 200],
                ],
                "additionalProperties": false,
            ],
        ])
        #expect(schema.validate(instance).valid)
        let tooSmall = try CompiledSchema(["items": ["properties": ["score": ["maximum": 50]]]])
        let result = tooSmall.validate(instance)
        #expect(result.errors.count == 20_000)
        #expect(result.errors.first?.instanceLocation == "/50/score")
        #expect(throws: JSONParseError.self) {
            try JSONValue.parse(bytes, limits: JSONParseLimits(maxInputBytes: 1 << 20))
        }
    }
}
