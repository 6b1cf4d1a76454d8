import CRdKafka
import Foundation
import Logging

/// An idempotent Kafka producer whose `send` blocks until the broker acknowledged the record.
///
/// Defaults: `enable.idempotence=true`, `acks=all` (librdkafka then retries without duplicates or
/// reordering); any property given overrides them. A dedicated thread serves librdkafka's delivery
/// reports (`rd_kafka_poll`), so `send` may be called from any thread, concurrently.
///
/// `send` gives up at its own `timeout`, but librdkafka keeps the record until `message.timeout.ms`
/// (default 300 s): a record whose `send` timed out may still be delivered later. Set
/// `message.timeout.ms` below the send timeout to get librdkafka's own verdict (`_MSG_TIMED_OUT`) instead.
/// After a `KafkaError.Code.fatal` error the producer is unusable: close it and create a new one.
/// A failed or timed-out send names the connection failure librdkafka reported meanwhile, if any
/// (connection refused, TLS handshake, authentication).
public final class KafkaProducer: Sendable {
    private let core: ProducerCore

    /// - Parameters:
    ///   - properties: librdkafka producer properties; `bootstrap.servers` at least.
    ///   - logger: receives librdkafka's log lines and errors (from librdkafka's threads).
    public init(properties: [String: String], logger: Logger? = nil) throws {
        core = ProducerCore(logger: logger)
        try core.open(properties: properties)
    }

    deinit { core.close(flushTimeout: 10) }

    /// Produces one record and waits for its delivery report.
    /// - Returns: the partition and offset the broker stored the record at.
    /// - Throws: `KafkaError` with librdkafka's code when the record was not accepted or not delivered,
    ///   or `KafkaError.Code.timedOut` when no delivery report arrived within `timeout` seconds.
    public func send(topic: String, key: [UInt8]?, payload: [UInt8], headers: [KafkaHeader] = [],
                     timeout: Double) throws -> (partition: Int32, offset: Int64) {
        try core.send(topic: topic, key: key, payload: payload, headers: headers, timeout: timeout)
    }

    /// Waits until every record produced so far was delivered or failed.
    /// - Throws: `KafkaError.Code.timedOut` if records are still outstanding after `timeout` seconds.
    public func flush(timeout: Double) throws { try core.flush(timeout: timeout) }

    /// True once librdkafka raised a fatal error (e.g. an idempotent producer out of sequence with a
    /// broker that lost its state): every later send fails; close it and create a new producer.
    public var isFatal: Bool { core.isFatal }

    /// Flushes (up to `flushTimeout` seconds), fails what is still queued (`_PURGE_QUEUE`), stops the
    /// delivery thread and destroys the librdkafka handle. Idempotent; later sends throw.
    public func close(flushTimeout: Double = 10) { core.close(flushTimeout: flushTimeout) }
}

/// Waits for one record's delivery report; retained by librdkafka's per-message opaque until the report.
final class DeliveryWaiter: @unchecked Sendable {  // `result` is guarded by `cond`
    private let cond = NSCondition()
    private var result: Result<(partition: Int32, offset: Int64), KafkaError>?

    func complete(_ r: Result<(partition: Int32, offset: Int64), KafkaError>) {
        cond.lock()
        result = r
        cond.broadcast()
        cond.unlock()
    }

    func wait(until deadline: Date) -> Result<(partition: Int32, offset: Int64), KafkaError>? {
        cond.lock()
        defer { cond.unlock() }
        while result == nil, cond.wait(until: deadline) {}
        return result
    }
}

final class ProducerCore: KafkaHandleOwner, @unchecked Sendable {  // librdkafka handles are thread-safe; our state (state, rk, calls, polling flags) is guarded by `cond`
    private enum State { case idle, open, closing, closed }

