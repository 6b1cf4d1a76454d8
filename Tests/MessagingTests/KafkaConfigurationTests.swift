import Messaging
import Testing

@Suite struct KafkaConfigurationTests {
    @Test func librdkafkaIsLinked() {
        #expect(Kafka.versionNumber >= 0x0200_0000)
        #expect(Kafka.version.hasPrefix("2."))
    }

    @Test func propertiesAreCheckedWhenSet() throws {
        let c = try KafkaConfiguration(["bootstrap.servers": "127.0.0.1:9092", "enable.idempotence": "true", "acks": "all"])
        #expect(c.get("bootstrap.servers") == "127.0.0.1:9092")
        #expect(c.get("enable.idempotence") == "true")
        #expect { try KafkaConfiguration(["no.such.property": "1"]) } throws: { ($0 as? KafkaError)?.message.contains("no.such.property") == true }
        #expect(throws: KafkaError.self) { try KafkaConfiguration(["session.timeout.ms": "not-a-number"]) }
    }
}
