import CRdKafka
import Foundation
import Logging

/// Kafka cluster administration: checking that the cluster can be reached, creating topics and reading
/// their partition counts.
///
/// Default: `socket.connection.setup.timeout.ms=10000` (librdkafka's 30 s hides a TLS handshake with a
/// plaintext listener for that long); any property given overrides it.
public final class KafkaAdmin: @unchecked Sendable {  // the handle `rk` is read and closed only under `lock`; the rest is immutable
    private let owner: KafkaHandleOwner
    private let lock = NSLock()
    private var rk: OpaquePointer?
    private let bootstrapServers: String

    /// - Parameters:
    ///   - properties: librdkafka client properties; `bootstrap.servers` at least.
    ///   - logger: receives librdkafka's log lines and errors.
    public init(properties: [String: String], logger: Logger? = nil) throws {
        owner = KafkaHandleOwner(logger: logger)
        bootstrapServers = properties["bootstrap.servers"] ?? properties["metadata.broker.list"] ?? "(none)"
        var props = ["socket.connection.setup.timeout.ms": "10000"]
        props.merge(properties) { $1 }
        let conf = try KafkaConfiguration(props)
        owner.install(on: conf)
        rk = try conf.makeClient(RD_KAFKA_PRODUCER)
    }

    deinit { close() }

    /// Destroys the librdkafka handle. Idempotent; later calls throw.
    public func close() {
        lock.lock()
        let handle = rk
        rk = nil
        lock.unlock()
        if let handle { rd_kafka_destroy(handle) }
    }

    /// Creates the topics that do not exist yet; a topic that already exists counts as created
    /// (its partition count is not checked; see `partitionCount`).
    /// - Throws: `KafkaError` with the broker's code for the first topic that could not be created.
    public func createTopics(_ names: [String], partitions: Int32, replicationFactor: Int16, timeout: Double) throws {
        guard !names.isEmpty else { return }
        lock.lock()
        defer { lock.unlock() }
        guard let rk else { throw KafkaError("createTopics: the admin client is closed", code: KafkaError.Code.state) }

        var newTopics: [OpaquePointer?] = []
        defer { newTopics.forEach { rd_kafka_NewTopic_destroy($0) } }
        for name in names {
            var err = [CChar](repeating: 0, count: 512)
            guard let t = rd_kafka_NewTopic_new(name, partitions, Int32(replicationFactor), &err, err.count) else {
                throw KafkaError("topic \(name): \(String(cString: err))")
            }
            newTopics.append(t)
        }
        let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        var errbuf = [CChar](repeating: 0, count: 512)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds(timeout), &errbuf, errbuf.count)
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds(timeout), &errbuf, errbuf.count)
        let queue = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(queue) }

        let start = Date()
        rd_kafka_CreateTopics(rk, &newTopics, newTopics.count, options, queue)
        guard let event = rd_kafka_queue_poll(queue, milliseconds(timeout + 1)) else {
            rd_kafka_poll(rk, 0)
            throw KafkaError("createTopics \(names): no answer within \(timeout) s", err: RD_KAFKA_RESP_ERR__TIMED_OUT,
                             cause: owner.lastFailure(since: start))
        }
        defer { rd_kafka_event_destroy(event) }
        let err = rd_kafka_event_error(event)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            rd_kafka_poll(rk, 0)
            throw KafkaError("createTopics \(names): \(String(cString: rd_kafka_event_error_string(event)))", code: err.rawValue)
                .caused(by: owner.lastFailure(since: start))
        }
        owner.clearFailure()
        guard let result = rd_kafka_event_CreateTopics_result(event) else {
            throw KafkaError("createTopics \(names): unexpected event \(String(cString: rd_kafka_event_name(event)))")
        }
        var count = 0
        guard let topics = rd_kafka_CreateTopics_result_topics(result, &count) else { return }
        for i in 0..<count {
            let t = topics[i]
            let e = rd_kafka_topic_result_error(t)
            guard e != RD_KAFKA_RESP_ERR_NO_ERROR, e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS else { continue }
            let name = String(cString: rd_kafka_topic_result_name(t))
            let text = rd_kafka_topic_result_error_string(t).map { String(cString: $0) } ?? String(cString: rd_kafka_err2str(e))
            throw KafkaError("create topic \(name): \(text)", code: e.rawValue)
        }
    }

    /// Returns once a broker of the cluster answered a metadata request.
    /// - Throws: `KafkaError` with librdkafka's own reason (connection refused, a failed or timed-out TLS
    ///   handshake, an authentication failure) as soon as no broker could be reached after librdkafka
    ///   reported such a failure, or when `timeout` seconds passed.
    public func checkConnection(timeout: Double) throws {
        try withMetadata(allTopics: false, timeout: timeout, what: "connecting to the cluster") { _ in }
    }

    /// The number of partitions of `topic` from the cluster's metadata, or nil if the broker does not know it.
    /// (It asks for all topics, which creates none even on brokers that create topics on demand, as Tansu does.)
    /// - Throws: `KafkaError` as `checkConnection` does when the cluster cannot be reached.
    public func partitionCount(_ topic: String, timeout: Double) throws -> Int32? {
        try withMetadata(allTopics: true, timeout: timeout, what: "metadata") { metadata in
            for i in 0..<Int(metadata.pointee.topic_cnt) {
                let t = metadata.pointee.topics[i]
                if String(cString: t.topic) == topic, t.err == RD_KAFKA_RESP_ERR_NO_ERROR { return t.partition_cnt }
            }
            return nil
        }
    }

    /// Runs `body` on the cluster's metadata. Asks in growing slices (0.5 s, 1 s, then 2 s each) so that a
    /// connection failure ends the wait early: librdkafka answers `_TRANSPORT` for a slice in which no
    /// broker was up, and its log says why.
    private func withMetadata<T>(allTopics: Bool, timeout: Double, what: String,
                                 _ body: (UnsafePointer<rd_kafka_metadata>) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        guard let rk else { throw KafkaError("\(what): the admin client is closed", code: KafkaError.Code.state) }
        let deadline = Date(timeIntervalSinceNow: timeout)
        var slice = 0.5
        while true {
            let remaining = deadline.timeIntervalSinceNow
            var metadata: UnsafePointer<rd_kafka_metadata>?
            let err = rd_kafka_metadata(rk, allTopics ? 1 : 0, nil, &metadata, milliseconds(min(slice, max(0, remaining))))
            rd_kafka_poll(rk, 0)  // serves the error callback
            if err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata {
                defer { rd_kafka_metadata_destroy(metadata) }
                owner.clearFailure()
                return try body(metadata)
            }
            let cause = owner.lastFailure()
            if (err == RD_KAFKA_RESP_ERR__TRANSPORT && cause != nil) || deadline.timeIntervalSinceNow <= 0 {
                let code = err == RD_KAFKA_RESP_ERR_NO_ERROR ? RD_KAFKA_RESP_ERR__TIMED_OUT : err
                throw KafkaError("\(what) (bootstrap.servers \(bootstrapServers))", err: code, cause: cause)
            }
            slice = min(slice * 2, 2)
        }
    }
}
