import CRdKafka
import Foundation

/// A librdkafka configuration error or failure.
///
/// `code` is librdkafka's `rd_kafka_resp_err_t` when the failure came from librdkafka (negative codes are
/// local to the client, positive ones are Kafka protocol errors); `codeName` is its `rd_kafka_err2name`
/// (`REQUEST_TIMED_OUT`, `_MSG_TIMED_OUT`, …). Errors raised by this module itself have `code == nil`,
/// or one of the local codes in `KafkaError.Code` when a caller may want to branch on them.
public struct KafkaError: Error, CustomStringConvertible, Equatable, Sendable {
    public var message: String
    public var code: Int32?

    public init(_ message: String) {
        self.message = message
        self.code = nil
    }

    public init(_ message: String, code: Int32) {
        self.message = message
        self.code = code
    }

    /// librdkafka's symbolic name of `code` (`rd_kafka_err2name`); local client errors start with `_`.
    public var codeName: String? {
        code.map { String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: $0))) }
    }

    public var description: String {
        if let codeName { return "kafka: \(codeName): \(message)" }
        return "kafka: \(message)"
    }

    /// librdkafka error codes a caller of this module may want to recognize without importing CRdKafka.
    public enum Code {
        /// A blocking call ran out of time (`_TIMED_OUT`).
        public static let timedOut = RD_KAFKA_RESP_ERR__TIMED_OUT.rawValue
        /// librdkafka gave up delivering a message after `message.timeout.ms` (`_MSG_TIMED_OUT`).
        public static let messageTimedOut = RD_KAFKA_RESP_ERR__MSG_TIMED_OUT.rawValue
        /// The producer hit an unrecoverable error and must be recreated (`_FATAL`).
        public static let fatal = RD_KAFKA_RESP_ERR__FATAL.rawValue
        /// The message was purged because the client is closing (`_PURGE_QUEUE`).
        public static let purgedQueue = RD_KAFKA_RESP_ERR__PURGE_QUEUE.rawValue
        /// The message was in flight when the client closed (`_PURGE_INFLIGHT`).
        public static let purgedInFlight = RD_KAFKA_RESP_ERR__PURGE_INFLIGHT.rawValue
        /// The call does not fit the client's state: it is closed, or the message is not the one in flight (`_STATE`).
        public static let state = RD_KAFKA_RESP_ERR__STATE.rawValue
        /// The message's partition was revoked from this consumer before it was committed (`_ASSIGNMENT_LOST`);
        /// its offset was not committed, so the partition's next owner redelivers it.
        public static let partitionRevoked = RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST.rawValue
        /// The record is larger than the client's `message.max.bytes` or the broker's limit (`MSG_SIZE_TOO_LARGE`).
        public static let messageTooLarge = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE.rawValue
    }
}

extension KafkaError {
    init(_ context: String, err: rd_kafka_resp_err_t) {
        self.init("\(context): \(String(cString: rd_kafka_err2str(err)))", code: err.rawValue)
    }

    /// Takes ownership of an `rd_kafka_error_t` (destroys it).
    init(_ context: String, error: OpaquePointer) {
        let code = rd_kafka_error_code(error)
        let text = String(cString: rd_kafka_error_string(error))
        rd_kafka_error_destroy(error)
        self.init("\(context): \(text)", code: code.rawValue)
    }
}

public enum Kafka {
    /// The librdkafka version loaded at run time (which may be newer than the headers built against).
    public static var version: String { String(cString: rd_kafka_version_str()) }
    public static var versionNumber: Int { Int(rd_kafka_version()) }
}

/// Receives librdkafka's log lines and client errors (called from librdkafka's own threads).
public typealias KafkaLogger = @Sendable (String) -> Void

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

    /// Creates the librdkafka handle; on success the handle owns this configuration.
    func makeClient(_ type: rd_kafka_type_t) throws -> OpaquePointer {
        precondition(!consumed, "a KafkaConfiguration creates one client")
        var err = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, handle, &err, err.count) else {
            throw KafkaError("creating the client: \(String(cString: err))")
        }
        consumed = true
        return rk
    }
}

/// The owner of a librdkafka handle: the handle's opaque points at it, so the C callbacks can reach it.
/// Every owner destroys its handle from one of its own methods, so it outlives the handle's callbacks.
class KafkaHandleOwner: @unchecked Sendable {
    let logger: KafkaLogger?

    init(logger: KafkaLogger?) { self.logger = logger }

    func log(_ line: String) { logger?(line) }

    /// Installs the log and error callbacks and makes this object the handle's opaque.
    func install(on conf: KafkaConfiguration) {
        rd_kafka_conf_set_opaque(conf.handle, Unmanaged.passUnretained(self).toOpaque())
        rd_kafka_conf_set_log_cb(conf.handle) { rk, level, facility, buf in
            guard let owner = KafkaHandleOwner.owner(of: rk) else { return }
            owner.log("librdkafka \(KafkaHandleOwner.levelName(level)) \(facility.map { String(cString: $0) } ?? ""): \(buf.map { String(cString: $0) } ?? "")")
        }
        rd_kafka_conf_set_error_cb(conf.handle) { rk, err, reason, _ in
            guard let owner = KafkaHandleOwner.owner(of: rk) else { return }
            let code = rd_kafka_resp_err_t(rawValue: err)
            var line = "librdkafka error \(String(cString: rd_kafka_err2name(code))): \(reason.map { String(cString: $0) } ?? "")"
            if code == RD_KAFKA_RESP_ERR__FATAL, let rk {
                var buf = [CChar](repeating: 0, count: 512)
                let fatal = rd_kafka_fatal_error(rk, &buf, buf.count)
                line += " (fatal \(String(cString: rd_kafka_err2name(fatal))): \(String(cString: buf)))"
            }
            owner.log(line)
        }
    }

    static func owner(of rk: OpaquePointer?) -> KafkaHandleOwner? {
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return nil }
        return Unmanaged<KafkaHandleOwner>.fromOpaque(opaque).takeUnretainedValue()
    }

    static func levelName(_ level: Int32) -> String {
        switch level {
        case ...3: return "ERROR"
        case 4: return "WARN"
        case 5, 6: return "INFO"
        default: return "DEBUG"
        }
    }
}

/// Milliseconds for librdkafka timeouts, clamped to a non-negative Int32.
func milliseconds(_ seconds: Double) -> Int32 {
    Int32(clamping: Int64(max(0, seconds * 1000).rounded(.up)))
}

/// An owned `rd_kafka_topic_partition_list_t` with one entry per (topic, partition, offset).
final class PartitionList {
    let list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>

    init(_ entries: [(topic: String, partition: Int32, offset: Int64)]) {
        list = rd_kafka_topic_partition_list_new(Int32(clamping: entries.count))
        for e in entries {
            rd_kafka_topic_partition_list_add(list, e.topic, e.partition).pointee.offset = e.offset
        }
    }

    deinit { rd_kafka_topic_partition_list_destroy(list) }

    /// The entries of a librdkafka partition list (not owned).
    static func entries(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>?) -> [(topic: String, partition: Int32, offset: Int64, err: rd_kafka_resp_err_t)] {
        guard let list, list.pointee.cnt > 0, let elems = list.pointee.elems else { return [] }
        return (0..<Int(list.pointee.cnt)).map {
            let e = elems[$0]
            return (String(cString: e.topic), e.partition, e.offset, e.err)
        }
    }
}
