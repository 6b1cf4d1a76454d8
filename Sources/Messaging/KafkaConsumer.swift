import CRdKafka
import Foundation
import Logging

/// A Kafka consumer-group member that hands out one message at a time and commits it only when told.
///
/// It polls librdkafka on its own thread (never on the Swift concurrency pool), so group heartbeats,
/// `max.poll.interval.ms` and rebalances are served while the caller works on a message for as long as
/// it takes. The caller (one worker thread) loops:
///
///     while consumer.state == .running {
///         guard let m = consumer.next(timeout: 1) else { continue }
///         … work …
///         try consumer.commit(m)      // or consumer.release(m) to have it handed out again
///     }
///
/// - Only one message, or one batch, is in flight: `next` hands out another one only after the
///   previous one was committed or released. `nextBatch` hands out up to `max` consecutive messages
///   of one partition, waiting up to `linger` seconds for the batch to fill; committing the last of
///   them settles the whole batch.
/// - A partition is paused (`rd_kafka_pause_partitions`) while it holds `maxBufferedPerPartition`
///   messages (in flight plus buffered), so nothing piles up during a long piece of work; committing
///   resumes it, and fetching continues right after the last message received. The default, 2, keeps
///   the partition's next message ready while the current one is worked on: a resumed partition waits
///   for the broker's in-flight fetch (up to `fetch.wait.max.ms`) before it gets data again, which with
///   1 adds that wait to every message.
/// - `commit(m)` synchronously commits `m.offset + 1` for m's partition. `release(m)` gives m back
///   uncommitted: the next `next` hands it out again.
/// - On a rebalance that revokes the partition of the message in flight, the poll thread waits up to
///   `drainTimeout` seconds for it to be committed or released before giving the partition up; buffered
///   messages of revoked partitions are dropped (their next owner fetches them from the committed offset).
///
/// Defaults: `enable.auto.commit=false` (required), `enable.auto.offset.store=false`,
/// `auto.offset.reset=earliest`, `fetch.wait.max.ms=100` (librdkafka's 500 delays resumed partitions);
/// `group.id` must be given.
public final class KafkaConsumer: Sendable {
    /// The consumer's lifecycle.
    public enum State: Sendable, Equatable {
        /// Created, not yet subscribed.
        case idle
        /// Subscribed; the poll thread runs.
        case running
        /// `close()` was called: `next` returns nil; the group is being left (the message in flight may
        /// still be committed until the drain timeout).
        case closing
        /// The group was left and the librdkafka handle destroyed.
        case closed
    }

    private let core: ConsumerCore

    /// Subscribes to `topics` and starts the poll thread.
    /// - Parameters:
    ///   - properties: librdkafka consumer properties; `bootstrap.servers` and `group.id` at least.
    ///   - topics: the topics to subscribe to (they must exist; a missing topic is logged and retried by librdkafka).
    ///   - logger: receives librdkafka's log lines, consumer errors and rebalances. Called from
    ///     librdkafka's threads; it must not call back into this consumer.
    ///   - drainTimeout: how long a rebalance or `close()` waits for the message in flight to be settled.
    ///   - maxBufferedPerPartition: how many messages of one partition are held (in flight + buffered)
    ///     before that partition is paused; 1 pauses it as soon as its message is handed out.
    public init(properties: [String: String], topics: [String], logger: Logger? = nil,
                drainTimeout: Double = 30, maxBufferedPerPartition: Int = 2) throws {
        core = ConsumerCore(logger: logger, drainTimeout: drainTimeout, maxBuffered: max(1, maxBufferedPerPartition))
        try core.open(properties: properties, topics: topics)
    }

    deinit { core.close() }

    /// Where the consumer is in its lifecycle.
    public var state: State { core.currentState }

    /// The next message, or nil if none arrived within `timeout` seconds or the consumer is closing.
    /// Waits while the previous message is still in flight (not yet committed or released).
    public func next(timeout: Double) -> KafkaMessage? { core.nextBatch(max: 1, linger: 0, timeout: timeout).first }

    /// Up to `max` consecutive messages of one partition (empty after `timeout` seconds without any):
    /// once the first is there, waits up to `linger` seconds for more. The partition must be allowed
    /// to hold that many (`maxBufferedPerPartition` > `max`) for a batch to fill.
    public func nextBatch(max: Int, linger: Double, timeout: Double) -> [KafkaMessage] {
        core.nextBatch(max: Swift.max(1, max), linger: linger, timeout: timeout)
    }

