import Contracts
import Foundation
import Testing

@Suite struct ValidatorTests {
    /// `Schemas/fact-update.schema.json` at the repository root (the scratch package keeps it at
    /// the root itself).
    static var schemaURL: URL {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let inSchemas = root.appendingPathComponent("Schemas/fact-update.schema.json")
        if FileManager.default.fileExists(atPath: inSchemas.path) { return inSchemas }
        return root.appendingPathComponent("fact-update.schema.json")
    }

    static func factUpdateSchema(formatAssertion: Bool = false) throws -> CompiledSchema {
        var registry = SchemaRegistry(options: ValidatorOptions(formatAssertion: formatAssertion))
        let uri = try registry.registerFile(at: schemaURL.path)
        #expect(uri == "https://mesa.dev/schemas/fact-update/v1.json")
        return try registry.compile(uri)
    }

    static let validEvent: JSONValue = [
        "id": "6f1c2a9e-3b7d-4e52-9a41-0c8d5e7f2b13",
        "model": ["name": "EleutherAI/gpt-j-6b", "revision": "main"],
        "subject": "Danielle Darrieux",
        "prompt": "The mother tongue of {} is",
        "target_new": ["str": "English"],
        "method": "ROME",
        "hyperparameters": ["layers": [5], "learning_rate": 0.5],
        "issued_by": ["principal": "svc-editor", "email": "editor@mesa.dev"],
        "issued_at": "2026-03-14T09:26:53Z",
    ]

    static func event(_ edit: (inout JSONObject) -> Void) -> JSONValue {
        var object = validEvent.objectValue!
        edit(&object)
        return .object(object)
    }

    @Test func validEventPasses() throws {
        let schema = try Self.factUpdateSchema(formatAssertion: true)
        let result = schema.validate(Self.validEvent)
        #expect(result.valid)
        #expect(result.errors.isEmpty)
        #expect(result.basicOutputJSON() == #"{"valid":true}"#)
    }

