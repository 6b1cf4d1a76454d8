import CRdKafka
import Foundation

/// Kafka cluster administration: creating topics (and reading their partition counts).
public final class KafkaAdmin: @unchecked Sendable {
    private let owner: KafkaHandleOwner
    private let lock = NSLock()
    private var rk: OpaquePointer?

    /// - Parameters:
    ///   - properties: librdkafka client properties; `bootstrap.servers` at least.
    ///   - logger: receives librdkafka's log lines and errors.
    public init(properties: [String: String], logger: KafkaLogger? = nil) throws {
        owner = KafkaHandleOwner(logger: logger)
        let conf = try KafkaConfiguration(properties)
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

        rd_kafka_CreateTopics(rk, &newTopics, newTopics.count, options, queue)
        guard let event = rd_kafka_queue_poll(queue, milliseconds(timeout + 1)) else {
            throw KafkaError("createTopics \(names): no answer within \(timeout) s", code: KafkaError.Code.timedOut)
        }
        defer { rd_kafka_event_destroy(event) }
        let err = rd_kafka_event_error(event)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError("createTopics \(names): \(String(cString: rd_kafka_event_error_string(event)))", code: err.rawValue)
        }
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

    /// The number of partitions of `topic` from the cluster's metadata, or nil if the broker does not know it.
    /// (It asks for all topics, which creates none even on brokers that create topics on demand, as Tansu does.)
    public func partitionCount(_ topic: String, timeout: Double) throws -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        guard let rk else { throw KafkaError("partitionCount: the admin client is closed", code: KafkaError.Code.state) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 1, nil, &metadata, milliseconds(timeout))
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { throw KafkaError("metadata", err: err) }
        defer { rd_kafka_metadata_destroy(metadata) }
        for i in 0..<Int(metadata.pointee.topic_cnt) {
            let t = metadata.pointee.topics[i]
            if String(cString: t.topic) == topic, t.err == RD_KAFKA_RESP_ERR_NO_ERROR { return t.partition_cnt }
        }
        return nil
    }
}
