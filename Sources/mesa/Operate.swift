import ArgumentParser
import Contracts
import EditDaemon
import Editing
import Foundation
import Messaging
import ModelRuntime
import Storage

/// Client-side helpers of the operator verbs: publishing an event and finding its result.
enum Client {
    static func principal() -> String {
        ProcessInfo.processInfo.environment["USER"].flatMap { $0.isEmpty ? nil : $0 } ?? "mesa-cli"
    }

    /// The librdkafka properties of the operator verbs' clients: the daemon's, with connection setup
    /// (TCP, TLS, SASL) bounded at 5 s unless configured, so that a wrong address or TLS setting is
    /// reported in seconds.
    static func properties(_ config: DaemonConfiguration) -> [String: String] {
        var p = config.kafkaProperties
        if p["socket.connection.setup.timeout.ms"] == nil { p["socket.connection.setup.timeout.ms"] = "5000" }
        return p
    }

    /// Fails (exit 1) with librdkafka's reason when no broker of the cluster answers within `timeout` seconds.
    static func checkBroker(_ config: DaemonConfiguration, timeout: Double = 10) throws {
        let admin = try KafkaAdmin(properties: properties(config))
        defer { admin.close() }
        do { try admin.checkConnection(timeout: timeout) } catch {
            throw fail("cannot reach Kafka: \(error)")
        }
    }

    /// Sends one event (CloudEvents binary mode) and returns its partition and offset.
    static func send(_ json: Data, id: String, type: String, topic: String, key: String?, config: DaemonConfiguration) throws -> (Int32, Int64) {
        let producer = try KafkaProducer(properties: properties(config))
        defer { producer.close() }
        let ce = CloudEvent(id: id, source: "urn:mesa:cli:\(principal())", type: type, subject: nil, datacontenttype: "application/json", data: Array(json))
        let r = try producer.send(topic: topic, key: key.map { Array($0.utf8) }, payload: Array(json), headers: ce.kafkaHeaders(), timeout: 30)
        return (r.partition, r.offset)
    }

    /// A consumer that reads `topic` from the beginning in a group of its own, committing nothing.
    static func reader(_ topic: String, config: DaemonConfiguration, fromBeginning: Bool = true) throws -> KafkaConsumer {
        var p = properties(config)
        p["group.id"] = "mesa-cli-\(UUID().uuidString.lowercased())"
        p["auto.offset.reset"] = fromBeginning ? "earliest" : "latest"
        p["session.timeout.ms"] = "6000"
        p["heartbeat.interval.ms"] = "1000"
        // A topic that does not exist yet is noticed within a second, not at the 5-minute default.
        p["topic.metadata.refresh.interval.ms"] = p["topic.metadata.refresh.interval.ms"] ?? "1000"
        return try KafkaConsumer(properties: p, topics: [topic])
    }

    /// Waits for the result (or dead letter) of event `id`; returns the record's JSON text.
    static func awaitResult(of id: String, config: DaemonConfiguration, timeout: Double) throws -> (deadLetter: Bool, json: String) {
        let topics = config.topics
        let results = try reader(topics.results, config: config), dead = try reader(topics.deadLetters, config: config)
        defer { results.close(); dead.close() }
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            for (c, isDead) in [(results, false), (dead, true)] {
                guard let m = c.next(timeout: 0.1) else { continue }
                try? c.commit(m)
                let text = String(decoding: m.payload, as: UTF8.self)
                if let v = try? JSONValue.parse(Data(m.payload)), v["event_id"]?.stringValue == id { return (isDead, text) }
            }
        }
        throw fail("no result for \(id) within \(Int(timeout)) s (is `mesa serve` running against \(config.bootstrapServers)?)")
    }
}