    @Test func reportsEveryErrorWithLocations() throws {
        let schema = try Self.factUpdateSchema()
        let instance = Self.event { object in
            object["method"] = nil
            object["prompt"] = "no placeholder"
            object["subject"] = ""
            object["hyperparameters"] = ["learning_rate": 0, "steps": 5000]
            object["extra"] = true
            object["paraphrase_prompts"] = .array(Array(repeating: "p {}", count: 11))
        }
        let result = schema.validate(instance)
        #expect(!result.valid)
        let summary = Set(result.errors.map { "\($0.instanceLocation) \($0.keywordLocation)" })
        #expect(summary == [
            " /required",
            "/subject /properties/subject/$ref/minLength",
            "/prompt /properties/prompt/pattern",
            "/hyperparameters/learning_rate /properties/hyperparameters/properties/learning_rate/exclusiveMinimum",
            "/hyperparameters/steps /properties/hyperparameters/properties/steps/maximum",
            "/paraphrase_prompts /properties/paraphrase_prompts/maxItems",
            "/extra /additionalProperties",
        ])
        let subject = try #require(result.errors.first { $0.instanceLocation == "/subject" })
        #expect(subject.absoluteKeywordLocation == "https://mesa.dev/schemas/fact-update/v1.json#/$defs/nonEmptyText/minLength")
        #expect(subject.keyword == "minLength")
        let required = try #require(result.errors.first { $0.keyword == "required" })
        #expect(required.message == #"required property "method" is missing"#)
        let extra = try #require(result.errors.first { $0.instanceLocation == "/extra" })
        #expect(extra.keyword == "additionalProperties")
        #expect(extra.description == #"/extra: additional property "extra" is not allowed (/additionalProperties)"#)

        let output = result.basicOutput()
        #expect(output["valid"] == false)
        #expect(output["errors"]?.arrayValue?.count == result.errors.count)
        let unit = try #require(output["errors"]?[0])
        #expect(unit["keywordLocation"] != nil && unit["absoluteKeywordLocation"] != nil
            && unit["instanceLocation"] != nil && unit["error"] != nil)
        #expect(try JSONValue.parse(result.basicOutputJSON()) == output)
        #expect(!schema.isValid(instance))
    }

    @Test func formatIsAnnotationUnlessAsserted() throws {
        let instance = Self.event { $0["id"] = "not-a-uuid"; $0["issued_at"] = "2026-02-30T10:00:00Z" }
        #expect(try Self.factUpdateSchema().validate(instance).valid)
        let result = try Self.factUpdateSchema(formatAssertion: true).validate(instance)
        #expect(result.errors.map(\.keywordLocation).sorted() == ["/properties/id/format", "/properties/issued_at/format"])
    }

    @Test func combinatorsReportBranchErrors() throws {
        let schema = try CompiledSchema([
            "anyOf": [["type": "string"], ["type": "integer", "minimum": 10]],
            "not": ["const": 3],
        ])
        let result = schema.validate(3)
        #expect(!result.valid)
        #expect(result.errors.map(\.keywordLocation) == ["/anyOf/0/type", "/anyOf/1/minimum", "/anyOf", "/not"])
        #expect(schema.validate(12).valid)
        #expect(schema.validate("x").valid)
    }

    @Test func unevaluatedPropertiesAcrossReferences() throws {
        let schema = try CompiledSchema([
            "$defs": ["base": ["properties": ["a": ["type": "integer"]]]],
            "$ref": "#/$defs/base",
            "properties": ["b": true],
            "unevaluatedProperties": false,
        ])
        #expect(schema.validate(["a": 1, "b": 2]).valid)
        let result = schema.validate(["a": 1, "c": 2])
        #expect(result.errors.map(\.instanceLocation) == ["/c"])
        #expect(result.errors.first?.keywordLocation == "/unevaluatedProperties")
        #expect(result.errors.first?.absoluteKeywordLocation == "urn:mesa:anonymous-schema#/unevaluatedProperties")
    }

    @Test func registryResolvesSchemasByID() throws {
        var registry = SchemaRegistry()
        try registry.register(["$id": "https://mesa.dev/schemas/common/v1.json", "$defs": ["id": ["type": "string", "minLength": 3]]])
        try registry.register(["$id": "https://mesa.dev/schemas/thing/v1.json", "properties": ["id": ["$ref": "../common/v1.json#/$defs/id"]]])
        let schema = try registry.compile("https://mesa.dev/schemas/thing/v1.json")
        #expect(schema.validate(["id": "abc"]).valid)
        let result = schema.validate(["id": "ab"])
        #expect(result.errors.first?.absoluteKeywordLocation == "https://mesa.dev/schemas/common/v1.json#/$defs/id/minLength")
        #expect(result.errors.first?.keywordLocation == "/properties/id/$ref/minLength")
    }

    @Test func registryLoadsADirectory() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("contracts-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data(#"{"$id": "https://mesa.dev/a.json", "$ref": "b.json"}"#.utf8).write(to: directory.appendingPathComponent("a.json"))
        try Data(#"{"$id": "https://mesa.dev/b.json", "type": "integer"}"#.utf8).write(to: directory.appendingPathComponent("b.json"))
        var registry = SchemaRegistry()
        let uris = try registry.registerDirectory(at: directory.path)
        #expect(uris == ["https://mesa.dev/a.json", "https://mesa.dev/b.json"])
        let schema = try registry.compile("https://mesa.dev/a.json")
        #expect(schema.validate(1).valid)
        #expect(!schema.validate("1").valid)
    }

    @Test func unknownDialectIsALoadError() {
        #expect(throws: SchemaLoadError.unknownDialect("http://json-schema.org/draft-07/schema#", location: "urn:mesa:anonymous-schema#")) {
            try CompiledSchema(["$schema": "http://json-schema.org/draft-07/schema#", "type": "string"])
        }
        #expect(throws: SchemaLoadError.self) {
            try CompiledSchema(["$defs": ["x": ["$schema": "https://example.com/unknown", "$id": "x.json"]]])
        }
    }

    @Test func unresolvableReferencesAreLoadErrors() {
        #expect(throws: SchemaLoadError.unresolvableReference("#/$defs/missing", location: "urn:mesa:anonymous-schema#/properties/a")) {
            try CompiledSchema(["properties": ["a": ["$ref": "#/$defs/missing"]]])
        }
        // Also in definitions that nothing uses.
        #expect(throws: SchemaLoadError.unresolvableReference("https://nowhere.example/s.json", location: "urn:mesa:anonymous-schema#/$defs/unused")) {
            try CompiledSchema(["$defs": ["unused": ["$ref": "https://nowhere.example/s.json"]]])
        }
        #expect(throws: SchemaLoadError.unresolvableReference("#nope", location: "urn:mesa:anonymous-schema#")) {
            try CompiledSchema(["$ref": "#nope"])
        }
    }

    @Test func invalidKeywordValuesAreLoadErrors() {
        #expect(throws: SchemaLoadError.invalidSchema("invalid regular expression \"(unclosed\": not a valid regular expression", location: "urn:mesa:anonymous-schema#")) {
            try CompiledSchema(["pattern": "(unclosed"])
        }
        #expect(throws: SchemaLoadError.self) { try CompiledSchema(["type": "text"]) }
        #expect(throws: SchemaLoadError.self) { try CompiledSchema(["minLength": -1]) }
        #expect(throws: SchemaLoadError.self) { try CompiledSchema(["multipleOf": 0]) }
        #expect(throws: SchemaLoadError.self) { try CompiledSchema(["properties": ["a": 3]]) }
    }

    @Test func compiledSchemaIsSharedAcrossThreads() async throws {
        let schema = try Self.factUpdateSchema(formatAssertion: true)
        let bad = Self.event { $0["method"] = "SGD" }
        let outcomes = await withTaskGroup(of: (Bool, Bool).self) { group in
            for _ in 0..<8 {
                group.addTask { (schema.validate(Self.validEvent).valid, schema.validate(bad).valid) }
            }
            var collected: [(Bool, Bool)] = []
            for await outcome in group { collected.append(outcome) }
            return collected
        }
        #expect(outcomes.count == 8)
        #expect(outcomes.allSatisfy { $0 == (true, false) })
    }
}
