import CRdKafka
import Foundation
import Logging

/// librdkafka's in-process mock Kafka cluster (`test.mock.num.brokers`), for fault-injection tests:
/// clients connect to `bootstrapServers` like to a real cluster, and the test injects protocol errors,
/// takes brokers down or slows them.
///
/// Kafka API keys for `pushRequestErrors`: Produce 0, Fetch 1, ListOffsets 2, Metadata 3,
/// OffsetCommit 8, OffsetFetch 9, FindCoordinator 10, JoinGroup 11, Heartbeat 12, SyncGroup 14,
/// InitProducerId 22.
public final class KafkaMockCluster: @unchecked Sendable {  // immutable after init; librdkafka's handles and mock-cluster calls are thread-safe
    private let owner: KafkaHandleOwner
    private let rk: OpaquePointer
    private let cluster: OpaquePointer

    /// The cluster's brokers, for `bootstrap.servers`.
    public let bootstrapServers: String

    /// Starts a cluster of `brokers` brokers (ids 1…brokers) inside this process.
    public init(brokers: Int = 3, logger: Logger? = nil) throws {
        owner = KafkaHandleOwner(logger: logger)
        let conf = try KafkaConfiguration(["test.mock.num.brokers": String(brokers)])
        owner.install(on: conf)
        rk = try conf.makeClient(RD_KAFKA_PRODUCER)
        guard let c = rd_kafka_handle_mock_cluster(rk) else {
            rd_kafka_destroy(rk)
            throw KafkaError("librdkafka created no mock cluster")
        }
        cluster = c
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(c))
    }

    /// Stops the cluster (it lives as long as its librdkafka handle). Clients connected to it see
    /// their brokers go away.
    deinit { rd_kafka_destroy(rk) }

    /// Creates a topic (the mock also creates topics on demand, with `partitions` defaulting to 4).
    public func createTopic(_ name: String, partitions: Int32, replicationFactor: Int32 = 1) throws {
        let err = rd_kafka_mock_topic_create(cluster, name, partitions, replicationFactor)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("mock topic \(name)", err: err) }
    }

    /// Makes the next `errors.count` requests with API key `apiKey` (to any broker) fail with these
    /// Kafka error codes, in order.
    public func pushRequestErrors(apiKey: Int16, errors: [Int32]) {
        let codes = errors.map { rd_kafka_resp_err_t(rawValue: $0) }
        rd_kafka_mock_push_request_errors_array(cluster, apiKey, codes.count, codes)
    }

    /// Drops the errors still queued for `apiKey`.
    public func clearRequestErrors(apiKey: Int16) {
        rd_kafka_mock_clear_request_errors(cluster, apiKey)
    }

    /// Takes broker `id` down: its connections close and new ones are refused.
    public func setBrokerDown(_ id: Int32) throws {
        let err = rd_kafka_mock_broker_set_down(cluster, id)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("mock broker \(id) down", err: err) }
    }

    /// Brings broker `id` back up.
    public func setBrokerUp(_ id: Int32) throws {
        let err = rd_kafka_mock_broker_set_up(cluster, id)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("mock broker \(id) up", err: err) }
    }

    /// Delays every response of broker `id` by `milliseconds` (0 to stop).
    public func setRoundTripTime(broker id: Int32, milliseconds: Int32) throws {
        let err = rd_kafka_mock_broker_set_rtt(cluster, id, milliseconds)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("mock broker \(id) rtt", err: err) }
    }

    /// Makes broker `id` the leader of `topic`/`partition`.
    public func setPartitionLeader(topic: String, partition: Int32, broker id: Int32) throws {
        let err = rd_kafka_mock_partition_set_leader(cluster, topic, partition, id)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError("mock leader of \(topic)/\(partition)", err: err) }
    }

    /// Kafka protocol error codes commonly injected with `pushRequestErrors`.
    public enum ErrorCode {
        public static let notLeaderForPartition = RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION.rawValue
        public static let requestTimedOut = RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT.rawValue
        public static let coordinatorLoadInProgress = RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS.rawValue
        public static let coordinatorNotAvailable = RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE.rawValue
        public static let notCoordinator = RD_KAFKA_RESP_ERR_NOT_COORDINATOR.rawValue
    }

    /// Kafka API keys for `pushRequestErrors`.
    public enum APIKey {
        public static let produce: Int16 = 0
        public static let fetch: Int16 = 1
        public static let offsetCommit: Int16 = 8
        public static let heartbeat: Int16 = 12
    }
}
