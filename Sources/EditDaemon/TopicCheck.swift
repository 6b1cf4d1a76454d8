import Foundation
import Messaging

/// Refuses a fact-update topic with more than one partition unless the operator stated that every
/// producer keys fact updates by model name (`kafka.keyed_by_model`).
///
/// Edits are order-dependent: each one changes the weights the next one is computed on, and a rollback
/// or a snapshot refers to the edits before it. Kafka orders records only within a partition, so
/// unkeyed events spread over several partitions (as Tansu's auto-created 4-partition topics do) are
/// applied in a different order than they were published. Keying every event by model name puts one
/// model's events into one partition, in order; only the operator can vouch for the producers.
///
/// Call it after the topics were created (`kafka.create_topics`): a topic that does not exist yet has
/// nothing to order and passes.
/// - Parameters:
///   - properties: librdkafka properties, `bootstrap.servers` at least (`DaemonConfiguration.kafkaProperties`).
///   - topics: the topic names; `topics.factUpdates` is checked.
///   - keyedByModel: `DaemonConfiguration.keyedByModel`.
///   - timeout: how long to wait for the cluster's metadata.
/// - Throws: `SetupError` saying why and how to fix it, or when the metadata cannot be read (with
///   librdkafka's reason).
public func checkInputPartitions(properties: [String: String], topics: Topics, keyedByModel: Bool, timeout: Double = 15) throws {
    let topic = topics.factUpdates
    let partitions: Int32?
    do {
        let admin = try KafkaAdmin(properties: properties)
        defer { admin.close() }
        partitions = try admin.partitionCount(topic, timeout: timeout)
    } catch {
        throw SetupError("cannot read the partition count of \(topic)", cause: error)
    }
    guard let partitions, partitions > 1, !keyedByModel else { return }
    throw SetupError("""
        the fact-update topic \(topic) has \(partitions) partitions: edits are order-dependent (each one builds on the \
        weights the previous ones left), but Kafka orders records only within a partition, so events spread over \
        \(partitions) partitions would be applied in a different order than they were published. Fix: create \(topic) \
        with one partition (e.g. kafka-topics.sh --create --topic \(topic) --partitions 1), or make every producer key \
        fact updates by model name (one model's events then share a partition) and opt in with \
        kafka.keyed_by_model: true (MESA_KAFKA_KEYED_BY_MODEL=true)
        """)
}
