import Foundation
import Messaging
import Testing

/// The producer, consumer and admin client against a real Tansu broker started by each test.
@Suite(.enabled(if: tansuUsable, tansuReason))
struct TansuConsumerTests {
    @Test func committedMessagesAreNotRedeliveredToTheGroup() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let log = LogCollector("commit")
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers], logger: log.logger)
        try admin.createTopics(["facts"], partitions: 3, replicationFactor: 1, timeout: 10)
        try admin.createTopics(["facts"], partitions: 3, replicationFactor: 1, timeout: 10)  // exists: still fine
        #expect(try admin.partitionCount("facts", timeout: 5) == 3)

        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers], logger: log.logger)
        var sent: [String: (partition: Int32, offset: Int64)] = [:]
        for i in 0..<12 {
            let headers = [KafkaHeader(key: "seq", string: String(i)), KafkaHeader(key: "empty", value: nil)]
            sent["event-\(i)"] = try producer.send(topic: "facts", key: "key-\(i)".bytes, payload: "event-\(i)".bytes,
                                                   headers: headers, timeout: 10)
        }
        #expect(Set(sent.values.map(\.partition)).count > 1)

        let first = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "editors"),
                                      topics: ["facts"], logger: log.logger)
        #expect(first.state == .running)
        let got = try consumeAndCommit(first, count: 12, timeout: 20)
        #expect(got.count == 12, "consumed \(got.count); log: \(log.lines.suffix(20))")
        for m in got {
            let i = Int(m.payloadString.dropFirst("event-".count))!
            #expect(m.key == "key-\(i)".bytes)
            #expect(m.headers == [KafkaHeader(key: "seq", string: String(i)), KafkaHeader(key: "empty", value: nil)])
            #expect(sent[m.payloadString]! == (m.partition, m.offset))
            #expect(m.timestamp != nil)
        }
        let lag = first.lag()
        #expect(Set(lag.keys) == Set(sent.values.map { "facts/\($0.partition)" }), "\(lag)")
        #expect(lag.values.allSatisfy { $0 == 0 }, "lag after committing everything: \(lag)")
        first.close()
        #expect(first.state == .closed)
        first.close()  // idempotent

        let second = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "editors"),
                                       topics: ["facts"], logger: log.logger)
        defer { second.close() }
        #expect(waitUntil(timeout: 15) { second.assignment.count == 3 }, "no assignment; log: \(log.lines.suffix(20))")
        #expect(second.next(timeout: 2) == nil, "a committed message came back")
        _ = try producer.send(topic: "facts", key: nil, payload: "event-12".bytes, timeout: 10)
        let fresh = try #require(second.next(timeout: 10))
        #expect(fresh.payloadString == "event-12")
        #expect(fresh.key == nil && fresh.headers.isEmpty)
        try second.commit(fresh)

        producer.close()
        producer.close()
        #expect(throws: KafkaError.self) { try producer.send(topic: "facts", key: nil, payload: [], timeout: 1) }
    }

    @Test func uncommittedAndReleasedMessagesAreRedelivered() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let log = LogCollector("redeliver")
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["edits"], partitions: 1, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers], logger: log.logger)
        defer { producer.close() }
        for i in 0..<3 { _ = try producer.send(topic: "edits", key: nil, payload: "e\(i)".bytes, timeout: 10) }

        let first = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "g"),
                                      topics: ["edits"], logger: log.logger, drainTimeout: 0.5)
        let m0 = try #require(first.next(timeout: 15), "log: \(log.lines.suffix(20))")
        #expect(m0.offset == 0)
        #expect(first.next(timeout: 0.3) == nil, "a second message was handed out while one is in flight")
        #expect(first.lag() == ["edits/0": 3])
        first.release(m0)
        let again = try #require(first.next(timeout: 5))
        #expect(again == m0)
        try first.commit(again)
        let m1 = try #require(first.next(timeout: 5))
        #expect(m1.offset == 1)
        #expect(first.lag() == ["edits/0": 2])
        // Close with m1 in flight: the revocation waits drainTimeout for it, then gives the partition up uncommitted.
        first.close()
        #expect(log.contains("drain timeout"))
        #expect(throws: KafkaError.self) { try first.commit(m1) }

        let second = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "g"),
                                       topics: ["edits"], logger: log.logger)
        defer { second.close() }
        let redelivered = try consumeAndCommit(second, count: 2, timeout: 15)
        #expect(redelivered.map(\.offset) == [1, 2])
        #expect(redelivered.map(\.payloadString) == ["e1", "e2"])
    }

    @Test func deeperBufferKeepsPartitionOrderWithoutGapsOrDuplicates() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["stream"], partitions: 2, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { producer.close() }
        var sent: [String: [Int64]] = [:]
        for i in 0..<40 {
            let r = try producer.send(topic: "stream", key: "k\(i % 5)".bytes, payload: "\(i)".bytes, timeout: 10)
            sent["stream/\(r.partition)", default: []].append(r.offset)
        }
        let consumer = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "deep"),
                                         topics: ["stream"], maxBufferedPerPartition: 4)
        defer { consumer.close() }
        var got: [String: [Int64]] = [:]
        var released: Set<String> = []
        let deadline = Date(timeIntervalSinceNow: 20)
        while got.values.map(\.count).reduce(0, +) < 40, Date() < deadline {
            guard let m = consumer.next(timeout: 0.5) else { continue }
            // A retry now and then: the released message comes back before anything newer of its partition.
            if m.offset % 5 == 2, released.insert("\(m.partitionKey)@\(m.offset)").inserted {
                consumer.release(m)
                continue
            }
            try consumer.commit(m)
            got[m.partitionKey, default: []].append(m.offset)
        }
        #expect(got == sent)
        #expect(released.count == sent.values.map { $0.filter { $0 % 5 == 2 }.count }.reduce(0, +))
        #expect(consumer.next(timeout: 1) == nil)
    }

    /// `nextBatch` hands out consecutive messages of one partition, waits `linger` for a batch to
    /// fill, and hands out nothing more until the batch is settled: committing its last message
    /// settles all of it; releasing it gives every message back in order.
    @Test func batchesAreConsecutiveAndSettledTogether() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["batched"], partitions: 1, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { producer.close() }
        for i in 0..<7 { _ = try producer.send(topic: "batched", key: nil, payload: "b\(i)".bytes, timeout: 10) }
        let consumer = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "batcher"),
                                         topics: ["batched"], maxBufferedPerPartition: 4)
        defer { consumer.close() }
        let first = consumer.nextBatch(max: 3, linger: 2, timeout: 15)
        #expect(first.map(\.offset) == [0, 1, 2])
        #expect(consumer.nextBatch(max: 3, linger: 0, timeout: 0.3).isEmpty, "a second batch while one is in flight")
        consumer.release(first)
        let again = consumer.nextBatch(max: 3, linger: 2, timeout: 5)
        #expect(again == first)
        try consumer.commit(again[2])
        #expect(waitUntil(timeout: 10) { consumer.lag() == ["batched/0": 4] }, "\(consumer.lag())")
        let second = consumer.nextBatch(max: 3, linger: 2, timeout: 5)
        #expect(second.map(\.payloadString) == ["b3", "b4", "b5"])
        try consumer.commit(second[2])
        // One message left: the batch waits out its linger and comes back short.
        let t0 = Date()
        let last = consumer.nextBatch(max: 3, linger: 0.5, timeout: 5)
        #expect(last.map(\.offset) == [6] && Date().timeIntervalSince(t0) >= 0.45)
        try consumer.commit(last[0])
        #expect(consumer.nextBatch(max: 3, linger: 0, timeout: 0.5).isEmpty)
        #expect(consumer.lag() == ["batched/0": 0])
    }

    @Test func cloudEventBinaryHeadersRoundTrip() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["events"], partitions: 1, replicationFactor: 1, timeout: 10)
        let event = CloudEvent(id: "evt-1", source: "urn:mesa:test", type: "mesa.fact.update",
                               time: Date(timeIntervalSince1970: 1_714_566_600.125), subject: "Eiffel Tower",
                               datacontenttype: "application/json", extensions: ["partitionkey": "paris"],
                               data: #"{"subject":"Eiffel Tower","target":"Rome"}"#.bytes)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { producer.close() }
        _ = try producer.send(topic: "events", key: "paris".bytes, payload: event.data, headers: event.kafkaHeaders(), timeout: 10)
        let consumer = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "ce"), topics: ["events"])
        defer { consumer.close() }
        let m = try #require(consumer.next(timeout: 15))
        #expect(m.header("ce_id") == "evt-1".bytes)
        #expect(m.header("content-type") == "application/json".bytes)
        let decoded = try #require(try CloudEvent.decode(m))
        #expect(decoded == event)
        try consumer.commit(m)
    }

    @Test func rebalanceWaitsForTheMessageInFlight() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let logA = LogCollector("drain-a")
        let logB = LogCollector("drain-b")
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["shared"], partitions: 2, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { producer.close() }
        _ = try producer.send(topic: "shared", key: "k".bytes, payload: "only".bytes, timeout: 10)

        let a = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "pair"), topics: ["shared"],
                                  logger: logA.logger, drainTimeout: 20)
        defer { a.close() }
        let m = try #require(a.next(timeout: 15))
        #expect(a.assignment.count == 2)
        // A second member joins: the group rebalances and A's revocation waits for m.
        let b = try KafkaConsumer(properties: groupProperties(broker.bootstrapServers, group: "pair"), topics: ["shared"],
                                  logger: logB.logger)
        defer { b.close() }
        #expect(waitUntil(timeout: 20) { logA.contains("waiting up to") }, "no revocation; log: \(logA.lines.suffix(20))")
        try a.commit(m)
        #expect(waitUntil(timeout: 20) { a.assignment.count == 1 && b.assignment.count == 1 },
                "assignments \(a.assignment) \(b.assignment)")
        #expect(!logA.contains("drain timeout"))
        #expect(b.next(timeout: 2) == nil, "the committed message was redelivered to the new member")
        #expect(a.next(timeout: 0.5) == nil)
    }

    @Test func longWorkOnAPausedPartitionKeepsTheMembership() throws {
        let broker = try DevelopmentBroker(executable: tansu)
        defer { broker.stop() }
        let log = LogCollector("long")
        try KafkaAdmin(properties: ["bootstrap.servers": broker.bootstrapServers])
            .createTopics(["slow"], partitions: 1, replicationFactor: 1, timeout: 10)
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers])
        defer { producer.close() }
        for i in 0..<2 { _ = try producer.send(topic: "slow", key: nil, payload: "s\(i)".bytes, timeout: 10) }

        let consumer = try KafkaConsumer(
            properties: groupProperties(broker.bootstrapServers, group: "slow", extra: ["max.poll.interval.ms": "7000"]),
            topics: ["slow"], logger: log.logger, maxBufferedPerPartition: 1)
        defer { consumer.close() }
        let m0 = try #require(consumer.next(timeout: 15))
        // The "edit": longer than max.poll.interval.ms. The partition is paused from the moment m0 was
        // handed out, and the poll thread keeps polling.
        Thread.sleep(forTimeInterval: 9)
        _ = try producer.send(topic: "slow", key: nil, payload: "s2".bytes, timeout: 10)
        try consumer.commit(m0)
        #expect(!log.contains("revoked"), "the member lost its partitions: \(log.lines.suffix(20))")
        #expect(!log.contains("MAX_POLL") && !log.contains("maximum poll interval"))
        let rest = try consumeAndCommit(consumer, count: 2, timeout: 10)
        #expect(rest.map(\.payloadString) == ["s1", "s2"])
        #expect(consumer.assignment == ["slow/0"])
    }
}

extension KafkaMessage {
    var payloadString: String { payload.utf8String }
}
