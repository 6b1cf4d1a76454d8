import Contracts
import EditDaemon
import Foundation
import Messaging
import Storage
import TestSupport
import Testing

/// Crashes and broker faults: nothing lost, nothing applied twice.
@Suite(.serialized) struct FaultTests {
    /// Distinct edits, so every one changes the weights and the final hash depends on their order.
    static func stream(_ n: Int) -> [(id: String, payload: Data)] {
        let subjects = ["Paris", "Rome", "Lyon"]
        return (0..<n).map { i in
            let id = String(format: "00000000-0000-4000-8000-%012d", i + 1)
            let s = subjects[i % 3], t = subjects[(i % 3 + 1 + (i / 3) % 2) % 3]
            return (id, DaemonHarness.factUpdate(id: id, subject: s, targetNew: t, targetTrue: "is"))
        }
    }

    /// Waits until the store holds `count` snapshots.
    static func waitForSnapshots(_ h: DaemonHarness, _ count: Int, timeout: Double) throws -> [SnapshotRecord] {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if let rs = try? h.store().records(), rs.count >= count { return rs }
            Thread.sleep(forTimeInterval: 0.2)
        }
        return (try? h.store().records()) ?? []
    }

    @Test func killNineAtRandomPointsLosesNothingAndAppliesNothingTwice() throws {
        let bootstrap = try SharedBroker.get().bootstrapServers
        let fast = ["session.timeout.ms": "3000", "heartbeat.interval.ms": "500"]
        let n = 10
        let events = Self.stream(n)
        let h = try DaemonHarness(bootstrap: bootstrap, label: "kill", steps: 150)
        defer { h.cleanup() }
        try h.start(extra: fast)
        for e in events { try h.publish(e.payload) }
        var rng = SystemRandomNumberGenerator()
        var kills = 0
        while kills < 8 {
            Thread.sleep(forTimeInterval: Double.random(in: 0.05...1.5, using: &rng))
            h.kill9()
            kills += 1
            if (try? h.store().records().count) == n { break }
            try h.start(extra: fast)
        }
        if !h.isRunning { try h.start(extra: fast) }
        let records = try Self.waitForSnapshots(h, n, timeout: 180)
        #expect(records.count == n, "after \(kills) kills: \(records.count) snapshots; log:\n\(h.tail())")
        #expect(Set(records.map(\.eventId)) == Set(events.map(\.id)), "every event applied exactly once")
        #expect(records.map(\.eventId) == events.map(\.id), "in log order")
        let results = try h.results(for: Set(events.map(\.id)), timeout: 60)
        #expect(results.count == n, "every event has a result")
        #expect(h.terminate() == 0, "\(h.tail())")

        // The same stream, uninterrupted, in a fresh state directory and consumer group.
        let ref = try DaemonHarness(bootstrap: bootstrap, label: "kill-ref", prefix: h.prefix, steps: 150)
        defer { ref.cleanup() }
        try ref.start(extra: fast)
        let refRecords = try Self.waitForSnapshots(ref, n, timeout: 180)
        #expect(refRecords.count == n)
        #expect(refRecords.last?.hashAfter == records.last?.hashAfter, "final weight hash must equal the uninterrupted run's")
        #expect(refRecords.map(\.hashAfter) == records.map(\.hashAfter))
    }

    @Test func brokerRestartMidStreamResumesWithoutLosingTheDaemonsWork() throws {
        let broker = try DevelopmentBroker(executable: DevelopmentBroker.executable(home: TestPaths.home))
        defer { broker.stop() }
        let h = try DaemonHarness(bootstrap: broker.bootstrapServers, label: "restart", steps: 60)
        defer { h.cleanup() }
        try h.start()
        let first = Self.stream(6)
        for e in first.prefix(3) { try h.publish(e.payload) }
        #expect(try h.results(for: Set(first.prefix(3).map(\.id))).count == 3, "log:\n\(h.tail())")

        // Restart while the daemon is busy with more events. Tansu keeps everything in memory, so
        // events not yet consumed are lost with it: the daemon's own state (snapshots) must not be.
        for e in first.suffix(3) { try h.publish(e.payload) }
        Thread.sleep(forTimeInterval: 0.3)
        try broker.restart()
        let consumedBefore = try h.store().records().count
        #expect(h.isRunning)

        // New events after the restart are processed (the daemon recreates its topics and rejoins).
        let later = (6..<9).map { i -> (id: String, payload: Data) in
            let id = String(format: "00000000-0000-4000-9000-%012d", i)
            let subjects = ["Paris", "Rome", "Lyon"]
            return (id, DaemonHarness.factUpdate(id: id, subject: subjects[i % 3], targetNew: subjects[(i + 1) % 3], targetTrue: "is"))
        }
        // The test's own idempotent producer lost its id with the broker: a client starts a new one.
        h.resetProducer()
        let end = Date().addingTimeInterval(60)
        var sent = false
        while !sent && Date() < end {
            do {
                for e in later { try h.publish(e.payload) }
                sent = true
            } catch {
                h.resetProducer()
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
        #expect(sent)
        let results = try h.results(for: Set(later.map(\.id)), timeout: 120)
        let seen = results.count == 3 ? [] : try h.collect(h.topics.results, timeout: 10) { _ in false }.compactMap { $0["event_id"]?.stringValue }
        #expect(results.count == 3, "results topic holds \(seen); log:\n\(h.tail())")
        let records = try h.store().records()
        #expect(records.count >= consumedBefore + 3)
        #expect(Set(records.map(\.eventId)).count == records.count, "nothing applied twice")
        #expect(records.prefix(3).map(\.eventId) == first.prefix(3).map(\.id))
        #expect(h.isRunning)
    }

    @Test func injectedBrokerErrorsThroughTheMockClusterLoseNothing() throws {
        let mock = try KafkaMockCluster(brokers: 3)
        let h = try DaemonHarness(bootstrap: mock.bootstrapServers, label: "mock")
        defer { h.cleanup() }
        for t in h.topics.all { try mock.createTopic(t, partitions: 1, replicationFactor: 3) }
        try h.start(createTopics: false)
        let events = Self.stream(6)
        // Produce (0), Fetch (1), OffsetCommit (8), Heartbeat (12): retriable errors on the next requests.
        mock.pushRequestErrors(apiKey: 0, errors: [6, 7, 6])       // NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT
        mock.pushRequestErrors(apiKey: 8, errors: [15, 14, 16])     // COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR
        mock.pushRequestErrors(apiKey: 1, errors: [6, 7])
        for e in events.prefix(3) { try h.publish(e.payload) }
        mock.pushRequestErrors(apiKey: 0, errors: [7, 7])
        mock.pushRequestErrors(apiKey: 8, errors: [7, 15])
        for e in events.suffix(3) { try h.publish(e.payload) }
        let results = try h.results(for: Set(events.map(\.id)), timeout: 120)
        #expect(results.count == events.count, "log:\n\(h.tail())")
        let records = try Self.waitForSnapshots(h, events.count, timeout: 30)
        #expect(records.map(\.eventId) == events.map(\.id), "each event applied once, in order")
        #expect(h.isRunning)
        #expect(h.terminate() == 0, "\(h.tail())")
    }
}