struct Publish: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish a fact update (from flags, a file, or stdin) to the fact-updates topic.",
        discussion: "The event is checked against Schemas/fact-update.schema.json before it is sent (--raw sends a file's bytes unchecked). Prints the event id; --wait prints its result.")

    @OptionGroup var daemonOptions: DaemonOptions
    @Option(name: .long, help: "The subject, e.g. \"Eiffel Tower\".") var subject: String?
    @Option(name: .long, help: "The prompt with {} for the subject, e.g. \"The {} is located in\".") var prompt: String?
    @Option(name: .long, help: "The new object.") var targetNew: String?
    @Option(name: .long, help: "The current object (optional).") var targetTrue: String?
    @Option(name: .long, help: "A paraphrase prompt to evaluate (repeatable).") var paraphrase: [String] = []
    @Option(name: .long, help: "A neighborhood prompt to evaluate (repeatable).") var neighborhood: [String] = []
    @Option(name: .long, help: "The model the edit is for (default: the installed model's name).") var modelName: String?
    @Option(name: .long, help: "Editing method named in the event (default: the configured daemon's, e.g. AlphaEdit).") var method: String?
    @Option(name: .long, help: "Event id (default: a new UUID).") var id: String?
    @Flag(name: .long, help: "Evaluate without applying.") var dryRun = false
    @Option(name: .long, help: "Read the event (one JSON object) from a file, or - for stdin.") var file: String?
    @Flag(name: .long, help: "With --file: send the bytes as they are, without checking them (for testing the dead-letter path).") var raw = false
    @Flag(name: .long, help: "Wait for the event's result and print it.") var wait = false
    @Option(name: .long, help: "Seconds to wait with --wait.") var timeout: Double = 300

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            var data: Data
            var eventId: String
            // The record key: the model's name, so one model's edits share a partition and keep their order.
            var modelKey: String?
            if let file {
                guard let d = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: file) else {
                    throw fail("cannot read \(file)")
                }
                data = d
                let event = try? JSONValue.parse(d)
                eventId = event?["id"]?.stringValue ?? id ?? UUID().uuidString.lowercased()
                modelKey = event?["model"]?["name"]?.stringValue
            } else {
                guard let subject, let prompt, let targetNew else { throw fail("give --subject, --prompt and --target-new, or --file") }
                eventId = id ?? UUID().uuidString.lowercased()
                let name = try modelName ?? Installation.modelName(paths.defaultModel())
                modelKey = name
                var event: [String: Any] = [
                    "id": eventId, "model": ["name": name, "revision": "main"], "subject": subject, "prompt": prompt,
                    "target_new": ["str": targetNew], "method": try method ?? config.editMethod.name, "issued_by": ["principal": Client.principal()],
                    "issued_at": ISO8601DateFormatter().string(from: Date()),
                ]
                if let targetTrue { event["target_true"] = ["str": targetTrue] }
                if !paraphrase.isEmpty { event["paraphrase_prompts"] = paraphrase }
                if !neighborhood.isEmpty { event["neighborhood_prompts"] = neighborhood }
                if dryRun { event["dry_run"] = true }
                data = try JSONSerialization.data(withJSONObject: event, options: [.sortedKeys])
            }
            if !raw { try paths.schemaCatalog().check(data, against: "fact-update.schema.json", what: "the event") }
            try Client.checkBroker(config)
            let (partition, offset) = try Client.send(data, id: eventId, type: EventTypes.factUpdate, topic: config.topics.factUpdates,
                                                      key: modelKey, config: config)
            print(eventId)
            log("published to \(config.topics.factUpdates)/\(partition)@\(offset)")
            if wait {
                let (dead, json) = try Client.awaitResult(of: eventId, config: config, timeout: timeout)
                print(json)
                if dead { throw ExitCode(1) }
            }
        }
    }
}

