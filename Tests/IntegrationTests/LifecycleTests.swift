import Contracts
import EditDaemon
import Foundation
import Testing

/// The daemon's services and logs, seen from outside the process.
@Suite(.serialized) struct LifecycleTests {
    /// With `log.format` json every line the daemon writes is one JSON object; an applied event's
    /// line carries its id and outcome as fields; SIGINT drains like SIGTERM and exits 0.
    @Test func jsonLogLinesAndSigintDrains() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "jsonlog")
        defer { h.cleanup() }
        h.settings["log"] = ["format": "json", "level": "info"]
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        #expect(try h.results(for: [id])[id]?["status"]?.stringValue == "applied", "\(h.tail())")
        #expect(h.terminate(signal: SIGINT) == 0, "SIGINT must drain and exit 0:\n\(h.tail())")

        let lines = try String(contentsOf: h.logURL, encoding: .utf8).split(separator: "\n").filter { !$0.hasPrefix("---- launch") }
        let objects = lines.map { try? JSONValue.parse(Data($0.utf8)) }
        #expect(!lines.isEmpty && objects.allSatisfy { $0?["ts"] != nil && $0?["level"] != nil && $0?["message"] != nil },
                "not every line is a JSON log object:\n\(zip(lines, objects).filter { $0.1 == nil }.map(\.0).prefix(5).joined(separator: "\n"))")
        let applied = objects.compactMap { $0 }.filter { $0["outcome"]?.stringValue == "applied" }
        #expect(applied.count == 1 && applied.first?["event_id"]?.stringValue == id && applied.first?["logger"]?.stringValue == "mesa serve",
                "\(applied)")
        #expect(objects.last??["message"]?.stringValue?.hasPrefix("stopped") == true, "\(lines.suffix(3))")
    }

    /// SIGTERM while an edit runs: the intake stops, the edit finishes, its result is published and
    /// its offset committed before the process exits 0, so a restart has nothing to redeliver.
    @Test func sigtermDuringAnEditFinishesAndCommitsIt() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "drain", steps: 1000)
        defer { h.cleanup() }
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        let consumed = "mesa_events_consumed_total{topic=\"\(h.topics.factUpdates)\"} 1\n"
        let end = Date().addingTimeInterval(60)
        while Date() < end, (try? h.http("/metrics").body.contains(consumed)) != true { Thread.sleep(forTimeInterval: 0.02) }
        #expect(try h.store().records().isEmpty, "the edit finished before SIGTERM; make it slower")
        #expect(h.terminate() == 0, "\(h.tail())")
        #expect(try h.store().records().map(\.eventId) == [id], "the edit in flight is finished and snapshotted")
        #expect(try h.results(for: [id], timeout: 30)[id]?["status"]?.stringValue == "applied")

        try h.start()
        // The consumer logs its assignment; anything not committed would be redelivered right after it.
        let joined = Date().addingTimeInterval(60)
        func assigned() -> Bool {
            let relaunch = h.tail(400).components(separatedBy: "---- launch 2").last ?? ""
            return relaunch.split(separator: "\n").contains { $0.contains("assigned ") && $0.contains("\(h.topics.factUpdates)/0") }
        }
        while Date() < joined, !assigned() { Thread.sleep(forTimeInterval: 0.1) }
        #expect(assigned(), "no partition assigned after the restart:\n\(h.tail())")
        Thread.sleep(forTimeInterval: 2)
        let after = try h.http("/metrics").body
        #expect(after.contains("mesa_edits_skipped_total{reason=\"duplicate\"} 0\n"), "the committed event was redelivered:\n\(after)")
        #expect(!after.contains(consumed), "\(after)")
        #expect(try h.store().records().count == 1)
        #expect(h.terminate() == 0, "\(h.tail())")
    }

    /// A service that fails (here HTTP: its port is taken) stops the group: the process exits 1 with
    /// the cause, and the services started meanwhile are closed.
    @Test func aFailingServiceStopsTheDaemonWithItsError() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "bindfail")
        defer { h.cleanup() }
        let taken = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(taken) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(h.httpPort).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(taken, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        // Bound but not listening: the daemon cannot bind, and the harness's probes are refused at once.
        #expect(bound == 0)
        #expect(throws: HarnessError.self) { try h.start(timeout: 60) }
        #expect(h.exited(with: 1), "\(h.launchLog)")
        #expect(h.tail().contains("Address already in use"), "\(h.tail())")
    }

    /// `log.level` warning: the info lines of a normal start and edit are not written.
    @Test func theLogLevelDropsLowerLines() throws {
        let h = try DaemonHarness(bootstrap: try SharedBroker.get().bootstrapServers, label: "loglevel")
        defer { h.cleanup() }
        h.settings["log"] = ["level": "warning"]
        try h.start()
        let id = UUID().uuidString.lowercased()
        try h.publish(DaemonHarness.factUpdate(id: id))
        #expect(try h.results(for: [id])[id]?["status"]?.stringValue == "applied")
        #expect(h.terminate() == 0, "\(h.tail())")
        let log = try String(contentsOf: h.logURL, encoding: .utf8)
        #expect(!log.contains(" info ") && !log.contains("applied \(id)") && !log.contains("consuming "), "\(h.tail())")
    }
}

