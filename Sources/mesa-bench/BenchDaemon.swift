import ArgumentParser
import EditDaemon
import Editing
import Foundation
import Messaging
import ModelRuntime
import Storage
import Tensor
import TestSupport

func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let rank = Int((p / 100 * Double(s.count)).rounded(.up))
    return s[max(0, min(s.count - 1, rank - 1))]
}

func summary(_ xs: [Double]) -> [String: Double] {
    ["p50_ms": percentile(xs, 50) * 1e3, "p99_ms": percentile(xs, 99) * 1e3, "max_ms": (xs.max() ?? .nan) * 1e3, "count": Double(xs.count)]
}

/// Writes a benchmark's results with the machine they were measured on (`machine`: CPU model, BLAS
/// kernels and threads, and the slow-kernel warning when there is one).
func writeResults(_ doc: [String: Any], to path: String) throws {
    var doc = doc
    doc["machine"] = machineInfo()
    if doc["command"] == nil { doc["command"] = CommandLine.arguments.joined(separator: " ") }
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: path))
    print("wrote \(path)")
}

/// The CPU and BLAS configuration every result file records.
func machineInfo() -> [String: Any] {
    let b = BLAS.configuration
    var m: [String: Any] = ["cpu": CPUInfo.current.model, "avx512": CPUInfo.current.hasAVX512, "blas_core": b.coreName,
                            "blas_threads": b.threads, "blas_build": b.build, "cores": ProcessInfo.processInfo.activeProcessorCount]
    if let w = BLAS.kernelWarning() { m["blas_warning"] = w }
    // The machine is shared: the load when the results were written says how noisy the times are.
    if let load = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) {
        m["load_average"] = load.split(separator: " ").prefix(3).compactMap { Double($0) }
    }
    return m
}

