import CRdKafka
import Foundation
import Logging

/// A librdkafka configuration error or failure.
///
/// `code` is librdkafka's `rd_kafka_resp_err_t` when the failure came from librdkafka (negative codes are
/// local to the client, positive ones are Kafka protocol errors); `codeName` is its `rd_kafka_err2name`
/// (`REQUEST_TIMED_OUT`, `_MSG_TIMED_OUT`, …). Errors raised by this module itself have `code == nil`,
/// or one of the local codes in `KafkaError.Code` when a caller may want to branch on them.
///
/// `retriable` says whether the same call may succeed when made again (a transient condition: a lost
/// connection, a leader or coordinator moving, a time-out); it is librdkafka's `rd_kafka_error_is_retriable`
/// where librdkafka reports an error object, else `Code.isRetriable(code)`. `cause` is the failure
/// librdkafka reported before this one (connection refused, TLS handshake, authentication), which the
/// message also quotes.
public struct KafkaError: Error, CustomStringConvertible, Equatable, Sendable {
    public var message: String
    public var code: Int32?
    public var retriable: Bool
    /// At most one element: an array only because a struct cannot hold an optional of itself.
    private var causes: [KafkaError] = []

    public init(_ message: String) {
        self.message = message
        self.code = nil
        self.retriable = false
    }

    public init(_ message: String, code: Int32) {
        self.message = message
        self.code = code
        self.retriable = Code.isRetriable(code)
    }

    public init(_ message: String, code: Int32, retriable: Bool) {
        self.message = message
        self.code = code
        self.retriable = retriable
    }

    public var cause: KafkaError? { causes.first }

    /// This error with `cause` kept as its cause and quoted in its message.
    public func caused(by cause: KafkaError?) -> KafkaError {
        guard let cause else { return self }
        var e = self
        e.message += " (librdkafka: \(cause.message))"
        e.causes = [cause]
        return e
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

        /// Whether a failure with librdkafka code `code` is transient, so that the same call may succeed when
        /// made again: the connection or a request was lost or timed out, the local queue is full, the
        /// partition leader or the group coordinator is moving or loading, too few replicas are in sync, the
        /// broker throttles. Kafka's retriable protocol errors plus librdkafka's local transport and time-out codes.
        public static func isRetriable(_ code: Int32) -> Bool { retriableCodes.contains(code) }

        static let retriableCodes = Set([
            RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE, RD_KAFKA_RESP_ERR__QUEUE_FULL, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN,
            RD_KAFKA_RESP_ERR__RESOLVE, RD_KAFKA_RESP_ERR__WAIT_COORD, RD_KAFKA_RESP_ERR__WAIT_CACHE,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR, RD_KAFKA_RESP_ERR_FETCH_SESSION_ID_NOT_FOUND,
            RD_KAFKA_RESP_ERR_INVALID_FETCH_SESSION_EPOCH, RD_KAFKA_RESP_ERR_LISTENER_NOT_FOUND,
            RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH, RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH, RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_ELIGIBLE_LEADERS_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT, RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED,
        ].map(\.rawValue))
    }
}

extension KafkaError {
    init(_ context: String, err: rd_kafka_resp_err_t) {
        self.init("\(context): \(String(cString: rd_kafka_err2str(err)))", code: err.rawValue)
    }

    /// `context: <librdkafka's text for err>`, followed by the connection failure librdkafka reported
    /// before (its own words: connection refused, TLS handshake, authentication), when there was one.
    init(_ context: String, err: rd_kafka_resp_err_t, cause: KafkaError?) {
        self = KafkaError(context, err: err).caused(by: cause)
    }

    /// Takes ownership of an `rd_kafka_error_t` (destroys it). Retriable when librdkafka says so
    /// (`rd_kafka_error_is_retriable`) or the code is (`Code.isRetriable`): librdkafka flags only some.
    init(_ context: String, error: OpaquePointer) {
        let code = rd_kafka_error_code(error)
        let text = String(cString: rd_kafka_error_string(error))
        let retriable = rd_kafka_error_is_retriable(error) != 0 || Code.isRetriable(code.rawValue)
        rd_kafka_error_destroy(error)
        self.init("\(context): \(text)", code: code.rawValue, retriable: retriable)
    }
}

public enum Kafka {
    /// The librdkafka version loaded at run time (which may be newer than the headers built against).
    public static var version: String { String(cString: rd_kafka_version_str()) }
    public static var versionNumber: Int { Int(rd_kafka_version()) }

    // MARK: secrets

    /// What is shown instead of a secret property's value.
    public static let redactedValue = "[redacted]"

    /// Whether the value of property `key` is a secret: its name contains password, secret, key, token or
    /// credential, in any case (`sasl.password`, `ssl.key.password`, `ssl.key.pem`,
    /// `sasl.oauthbearer.client.secret`, …), or it is a typo of such a property (`sasl.pasword`).
    /// Harmless names that match, like `ssl.key.location`, are hidden too.
    public static func isSecret(_ key: String) -> Bool {
        func named(_ k: String) -> Bool {
            let k = k.lowercased()
            return ["password", "secret", "key", "token", "credential"].contains { k.contains($0) }
        }
        if named(key) { return true }
        guard !propertyNames.contains(key), let near = closestProperty(to: key) else { return false }
        return named(near)
    }

