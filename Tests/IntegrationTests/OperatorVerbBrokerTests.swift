import Foundation
import Messaging
import TestSupport
import Testing

/// The operator verbs (the `mesa` executable) against a broker they cannot use: a closed port, and TLS
/// against Tansu's plaintext listener. Each run is bounded in time.
@Suite struct OperatorVerbBrokerTests {
    /// Runs `mesa args` and kills it after `limit` seconds; returns its status, output and run time.
    static func mesa(_ args: [String], limit: Double = 25) throws -> (status: Int32, output: String, seconds: Double) {
        let p = Process()
        p.executableURL = DaemonHarness.executable
        p.arguments = args
        var env = mesaChildEnvironment()
        for k in ["MESA_CONFIG", "MESA_KAFKA_BOOTSTRAP_SERVERS"] { env[k] = nil }
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        let started = Date()
        try p.run()
        let killer = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + limit, execute: killer)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        killer.cancel()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self), Date().timeIntervalSince(started))
    }

    /// The verbs that talk to the broker, with the arguments they need besides the broker's.
    static let verbs: [[String]] = [
        ["results"],
        ["results", "--dead-letters"],
        ["publish", "--subject", "Paris", "--prompt", "{} is in", "--target-new", "Rome", "--model-name", "tiny"],
        ["rollback", "--to", "1", "--model-name", "tiny"],
    ]

    @Test func verbsFailAtOnceOnAClosedPort() throws {
        let bootstrap = "127.0.0.1:\(try DevelopmentBroker.freePort())"
        for verb in Self.verbs {
            let r = try Self.mesa(verb + ["--bootstrap-servers", bootstrap])
            #expect(r.status != 0, "\(verb): \(r.output)")
            #expect(r.output.contains("Connection refused"), "\(verb): \(r.output)")
            #expect(r.seconds < 15, "\(verb) took \(r.seconds) s")
        }
    }

    @Test func verbsNameTheTLSFailureAgainstAPlaintextBroker() throws {
        let broker = try SharedBroker.get()
        for verb in [Self.verbs[0], Self.verbs[2]] {
            let r = try Self.mesa(verb + ["--bootstrap-servers", broker.bootstrapServers, "--kafka-property", "security.protocol=SSL"])
            #expect(r.status != 0, "\(verb): \(r.output)")
            #expect(r.output.contains("SSL_HANDSHAKE"), "\(verb): \(r.output)")
            #expect(r.seconds < 15, "\(verb) took \(r.seconds) s")
        }
    }

    @Test func aMistypedSecretPropertyIsNamedWithoutItsValue() throws {
        let r = try Self.mesa(["results", "--bootstrap-servers", "127.0.0.1:1", "--kafka-property", "sasl.pasword=hunter2"])
        #expect(r.status != 0)
        #expect(r.output.contains("sasl.pasword") && r.output.contains("sasl.password"), "\(r.output)")
        #expect(!r.output.contains("hunter2"), "\(r.output)")
        let noEquals = try Self.mesa(["results", "--kafka-property", "sasl.password:hunter2"])
        #expect(noEquals.status != 0)
        #expect(!noEquals.output.contains("hunter2"), "\(noEquals.output)")
    }
}
