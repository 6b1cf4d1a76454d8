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

    @Test func secretKeysAreRecognizedInAnyCase() {
        for key in ["sasl.password", "ssl.key.password", "ssl.key.pem", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
                    "SASL.PASSWORD", "my.Api_Token", "aws.credentials", "sasl.pasword"] {
            #expect(Kafka.isSecret(key), "\(key)")
            #expect(Kafka.redacted("hunter2", key: key) == "[redacted]", "\(key)")
        }
        for key in ["bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.username", "group.id", "ssl.ca.location"] {
            #expect(!Kafka.isSecret(key), "\(key)")
            #expect(Kafka.redacted("hunter2", key: key) == "hunter2", "\(key)")
        }
        #expect(Kafka.redacted(["sasl.password": "hunter2", "sasl.username": "alice"]) == ["sasl.password": "[redacted]", "sasl.username": "alice"])
        #expect(Kafka.describe(key: "ssl.key.pem", value: "-----BEGIN") == "ssl.key.pem=[redacted]")
    }

    @Test func aMistypedSecretKeyIsNamedWithoutItsValue() throws {
        #expect(Kafka.propertyNames.contains("sasl.password"))
        #expect(Kafka.propertyNames.contains("acks"))  // topic properties too
        #expect(!Kafka.propertyNames.contains("opaque"))  // set through a dedicated API only
        #expect(Kafka.closestProperty(to: "sasl.pasword") == "sasl.password")
        #expect(Kafka.closestProperty(to: "completely.unrelated.thing") == nil)

        let error = try #require(throws: KafkaError.self) { try KafkaConfiguration(["sasl.pasword": "hunter2"]) }
        #expect(!error.description.contains("hunter2"), "\(error)")
        #expect(error.description.contains("sasl.pasword"))
        #expect(error.description.contains("did you mean sasl.password?"), "\(error)")
    }

    @Test func descriptionsRedactSecrets() throws {
        let c = try KafkaConfiguration(["sasl.password": "hunter2", "sasl.username": "alice"])
        #expect(c.description == "KafkaConfiguration(sasl.password=[redacted], sasl.username=alice)")
        // An invalid value of a property that is not a secret is shown: it helps.
        let error = try #require(throws: KafkaError.self) { try KafkaConfiguration(["security.protocol": "plaintxt"]) }
        #expect(error.description.contains("security.protocol=plaintxt"), "\(error)")
    }
}
