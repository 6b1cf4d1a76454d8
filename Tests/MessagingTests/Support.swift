import Foundation
import Logging
import Messaging
import TestSupport
import Testing

/// The installed Tansu broker, `$MESA_HOME/bin/tansu`.
let tansu = DevelopmentBroker.executable(home: TestPaths.home)

/// Tansu needs librdkafka ≥ 2.1 at run time (Debian's 2.0.2 cannot parse its ApiVersions reply):
/// ops/test.sh puts $MESA_HOME/lib first on LD_LIBRARY_PATH.
let tansuUsable = FileManager.default.isExecutableFile(atPath: tansu)
    && Kafka.versionNumber >= 0x0201_0000
let tansuReason: Comment = "needs $MESA_HOME/bin/tansu (ops/install.sh) and librdkafka >= 2.1 at run time (LD_LIBRARY_PATH=$MESA_HOME/lib, as ops/test.sh sets)"

/// Collects librdkafka's log lines and this module's notes; MESA_KAFKA_DEBUG=1 also prints them.
final class LogCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    private let name: String
    private let echo = ProcessInfo.processInfo.environment["MESA_KAFKA_DEBUG"] == "1"

    init(_ name: String) { self.name = name }

    var logger: Logger { Logger(label: name) { [self] _ in Handler(collector: self) } }

    /// Appends every message, at every level, to the collector.
    struct Handler: LogHandler {
        let collector: LogCollector
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { collector.append(event.message.description) }
    }

    func append(_ line: String) {
        lock.lock()
        stored.append(line)
        lock.unlock()
        if echo { print("[\(name)] \(line)") }
    }

    var lines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }

    func contains(_ fragment: String) -> Bool { lines.contains { $0.contains(fragment) } }
}

/// Consumer properties for a group member that joins Tansu quickly (a join takes about half of
/// session.timeout.ms there).
func groupProperties(_ bootstrap: String, group: String, extra: [String: String] = [:]) -> [String: String] {
    var p = [
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "session.timeout.ms": "6000",
        "heartbeat.interval.ms": "1000",
    ]
    p.merge(extra) { $1 }
    return p
}

/// Polls `condition` every 50 ms until it holds or `timeout` seconds pass.
func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return condition()
}

/// Takes `count` messages from `consumer`, committing each; stops early after `timeout` seconds.
func consumeAndCommit(_ consumer: KafkaConsumer, count: Int, timeout: Double) throws -> [KafkaMessage] {
    let deadline = Date(timeIntervalSinceNow: timeout)
    var got: [KafkaMessage] = []
    while got.count < count, Date() < deadline {
        guard let m = consumer.next(timeout: 0.5) else { continue }
        try consumer.commit(m)
        got.append(m)
    }
    return got
}

extension [UInt8] {
    var utf8String: String { String(decoding: self, as: UTF8.self) }
}

extension String {
    var bytes: [UInt8] { Array(utf8) }
}