    /// `value` as it may be printed, logged or thrown: `[redacted]` when `key` names a secret. Every
    /// message of mesa that shows a Kafka property's value goes through here.
    public static func redacted(_ value: String, key: String) -> String {
        isSecret(key) ? redactedValue : value
    }

    /// The properties with every secret value redacted.
    public static func redacted(_ properties: [String: String]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: properties.map { ($0.key, redacted($0.value, key: $0.key)) })
    }

    /// `key=value` with the value redacted when it is a secret.
    public static func describe(key: String, value: String) -> String { "\(key)=\(redacted(value, key: key))" }

    /// The values of the secret properties among `properties`, for `scrub`. Values shorter than 3
    /// characters are left out: replacing them in a message would mangle it and hide nothing.
    static func secretValues(_ properties: [String: String]) -> [String] {
        properties.compactMap { redacted($0.value, key: $0.key) == $0.value || $0.value.count < 3 ? nil : $0.value }
            .sorted { $0.count > $1.count }
    }

    /// `text` with every occurrence of a secret value replaced by `[redacted]` (librdkafka's own messages
    /// may quote a value).
    static func scrub(_ text: String, secrets: [String]) -> String {
        secrets.reduce(text) { $0.replacingOccurrences(of: $1, with: redactedValue) }
    }

    // MARK: property names

    /// Every configuration property this librdkafka accepts through `rd_kafka_conf_set` (global and
    /// topic ones, aliases included; not those set through a dedicated API), from its own table.
    public static let propertyNames: [String] = {
        var buffer: UnsafeMutablePointer<CChar>?
        var length = 0
        guard let stream = open_memstream(&buffer, &length) else { return [] }
        rd_kafka_conf_properties_show(stream)
        fclose(stream)
        guard let buffer else { return [] }
        defer { free(buffer) }
        var names = Set<String>()
        for line in String(cString: buffer).split(separator: "\n") where line.contains("|") {
            guard !line.contains("see dedicated API"), !line.contains("Type: pointer") else { continue }
            let name = line.prefix { $0 != "|" }.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name != "Property", !name.hasPrefix("-") else { continue }
            names.insert(name)
        }
        return names.sorted()
    }()

    /// The known property nearest to `key` (a typo fixed by a few edits), or nil if none is close.
    public static func closestProperty(to key: String) -> String? {
        let limit = max(1, min(3, key.count / 4))
        let best = propertyNames.map { ($0, editDistance(key.lowercased(), $0)) }.min { $0.1 < $1.1 }
        guard let best, best.1 <= limit else { return nil }
        return best.0
    }

    /// Levenshtein distance.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// A librdkafka client configuration built from string properties (the librdkafka names:
/// `bootstrap.servers`, `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …).
///
/// Every property is checked by librdkafka when set, so a typo is an error at start, not a surprise later.
/// Errors and `description` never show the value of a secret property (see `Kafka.isSecret`).
public final class KafkaConfiguration: CustomStringConvertible, @unchecked Sendable {  // not safe for concurrent `set`: one thread fills it in, then hands it to the one client it creates
    let handle: OpaquePointer
    private var consumed = false
    public private(set) var properties: [String: String] = [:]

    public init(_ properties: [String: String] = [:]) throws {
        handle = rd_kafka_conf_new()
        for (k, v) in properties.sorted(by: { $0.key < $1.key }) { try set(k, v) }
    }

    deinit { if !consumed { rd_kafka_conf_destroy(handle) } }

    /// Sets one property.
    /// - Throws: `KafkaError` naming only the key for an unknown property (with the nearest known one, if
    ///   any), and librdkafka's reason for an invalid value; a secret value is never part of the message.
    public func set(_ key: String, _ value: String) throws {
        var err = [CChar](repeating: 0, count: 512)
        let rc = rd_kafka_conf_set(handle, key, value, &err, err.count)
        guard rc == RD_KAFKA_CONF_OK else {
            if rc == RD_KAFKA_CONF_UNKNOWN {
                let hint = Kafka.closestProperty(to: key).map { " (did you mean \($0)?)" } ?? ""
                throw KafkaError("configuration: unknown property \(key)\(hint)")
            }
            let reason = Kafka.scrub(String(cString: err), secrets: Kafka.secretValues([key: value]))
            throw KafkaError("configuration \(Kafka.describe(key: key, value: value)): \(reason)")
        }
        properties[key] = value
    }

    /// The properties set, secret values redacted.
    public var description: String {
        "KafkaConfiguration(" + properties.sorted { $0.key < $1.key }.map { Kafka.describe(key: $0.key, value: $0.value) }
            .joined(separator: ", ") + ")"
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
            throw KafkaError("creating the client: \(Kafka.scrub(String(cString: err), secrets: Kafka.secretValues(properties)))")
        }
        consumed = true
        return rk
    }
}

