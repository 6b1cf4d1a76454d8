import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// A `mesa follow` process beside a `DaemonHarness`'s daemon: the daemon's configuration (or one
/// naming another deltas topic), its own state directory, consumer group, HTTP port and log.
final class FollowerProcess {
    let harness: DaemonHarness
    let config: URL
    let stateDir: URL
    var group: String
    let port: Int
    let logURL: URL
    var process: Process?
    /// More `mesa follow` arguments for the next start (e.g. `--pause-in-apply-ms`).
    var extraArguments: [String] = []
    private(set) var launches = 0

    init(_ h: DaemonHarness, name: String, deltasTopic: String? = nil) throws {
        harness = h
        let daemonConfig = h.dir.appendingPathComponent("mesa.json")
        if let deltasTopic {
            var c = try JSONSerialization.jsonObject(with: Data(contentsOf: daemonConfig)) as! [String: Any]
            var kafka = c["kafka"] as! [String: Any]
            var topics = kafka["topics"] as! [String: Any]
            topics["weight_deltas"] = deltasTopic
            kafka["topics"] = topics
            c["kafka"] = kafka
            config = h.dir.appendingPathComponent("\(name).json")
            try JSONSerialization.data(withJSONObject: c, options: [.sortedKeys]).write(to: config)
        } else {
            config = daemonConfig
        }
        stateDir = h.dir.appendingPathComponent("\(name)-state")
        group = "\(h.prefix)-\(name)"
        port = try DaemonHarness.freePort()
        logURL = h.dir.appendingPathComponent("\(name).log")
    }

    deinit { kill9() }

    func start() throws {
        launches += 1
        process = try DaemonHarness.launch(["follow", "--config", config.path, "--state-dir", stateDir.path,
                       "--group-id", group, "--http-listen", "127.0.0.1:\(port)"] + extraArguments, home: harness.dir, log: logURL, launch: launches)
    }

    func kill9() {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    func terminate() -> Int32? {
        guard let p = process, p.isRunning else { return process?.terminationStatus }
        kill(p.processIdentifier, SIGTERM)
        let end = Date().addingTimeInterval(60)
        while p.isRunning && Date() < end { Thread.sleep(forTimeInterval: 0.05) }
        if p.isRunning { kill9(); return nil }
        return p.terminationStatus
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// The log of the current launch.
    var launchLog: String { log.components(separatedBy: "---- launch \(launches)\n").last ?? "" }

    func http(_ path: String) -> (status: Int, body: String)? { try? harness.http(path, port: port) }

    /// Waits until `done` holds (true) or `timeout` passes (false); the process must keep running.
    func wait(timeout: Double = 90, _ done: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if done() { return true }
            if let p = process, !p.isRunning { return false }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return false
    }
}

/// `mesa follow` against the real broker: a follower reaches the daemon's head and weight hash, resumes
/// bit-identical after kill -9, and refuses a gap loudly.
@Suite(.serialized) struct FollowerTests {
    /// The snapshot and weight hash /v1/model reports on `port` (the daemon's when nil).
    static func model(_ h: DaemonHarness, port: Int? = nil) -> (snapshot: Int, weightHash: String)? {
        guard let r = try? h.http("/v1/model", port: port), r.status == 200, let v = try? JSONValue.parse(Data(r.body.utf8)),
              let s = v["snapshot"]?.intValue, let w = v["weight_hash"]?.stringValue else { return nil }
        return (s, w)
    }

    static func edit(_ h: DaemonHarness, _ subjects: [String]) throws {
        let ids = subjects.map { _ in UUID().uuidString.lowercased() }
        for (id, subject) in zip(ids, subjects) { try h.publish(DaemonHarness.factUpdate(id: id, subject: subject)) }
        _ = try h.results(for: Set(ids))
    }

    static func rollback(_ h: DaemonHarness, to seq: Int) throws {
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.rollback(to: seq, id: id), topic: h.topics.control, cloudEvent: EventTypes.control)
        _ = try h.results(for: [id])
    }

    @Test func aFollowerReachesTheDaemonsWeightsAndResumesAfterKill9() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "follow")
        defer { h.cleanup() }
        try h.start()
        try Self.edit(h, ["Paris", "Lyon", "Bern"])
        try Self.rollback(h, to: 1)
        try Self.edit(h, ["Oslo"])
        let first = try #require(Self.model(h))
        #expect(first.snapshot == 4, "log:\n\(h.tail())")

