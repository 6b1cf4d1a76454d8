import Foundation
import Messaging
import Testing

@Suite(.enabled(if: tansuUsable, tansuReason))
struct BrokerRestartTests {
    @Test func developmentBrokerStopsAndRestartsOnItsPort() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let port = broker.port
        let pid = try #require(broker.processIdentifier)
        #expect(broker.isRunning)
        #expect(broker.bootstrapServers == "127.0.0.1:\(port)")
        #expect(throws: KafkaError.self) { try DevelopmentBroker(executable: tansu, port: port) }  // the port is taken
        broker.stop()
        #expect(!broker.isRunning)
        #expect(kill(pid, 0) != 0, "the broker process is still alive")
        broker.stop()
        try broker.restart()
        #expect(broker.isRunning && broker.port == port)
        #expect(broker.processIdentifier != pid)
    }

    /// Tansu keeps everything in memory: after a restart on the same port the topics, the group and
    /// the producer ids are gone. The consumer rejoins by itself once the topic exists again.
    @Test func consumerResumesAfterTheBrokerRestarts() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let log = LogCollector("restart")
        let bootstrap = broker.bootstrapServers
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": bootstrap], logger: log.logger)
        try admin.createTopics(["facts"], partitions: 1, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": bootstrap, "message.timeout.ms": "6000"],
                                         logger: log.logger)
        defer { producer.close(flushTimeout: 0) }
        let consumer = try KafkaConsumer(
            properties: groupProperties(bootstrap, group: "restart", extra: [
                "topic.metadata.refresh.interval.ms": "1000", "reconnect.backoff.max.ms": "500",
            ]),
            topics: ["facts"], logger: log.logger)
        defer { consumer.close() }

        _ = try producer.send(topic: "facts", key: nil, payload: "before".bytes, timeout: 10)
        #expect(try consumeAndCommit(consumer, count: 1, timeout: 15).map(\.payloadString) == ["before"])

        broker.stop()
        let outcome = OutcomeBox()
        let sender = Thread {
            do {
                let r = try producer.send(topic: "facts", key: nil, payload: "during".bytes, timeout: 20)
                outcome.set(.success(r.offset))
            } catch {
                outcome.set(.failure(error))
            }
        }
        sender.start()
        Thread.sleep(forTimeInterval: 0.5)
        try broker.restart()
        try admin.createTopics(["facts"], partitions: 1, replicationFactor: 1, timeout: 10)

        // The blocked send ends either way within message.timeout.ms, with a clear error when it fails:
        // Tansu forgot the producer id, and librdkafka's idempotent producer cannot re-register it.
        #expect(waitUntil(timeout: 15) { outcome.value != nil })
        log.append("send blocked across the restart ended with \(String(describing: outcome.value))")
        switch try #require(outcome.value) {
        case .success: break
        case .failure(let error):
            let kafkaError = try #require(error as? KafkaError)
            #expect(kafkaError.code == KafkaError.Code.messageTimedOut, "\(kafkaError)")
        }

        let fresh = try KafkaProducer(properties: ["bootstrap.servers": bootstrap], logger: log.logger)
        defer { fresh.close() }
        for i in 0..<3 { _ = try fresh.send(topic: "facts", key: nil, payload: "after-\(i)".bytes, timeout: 10) }
        var seen: [String] = []
        let deadline = Date(timeIntervalSinceNow: 30)
        while !seen.contains("after-2"), Date() < deadline {
            guard let m = consumer.next(timeout: 0.5) else { continue }
            seen.append(m.payloadString)
            try consumer.commit(m)
        }
        #expect(seen.contains("after-2"), "consumed \(seen); log: \(log.lines.suffix(30))")
        #expect(consumer.state == .running)
    }
}

final class OutcomeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Result<Int64, Error>?

    func set(_ r: Result<Int64, Error>) {
        lock.lock()
        stored = r
        lock.unlock()
    }

    var value: Result<Int64, Error>? {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }
}