/// The daemon's own cost per event: everything but the edit math (decode, validate, dedupe, hashing,
/// snapshot with fsync, publish with acks=all, commit), with the I/O floor measured in the same run.
struct DaemonBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Per-event overhead of `mesa serve` against a real Tansu broker, and the I/O floor (broker round trip, LMDB commit) in the same run.")

    @Option(help: "Events to process.") var events = 200
    @Option(help: "Model (default: a tiny generated model, so the edit math is negligible).") var model: String?
    @Option(help: "Results file.") var out = "ops/bench/results/daemon.json"

    func run() throws {
        let scratch = try BenchDaemonScratch(label: "daemon", linkingEditState: model != nil)
        defer { scratch.close() }
        let (dir, broker) = (scratch.dir, scratch.broker)
        var config = scratch.config
        config.method = "rome"   // the events below name ROME; the tiny model has no key statistics for the MEMIT family
        let modelPath: String
        if let model {
            modelPath = model
        } else {
            modelPath = dir.appendingPathComponent("tiny-bench.gguf").path
            try TinyModel.write(to: modelPath)
            let hd = dir.appendingPathComponent("hparams/rome")
            try FileManager.default.createDirectory(at: hd, withIntermediateDirectories: true)
            try TinyModel.romeHyperparameters(model: "tiny-bench", steps: 5).write(to: hd.appendingPathComponent("tiny-bench.json"))
            config.hparamsDir = dir.appendingPathComponent("hparams").path
        }
        config.model = modelPath
        let topics = config.topics
        let name = Installation.modelName(modelPath)
        var payloads: [[UInt8]] = []
        for i in 0..<events {
            let e: [String: Any] = [
                "id": UUID().uuidString.lowercased(), "model": ["name": name, "revision": "main"], "subject": ["Paris", "Rome", "Lyon"][i % 3],
                "prompt": "{} is in", "target_new": ["str": ["Rome", "Lyon", "Paris"][i % 3]], "target_true": ["str": "is"], "method": "ROME",
                "issued_by": ["principal": "bench"], "issued_at": "2026-11-21T10:00:00Z", "neighborhood_prompts": ["Lyon is in"],
            ]
            payloads.append(Array(try JSONSerialization.data(withJSONObject: e)))
        }
        let run = try DaemonRun(config: config, broker: broker, topic: topics.factUpdates, payloads: payloads, limit: 600)
        let (samples, roundTrips) = (run.samples, run.roundTrips)

        // The LMDB floor: one fsynced commit of a ROME-sized record.
        let store = try SnapshotStore(path: dir.appendingPathComponent("floor").path)
        let value = [UInt8](repeating: 7, count: 9_000)
        let db = try store.environment.database("floor")
        var commits: [Double] = []
        for i in 0..<100 {
            commits.append(try timed { try store.environment.write { try $0.put(db, key: Array("k\(i)".utf8), value: value) } })
        }
        let (total, edit, overhead) = samples.snapshot()
        let o = summary(overhead), rt = summary(roundTrips), lm = summary(commits)
        let floor = (rt["p50_ms"] ?? 0) + (lm["p50_ms"] ?? 0)
        print(String(format: "events %d on %@: overhead p50 %.2f ms, p99 %.2f ms, max %.2f ms (target p99 ≤ 10 ms); edit math p50 %.2f ms",
                     overhead.count, name, o["p50_ms"]!, o["p99_ms"]!, o["max_ms"]!, percentile(edit, 50) * 1e3))
        print(String(format: "floor in the same run: broker round trip (acks=all, linger 0) p50 %.2f ms, LMDB fsynced commit p50 %.2f ms; overhead p50 / floor = %.2f",
                     rt["p50_ms"]!, lm["p50_ms"]!, o["p50_ms"]! / floor))
        let stepMs = samples.stepMedians()
        print("median ms per step: " + stepMs.sorted { $0.key < $1.key }.map { String(format: "%@ %.2f", $0.key, $0.value) }.joined(separator: ", "))
        try writeResults([
            "benchmark": "daemon overhead per event", "model": name, "step_p50_ms": stepMs, "events": overhead.count, "overhead": o, "total": summary(total),
            "edit_math": summary(edit), "floor": ["broker_round_trip": rt, "lmdb_commit": lm], "overhead_p50_over_floor_p50": o["p50_ms"]! / floor,
            "blas": BLAS.configuration.description, "date": ISO8601DateFormatter().string(from: Date()),
        ], to: out)
    }
}

/// A scratch directory and a Tansu broker for one in-process daemon, and a configuration that points
/// at both: state under the directory (reusing the installed templates and key statistics when asked),
/// Kafka at the broker, HTTP on an ephemeral port.
struct BenchDaemonScratch {
    let dir: URL
    let broker: DevelopmentBroker
    let config: DaemonConfiguration

    init(label: String, linkingEditState: Bool) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        do { broker = try DevelopmentBroker(executable: paths.broker) } catch {
            try? FileManager.default.removeItem(at: dir)
            throw error
        }
        var c = DaemonConfiguration()
        c.stateDir = dir.appendingPathComponent("state").path
        if linkingEditState { try linkEditState(into: dir.appendingPathComponent("state")) }
        c.kafka = .init(bootstrapServers: broker.bootstrapServers, groupId: "bench", createTopics: true, topics: nil,
                        properties: ["session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"])
        c.http = .init(listen: "127.0.0.1:0")
        config = c
    }

    func close() {
        broker.stop()
        try? FileManager.default.removeItem(at: dir)
    }
}

/// Links the installed models' templates and key statistics (not their snapshot stores) into a
/// scratch state directory, so a benchmark on a real model reuses them and writes no snapshots there.
func linkEditState(into state: URL) throws {
    let fm = FileManager.default
    let home = paths.state
    for model in (try? fm.contentsOfDirectory(atPath: home.path)) ?? [] {
        let target = state.appendingPathComponent(model)
        try fm.createDirectory(at: target, withIntermediateDirectories: true)
        for item in try fm.contentsOfDirectory(atPath: home.appendingPathComponent(model).path) where item != "lmdb" {
            try fm.createSymbolicLink(at: target.appendingPathComponent(item), withDestinationURL: home.appendingPathComponent(model).appendingPathComponent(item))
        }
    }
}