        let f = try FollowerProcess(h, name: "follower")
        try f.start()
        // Killed -9 as soon as it has applied a record (mid-stream, or just after it caught up).
        #expect(f.wait { f.log.contains("applied in") }, "follower log:\n\(f.log)")
        f.kill9()
        try Self.edit(h, ["Riga", "Kyiv"])
        try Self.rollback(h, to: 5)
        let daemon = try #require(Self.model(h))
        let recorded = try h.store().hash(at: 5)
        #expect(daemon.snapshot == 5 && daemon.weightHash == recorded)

        try f.start()
        let caughtUp = f.wait { Self.model(h, port: f.port).map { $0.snapshot == daemon.snapshot && $0.weightHash == daemon.weightHash } ?? false }
        #expect(caughtUp, "follower log:\n\(f.log)")
        #expect(f.wait { f.http("/readyz")?.status == 200 }, "readyz: \(String(describing: f.http("/readyz"))); log:\n\(f.log)")
        #expect(f.http("/readyz")?.body.contains("lag 0") == true)
        #expect(f.log.contains("---- launch 2"))
        #expect(f.http("/metrics")?.body.contains("mesa_snapshot_head 5") == true)

        // Restarted with its store but a new group (as if no Kafka offset had been committed): it rebuilds
        // the same weights from its store and skips every record it holds.
        #expect(f.terminate() == 0, "follower log:\n\(f.log)")
        f.group += "-again"
        try f.start()
        #expect(f.wait { f.log.components(separatedBy: "---- launch 3").last!.contains("@7: skipped") }, "\(f.log)")
        let third = f.log.components(separatedBy: "---- launch 3").last!
        #expect(third.contains("head 5, weights \(daemon.weightHash.prefix(16))") && !third.contains("applied in"), "\(third)")
        #expect(f.wait { Self.model(h, port: f.port).map { $0.snapshot == 5 && $0.weightHash == daemon.weightHash } ?? false }, "\(f.log)")
        #expect(f.terminate() == 0, "\(f.log.suffix(4000))")
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// A follower of a daemon that has edited nothing is ready at the base model, with lag 0.
    @Test func aFollowerOfAnEmptyTopicIsReadyAtTheBase() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "follow-empty")
        defer { h.cleanup() }
        try h.start()
        let f = try FollowerProcess(h, name: "empty")
        try f.start()
        #expect(f.wait(timeout: 60) { f.http("/readyz")?.status == 200 }, "readyz: \(String(describing: f.http("/readyz"))); log:\n\(f.log)")
        #expect(f.http("/readyz")?.body.contains("lag 0") == true)
        let base = try h.store().hash(at: 0)
        #expect(Self.model(h, port: f.port).map { $0.snapshot == 0 && $0.weightHash == base } == true)
        #expect(f.terminate() == 0, "\(f.log.suffix(4000))")
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// A record damaged on the topic (one data byte changed: its SHA-256 no longer matches) stops the
    /// follower before it touches the weights: logged as an error, /readyz not ready saying why,
    /// `mesa_follower_refused` 1, the last verified snapshot served. Nothing is lost: the damaged
    /// record's offset is not committed, so a restart over the same store and group starts from the
    /// stored head and meets the same record again instead of skipping past it.
    @Test func aCorruptedRecordStopsTheFollowerAndLosesNothing() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "follow-corrupt")
        defer { h.cleanup() }
        try h.start()
        try Self.edit(h, ["Paris", "Lyon", "Bern"])
        let records = try WeightDeltaTests.read(h.topics.weightDeltas, bootstrap: h.bootstrap, count: 3)
        #expect(records.count == 3)
        let damagedTopic = "\(h.prefix).damaged-deltas"
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": h.bootstrap])
        try admin.createTopics([damagedTopic], partitions: 1, replicationFactor: 1, timeout: 30)
        admin.close()
        let producer = try h.producer
        for (i, r) in records.enumerated() {
            var payload = r.payload
            if i == 1 { payload[payload.count - 5] ^= 0x01 }
            _ = try producer.send(topic: damagedTopic, key: r.key, payload: payload, headers: r.headers, timeout: 15)
        }
        let snapshot1 = try h.store().hash(at: 1)

        let f = try FollowerProcess(h, name: "corrupt", deltasTopic: damagedTopic)
        for launch in 1...2 {
            try f.start()
            #expect(f.wait { f.http("/readyz")?.body.contains("refused (undecodable)") == true }, "readyz: \(String(describing: f.http("/readyz"))); log:\n\(f.log)")
            let readyz = try #require(f.http("/readyz"))
            #expect(readyz.status == 503 && readyz.body.contains("SHA-256") && readyz.body.contains("@1"), "\(readyz.body)")
            #expect(f.launchLog.contains("@1 not applied; following stopped at snapshot 1"), "\(f.launchLog)")
            #expect(!f.launchLog.contains("@2"), "nothing after the damaged record is read as applied or skipped: \(f.launchLog)")
            let served = Self.model(h, port: f.port)
            #expect(served?.snapshot == 1 && served?.weightHash == snapshot1)
            let metrics = f.http("/metrics")?.body ?? ""
            #expect(FollowerFleetTests.sample(metrics, "mesa_follower_refused") == 1, "\(metrics)")
            // The first launch applied snapshot 1; the second holds it from its store and applies nothing.
            #expect(FollowerFleetTests.sample(metrics, "mesa_follower_records_applied_total") == (launch == 1 ? 1 : 0), "\(metrics)")
            if launch == 2 { #expect(f.launchLog.contains("head 1, weights \(snapshot1.prefix(16))"), "\(f.launchLog)") }
            #expect(f.terminate() == 0, "\(f.log)")
        }
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// A topic that lacks a record (here: the daemon's records copied without the second) stops the
    /// follower at the gap: logged as an error, /readyz not ready saying why and how to recover, and
    /// the last verified snapshot still served.
    @Test func aGapIsRefusedLoudly() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "follow-gap")
        defer { h.cleanup() }
        try h.start()
        try Self.edit(h, ["Paris", "Lyon", "Bern"])
        let records = try WeightDeltaTests.read(h.topics.weightDeltas, bootstrap: h.bootstrap, count: 3)
        #expect(records.count == 3)
        let gapped = "\(h.prefix).gapped-deltas"
        let admin = try KafkaAdmin(properties: ["bootstrap.servers": h.bootstrap])
        try admin.createTopics([gapped], partitions: 1, replicationFactor: 1, timeout: 30)
        admin.close()
        let producer = try h.producer
        for (i, r) in records.enumerated() where i != 1 {
            _ = try producer.send(topic: gapped, key: r.key, payload: r.payload, headers: r.headers, timeout: 15)
        }
        let snapshot1 = try h.store().hash(at: 1)

        let f = try FollowerProcess(h, name: "gap", deltasTopic: gapped)
        try f.start()
        #expect(f.wait { f.http("/readyz")?.body.contains("refused (gap)") == true }, "readyz: \(String(describing: f.http("/readyz"))); log:\n\(f.log)")
        let readyz = try #require(f.http("/readyz"))
        #expect(readyz.status == 503 && readyz.body.contains("--group-id") && readyz.body.contains("--state-dir"))
        #expect(f.log.contains("not applied; following stopped at snapshot 1"))
        let served = Self.model(h, port: f.port)
        #expect(served?.snapshot == 1 && served?.weightHash == snapshot1)
        #expect(f.terminate() == 0, "\(f.log.suffix(4000))")
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
