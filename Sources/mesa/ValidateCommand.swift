import ArgumentParser
import Contracts
import Foundation

/// `mesa validate`: checks one JSON instance against a JSON Schema (draft 2020-12).
///
/// Exit status: 0 valid, 1 invalid, 2 the schema or instance could not be loaded or parsed.
/// JSON files next to the schema are registered too, so `$ref`s between sibling schema files
/// resolve by their `$id` (or `file://` URL).
struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Validate a JSON instance against a JSON Schema 2020-12")

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case basic
        case text
    }

    @Option(name: .long, help: ArgumentHelp("Schema file.", valueName: "file"))
    var schema: String

    @Option(name: .long, help: ArgumentHelp("Instance file, or - to read standard input.", valueName: "file|-"))
    var instance: String = "-"

    @Flag(name: .long, help: "Assert formats (date-time, email, uuid, uri, ipv4, ipv6, ...) instead of treating them as annotations.")
    var formatAssertion = false

    @Option(name: .long, help: "Output: 'text' (one line per error) or 'basic' (JSON Schema basic output format).")
    var output: OutputFormat = .text

    func run() throws {
        let options = ValidatorOptions(formatAssertion: formatAssertion)
        let compiled: CompiledSchema
        do {
            compiled = try loadSchema(options: options)
        } catch {
            Self.printError("schema \(schema): \(error)")
            throw ExitCode(2)
        }

        let bytes: Data
        do {
            if instance == "-" {
                bytes = FileHandle.standardInput.readDataToEndOfFile()
            } else {
                bytes = try Data(contentsOf: URL(fileURLWithPath: instance))
            }
        } catch {
            Self.printError("cannot read instance \(instance): \(error.localizedDescription)")
            throw ExitCode(2)
        }
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes, limits: options.parseLimits)
        } catch {
            Self.printError("instance \(instance == "-" ? "<stdin>" : instance): \(error)")
            throw ExitCode(2)
        }

        let result = compiled.validate(value)
        switch output {
        case .basic:
            print(result.basicOutputJSON(pretty: true))
        case .text:
            if result.valid {
                print("valid")
            } else {
                for error in result.errors { print(error.description) }
            }
        }
        if !result.valid { throw ExitCode(1) }
    }

    private func loadSchema(options: ValidatorOptions) throws -> CompiledSchema {
        var registry = SchemaRegistry(options: options) { uri in
            guard let url = URL(string: uri), url.isFileURL, let data = try? Data(contentsOf: url) else { return nil }
            return try? JSONValue.parse(data)
        }
        let directory = URL(fileURLWithPath: schema).deletingLastPathComponent().path
        let siblings = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in siblings.sorted() where name.hasSuffix(".json") {
            _ = try? registry.registerFile(at: (directory as NSString).appendingPathComponent(name))
        }
        let uri = try registry.registerFile(at: schema)
        return try registry.compile(uri)
    }

    private static func printError(_ message: String) {
        FileHandle.standardError.write(Data("mesa validate: \(message)\n".utf8))
    }
}