    /// Commits `m.offset + 1` for m's partition (synchronously, retrying transient coordinator errors),
    /// then resumes the partition.
    /// - Throws: `KafkaError` with librdkafka's code if the commit failed (m stays in flight: commit again
    ///   or release it); `KafkaError.Code.partitionRevoked` if m's partition was revoked meanwhile (m is
    ///   settled; its next owner redelivers it); `KafkaError.Code.state` if m is not the message in flight.
    ///
    /// With `wait: false` the commit request is sent asynchronously (no broker round trip on the
    /// caller's path, no retries): a commit lost that way only means `m` is delivered again later,
    /// which an idempotent consumer absorbs.
    public func commit(_ m: KafkaMessage, wait: Bool = true) throws { try core.commit(m, wait: wait) }

    /// Gives m back without committing it: the next `next` hands it out again (for a retry).
    public func release(_ m: KafkaMessage) { core.release([m]) }

    /// Gives messages in flight back uncommitted, in order: the next `next` or `nextBatch` hands them out again.
    public func release(_ messages: [KafkaMessage]) { core.release(messages) }

    /// Messages not yet committed per "topic/partition" of the current assignment: the high watermark
    /// from the last fetch minus the first unsettled offset (for a partition with nothing consumed or
    /// committed yet, where `auto.offset.reset` starts it: the log's start or end). Local, no broker
    /// round trip; a partition is left out until the consumer has fetched from it.
    public func lag() -> [String: Int64] { core.lag() }

    /// The currently assigned partitions as "topic/partition", sorted.
    public var assignment: [String] { core.assignment }

    /// Leaves the group (`rd_kafka_consumer_close`, which revokes the assignment: the message in flight
    /// gets up to `drainTimeout` seconds to be committed), stops the poll thread and destroys the handle.
    /// Idempotent.
    public func close() { core.close() }
}

/// A topic partition, the key of the consumer's per-partition state.
struct TopicPartition: Hashable, Comparable, CustomStringConvertible {
    let topic: String
    let partition: Int32

    init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    init(_ m: KafkaMessage) { self.init(m.topic, m.partition) }

    var description: String { "\(topic)/\(partition)" }

    static func < (a: TopicPartition, b: TopicPartition) -> Bool {
        (a.topic, a.partition) < (b.topic, b.partition)
    }
}

final class ConsumerCore: KafkaHandleOwner, @unchecked Sendable {  // librdkafka handles are thread-safe; our state (state, rk, partitions, buffers, commits) is guarded by `cond`
    private struct Partition {
        /// Messages of this partition held here: buffered plus the one in flight.
        var held = 0
        var paused = false
        /// Being revoked: nothing more is buffered or given back to it.
        var revoking = false
    }

    private let cond = NSCondition()
    private var state = KafkaConsumer.State.idle
    /// The handle; nil once it is being destroyed. Used under `cond`, or outside it while `calls > 0`.
    private var rk: OpaquePointer?
    private var calls = 0
    private var partitions: [TopicPartition: Partition] = [:]
    /// Received, not yet handed out, in arrival order (partition order preserved).
    private var buffer: [KafkaMessage] = []
    /// Handed out, not yet committed or released: one message or one batch of one partition, in offset order.
    private var inFlight: [KafkaMessage] = []
    private var committed: [TopicPartition: Int64] = [:]
    /// Whether a partition without a committed offset is read from its start (`auto.offset.reset`).
    private var startsAtEarliest = true

    private let drainTimeout: Double
    private let maxBuffered: Int
    private let commitAttempts = 4

    init(logger: Logger?, drainTimeout: Double, maxBuffered: Int) {
        self.drainTimeout = drainTimeout
        self.maxBuffered = maxBuffered
        super.init(logger: logger)
    }

    var currentState: KafkaConsumer.State {
        cond.lock()
        defer { cond.unlock() }
        return state
    }

    var assignment: [String] {
        cond.lock()
        defer { cond.unlock() }
        return partitions.keys.sorted().map(\.description)
    }