/// One daemon built from `config` against `broker`: started, fed `payloads` on `topic` once it is
/// ready, and stopped when it has recorded an outcome for each (or after `limit` seconds).
struct DaemonRun {
    let samples = Samples()
    /// Seconds of each publish (acks=all).
    private(set) var roundTrips: [Double] = []
    /// Seconds from the first publish to the last outcome.
    private(set) var seconds = 0.0

    init(config: DaemonConfiguration, broker: DevelopmentBroker, topic: String, payloads: [[UInt8]], limit: Double) throws {
        let daemon = try buildDaemon(config: config, paths: paths, logger: MesaLogging.discarding())
        let samples = self.samples
        daemon.onEvent = { outcome, seconds in
            var kind = outcome.kind.label
            if case .deadLetter(let reason) = outcome.kind { kind += ":" + reason.rawValue }
            samples.add(total: seconds, edit: outcome.editSeconds, steps: outcome.steps, kind: kind, canary: outcome.canary)
        }
        let finished = DispatchSemaphore(value: 0)
        Task {
            do { try await daemon.run() } catch { print("daemon: \(error)") }
            finished.signal()
        }
        defer { daemon.stop() }
        // Publishing before the daemon created its topics would let the broker create them with its
        // default partition count, which the daemon refuses.
        let started = Date()
        while !daemon.isReady {
            if finished.wait(timeout: .now() + 0.05) == .success { throw ValidationError("the daemon stopped before it was ready") }
            if Date().timeIntervalSince(started) > 300 { throw ValidationError("the daemon was not ready within 300 s") }
        }
        let producer = try KafkaProducer(properties: ["bootstrap.servers": broker.bootstrapServers, "linger.ms": "0"])
        defer { producer.close() }
        let t0 = Date()
        for payload in payloads {
            var attempts = 0
            while true {
                do {
                    roundTrips.append(try timed { _ = try producer.send(topic: topic, key: nil, payload: payload, headers: [], timeout: 30) })
                    break
                } catch {
                    attempts += 1
                    if attempts > 100 { throw error }
                    Thread.sleep(forTimeInterval: 0.1)
                }
            }
        }
        while Date().timeIntervalSince(t0) < limit {
            if samples.count >= payloads.count { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        seconds = (samples.lastAt ?? Date()).timeIntervalSince(t0)
        daemon.stop()
        finished.wait()
    }
}

/// Per-event timings collected from the daemon's worker thread.
final class Samples: @unchecked Sendable {  // all mutable state is guarded by `lock`
    private let lock = NSLock()
    private var total: [Double] = [], edit: [Double] = []
    private var steps: [String: [Double]] = [:]
    private var kinds: [String: Int] = [:]
    private var when: Date?
    private var lastCanary: CanaryFigures?

    func add(total t: Double, edit e: Double, steps s: [String: Double], kind: String, canary: CanaryFigures?) {
        lock.lock(); defer { lock.unlock() }
        total.append(t)
        edit.append(e)
        for (k, v) in s { steps[k, default: []].append(v) }
        kinds[kind, default: 0] += 1
        when = Date()
        if let canary { lastCanary = canary }
    }

    /// Outcomes by kind (applied, dead_letter:<reason>, ...).
    var outcomes: [String: Int] {
        lock.lock(); defer { lock.unlock() }
        return kinds
    }

    /// When the last outcome was recorded.
    var lastAt: Date? {
        lock.lock(); defer { lock.unlock() }
        return when
    }

    /// The quality guard's figures after the last event that had them.
    var canary: CanaryFigures? {
        lock.lock(); defer { lock.unlock() }
        return lastCanary
    }

    /// Median milliseconds of each of the daemon's steps.
    func stepMedians() -> [String: Double] {
        lock.lock(); defer { lock.unlock() }
        return steps.mapValues { percentile($0, 50) * 1e3 }
    }

    var count: Int {
        lock.lock(); defer { lock.unlock() }
        return total.count
    }

    /// (total, edit math, overhead = total − edit math) per event, in seconds.
    func snapshot() -> ([Double], [Double], [Double]) {
        lock.lock(); defer { lock.unlock() }
        return (total, edit, zip(total, edit).map { max(0, $0 - $1) })
    }
}

/// Rollback latency on the real model, and snapshot bytes per ROME edit.
struct RollbackBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Rollback latency (restore the touched tensors, re-apply the lineage, verify the hash) after a run of ROME-shaped edits; reloading the model from disk is the reference.")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "Edits to record before rolling back.") var edits = 20
    @Option(help: "Layers the edits touch (round robin).") var layers: [Int] = [7]
    @Option(help: "Results file.") var out = "ops/bench/results/rollback.json"

    func run() throws {
        let path = try model ?? paths.defaultModel()
        let loadSeconds = try timed { _ = try ModelLoader.load(path: path) }
        let m = try ModelLoader.load(path: path)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-rollback-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try SnapshotStore(path: dir.path)
        let host = try ModelHost(model: m, modelName: Installation.modelName(path), store: store)
        var rng = Xoshiro256(seed: 42)
        func gauss(_ n: Int, _ s: Float) -> [Float] { (0..<n).map { _ in Float(Double(rng.next() >> 11) * 0x1.0p-53 - 0.5) * s } }
        var bytes: [Int] = []
        for i in 0..<edits {
            let layer = layers[i % layers.count]
            let w = m.weights.layers[layer].wDown
            var u = gauss(w.shape[1], 1)
            let n = u.reduce(0) { $0 + $1 * $1 }.squareRoot()
            u = u.map { $0 / n }
            let update = RankOneUpdate(parameter: w.name, layer: layer, u: u, r: gauss(w.shape[0], 2))
            let before = m.weightHash
            let f = update.lowRank
            try host.apply(f)
            let draft = SnapshotDraft(eventId: "bench-\(i)", source: EventSource(topic: "mesa.fact-updates", partition: 0, offset: Int64(i)),
                                      method: "ROME", hyperparameters: #"{"layer":\#(layer)}"#, hashBefore: before, hashAfter: m.weightHash,
                                      blas: ModelHost.blasInfo, factors: [f])
            // A result document of realistic size (the published result is stored with the edit).
            let doc = String(repeating: "x", count: 1_200)
            bytes.append(try host.commit(draft) { _ in #"{"pad":"\#(doc)"}"# }.storedBytes)
        }
        var times: [Double] = []
        var targets: [UInt64] = []
        var rng2 = Xoshiro256(seed: 7)
        for _ in 0..<30 { targets.append(UInt64(rng2.next() % UInt64(edits + 1))) }
        for t in targets { times.append(try timed { try host.rollback(to: t, commandId: nil) }) }
        let s = summary(times)
        let name = Installation.modelName(path)
        print(String(format: "%@: %d edits, %d rollbacks: p50 %.2f ms, p99 %.2f ms, max %.2f ms (target ≤ 50 ms); model reload %.0f ms (ratio %.1fx)",
                     name, edits, times.count, s["p50_ms"]!, s["p99_ms"]!, s["max_ms"]!, loadSeconds * 1e3, loadSeconds * 1e3 / s["p50_ms"]!))
        print("snapshot bytes per ROME edit: max \(bytes.max() ?? 0) (target ≤ 16384), including a 1.2 KB result document")
        try writeResults([
            "benchmark": "rollback", "model": name, "edits": edits, "layers": layers, "rollback": s, "targets": targets.map { Int($0) },
            "model_reload_ms": loadSeconds * 1e3, "reload_over_rollback_p50": loadSeconds * 1e3 / s["p50_ms"]!,
            "snapshot_bytes": ["max": bytes.max() ?? 0, "min": bytes.min() ?? 0], "blas": BLAS.configuration.description,
            "date": ISO8601DateFormatter().string(from: Date()),
        ], to: out)
    }
}