struct Results: ParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print edit results (or dead letters) as JSON lines.",
        discussion: "Reads from the beginning in a consumer group of its own (nothing is committed). Without --follow it stops once no record arrived for --idle seconds.")

    @OptionGroup var daemonOptions: DaemonOptions
    @OptionGroup var logOptions: LogOptions
    @Flag(name: .long, help: "Keep waiting for new records.") var follow = false
    @Flag(name: .long, help: "Read the dead-letter topic instead.") var deadLetters = false
    @Option(name: .long, help: "Only the record for this event id.") var eventId: String?
    @Option(name: .long, help: "Seconds without a record after which to stop (without --follow).") var idle: Double = 5

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            let topic = deadLetters ? config.topics.deadLetters : config.topics.results
            try Client.checkBroker(config)
            let c = try Client.reader(topic, config: config)
            defer { c.close() }
            trappingInterrupt { interrupt in
                var last = Date()
                while !interrupt.isRaised && (follow || Date().timeIntervalSince(last) < idle) {
                    guard let m = c.next(timeout: 0.2) else { continue }
                    last = Date()
                    try? c.commit(m)
                    if let eventId, (try? JSONValue.parse(Data(m.payload)))?["event_id"]?.stringValue != eventId { continue }
                    print(String(decoding: m.payload, as: UTF8.self))
                    fflush(nil)  // every output stream: stdout is a C global Swift 6 will not read
                }
            }
        }
    }
}

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll the daemon's weights back to snapshot N (0 = the base model) and wait for the result.",
        discussion: "Sends a control command; the daemon restores the weights bit-exactly (the hash recorded at N), journals the rollback and publishes a result. Later edits continue from N.")

    @OptionGroup var daemonOptions: DaemonOptions
    @Option(name: .long, help: "The snapshot sequence number.") var to: UInt64
    @Option(name: .long, help: "Why (journaled with the command).") var reason: String?
    @Option(name: .long, help: "The model (default: the installed model's name).") var modelName: String?
    @Option(name: .long, help: "Seconds to wait for the result.") var timeout: Double = 120

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            let id = UUID().uuidString.lowercased()
            let model = try modelName ?? Installation.modelName(paths.defaultModel())
            var cmd: [String: Any] = [
                "id": id, "command": "rollback", "to": to, "model": ["name": model],
                "issued_by": ["principal": Client.principal()], "issued_at": ISO8601DateFormatter().string(from: Date()),
            ]
            if let reason { cmd["reason"] = reason }
            let data = try JSONSerialization.data(withJSONObject: cmd, options: [.sortedKeys])
            try paths.schemaCatalog().check(data, against: "control-command.schema.json", what: "the command")
            try Client.checkBroker(config)
            _ = try Client.send(data, id: id, type: EventTypes.control, topic: config.topics.control, key: model, config: config)
            let (dead, json) = try Client.awaitResult(of: id, config: config, timeout: timeout)
            print(json)
            if dead { throw ExitCode(1) }
        }
    }
}

/// The snapshot stores under a state directory: `<state>/<hash16>/lmdb`, one per base model.
func snapshotStores(in stateDir: URL) throws -> [(URL, SnapshotStore)] {
    let fm = FileManager.default
    let dirs = (try? fm.contentsOfDirectory(atPath: stateDir.path)) ?? []
    return try dirs.sorted().compactMap { d in
        let lmdb = stateDir.appendingPathComponent(d).appendingPathComponent("lmdb")
        guard fm.fileExists(atPath: lmdb.appendingPathComponent("data.mdb").path) else { return nil }
        return (lmdb, try SnapshotStore(path: lmdb.path))
    }
}

