import Messaging
import Testing

@Suite struct KafkaErrorTests {
    @Test func retriableFollowsTheCodeClass() {
        #expect(KafkaError("x", code: KafkaError.Code.timedOut).retriable)
        #expect(KafkaError("x", code: 7).retriable, "REQUEST_TIMED_OUT")
        #expect(KafkaError("x", code: 14).retriable, "COORDINATOR_LOAD_IN_PROGRESS")
        #expect(!KafkaError("x", code: KafkaError.Code.messageTooLarge).retriable)
        #expect(!KafkaError("x", code: KafkaError.Code.fatal).retriable)
        #expect(!KafkaError("x", code: 29).retriable, "TOPIC_AUTHORIZATION_FAILED")
        #expect(!KafkaError("x").retriable)
    }

    @Test func theCauseIsKeptAndQuoted() {
        let cause = KafkaError("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused", code: -195)
        let error = KafkaError("metadata", code: KafkaError.Code.timedOut).caused(by: cause)
        #expect(error.cause == cause)
        #expect(error.message == "metadata (librdkafka: \(cause.message))")
        #expect(error.code == KafkaError.Code.timedOut && error.retriable)
        #expect(KafkaError("x").caused(by: nil) == KafkaError("x"))
    }
}
