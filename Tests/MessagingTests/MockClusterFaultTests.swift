import Foundation
import Messaging
import Testing

/// Fault injection with librdkafka's in-process mock cluster: the producer and consumer are the real
/// ones, talking the Kafka protocol to mock brokers that answer with injected errors.
@Suite struct MockClusterFaultTests {
    @Test func sendsExactlyOnceAndCommitsThroughInjectedErrors() throws {
        let log = LogCollector("mock")
        let cluster = try KafkaMockCluster(brokers: 3, logger: log.logger)
        try cluster.createTopic("facts", partitions: 1, replicationFactor: 3)
        try cluster.setPartitionLeader(topic: "facts", partition: 0, broker: 1)
        let bootstrap = cluster.bootstrapServers
        let producer = try KafkaProducer(properties: ["bootstrap.servers": bootstrap], logger: log.logger)
        defer { producer.close() }

        // Produce fails twice, then succeeds: librdkafka retries with the same sequence number.
        cluster.pushRequestErrors(apiKey: KafkaMockCluster.APIKey.produce,
                                  errors: [KafkaMockCluster.ErrorCode.notLeaderForPartition, KafkaMockCluster.ErrorCode.requestTimedOut])
        let first = try producer.send(topic: "facts", key: nil, payload: "one".bytes, timeout: 10)
        #expect(first.offset == 0)

        // The partition leader goes down while a send is blocked; it delivers once the broker is back.
        try cluster.setBrokerDown(1)
        let outcome = OutcomeBox()
        let sender = Thread {
            do { outcome.set(.success(try producer.send(topic: "facts", key: nil, payload: "two".bytes, timeout: 20).offset)) }
            catch { outcome.set(.failure(error)) }
        }
        sender.start()
        Thread.sleep(forTimeInterval: 1)
        #expect(outcome.value == nil, "the send returned while the leader was down")
        try cluster.setBrokerUp(1)
        #expect(waitUntil(timeout: 15) { outcome.value != nil })
        #expect(try outcome.value?.get() == 1)

        let consumer = try KafkaConsumer(properties: groupProperties(bootstrap, group: "g"), topics: ["facts"], logger: log.logger)
        defer { consumer.close() }
        let m0 = try #require(consumer.next(timeout: 15), "log: \(log.lines.suffix(20))")
        #expect(m0.payloadString == "one")

        // A few transient OffsetCommit failures: commit retries and succeeds.
        cluster.pushRequestErrors(apiKey: KafkaMockCluster.APIKey.offsetCommit,
                                  errors: Array(repeating: KafkaMockCluster.ErrorCode.coordinatorLoadInProgress, count: 3))
        try consumer.commit(m0)
        cluster.clearRequestErrors(apiKey: KafkaMockCluster.APIKey.offsetCommit)

        // Persistent failures: commit surfaces a typed error and the message stays in flight.
        let m1 = try #require(consumer.next(timeout: 10))
        #expect(m1.payloadString == "two")
        cluster.pushRequestErrors(apiKey: KafkaMockCluster.APIKey.offsetCommit,
                                  errors: Array(repeating: KafkaMockCluster.ErrorCode.requestTimedOut, count: 30))
        let error = #expect(throws: KafkaError.self) { try consumer.commit(m1) }
        #expect(error?.code == KafkaMockCluster.ErrorCode.requestTimedOut)
        #expect(error?.codeName == "REQUEST_TIMED_OUT")
        #expect(error?.retriable == true, "retriable, and retried until the attempts ran out")
        cluster.clearRequestErrors(apiKey: KafkaMockCluster.APIKey.offsetCommit)
        try consumer.commit(m1)

        // Consumption continues, and every record exists exactly once.
        _ = try producer.send(topic: "facts", key: nil, payload: "three".bytes, timeout: 10)
        let m2 = try #require(consumer.next(timeout: 10))
        #expect(m2.payloadString == "three" && m2.offset == 2)
        try consumer.commit(m2)
        #expect(consumer.next(timeout: 1) == nil, "a duplicate record was delivered")
        #expect(consumer.lag() == ["facts/0": 0])
    }
}