    private let cond = NSCondition()
    private var state = State.idle
    private var rk: OpaquePointer?
    /// Threads inside a librdkafka call on `rk` outside the lock; the handle is destroyed only at zero.
    private var calls = 0
    private var stopPolling = false
    private var pollThreadRunning = false

    func open(properties: [String: String]) throws {
        var props = ["enable.idempotence": "true", "acks": "all"]
        props.merge(properties) { $1 }
        let conf = try KafkaConfiguration(props)
        install(on: conf)
        rd_kafka_conf_set_dr_msg_cb(conf.handle) { _, m, _ in
            guard let m, let opaque = m.pointee._private else { return }
            let waiter = Unmanaged<DeliveryWaiter>.fromOpaque(opaque).takeRetainedValue()
            let err = m.pointee.err
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                waiter.complete(.success((m.pointee.partition, m.pointee.offset)))
            } else {
                let topic = m.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                waiter.complete(.failure(KafkaError("delivery to \(topic)", err: err)))
            }
        }
        let handle = try conf.makeClient(RD_KAFKA_PRODUCER)
        cond.lock()
        rk = handle
        state = .open
        pollThreadRunning = true
        cond.unlock()
        let thread = Thread { [self] in pollLoop() }
        thread.name = "mesa.kafka.producer"
        thread.start()
    }

    private func pollLoop() {
        cond.lock()
        let handle = rk!
        cond.unlock()
        while true {
            cond.lock()
            let stop = stopPolling
            cond.unlock()
            if stop { break }
            rd_kafka_poll(handle, 100)
        }
        cond.lock()
        pollThreadRunning = false
        cond.broadcast()
        cond.unlock()
    }

    var isFatal: Bool {
        (try? withHandle("fatal check") { rd_kafka_fatal_error($0, nil, 0) != RD_KAFKA_RESP_ERR_NO_ERROR }) ?? false
    }

    /// Runs `body` with the handle while the producer is open, keeping the handle alive meanwhile.
    private func withHandle<T>(_ what: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        cond.lock()
        guard state == .open, let handle = rk else {
            cond.unlock()
            throw KafkaError("\(what): the producer is closed", code: KafkaError.Code.state)
        }
        calls += 1
        cond.unlock()
        defer {
            cond.lock()
            calls -= 1
            cond.broadcast()
            cond.unlock()
        }
        return try body(handle)
    }

    func send(topic: String, key: [UInt8]?, payload: [UInt8], headers: [KafkaHeader],
              timeout: Double) throws -> (partition: Int32, offset: Int64) {
        let start = Date()
        let deadline = Date(timeIntervalSinceNow: timeout)
        let waiter = DeliveryWaiter()
        try withHandle("send to \(topic)") { handle in
            let opaque = Unmanaged.passRetained(waiter).toOpaque()
            while true {
                guard let error = produce(handle, topic: topic, key: key, payload: payload, headers: headers, opaque: opaque) else { return }
                // A full local queue drains as the delivery thread serves reports: wait a little, bounded.
                if rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__QUEUE_FULL, Date() < deadline {
                    rd_kafka_error_destroy(error)
                    Thread.sleep(forTimeInterval: 0.005)
                    continue
                }
                Unmanaged<DeliveryWaiter>.fromOpaque(opaque).release()
                throw KafkaError("produce to \(topic)", error: error)
            }
        }
        guard let result = waiter.wait(until: deadline) else {
            throw KafkaError("no delivery report for \(topic) within \(timeout) s (the record may still be delivered)",
                             err: RD_KAFKA_RESP_ERR__TIMED_OUT, cause: lastFailure(since: start))
        }
        switch result {
        case .success(let placed):
            return placed
        case .failure(let error):
            throw error.caused(by: lastFailure(since: start))
        }
    }

    /// `rd_kafka_produceva` with copies of every buffer (`RD_KAFKA_MSG_F_COPY`); returns librdkafka's error.
    private func produce(_ handle: OpaquePointer, topic: String, key: [UInt8]?, payload: [UInt8],
                         headers: [KafkaHeader], opaque: UnsafeMutableRawPointer) -> OpaquePointer? {
        var owned: [UnsafeMutableRawPointer] = []
        defer { owned.forEach { free($0) } }
        func copy(_ bytes: [UInt8]) -> UnsafeMutableRawPointer {
            let p = malloc(max(bytes.count, 1))!
            bytes.withUnsafeBytes { if let b = $0.baseAddress { memcpy(p, b, $0.count) } }
            owned.append(p)
            return p
        }
        func copy(_ s: String) -> UnsafePointer<CChar> {
            let p = strdup(s)!
            owned.append(UnsafeMutableRawPointer(p))
            return UnsafePointer(p)
        }
        var vus: [rd_kafka_vu_t] = []
        var v = rd_kafka_vu_t()
        v.vtype = RD_KAFKA_VTYPE_TOPIC
        v.u.cstr = copy(topic)
        vus.append(v)
        if let key {
            v = rd_kafka_vu_t()
            v.vtype = RD_KAFKA_VTYPE_KEY
            v.u.mem.ptr = copy(key)
            v.u.mem.size = key.count
            vus.append(v)
        }
        for h in headers {
            v = rd_kafka_vu_t()
            v.vtype = RD_KAFKA_VTYPE_HEADER
            v.u.header.name = copy(h.key)
            if let value = h.value {
                v.u.header.val = UnsafeRawPointer(copy(value))
                v.u.header.size = value.count
            }
            vus.append(v)
        }
        v = rd_kafka_vu_t()
        v.vtype = RD_KAFKA_VTYPE_MSGFLAGS
        v.u.i = RD_KAFKA_MSG_F_COPY
        vus.append(v)
        v = rd_kafka_vu_t()
        v.vtype = RD_KAFKA_VTYPE_OPAQUE
        v.u.ptr = opaque
        vus.append(v)
        return payload.withUnsafeBytes { body -> OpaquePointer? in
            v = rd_kafka_vu_t()
            v.vtype = RD_KAFKA_VTYPE_VALUE
            v.u.mem.ptr = UnsafeMutableRawPointer(mutating: body.baseAddress ?? UnsafeRawPointer(copy([])))
            v.u.mem.size = body.count
            vus.append(v)
            return rd_kafka_produceva(handle, vus, vus.count)
        }
    }

    func flush(timeout: Double) throws {
        try withHandle("flush") { handle in
            let err = rd_kafka_flush(handle, milliseconds(timeout))
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw KafkaError("flush: \(rd_kafka_outq_len(handle)) records still outstanding", err: err)
            }
        }
    }

    func close(flushTimeout: Double) {
        cond.lock()
        switch state {
        case .idle:
            state = .closed
            cond.unlock()
            return
        case .closing, .closed:
            while state != .closed { cond.wait() }
            cond.unlock()
            return
        case .open:
            state = .closing
        }
        while calls > 0 { cond.wait() }
        let handle = rk!
        cond.unlock()

        if rd_kafka_flush(handle, milliseconds(flushTimeout)) != RD_KAFKA_RESP_ERR_NO_ERROR {
            log("producer closing with \(rd_kafka_outq_len(handle)) records undelivered; they fail with _PURGE_QUEUE", level: .warning)
        }
        cond.lock()
        stopPolling = true
        while pollThreadRunning { cond.wait() }
        cond.unlock()
        // Fail what is left, and serve those delivery reports so every blocked `send` wakes up.
        _ = rd_kafka_purge(handle, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
        let drainDeadline = Date(timeIntervalSinceNow: 1)
        repeat { rd_kafka_poll(handle, 50) } while rd_kafka_outq_len(handle) > 0 && Date() < drainDeadline
        rd_kafka_destroy(handle)

        cond.lock()
        rk = nil
        state = .closed
        cond.broadcast()
        cond.unlock()
    }
}