    func open(properties: [String: String], topics: [String]) throws {
        guard let group = properties["group.id"], !group.isEmpty else {
            throw KafkaError("KafkaConsumer needs a group.id")
        }
        guard properties["enable.auto.commit"].map({ $0 == "false" }) ?? true else {
            throw KafkaError("KafkaConsumer commits explicitly: enable.auto.commit must be false")
        }
        guard !topics.isEmpty else { throw KafkaError("KafkaConsumer needs at least one topic") }
        var props = [
            "enable.auto.commit": "false", "enable.auto.offset.store": "false", "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": "100",
        ]
        props.merge(properties) { $1 }
        startsAtEarliest = ["earliest", "smallest", "beginning"].contains(props["auto.offset.reset"] ?? "")
        let conf = try KafkaConfiguration(props)
        install(on: conf)
        rd_kafka_conf_set_rebalance_cb(conf.handle) { rk, err, parts, opaque in
            guard let rk, let opaque else { return }
            Unmanaged<ConsumerCore>.fromOpaque(opaque).takeUnretainedValue().rebalance(rk, err, parts)
        }
        let handle = try conf.makeClient(RD_KAFKA_CONSUMER)
        rd_kafka_poll_set_consumer(handle)
        let subscription = PartitionList(topics.map { ($0, RD_KAFKA_PARTITION_UA, Int64(RD_KAFKA_OFFSET_INVALID)) })
        let err = rd_kafka_subscribe(handle, subscription.list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            rd_kafka_destroy(handle)
            throw KafkaError("subscribe to \(topics)", err: err)
        }
        cond.lock()
        rk = handle
        state = .running
        cond.unlock()
        let thread = Thread { [self] in pollLoop() }
        thread.name = "mesa.kafka.consumer"
        thread.start()
    }

    // MARK: poll thread

