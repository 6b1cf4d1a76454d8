import Contracts
import Foundation
import Logging
import Messaging
import ServiceLifecycle

/// The consumer as the daemon's intake: it hands out events until it is closed; the consumer itself
/// stays open after that, for the last commit, until the daemon has stopped.
final class Intake: @unchecked Sendable {  // `open` is guarded by `lock`; the consumer is thread-safe
    let consumer: KafkaConsumer
    private let lock = NSLock()
    private var open = true

    init(consumer: KafkaConsumer) { self.consumer = consumer }

    var isOpen: Bool {
        lock.lock(); defer { lock.unlock() }
        return open
    }

    /// Stops handing out events (a batch already handed out is finished and committed).
    func close() {
        lock.lock(); open = false; lock.unlock()
    }

    /// Up to `max` consecutive events of a partition, or none within `timeout` seconds (at once none
    /// once closed, after a short wait, so the worker does not spin).
    func nextBatch(max: Int, linger: Double, timeout: Double) -> [KafkaMessage] {
        guard isOpen else {
            Thread.sleep(forTimeInterval: min(timeout, 0.05))
            return []
        }
        return consumer.nextBatch(max: max, linger: linger, timeout: timeout)
    }
}

/// What the startup assembled: everything the worker needs.
struct Parts: Sendable {
    let pipeline: Pipeline
    let producer: ProducerSlot
    let keeper: TopicKeeper?
    let intake: Intake
}

/// A part that must be closed when the daemon stops, however far the startup got.
enum Part {
    case producer(ProducerSlot)
    case keeper(TopicKeeper)
    case intake(Intake)
}

/// Runs `body` on a thread of its own (model loading, edits and librdkafka calls block; the Swift
/// concurrency pool has two threads here) and returns its result.
func onThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        let t = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        t.name = name
        t.stackSize = 8 << 20
        t.start()
    }
}

/// A flag set by a graceful shutdown, a cancellation or Ctrl-C (`mesa`'s long jobs), read by code on a thread.
public final class StopFlag: @unchecked Sendable {  // `raised` is guarded by `lock`
    private let lock = NSLock()
    private var raised = false
    public init() {}
    public func raise() { lock.lock(); raised = true; lock.unlock() }
    public var isRaised: Bool { lock.lock(); defer { lock.unlock() }; return raised }
}

/// Loads the model and connects (`Daemon.assemble`, on a thread), then adds the producer, the topic
/// keeper, the edit worker and the intake to the group, in that order (a graceful shutdown stops them
/// in reverse). A shutdown during the start interrupts a key-statistics computation.
///
/// A failed start (a corrupt SAE, a missing topic) is kept in `failure` and stops the group
/// gracefully: the HTTP server, perhaps still binding its socket, then stops through its quiescing
/// path as on SIGTERM. Thrown from `run`, the error would cancel the group instead, and a server
/// cancelled while it binds can leave an NIO promise unfulfilled (a crash in a debug build).
/// `Daemon.run` throws `failure` once the group has stopped.
final class StartupService: Service, @unchecked Sendable {  // `parts` and `failed` are guarded by `lock`; `group` is set once before the group runs
    let daemon: Daemon
    let catalog: SchemaCatalog
    var group: ServiceGroup?
    private let lock = NSLock()
    private var parts: [Part] = []
    private var failed: Error?

    /// Why the start failed, if it did.
    var failure: Error? { lock.withLock { failed } }

    init(daemon: Daemon, catalog: SchemaCatalog) {
        self.daemon = daemon
        self.catalog = catalog
    }

    func run() async throws {
        let stop = StopFlag()
        let assembled: Parts
        do {
            assembled = try await withTaskCancellationOrGracefulShutdownHandler {
                try await onThread("mesa-startup") { [self] in
                    try daemon.assemble(catalog: catalog, shouldStop: { stop.isRaised }) { part in
                        lock.lock(); parts.append(part); lock.unlock()
                    }
                }
            } onCancelOrGracefulShutdown: { stop.raise() }
        } catch {
            lock.withLock { failed = error }
            await group?.triggerGracefulShutdown()
            return
        }
        guard let group else { return }
        await group.addServiceUnlessShutdown(.init(service: ProducerService(producer: assembled.producer), serviceName: "producer"))
        if let keeper = assembled.keeper {
            await group.addServiceUnlessShutdown(.init(service: TopicKeeperService(keeper: keeper), serviceName: "topic-keeper"))
        }
        await group.addServiceUnlessShutdown(.init(service: EditWorkerService(daemon: daemon, parts: assembled), serviceName: "edit-worker"))
        await group.addServiceUnlessShutdown(.init(service: IntakeService(intake: assembled.intake), serviceName: "intake"))
    }

    /// Closes what the startup opened, in reverse dependency order: the intake and the consumer (its
    /// group membership), the topic keeper, the producer. Each close is idempotent.
    func closeAll() {
        lock.lock()
        let opened = parts
        lock.unlock()
        for part in opened.reversed() {
            switch part {
            case .intake(let i):
                i.close()
                i.consumer.close()
            case .keeper(let k): k.stop()
            case .producer(let p): p.close()
            }
        }
    }
}

/// The producer: open while the group runs, flushed and closed in its turn of a graceful shutdown.
struct ProducerService: Service {
    let producer: ProducerSlot
    func run() async throws {
        try? await gracefulShutdown()
        producer.close()
    }
}

/// The topic keeper's thread, stopped in its turn of a graceful shutdown.
struct TopicKeeperService: Service {
    let keeper: TopicKeeper
    func run() async throws {
        try? await gracefulShutdown()
        keeper.stop()
    }
}

/// The edit worker: `Daemon.work` on a thread of its own. Its graceful shutdown comes after the
/// intake's: it finishes the edit in flight, publishes, commits, and returns.
struct EditWorkerService: Service {
    let daemon: Daemon
    let parts: Parts
    func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await onThread("mesa-worker") { [daemon, parts] in daemon.work(parts) }
        } onCancelOrGracefulShutdown: { [daemon] in daemon.stopWorker() }
    }
}

/// The intake: open while the group runs; the first to stop in a graceful shutdown.
struct IntakeService: Service {
    let intake: Intake
    func run() async throws {
        try? await gracefulShutdown()
        intake.close()
    }
}
