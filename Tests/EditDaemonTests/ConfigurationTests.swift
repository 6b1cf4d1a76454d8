import Contracts
import EditDaemon
import Foundation
import Testing

@Suite struct ConfigurationTests {
    static let schemas = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Schemas")

    func resolve(_ json: String, environment: [String: String] = [:]) throws -> DaemonConfiguration {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-config-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return try DaemonConfiguration.resolve(file: file.path, environment: environment, catalog: SchemaCatalog(directory: Self.schemas))
    }

    @Test func keyedByModelComesFromTheFileOrTheEnvironment() throws {
        #expect(try resolve("{}").keyedByModel == false)
        #expect(try resolve(#"{"kafka": {"keyed_by_model": true}}"#).keyedByModel)
        #expect(try resolve(#"{"kafka": {"keyed_by_model": true}}"#, environment: ["MESA_KAFKA_KEYED_BY_MODEL": "false"]).keyedByModel == false)
        #expect(try resolve("{}", environment: ["MESA_KAFKA_KEYED_BY_MODEL": "true"]).keyedByModel)
        #expect(throws: SetupError.self) { try resolve("{}", environment: ["MESA_KAFKA_KEYED_BY_MODEL": "yes"]) }
        let refused = try #require(throws: SetupError.self) { try resolve(#"{"kafka": {"keyed_by_model": "true"}}"#) }
        #expect(refused.cause is SchemaCatalogError, "the schema's refusal is kept as the cause")
    }

    @Test func logSettingsComeFromTheFileOrTheEnvironment() throws {
        #expect(try resolve("{}").logLevel == .info)
        #expect(try resolve("{}").logFormat == .text)
        let file = try resolve(#"{"log": {"level": "debug", "format": "json"}}"#)
        #expect(try file.logLevel == .debug && file.logFormat == .json)
        let env = try resolve(#"{"log": {"level": "debug", "format": "json"}}"#, environment: ["MESA_LOG_LEVEL": "warning", "MESA_LOG_FORMAT": "text"])
        #expect(try env.logLevel == .warning && env.logFormat == .text)
        #expect(throws: SetupError.self) { try resolve(#"{"log": {"level": "loud"}}"#) }
        #expect(throws: SetupError.self) { try resolve("{}", environment: ["MESA_LOG_FORMAT": "xml"]) }
    }

    @Test func printingTheConfigurationHidesSecrets() throws {
        let c = try resolve(#"{"kafka": {"properties": {"sasl.password": "hunter2", "ssl.key.pem": "PEMDATA", "sasl.username": "alice"}}}"#)
        #expect(c.kafka?.properties?["sasl.password"] == "hunter2")  // the value itself is intact
        for text in [String(describing: c), String(reflecting: c), "\(c.kafka!)"] {
            #expect(!text.contains("hunter2") && !text.contains("PEMDATA"), "\(text)")
            #expect(text.contains("[redacted]") && text.contains("alice"), "\(text)")
        }
        var dumped = ""
        dump(c, to: &dumped)
        #expect(!dumped.contains("hunter2"), "\(dumped)")
    }
}
