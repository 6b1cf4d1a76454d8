import EditDaemon
import Foundation
import Messaging
import Testing

/// `checkInputPartitions` against a real Tansu broker.
@Suite struct TopicCheckTests {
    @Test func aFactUpdateTopicWithSeveralPartitionsNeedsKeyedByModel() throws {
        let broker = try SharedBroker.get()
        let properties = ["bootstrap.servers": broker.bootstrapServers]
        let prefix = "p\(UUID().uuidString.prefix(8).lowercased())"
        let admin = try KafkaAdmin(properties: properties)
        defer { admin.close() }
        try admin.createTopics(["\(prefix).four"], partitions: 4, replicationFactor: 1, timeout: 10)
        try admin.createTopics(["\(prefix).one"], partitions: 1, replicationFactor: 1, timeout: 10)

        var four = Topics()
        four.factUpdates = "\(prefix).four"
        let error = try #require(throws: SetupError.self) {
            try checkInputPartitions(properties: properties, topics: four, keyedByModel: false)
        }
        #expect(error.message.contains("\(prefix).four has 4 partitions"), "\(error)")
        #expect(error.message.contains("order"), "\(error)")
        #expect(error.message.contains("kafka.keyed_by_model"), "\(error)")
        #expect(error.message.contains("one partition"), "\(error)")
        try checkInputPartitions(properties: properties, topics: four, keyedByModel: true)

        // The fault this check is for: Tansu creates a topic a producer names with several partitions.
        var auto = Topics()
        auto.factUpdates = "\(prefix).auto"
        let producer = try KafkaProducer(properties: properties)
        defer { producer.close() }
        _ = try producer.send(topic: auto.factUpdates, key: nil, payload: Array("{}".utf8), timeout: 10)
        #expect(try admin.partitionCount(auto.factUpdates, timeout: 10) == 4)
        #expect(throws: SetupError.self) { try checkInputPartitions(properties: properties, topics: auto, keyedByModel: false) }

        var one = Topics()
        one.factUpdates = "\(prefix).one"
        try checkInputPartitions(properties: properties, topics: one, keyedByModel: false)
        var missing = Topics()
        missing.factUpdates = "\(prefix).missing"
        try checkInputPartitions(properties: properties, topics: missing, keyedByModel: false)

        let unreachable = try #require(throws: SetupError.self) {
            try checkInputPartitions(properties: ["bootstrap.servers": "127.0.0.1:\(try DevelopmentBroker.freePort())"], topics: one,
                                     keyedByModel: false, timeout: 10)
        }
        #expect(unreachable.message.contains("Connection refused"), "\(unreachable)")
        #expect((unreachable.cause as? KafkaError)?.retriable == true, "the Kafka error is kept as the cause")
    }
}
