import Contracts
import Foundation
import Testing

/// Runs the official JSON-Schema-Test-Suite (draft 2020-12) in place from the shared data folder.
@Suite struct OfficialSuiteTests {
    /// Cases known to fail, as key prefixes `file | schema description | test description` (a
    /// prefix covers a whole group or file), with the reason. They count as failures in the rates;
    /// any failure not listed here fails the test.
    static let expectedFailures: [String: String] = [
        // Required suite: none.

        // Optional suite.
        "optional/cross-draft.json | refs to historic drafts are processed as historic drafts":
            "only draft 2020-12 is supported; a referenced 2019-09 document is a load-time error (unknown dialect) by design",
        "optional/format/ecmascript-regex.json | ECMA 262 lookbehind is valid, including variable width":
            "ICU (NSRegularExpression) rejects unbounded lookbehind, so the pattern does not compile",
        "optional/format/hostname.json | validation of A-label (punycode) host names":
            "Punycode decoding and IDNA 2008 code point rules are not implemented; only LDH syntax is checked",
        "optional/format/idn-hostname.json":
            "idn-hostname (IDNA 2008, RFC 5890-5893) is not implemented, so it is never asserted",
    ]

    /// Pass-rate floors: the rates reached when the list above was written.
    static let requiredFloor = 1.0
    static let optionalFloor = 0.914

    /// Root of `shared/data`: `$MESA_SHARED_DATA`, else `<repo>/../shared/data` next to the package.
    static var sharedData: URL {
        if let path = ProcessInfo.processInfo.environment["MESA_SHARED_DATA"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        let repoRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // ContractsTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()  // repository root
        return repoRoot.deletingLastPathComponent().appendingPathComponent("shared/data")
    }

    static var suiteRoot: URL { sharedData.appendingPathComponent("json-schema-test-suite") }

    struct FileResult {
        let file: String
        var total = 0
        var passed = 0
        var failures: [String] = []
    }

    /// Serves `http://localhost:1234/...` from the suite's `remotes` folder.
    static func makeRegistry(formatAssertion: Bool) -> SchemaRegistry {
        let remotes = suiteRoot.appendingPathComponent("remotes")
        return SchemaRegistry(options: ValidatorOptions(formatAssertion: formatAssertion)) { uri in
            let prefix = "http://localhost:1234/"
            guard uri.hasPrefix(prefix) else { return nil }
            let file = remotes.appendingPathComponent(String(uri.dropFirst(prefix.count)))
            guard let data = try? Data(contentsOf: file) else { return nil }
            return try? JSONValue.parse(data)
        }
    }

    static func run(file relative: String) throws -> FileResult {
        let url = suiteRoot.appendingPathComponent("tests/draft2020-12").appendingPathComponent(relative)
        let document = try JSONValue.parse(Data(contentsOf: url))
        let registry = makeRegistry(formatAssertion: relative.hasPrefix("optional/format/"))
        var result = FileResult(file: relative)
        for group in document.arrayValue ?? [] {
            let groupDescription = group["description"]?.stringValue ?? ""
            let compiled: CompiledSchema?
            var loadError = ""
            do {
                compiled = try registry.compile(group["schema"] ?? .null)
            } catch {
                compiled = nil
                loadError = "\(error)"
            }
            for test in group["tests"]?.arrayValue ?? [] {
                let description = test["description"]?.stringValue ?? ""
                let expected = test["valid"] == .bool(true)
                result.total += 1
                let key = "\(relative) | \(groupDescription) | \(description)"
                guard let compiled else {
                    result.failures.append("\(key): load error: \(loadError)")
                    continue
                }
                let outcome = compiled.validate(test["data"] ?? .null)
                if outcome.valid == expected {
                    result.passed += 1
                } else {
                    result.failures.append("\(key): expected \(expected ? "valid" : "invalid")")
                }
            }
        }
        return result
    }

    static func suiteFiles(optional: Bool) throws -> [String] {
        let root = suiteRoot.appendingPathComponent("tests/draft2020-12")
        var files: [String] = []
        let enumerator = FileManager.default.enumerator(atPath: root.path)
        while let path = enumerator?.nextObject() as? String {
            guard path.hasSuffix(".json") else { continue }
            if path.hasPrefix("optional/") == optional { files.append(path) }
        }
        return files.sorted()
    }

    /// Pass rates per area: the top-level files, `optional/` files and `optional/format/`.
    static func areaSummary(_ results: [FileResult]) -> String {
        var areas: [String: (passed: Int, total: Int)] = [:]
        for result in results {
            let area = result.file.hasPrefix("optional/format/") ? "optional/format" : (result.file.hasPrefix("optional/") ? "optional (other)" : "required")
            areas[area, default: (0, 0)].passed += result.passed
            areas[area, default: (0, 0)].total += result.total
        }
        return areas.keys.sorted().map { area in
            let (passed, total) = areas[area]!
            return "\(area): \(passed)/\(total) " + String(format: "(%.2f%%)", Double(passed) / Double(max(total, 1)) * 100)
        }.joined(separator: ", ")
    }

    static func report(_ title: String, _ results: [FileResult]) -> Double {
        var lines = ["\(title)", String(repeating: "-", count: 72)]
        for result in results {
            let rate = result.total == 0 ? 1 : Double(result.passed) / Double(result.total)
            lines.append(result.file.padding(toLength: 48, withPad: " ", startingAt: 0)
                + " \(result.passed)/\(result.total)".padding(toLength: 12, withPad: " ", startingAt: 0)
                + String(format: "%6.1f%%", rate * 100))
        }
        let total = results.reduce(0) { $0 + $1.total }
        let passed = results.reduce(0) { $0 + $1.passed }
        let rate = total == 0 ? 1 : Double(passed) / Double(total)
        lines.append(String(repeating: "-", count: 72))
        lines.append("TOTAL".padding(toLength: 48, withPad: " ", startingAt: 0) + " \(passed)/\(total)  " + String(format: "%6.2f%%", rate * 100))
        lines.append("By area: " + areaSummary(results))
        let failures = results.flatMap(\.failures)
        var expectedCounts: [String: Int] = [:]
        for failure in failures {
            if let known = expectedFailures.keys.first(where: { failure.hasPrefix($0) }) {
                expectedCounts[known, default: 0] += 1
            } else {
                lines.append("  UNEXPECTED: \(failure)")
            }
        }
        for (key, count) in expectedCounts.sorted(by: { $0.key < $1.key }) {
            lines.append("  expected failure x\(count): \(key) -- \(expectedFailures[key]!)")
        }
        print(lines.joined(separator: "\n"))
        return rate
    }

    @Test func requiredSuite() throws {
        let results = try Self.suiteFiles(optional: false).map { try Self.run(file: $0) }
        let rate = Self.report("JSON Schema Test Suite draft2020-12 (required)", results)
        let unexpected = results.flatMap(\.failures).filter { failure in !Self.expectedFailures.keys.contains { failure.hasPrefix($0) } }
        #expect(unexpected.isEmpty, "unexpected failures: \(unexpected)")
        #expect(rate >= Self.requiredFloor)
    }

    @Test func optionalSuite() throws {
        let results = try Self.suiteFiles(optional: true).map { try Self.run(file: $0) }
        let rate = Self.report("JSON Schema Test Suite draft2020-12 (optional)", results)
        let unexpected = results.flatMap(\.failures).filter { failure in !Self.expectedFailures.keys.contains { failure.hasPrefix($0) } }
        #expect(unexpected.isEmpty, "unexpected failures: \(unexpected)")
        #expect(rate >= Self.optionalFloor)
    }
}
