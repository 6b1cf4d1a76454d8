import CRdKafka

/// One Kafka record header. Kafka allows repeated keys and a null value.
public struct KafkaHeader: Equatable, Hashable, Sendable {
    public var key: String
    public var value: [UInt8]?

    public init(key: String, value: [UInt8]?) {
        self.key = key
        self.value = value
    }

    /// A header whose value is the UTF-8 bytes of `value`.
    public init(key: String, string value: String) {
        self.init(key: key, value: Array(value.utf8))
    }

    /// The value decoded as UTF-8, if it is present and valid UTF-8.
    public var stringValue: String? {
        value.flatMap { String(validating: $0, as: UTF8.self) }
    }
}

/// A consumed Kafka record, copied out of librdkafka (it holds no librdkafka memory).
public struct KafkaMessage: Equatable, Hashable, Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var payload: [UInt8]
    public var headers: [KafkaHeader]
    /// The record timestamp in milliseconds since the epoch (create or log-append time), if the broker sent one.
    public var timestamp: Int64?

    public init(topic: String, partition: Int32, offset: Int64, key: [UInt8]?, payload: [UInt8],
                headers: [KafkaHeader] = [], timestamp: Int64? = nil) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.payload = payload
        self.headers = headers
        self.timestamp = timestamp
    }

    /// The value of the last header named `key` (Kafka headers may repeat; the last one wins).
    public func header(_ key: String) -> [UInt8]? {
        headers.last(where: { $0.key == key })?.value
    }

    /// "topic/partition", the key used by `KafkaConsumer.lag()`.
    public var partitionKey: String { "\(topic)/\(partition)" }

    /// Copies a message out of librdkafka (the caller still destroys `m`).
    init(copying m: UnsafePointer<rd_kafka_message_t>) {
        let rm = m.pointee
        topic = rm.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        partition = rm.partition
        offset = rm.offset
        key = rm.key.map { Array(UnsafeRawBufferPointer(start: $0, count: rm.key_len)) }
        payload = rm.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: rm.len)) } ?? []
        var tsType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(m, &tsType)
        timestamp = tsType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts < 0 ? nil : ts
        headers = []
        var hdrs: OpaquePointer?
        if rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
            var i = 0
            while true {
                var name: UnsafePointer<CChar>?
                var value: UnsafeRawPointer?
                var size = 0
                guard rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR else { break }
                headers.append(KafkaHeader(key: name.map { String(cString: $0) } ?? "",
                                           value: value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) }))
                i += 1
            }
        }
    }
}