/// The owner of a librdkafka handle: the handle's opaque points at it, so the C callbacks can reach it.
/// Every owner destroys its handle from one of its own methods, so it outlives the handle's callbacks.
///
/// It remembers the latest connection failure librdkafka reported (refused connections, TLS handshakes,
/// authentication, the broker's own errors), so that a call that fails or times out can say why in
/// librdkafka's words instead of only "timed out". Log lines never carry a secret property's value.
class KafkaHandleOwner: @unchecked Sendable {  // `failure` is guarded by `failureLock`; `secrets` is written once by `install`, before the client and its callbacks exist
    let logger: Logger?
    private let failureLock = NSLock()
    private var failure: (error: KafkaError, at: Date)?
    private var secrets: [String] = []

    init(logger: Logger?) { self.logger = logger }

    /// Logs `line` (secret values scrubbed) at `level`.
    func log(_ line: String, level: Logger.Level = .info, metadata: Logger.Metadata? = nil) {
        logger?.log(level: level, "\(Kafka.scrub(line, secrets: secrets))", metadata: metadata)
    }

    /// Records a failure librdkafka reported (`code` nil for one that came as a log line).
    func noteFailure(_ text: String, code: rd_kafka_resp_err_t?) {
        let error = code.map { KafkaError(Kafka.scrub(text, secrets: secrets), code: $0.rawValue) } ?? KafkaError(Kafka.scrub(text, secrets: secrets))
        failureLock.lock()
        defer { failureLock.unlock() }
        // "n/n brokers are down" says less than the failure that brought the last one down.
        if code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, failure != nil { return }
        failure = (error, Date())
    }

    /// The latest failure librdkafka reported at or after `since` (any time if nil), if any.
    func lastFailure(since: Date? = nil) -> KafkaError? {
        failureLock.lock()
        defer { failureLock.unlock() }
        guard let failure, since.map({ failure.at >= $0 }) ?? true else { return nil }
        return failure.error
    }

    /// Forgets the recorded failure (after a call succeeded).
    func clearFailure() {
        failureLock.lock()
        failure = nil
        failureLock.unlock()
    }

    /// Installs the log and error callbacks and makes this object the handle's opaque.
    func install(on conf: KafkaConfiguration) {
        secrets = Kafka.secretValues(conf.properties)
        rd_kafka_conf_set_opaque(conf.handle, Unmanaged.passUnretained(self).toOpaque())
        rd_kafka_conf_set_log_cb(conf.handle) { rk, level, facility, buf in
            guard let owner = KafkaHandleOwner.owner(of: rk) else { return }
            let fac = facility.map { String(cString: $0) } ?? ""
            let text = buf.map { String(cString: $0) } ?? ""
            // Connection failures come as FAIL lines at once (the error callback waits for a poll).
            if level <= 3 || fac == "FAIL" { owner.noteFailure(KafkaHandleOwner.withoutThreadPrefix(text), code: nil) }
            owner.log("librdkafka \(KafkaHandleOwner.levelName(level)) \(fac): \(text)", level: KafkaHandleOwner.logLevel(level),
                      metadata: ["facility": "\(fac)"])
        }
        rd_kafka_conf_set_error_cb(conf.handle) { rk, err, reason, _ in
            guard let owner = KafkaHandleOwner.owner(of: rk) else { return }
            let code = rd_kafka_resp_err_t(rawValue: err)
            var text = reason.map { String(cString: $0) } ?? ""
            if code == RD_KAFKA_RESP_ERR__FATAL, let rk {
                var buf = [CChar](repeating: 0, count: 512)
                let fatal = rd_kafka_fatal_error(rk, &buf, buf.count)
                text += " (fatal \(String(cString: rd_kafka_err2name(fatal))): \(String(cString: buf)))"
            }
            owner.noteFailure(text, code: code)
            owner.log("librdkafka error \(String(cString: rd_kafka_err2name(code))): \(text)", level: .error,
                      metadata: ["code": "\(String(cString: rd_kafka_err2name(code)))"])
        }
    }

    /// librdkafka's log text without its "[thrd:…]: " prefix.
    static func withoutThreadPrefix(_ text: String) -> String {
        guard text.hasPrefix("[thrd:"), let end = text.range(of: "]: ") else { return text }
        return String(text[end.upperBound...])
    }

    static func owner(of rk: OpaquePointer?) -> KafkaHandleOwner? {
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return nil }
        return Unmanaged<KafkaHandleOwner>.fromOpaque(opaque).takeUnretainedValue()
    }

    /// The swift-log level of a syslog level as librdkafka reports it.
    static func logLevel(_ level: Int32) -> Logger.Level {
        switch level {
        case ...2: return .critical
        case 3: return .error
        case 4: return .warning
        case 5: return .notice
        case 6: return .info
        default: return .debug
        }
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