struct Snapshots: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the recorded snapshots and the journal of every model under the state directory.",
        discussion: """
        A record that fails its checksum or does not parse is listed as CORRUPT with the reason (in \
        --json, under "corrupt"), and the listing goes on. Exit status: 0 when every record is intact; \
        2 after listing everything when any record is corrupt; 1 on an error (no store, a damaged \
        data.mdb), with the reason on stderr.
        """)

    @OptionGroup var daemonOptions: DaemonOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            let dir = config.stateDirectory(paths)
            let stores = try snapshotStores(in: dir)
            guard !stores.isEmpty else { throw fail("no snapshot store under \(dir.path)") }
            var corruptRecords = 0
            for (path, store) in stores {
                let head = try store.head()
                let scanned = try store.scan()
                let records = scanned.compactMap { try? $0.result.get() }
                let corrupt = scanned.compactMap { s -> (seq: UInt64, error: SnapshotStoreError)? in
                    guard case .failure(let e) = s.result else { return nil }
                    return (s.seq, e)
                }
                corruptRecords += corrupt.count
                if json {
                    let rows: [[String: Any]] = records.map {
                        ["seq": $0.seq, "parent": $0.parent, "event_id": $0.eventId, "method": $0.method, "hash_before": $0.hashBefore,
                         "hash_after": $0.hashAfter, "created_at": $0.createdAt, "bytes": $0.storedBytes, "head": $0.seq == head]
                    }
                    let bad: [[String: Any]] = corrupt.map { ["seq": $0.seq, "error": $0.error.message, "head": $0.seq == head] }
                    let doc: [String: Any] = ["store": path.path, "model": try store.modelName() ?? "", "base_hash": try store.baseHash() ?? "",
                                              "head": head, "snapshots": rows, "corrupt": bad]
                    print(String(decoding: try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys]), as: UTF8.self))
                    continue
                }
                print("\(try store.modelName() ?? "?") — base \(try store.baseHash()?.prefix(16) ?? "?") — \(path.path)")
                func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
                    s.count >= n ? s : (right ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
                }
                func row(_ mark: String, _ seq: String, _ parent: String, _ event: String, _ method: String, _ hash: String, _ bytes: String, _ time: String) {
                    print("\(mark) \(pad(seq, 5, right: true)) \(pad(parent, 6, right: true))  \(pad(event, 36))  \(pad(method, 6))  \(pad(hash, 16))  \(pad(bytes, 6, right: true))  \(time)")
                }
                row(" ", "seq", "parent", "event", "method", "weights", "bytes", "created")
                row(head == 0 ? "*" : " ", "0", "-", "(base model)", "-", String(try store.baseHash()?.prefix(16) ?? ""), "-", "-")
                for s in scanned {
                    let mark = s.seq == head ? "*" : " "
                    switch s.result {
                    case .success(let r):
                        row(mark, "\(r.seq)", "\(r.parent)", r.eventId, r.method, String(r.hashAfter.prefix(16)), "\(r.storedBytes)", r.createdAt)
                    case .failure(let e):
                        print("\(mark) \(pad("\(s.seq)", 5, right: true)) \(pad("?", 6, right: true))  CORRUPT  \(e.message)")
                    }
                }
                let rollbacks = try store.journal().filter { $0.kind == .rollback }
                for j in rollbacks { print("  rollback \(j.headBefore) → \(j.headAfter) at \(j.time) (\(j.eventId ?? "-"))") }
            }
            if corruptRecords > 0 {
                throw fail("\(corruptRecords) corrupt snapshot record(s), listed as CORRUPT: they are refused, never used (ops/runbooks/replay.md)", code: 2)
            }
        }
    }
}

struct Replay: ParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Audit: rebuild every snapshot from the base model and compare every recorded weight hash.",
        discussion: "Loads the base model in this process, re-applies the recorded deltas along each snapshot's lineage, checks the journal, and writes an audit report (Schemas/audit-report.schema.json). Exits 1 on any mismatch or refused record.")

    @OptionGroup var daemonOptions: DaemonOptions
    @OptionGroup var logOptions: LogOptions
    @OptionGroup var modelOptions: ModelOptions
    @Flag(name: .long, help: "Compare every recorded hash (the default and only mode).") var verify = false
    @Option(name: .long, help: "Write the audit report here (default: audit-<model>-<time>.json in the working directory).") var report: String?

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            let path = try modelOptions.model ?? config.model ?? modelOptions.path
            let model = try modelOptions.load(path: path)
            let name = Installation.modelName(path)
            let lmdb = EditState(directory: config.stateDirectory(paths), baseHash: model.weightHash).snapshotStore
            guard FileManager.default.fileExists(atPath: lmdb.appendingPathComponent("data.mdb").path) else {
                throw fail("no snapshot store for this model at \(lmdb.path)")
            }
            let store = try SnapshotStore(path: lmdb.path)
            let audit = try Auditor.verify(model: model, modelName: name, store: store)
            let data = try Auditor.encode(audit)
            try paths.schemaCatalog().check(data, against: "audit-report.schema.json", what: "the audit report")
            let out = report ?? "audit-\(name)-\(Int(Date().timeIntervalSince1970)).json"
            try data.write(to: URL(fileURLWithPath: out))
            for s in audit.snapshots {
                print(String(format: "%5d  %-9@ %@", s.seq, s.status, s.error ?? String(s.replayedHash?.prefix(16) ?? "")))
            }
            let bad = audit.snapshots.filter { $0.status != "match" }.count + audit.journal.filter { $0.status != "match" }.count
            print("\(audit.verified ? "verified" : "FAILED"): \(audit.snapshots.count) snapshots, \(audit.journal.count) journal entries, \(bad) problem(s), \(String(format: "%.2f", audit.seconds)) s; report \(out)")
            if !audit.verified { throw ExitCode(1) }
        }
    }
}
