import ArgumentParser
import EditDaemon
import Editing
import Evaluation
import Foundation
import Messaging
import ModelRuntime
import Tensor

/// Facts per minute of the daemon on the real model: a stream of CounterFact fact updates edited in
/// batches of N (batch.max_events) against the same stream one event at a time, each through a whole
/// daemon (broker, validation, edit, quality guard, snapshot, publish, commit) in the same run.
struct ThroughputBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput",
        abstract: "Facts per minute of `mesa serve` on the real model over a stream of CounterFact fact updates, in batches and one at a time, in the same run.",
        discussion: """
        Each mode runs a fresh daemon against a fresh Tansu broker with the daemon's defaults (method, \
        hyperparameter file, quality guard) and a state directory that reuses the installed templates \
        and key statistics. The events are published as fast as the broker takes them; the time runs \
        from the first publish to the last outcome. Peak resident memory is the process's high-water \
        mark during each mode (reset between modes), the daemon's model included.
        """)

    @Option(help: "Fact updates in the stream (CounterFact records 0..<N of --data).") var events = 256
    @Option(help: "Events per batch edit in the batched mode.") var batch = 32
    @Option(help: "Method (default: the daemon's default).") var method: String?
    @Option(help: "CounterFact file the events come from.") var data = "../shared/data/counterfact/counterfact-val.json"
    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "BLAS threads of the daemon's edits.") var threads = 2
    @Option(help: "Results file.") var out = "ops/bench/results/throughput.json"
    @Flag(inversion: .prefixedNo, help: "Run the daemon's quality guard (its default), which refuses edits that damage the canary set.")
    var guardEnabled = true

    func run() throws {
        guard events >= 1, (1...256).contains(batch) else { throw ValidationError("--events must be positive and --batch within 1...256") }
        let modelPath = try model ?? paths.defaultModel()
        let kind = try method.map(EditMethod.init(parsing:)) ?? EditMethod.daemonDefault
        let records = try CounterFact.load(path: data).records
        guard events <= records.count else { throw ValidationError("\(data) has \(records.count) records, fewer than --events \(events)") }
        let name = Installation.modelName(modelPath)
        let payloads: [[UInt8]] = try records.prefix(events).map { r in
            let e: [String: Any] = [
                "id": UUID().uuidString.lowercased(), "model": ["name": name, "revision": "main"], "subject": r.subject,
                "prompt": r.prompt, "target_new": ["str": r.targetNew], "target_true": ["str": r.targetTrue], "method": kind.name,
                "issued_by": ["principal": "bench"], "issued_at": "2026-12-05T00:00:00Z",
            ]
            return Array(try JSONSerialization.data(withJSONObject: e))
        }
        var modes: [[String: Any]] = []
        var perMinute: [Int: Double] = [:]
        for size in [batch, 1] {
            let scratch = try BenchDaemonScratch(label: "throughput", linkingEditState: true)
            defer { scratch.close() }
            var config = scratch.config
            config.method = kind.rawValue
            config.model = modelPath
            config.threads = threads
            config.batch = .init(maxEvents: size, lingerMs: 200)
            if !guardEnabled { config.qualityGuard = .init(enabled: false) }
            ResidentMemory.release()   // the previous mode's daemon is gone; its freed pages must not count here
            ResidentMemory.resetPeak()
            let run = try DaemonRun(config: config, broker: scratch.broker, topic: config.topics.factUpdates, payloads: payloads, limit: 4 * 3600)
            let peak = Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576
            let outcomes = run.samples.outcomes
            let applied = outcomes["applied"] ?? 0
            let rate = 60 * Double(applied) / run.seconds
            perMinute[size] = rate
            let canary = run.samples.canary
            print(String(format: "%@ %@%@, batches of %d: %d of %d events applied in %.1f s: %.1f facts per minute; peak RSS %.0f MiB; canary after the stream: accuracy %.1f, perplexity %.2f",
                         name, kind.name, guardEnabled ? "" : " (quality guard off)", size, applied, events, run.seconds, rate, peak, canary?.accuracy ?? .nan, canary?.perplexity ?? .nan))
            if applied < events { print("  outcomes: \(outcomes)") }
            modes.append(["batch": size, "seconds": run.seconds, "applied": applied, "outcomes": outcomes, "facts_per_minute": rate,
                          "peak_rss_mib": peak, "canary_accuracy": canary?.accuracy ?? -1, "canary_perplexity": canary?.perplexity ?? -1])
        }
        let ratio = (perMinute[batch] ?? .nan) / (perMinute[1] ?? .nan)
        print(String(format: "batches of %d / one at a time: %.2f× the facts per minute, same run; %@", batch, ratio, BLAS.configuration.description))
        try writeResults(["benchmark": "daemon throughput", "model": name, "method": kind.name, "events": events, "data": data,
                          "threads": threads, "quality_guard": guardEnabled, "modes": modes, "batch_over_one_at_a_time": ratio,
                          "date": ISO8601DateFormatter().string(from: Date())], to: out)
    }
}
