import CRdKafka
import Foundation

/// A librdkafka configuration error or failure.
public struct KafkaError: Error, CustomStringConvertible, Equatable, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "kafka: \(message)" }
}

public enum Kafka {
    /// The librdkafka version loaded at run time (which may be newer than the headers built against).
    public static var version: String { String(cString: rd_kafka_version_str()) }
    public static var versionNumber: Int { Int(rd_kafka_version()) }
}

/// A librdkafka client configuration built from string properties (the librdkafka names:
/// `bootstrap.servers`, `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …).
///
/// Every property is checked by librdkafka when set, so a typo is an error at start, not a surprise later.
public final class KafkaConfiguration: @unchecked Sendable {
    let handle: OpaquePointer
    private var consumed = false
    public private(set) var properties: [String: String] = [:]

    public init(_ properties: [String: String] = [:]) throws {
        handle = rd_kafka_conf_new()
        for (k, v) in properties.sorted(by: { $0.key < $1.key }) { try set(k, v) }
    }

    deinit { if !consumed { rd_kafka_conf_destroy(handle) } }

    public func set(_ key: String, _ value: String) throws {
        var err = [CChar](repeating: 0, count: 512)
        let rc = rd_kafka_conf_set(handle, key, value, &err, err.count)
        guard rc == RD_KAFKA_CONF_OK else {
            throw KafkaError("configuration \(key)=\(value): \(String(cString: err))")
        }
        properties[key] = value
    }

    /// Reads a property back as librdkafka holds it.
    public func get(_ key: String) -> String? {
        var size = 0
        guard rd_kafka_conf_get(handle, key, nil, &size) == RD_KAFKA_CONF_OK, size > 0 else { return nil }
        var buf = [CChar](repeating: 0, count: size)
        guard rd_kafka_conf_get(handle, key, &buf, &size) == RD_KAFKA_CONF_OK else { return nil }
        return String(cString: buf)
    }
}
