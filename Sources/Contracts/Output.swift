/// A resource limit that stopped validation. The instance is then reported invalid (fail closed).
public enum ValidationLimit: String, Sendable, Hashable {
    /// `ValidatorOptions.maxEvaluationDepth` was exceeded (e.g. a `$ref` cycle).
    case evaluationDepth
    /// A string exceeded `ValidatorOptions.maxPatternInputLength` for a regex check.
    case patternInputLength
    /// A regex search exceeded `ValidatorOptions.patternTimeBudget`.
    case patternTimeBudget
}

/// One validation failure, in the terms of the JSON Schema "basic" output format.
public struct ValidationError: Sendable, Hashable, CustomStringConvertible {
    /// JSON Pointer to the failing value in the instance (`""` is the whole instance).
    public let instanceLocation: String
    /// JSON Pointer to the failing keyword along the evaluation path (through `$ref`s).
    public let keywordLocation: String
    /// Absolute URI of the failing keyword in the schema resource that defines it.
    public let absoluteKeywordLocation: String
    /// The failing keyword (`"type"`, `"required"`, ...).
    public let keyword: String
    /// A short human-readable explanation.
    public let message: String

    public init(instanceLocation: String, keywordLocation: String, absoluteKeywordLocation: String, keyword: String, message: String) {
        self.instanceLocation = instanceLocation
        self.keywordLocation = keywordLocation
        self.absoluteKeywordLocation = absoluteKeywordLocation
        self.keyword = keyword
        self.message = message
    }

    /// `instanceLocation: message (keywordLocation)`, with `/` for the root instance.
    public var description: String {
        "\(instanceLocation.isEmpty ? "/" : instanceLocation): \(message) (\(keywordLocation.isEmpty ? "#" : keywordLocation))"
    }

    /// The error as a "basic" output unit.
    public var outputUnit: JSONValue {
        .object(JSONObject([
            ("keywordLocation", .string(keywordLocation)),
            ("absoluteKeywordLocation", .string(absoluteKeywordLocation)),
            ("instanceLocation", .string(instanceLocation)),
            ("keyword", .string(keyword)),
            ("error", .string(message)),
        ]))
    }
}

/// The outcome of validating one instance.
public struct ValidationResult: Sendable, Hashable {
    /// `true` if the instance is valid.
    public let valid: Bool
    /// Every failure found (empty when valid). Errors of alternatives that did not match in a
    /// failing `anyOf` / `oneOf` are included, followed by the error of the combinator itself.
    public let errors: [ValidationError]
    /// Set when validation was cut short by a resource limit.
    public let limitExceeded: ValidationLimit?

    public init(valid: Bool, errors: [ValidationError], limitExceeded: ValidationLimit? = nil) {
        self.valid = valid
        self.errors = errors
        self.limitExceeded = limitExceeded
    }

    /// The result in the specification's "basic" output format:
    /// `{"valid": true}` or `{"valid": false, "errors": [{keywordLocation, absoluteKeywordLocation, instanceLocation, error}, ...]}`.
    public func basicOutput() -> JSONValue {
        if valid { return .object(JSONObject([("valid", .bool(true))])) }
        return .object(JSONObject([("valid", .bool(false)), ("errors", .array(errors.map(\.outputUnit)))]))
    }

    /// `basicOutput()` serialized as JSON text.
    public func basicOutputJSON(pretty: Bool = false) -> String {
        basicOutput().jsonText(pretty: pretty)
    }
}

extension JSONValue {
    /// Serializes the value as JSON text. Numbers use their exact canonical form; strings are
    /// escaped per RFC 8259 (non-ASCII characters are written as UTF-8).
    public func jsonText(pretty: Bool = false) -> String {
        var output = ""
        write(to: &output, pretty: pretty, indent: 0)
        return output
    }

    private func write(to output: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: output += "null"
        case .bool(let flag): output += flag ? "true" : "false"
        case .number(let number): output += number.description
        case .string(let string): Self.writeString(string, to: &output)
        case .array(let elements):
            if elements.isEmpty { output += "[]"; return }
            output += "["
            for (position, element) in elements.enumerated() {
                if position > 0 { output += "," }
                if pretty { output += "\n" + String(repeating: "  ", count: indent + 1) }
                element.write(to: &output, pretty: pretty, indent: indent + 1)
            }
            if pretty { output += "\n" + String(repeating: "  ", count: indent) }
            output += "]"
        case .object(let object):
            if object.isEmpty { output += "{}"; return }
            output += "{"
            for (position, member) in object.enumerated() {
                if position > 0 { output += "," }
                if pretty { output += "\n" + String(repeating: "  ", count: indent + 1) }
                Self.writeString(member.key, to: &output)
                output += pretty ? ": " : ":"
                member.value.write(to: &output, pretty: pretty, indent: indent + 1)
            }
            if pretty { output += "\n" + String(repeating: "  ", count: indent) }
            output += "}"
        }
    }

    private static func writeString(_ string: String, to output: inout String) {
        output += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output += "\""
    }
}
