import Contracts
import EditDaemon
import Foundation
import Testing

/// The query API's settings: file, environment, the token from a file or the environment, ranges.
@Suite struct QueryConfigurationTests {
    func resolve(_ json: String, environment: [String: String] = [:]) throws -> DaemonConfiguration {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-config-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let c = try DaemonConfiguration.resolve(file: file.path, environment: environment,
                                                catalog: SchemaCatalog(directory: ConfigurationTests.schemas))
        try c.validate()
        return c
    }

    @Test func limitsComeFromTheFileOrTheEnvironment() throws {
        let defaults = try resolve("{}")
        #expect(defaults.queryEnabled && defaults.query == nil)
        #expect(try defaults.queryLimits(environment: [:]) == QueryLimits())
        let file = try resolve(#"{"query": {"max_body_bytes": 4096, "max_tokens": 64, "max_concurrent": 2, "timeout_ms": 1500}}"#)
        let l = try file.queryLimits(environment: [:])
        #expect(l.maxBodyBytes == 4096 && l.maxTokens == 64 && l.maxConcurrent == 2 && l.timeout == 1.5 && l.bearerToken == nil)
        let env = try resolve(#"{"query": {"max_tokens": 64}}"#, environment: ["MESA_QUERY_MAX_TOKENS": "128", "MESA_QUERY_MAX_CONCURRENT": "8",
                                                                             "MESA_QUERY_TIMEOUT_MS": "2000", "MESA_QUERY": "false"])
        let e = try env.queryLimits(environment: [:])
        #expect(e.maxTokens == 128 && e.maxConcurrent == 8 && e.timeout == 2 && !env.queryEnabled)
        #expect(throws: SetupError.self) { try resolve(#"{"query": {"max_tokens": 0}}"#) }
        #expect(throws: SetupError.self) { try resolve(#"{"query": {"bearer_token": "x"}}"#) }
        #expect(throws: SetupError.self) { try resolve("{}", environment: ["MESA_QUERY_MAX_CONCURRENT": "0"]) }
        #expect(throws: SetupError.self) { try resolve("{}", environment: ["MESA_QUERY": "maybe"]) }
    }

    /// The token comes from a file (whitespace around it dropped) or from MESA_QUERY_TOKEN, never
    /// both, never empty, and never lands in the configuration.
    @Test func theTokenComesFromAFileOrTheEnvironment() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let token = dir.appendingPathComponent("token")
        try Data("  s3cret\n".utf8).write(to: token)
        let fromFile = try resolve(#"{"query": {"token_file": "\#(token.path)"}}"#)
        #expect(try fromFile.queryLimits(environment: [:]).bearerToken == "s3cret")
        #expect(!String(describing: fromFile).contains("s3cret"))
        let fromEnvFile = try resolve("{}", environment: ["MESA_QUERY_TOKEN_FILE": token.path])
        #expect(try fromEnvFile.queryLimits(environment: [:]).bearerToken == "s3cret")
        #expect(try resolve("{}").queryLimits(environment: ["MESA_QUERY_TOKEN": "from-env"]).bearerToken == "from-env")
        #expect(throws: SetupError.self) { try fromFile.queryLimits(environment: ["MESA_QUERY_TOKEN": "from-env"]) }
        let empty = dir.appendingPathComponent("empty")
        try Data("\n".utf8).write(to: empty)
        #expect(throws: SetupError.self) { try resolve(#"{"query": {"token_file": "\#(empty.path)"}}"#).queryLimits(environment: [:]) }
        #expect(throws: SetupError.self) { try resolve(#"{"query": {"token_file": "\#(dir.path)/missing"}}"#).queryLimits(environment: [:]) }
        #expect(throws: SetupError.self) { try resolve("{}").queryLimits(environment: ["MESA_QUERY_TOKEN": "two words"]) }
    }

    @Test func loopbackAddressesAreRecognized() throws {
        for a in ["127.0.0.1:9464", "127.1.2.3:1", "localhost:9464", "[::1]:9464"] { #expect(try HTTPListenAddress(parsing: a).isLoopback, "\(a)") }
        for a in ["0.0.0.0:9464", "[::]:9464", "10.0.0.1:80", "example.com:80"] { #expect(try !HTTPListenAddress(parsing: a).isLoopback, "\(a)") }
    }
}
