import Foundation
import Messaging
import Testing

/// Wrong addresses and wrong TLS settings fail within seconds with librdkafka's own reason, not a bare timeout.
@Suite struct ConnectionFailureTests {
    /// A loopback port nothing listens on.
    static func closedPort() throws -> UInt16 { try DevelopmentBroker.freePort() }

    @Test func aClosedPortFailsAtOnceWithTheConnectError() throws {
        let bootstrap = "127.0.0.1:\(try Self.closedPort())"
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": bootstrap])
        defer { admin.close() }
        let started = Date()
        let error = try #require(throws: KafkaError.self) { try admin.checkConnection(timeout: 20) }
        #expect(Date().timeIntervalSince(started) < 5, "\(error)")
        #expect(error.description.contains("Connection refused"), "\(error)")
        #expect(error.description.contains(bootstrap), "\(error)")
        #expect(error.retriable, "a refused connection may be accepted later")
        #expect(error.cause?.message.contains("Connection refused") == true, "\(error)")
        #expect(throws: KafkaError.self) { _ = try admin.partitionCount("facts", timeout: 20) }
        #expect(Date().timeIntervalSince(started) < 10)
    }

    @Test(.enabled(if: tansuUsable, tansuReason))
    func tlsAgainstAPlaintextListenerSaysSoWithinSeconds() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let properties = ["bootstrap.servers": broker.bootstrapServers, "security.protocol": "SSL",
                          "socket.connection.setup.timeout.ms": "3000"]
        let admin = try KafkaAdmin(properties: properties)
        defer { admin.close() }
        let started = Date()
        let error = try #require(throws: KafkaError.self) { try admin.checkConnection(timeout: 20) }
        #expect(Date().timeIntervalSince(started) < 8, "\(error)")
        #expect(error.description.contains("SSL_HANDSHAKE"), "\(error)")

        // The producer's send cannot fail early (librdkafka keeps the record), but its timeout says why.
        let producer = try KafkaProducer(properties: properties)
        defer { producer.close(flushTimeout: 0) }
        let sendError = try #require(throws: KafkaError.self) {
            _ = try producer.send(topic: "facts", key: nil, payload: Array("x".utf8), timeout: 4)
        }
        #expect(sendError.code == KafkaError.Code.timedOut)
        #expect(sendError.description.contains("SSL_HANDSHAKE"), "\(sendError)")
    }

    @Test(.enabled(if: tansuUsable, tansuReason))
    func aReachableClusterPassesTheCheck() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { admin.close() }
        try admin.checkConnection(timeout: 10)
        #expect(try admin.partitionCount("missing", timeout: 10) == nil)
    }
}
