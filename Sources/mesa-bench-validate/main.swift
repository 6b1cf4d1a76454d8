// Benchmark: validations per second of a ~1 KB fact-update event against the fact-update schema.
//
// Usage: mesa-bench-validate [--schema FILE] [--instance FILE] [--seconds N] [--out FILE]
//   --schema    schema file (default: Schemas/fact-update.schema.json)
//   --instance  event file (default: Schemas/examples/fact-update.example.json)
//   --seconds   measuring time per scenario (default: 2)
//   --out       also write the results as JSON to FILE
//
// Scenarios, each on one thread: validating an already-parsed JSONValue, and parsing the event
// bytes then validating; each with format as annotation and with format assertion.
import Contracts
import Foundation



func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("mesa-bench-validate: \(message)\n".utf8))
    exit(2)
}

var schemaPath = "Schemas/fact-update.schema.json"
var instancePath = "Schemas/examples/fact-update.example.json"
var seconds = 2.0
var outPath: String?
var arguments = CommandLine.arguments.dropFirst()
@MainActor func operand(of option: String) -> String {
    guard let value = arguments.popFirst() else { fail("\(option) needs a value") }
    return value
}
while let argument = arguments.popFirst() {
    switch argument {
    case "--schema": schemaPath = operand(of: argument)
    case "--instance": instancePath = operand(of: argument)
    case "--seconds":
        guard let value = Double(operand(of: argument)), value > 0 else { fail("--seconds needs a positive number") }
        seconds = value
    case "--out": outPath = operand(of: argument)
    case "-h", "--help":
        print("usage: mesa-bench-validate [--schema FILE] [--instance FILE] [--seconds N] [--out FILE]")
        exit(0)
    default: fail("unknown argument \(argument)")
    }
}

guard let eventData = FileManager.default.contents(atPath: instancePath) else { fail("cannot read \(instancePath)") }
let eventBytes = Array(eventData)

@MainActor func compile(formatAssertion: Bool) -> CompiledSchema {
    var registry = SchemaRegistry(options: ValidatorOptions(formatAssertion: formatAssertion))
    do {
        let uri = try registry.registerFile(at: schemaPath)
        return try registry.compile(uri)
    } catch {
        fail("\(error)")
    }
}

let event: JSONValue
do {
    event = try JSONValue.parse(eventBytes)
} catch {
    fail("event: \(error)")
}

/// Runs `body` repeatedly for about `seconds` and returns operations per second.
@MainActor func measure(_ body: () -> Bool) -> (rate: Double, iterations: Int) {
    for _ in 0..<1_000 where !body() { fail("event is not valid against the schema") }
    let clock = ContinuousClock()
    let start = clock.now
    let deadline = start + .milliseconds(Int(seconds * 1000))
    var iterations = 0
    while clock.now < deadline {
        for _ in 0..<256 where !body() { fail("event is not valid against the schema") }
        iterations += 256
    }
    let elapsed = clock.now - start
    let elapsedSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
    return (Double(iterations) / elapsedSeconds, iterations)
}

var results: [(String, JSONValue)] = [
    ("schema", .string(schemaPath)),
    ("instance_bytes", .number(JSONNumber(eventBytes.count))),
    ("seconds_per_scenario", .number(JSONNumber(seconds) ?? JSONNumber(2))),
]
var lines: [String] = []
for formatAssertion in [false, true] {
    let schema = compile(formatAssertion: formatAssertion)
    let initial = schema.validate(event)
    guard initial.valid else { fail("event is invalid: \(initial.errors.map(\.description).joined(separator: "; "))") }
    let validateOnly = measure { schema.validate(event).valid }
    let withParsing = measure {
        guard let parsed = try? JSONValue.parse(eventBytes) else { return false }
        return schema.validate(parsed).valid
    }
    let suffix = formatAssertion ? "format_assertion" : "format_annotation"
    results.append(("validations_per_second_parsed_\(suffix)", .number(JSONNumber(Int(validateOnly.rate)))))
    results.append(("validations_per_second_with_parsing_\(suffix)", .number(JSONNumber(Int(withParsing.rate)))))
    lines.append(String(format: "%@: %.0f validations/s (pre-parsed), %.0f validations/s (parse + validate)",
                        formatAssertion ? "format assertion " : "format annotation", validateOnly.rate, withParsing.rate))
}
let parseOnly = measure { (try? JSONValue.parse(eventBytes)) != nil }
results.append(("parses_per_second", .number(JSONNumber(Int(parseOnly.rate)))))
lines.append(String(format: "parse only: %.0f parses/s of a %d-byte event", parseOnly.rate, eventBytes.count))

print("mesa-bench-validate (\(eventBytes.count)-byte event, \(schemaPath), one thread)")
for line in lines { print("  " + line) }
if let outPath {
    let text = JSONValue.object(JSONObject(results)).jsonText(pretty: true) + "\n"
    do {
        try Data(text.utf8).write(to: URL(fileURLWithPath: outPath))
    } catch {
        fail("cannot write \(outPath): \(error)")
    }
}
