import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A readers–writer gate over a model's weights: any number of readers (queries answered from the
/// weights) or one writer (the thread that edits them), never both.
///
/// A writer holds the gate from the first change of an edit, batch or rollback until the weights are
/// committed or undone, so a reader sees the weights before or after an edit, never in between. The
/// gate prefers the writer: once it waits, new readers wait behind it, so a stream of queries cannot
/// starve the edits (a writer waits at most for the requests already running). The writer may enter
/// again while it holds the gate (nested holds, counted), and may read while it writes.
public final class WeightGate: @unchecked Sendable {  // all state is guarded by `condition`
    private let condition = NSCondition()
    private var readers = 0
    private var writer: pthread_t?
    private var depth = 0
    private var writersWaiting = 0

    public init() {}

    /// The gate was not entered before the deadline.
    public struct Timeout: Error, CustomStringConvertible, Sendable {
        public var description: String { "the weights were not readable before the deadline (an edit held them)" }
    }

    private func ownedByCaller() -> Bool { writer.map { pthread_equal($0, pthread_self()) != 0 } ?? false }

    /// Enters as the writer (waiting for the readers inside to leave), or enters once more when the
    /// calling thread is the writer. Each call is matched by one `endWriting`.
    public func beginWriting() {
        condition.lock(); defer { condition.unlock() }
        if ownedByCaller() {
            depth += 1
            return
        }
        writersWaiting += 1
        while writer != nil || readers > 0 { condition.wait() }
        writersWaiting -= 1
        writer = pthread_self()
        depth = 1
    }

    /// Leaves one writer hold; the last one opens the gate to readers.
    public func endWriting() {
        condition.lock(); defer { condition.unlock() }
        precondition(ownedByCaller() && depth > 0, "endWriting without a matching beginWriting on this thread")
        depth -= 1
        if depth == 0 {
            writer = nil
            condition.broadcast()
        }
    }

    /// Runs `body` as the writer.
    public func writing<T>(_ body: () throws -> T) rethrows -> T {
        beginWriting()
        defer { endWriting() }
        return try body()
    }

    /// Whether the calling thread holds the gate as the writer.
    public var isWritingOnThisThread: Bool {
        condition.lock(); defer { condition.unlock() }
        return ownedByCaller()
    }

    /// Runs `body` as a reader: it waits while a writer holds or waits for the gate, until `deadline`
    /// (then it throws `Timeout` without running `body`). The writer's own thread reads at once.
    public func reading<T>(until deadline: Date = .distantFuture, _ body: () throws -> T) throws -> T {
        condition.lock()
        if ownedByCaller() {
            condition.unlock()
            return try body()
        }
        // Foundation on Linux cannot wait until `.distantFuture` (the timespec overflows): far deadlines wait untimed.
        let untimed = deadline.timeIntervalSinceNow > 1e7
        while writer != nil || writersWaiting > 0 {
            if untimed {
                condition.wait()
                continue
            }
            guard condition.wait(until: deadline) || (writer == nil && writersWaiting == 0) else {
                condition.unlock()
                throw Timeout()
            }
        }
        readers += 1
        condition.unlock()
        defer {
            condition.lock()
            readers -= 1
            if readers == 0 { condition.broadcast() }
            condition.unlock()
        }
        return try body()
    }
}