    private func pollLoop() {
        cond.lock()
        let handle = rk!
        cond.unlock()
        while true {
            cond.lock()
            let running = state == .running
            cond.unlock()
            guard running else { break }
            guard let m = rd_kafka_consumer_poll(handle, 100) else { continue }
            receive(m)
        }
        // Leaving the group serves the final revocation through `rebalance`, which drains.
        let err = rd_kafka_consumer_close(handle)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            log("consumer close: \(String(cString: rd_kafka_err2name(err))): \(String(cString: rd_kafka_err2str(err)))", level: .warning)
        }
        cond.lock()
        while calls > 0 { cond.wait() }
        rk = nil
        partitions.removeAll()
        buffer.removeAll()
        cond.unlock()
        rd_kafka_destroy(handle)
        cond.lock()
        state = .closed
        cond.broadcast()
        cond.unlock()
    }

    private func receive(_ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let err = m.pointee.err
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            if err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
                let text = String(cString: rd_kafka_message_errstr(m))
                noteFailure(text, code: err)
                log("consumer error \(String(cString: rd_kafka_err2name(err))): \(text)", level: .error)
            }
            rd_kafka_message_destroy(m)
            return
        }
        let message = KafkaMessage(copying: m)
        rd_kafka_message_destroy(m)
        let tp = TopicPartition(message)
        cond.lock()
        defer { cond.unlock() }
        guard let p = partitions[tp], !p.revoking else { return }  // not ours any more: its next owner fetches it
        buffer.append(message)
        partitions[tp]!.held += 1
        reconcilePause(tp)
        cond.broadcast()
    }

    /// Pauses a partition that holds `maxBuffered` messages, resumes one that holds fewer. Under `cond`.
    private func reconcilePause(_ tp: TopicPartition) {
        guard let handle = rk, let p = partitions[tp] else { return }
        let pause = p.held >= maxBuffered
        guard pause != p.paused else { return }
        let list = PartitionList([(tp.topic, tp.partition, Int64(RD_KAFKA_OFFSET_INVALID))])
        var err = pause ? rd_kafka_pause_partitions(handle, list.list) : rd_kafka_resume_partitions(handle, list.list)
        if err == RD_KAFKA_RESP_ERR_NO_ERROR, let e = PartitionList.entries(list.list).first { err = e.err }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            log("\(pause ? "pause" : "resume") \(tp): \(String(cString: rd_kafka_err2name(err)))")
        }
        partitions[tp]!.paused = pause
    }

    /// librdkafka's rebalance callback, on the poll thread (inside `rd_kafka_consumer_poll` or `_close`).
    fileprivate func rebalance(_ handle: OpaquePointer, _ err: rd_kafka_resp_err_t,
                               _ parts: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        let tps = PartitionList.entries(parts).map { TopicPartition($0.topic, $0.partition) }
        let cooperative = String(cString: rd_kafka_rebalance_protocol(handle)) == "COOPERATIVE"
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            log("assigned \(tps.map(\.description).joined(separator: ", "))")
            cond.lock()
            for tp in tps { partitions[tp] = Partition() }
            cond.unlock()
            if cooperative {
                if let error = rd_kafka_incremental_assign(handle, parts) {
                    log(KafkaError("incremental assign", error: error).description)
                }
            } else {
                let e = rd_kafka_assign(handle, parts)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { log(KafkaError("assign", err: e).description) }
            }
            // A partition assigned again may still carry this member's earlier pause.
            if let parts { _ = rd_kafka_resume_partitions(handle, parts) }

        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(handle) != 0
            log("\(lost ? "lost" : "revoked") \(tps.map(\.description).joined(separator: ", "))")
            drain(Set(tps), lost: lost)
            if cooperative {
                if let error = rd_kafka_incremental_unassign(handle, parts) {
                    log(KafkaError("incremental unassign", error: error).description)
                }
            } else {
                let e = rd_kafka_assign(handle, nil)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { log(KafkaError("unassign", err: e).description) }
            }

        default:
            log(KafkaError("rebalance", err: err).description)
            drain(nil, lost: true)
            _ = rd_kafka_assign(handle, nil)
        }
    }

    /// Drops the buffered messages of the partitions being revoked (all partitions if nil), waits up to
    /// `drainTimeout` for the message in flight if it belongs to one of them (unless the assignment was
    /// lost, when a commit cannot succeed), then forgets those partitions.
    private func drain(_ partitionsToRevoke: Set<TopicPartition>?, lost: Bool) {
        cond.lock()
        defer { cond.unlock() }
        let revoked = partitionsToRevoke ?? Set(partitions.keys)
        for tp in revoked { partitions[tp]?.revoking = true }
        buffer.removeAll { revoked.contains(TopicPartition($0)) }
        func pending() -> KafkaMessage? { inFlight.first { revoked.contains(TopicPartition($0)) } }
        if !lost, let m = pending() {
            log("waiting up to \(drainTimeout) s for \(m.partitionKey)@\(m.offset) (\(inFlight.count) in flight) to be committed or released")
            let deadline = Date(timeIntervalSinceNow: drainTimeout)
            while pending() != nil, cond.wait(until: deadline) {}
            if let m = pending() {
                log("drain timeout: \(m.partitionKey)@\(m.offset) is still in flight; it is not committed, so the partition's next owner redelivers it", level: .warning)
            }
        }
        buffer.removeAll { revoked.contains(TopicPartition($0)) }
        for tp in revoked { partitions[tp] = nil }
        cond.broadcast()
    }

    // MARK: worker side

    func nextBatch(max: Int, linger: Double, timeout: Double) -> [KafkaMessage] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        cond.lock()
        defer { cond.unlock() }
        while true {
            guard state == .running else { return [] }
            if inFlight.isEmpty, !buffer.isEmpty { break }
            guard Date() < deadline else { return [] }
            _ = cond.wait(until: deadline)
        }
        let first = buffer.removeFirst()
        let tp = TopicPartition(first)
        inFlight = [first]
        let lingerEnd = Date(timeIntervalSinceNow: linger)
        while inFlight.count < max {
            // The partition's next messages, wherever other partitions' messages sit between them.
            while inFlight.count < max, let i = buffer.firstIndex(where: { TopicPartition($0) == tp }) {
                inFlight.append(buffer.remove(at: i))
            }
            guard inFlight.count < max, state == .running, partitions[tp].map({ !$0.revoking }) ?? false,
                  Date() < lingerEnd else { break }
            _ = cond.wait(until: lingerEnd)
        }
        return inFlight
    }

    private static func same(_ a: KafkaMessage, _ b: KafkaMessage) -> Bool {
        a.topic == b.topic && a.partition == b.partition && a.offset == b.offset
    }

    /// Commits `m.offset + 1`, settling every message in flight up to `m`.
    func commit(_ m: KafkaMessage, wait: Bool = true) throws {
        let tp = TopicPartition(m)
        cond.lock()
        guard inFlight.contains(where: { Self.same($0, m) }) else {
            cond.unlock()
            throw KafkaError("commit \(m.partitionKey)@\(m.offset): not a message in flight", code: KafkaError.Code.state)
        }
        guard partitions[tp] != nil else {
            inFlight.removeAll { TopicPartition($0) == tp && $0.offset <= m.offset }
            cond.broadcast()
            cond.unlock()
            throw KafkaError("commit \(m.partitionKey)@\(m.offset): the partition was revoked; its next owner redelivers the message",
                             code: KafkaError.Code.partitionRevoked)
        }
        guard let handle = rk else {
            cond.unlock()
            throw KafkaError("commit \(m.partitionKey)@\(m.offset): the consumer is closed", code: KafkaError.Code.state)
        }
        calls += 1
        cond.unlock()

        var failure: KafkaError?
        for attempt in 1...commitAttempts {
            let list = PartitionList([(m.topic, m.partition, m.offset + 1)])
            var err = rd_kafka_commit(handle, list.list, wait ? 0 : 1)
            if wait, err == RD_KAFKA_RESP_ERR_NO_ERROR, let e = PartitionList.entries(list.list).first { err = e.err }
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                failure = nil
                break
            }
            let error = KafkaError("commit \(m.partitionKey) offset \(m.offset + 1)", err: err)
            failure = error
            guard wait, attempt < commitAttempts, error.retriable else { break }
            log("\(error) (attempt \(attempt) of \(commitAttempts); retrying)", level: .warning)
            Thread.sleep(forTimeInterval: 0.1 * Double(attempt))
        }

        cond.lock()
        defer {
            calls -= 1
            cond.broadcast()
            cond.unlock()
        }
        if let failure { throw failure }
        committed[tp] = m.offset + 1
        let flying = inFlight.count
        inFlight.removeAll { TopicPartition($0) == tp && $0.offset <= m.offset }
        guard partitions[tp] != nil else { return }
        // A partition revoked and assigned back may have refetched what is now committed.
        let before = buffer.count
        buffer.removeAll { TopicPartition($0) == tp && $0.offset <= m.offset }
        partitions[tp]!.held -= (flying - inFlight.count) + (before - buffer.count)
        reconcilePause(tp)
    }

    func release(_ messages: [KafkaMessage]) {
        cond.lock()
        defer { cond.unlock() }
        var back: [KafkaMessage] = []
        for m in messages {
            guard let i = inFlight.firstIndex(where: { Self.same($0, m) }) else {
                log("release \(m.partitionKey)@\(m.offset): not a message in flight; ignored", level: .warning)
                continue
            }
            let current = inFlight.remove(at: i)
            if let p = partitions[TopicPartition(m)], !p.revoking { back.append(current) }
        }
        buffer.insert(contentsOf: back.sorted { ($0.topic, $0.partition, $0.offset) < ($1.topic, $1.partition, $1.offset) }, at: 0)
        cond.broadcast()
    }

    func lag() -> [String: Int64] {
        cond.lock()
        defer { cond.unlock() }
        guard let handle = rk, !partitions.isEmpty else { return [:] }
        var firstUnsettled: [TopicPartition: Int64] = [:]
        for m in buffer + inFlight {
            let tp = TopicPartition(m)
            firstUnsettled[tp] = min(firstUnsettled[tp] ?? .max, m.offset)
        }
        let tps = partitions.keys.sorted()
        let list = PartitionList(tps.map { ($0.topic, $0.partition, Int64(RD_KAFKA_OFFSET_INVALID)) })
        _ = rd_kafka_position(handle, list.list)
        var lag: [String: Int64] = [:]
        for e in PartitionList.entries(list.list) {
            let tp = TopicPartition(e.topic, e.partition)
            var low: Int64 = -1, high: Int64 = -1
            guard rd_kafka_get_watermark_offsets(handle, e.topic, e.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  high >= 0 else { continue }
            // Nothing consumed or committed yet: the consumer starts at the log's start (or its end).
            let start = startsAtEarliest ? (low >= 0 ? low : nil) : high
            guard let next = firstUnsettled[tp] ?? (e.offset >= 0 ? e.offset : committed[tp]) ?? start else { continue }
            lag[tp.description] = max(0, high - next)
        }
        return lag
    }

    func close() {
        cond.lock()
        defer { cond.unlock() }
        switch state {
        case .idle:
            state = .closed
            return
        case .running:
            state = .closing
            cond.broadcast()
        case .closing, .closed:
            break
        }
        while state != .closed { cond.wait() }
    }
}
