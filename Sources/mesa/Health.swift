import ArgumentParser
import EditDaemon
import Editing
import Foundation
import Logging
import ModelRuntime
import Storage
import Tensor

/// `mesa health`: the quality guard's canary figures for the current head, beside the base model's.
struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the quality guard's canary figures (accuracy on the canary facts, perplexity of the text sample) for the snapshot head and the base model.",
        discussion: """
        Reads the daemon's configuration and state directory (the same flags and environment as `mesa serve`), \
        brings a fresh copy of the model to the head (replaying the recorded updates, checked by hash) and \
        scores the canary set there. Exit status 1 when the head crosses the guard's limits.
        """)

    @OptionGroup var daemonOptions: DaemonOptions

    @Option(name: .long, help: "Model (default: $MESA_MODEL, the file's, or the installed SmolLM2-135M-Instruct).")
    var model: String?

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            var c = try daemonOptions.resolve()
            if let model { c.model = model }
            // The daemon's thread count: OpenBLAS's sums, and so the last bits of the figures, depend on it.
            if let t = c.threads { BLAS.setThreads(t) }
            let path = try c.model ?? paths.defaultModel()
            let lm = try ModelLoader.load(path: path)
            let g = try QualityGuard.make(model: lm, config: c, paths: paths, logger: Logger(label: "mesa"))
            let lmdb = EditState(directory: c.stateDirectory(paths), baseHash: lm.weightHash).snapshotStore
            let store = try SnapshotStore(path: lmdb.path, mapSize: c.mapBytes)
            let host = try ModelHost(model: lm, modelName: Installation.modelName(path), store: store, attach: false)
            let head = try store.head()
            if head != 0 { try host.materialize(head) }
            let f = try g.measure(lm)
            let why = g.violation(f)
            if json {
                let doc: [String: Any] = ["head": head, "weight_hash": lm.weightHash, "canary_facts": g.canary.facts.count,
                                          "accuracy": f.accuracy, "perplexity": f.perplexity,
                                          "base_accuracy": g.base.accuracy, "base_perplexity": g.base.perplexity,
                                          "max_accuracy_drop": g.maxAccuracyDrop, "max_perplexity_rise": g.maxPerplexityRise,
                                          "within_limits": why == nil]
                print(String(decoding: try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
            } else {
                print("head \(head) (weights \(lm.weightHash.prefix(16))), \(g.canary.facts.count) canary facts")
                print(String(format: "canary accuracy   %6.2f%%  (base %6.2f%%, limit −%.1f points)", f.accuracy, g.base.accuracy, g.maxAccuracyDrop))
                print(String(format: "canary perplexity %8.3f  (base %8.3f, %+.2f%%, limit +%.1f%%)", f.perplexity, g.base.perplexity,
                             100 * (f.perplexity / g.base.perplexity - 1), 100 * g.maxPerplexityRise))
                print(why.map { "outside the limits: \($0)" } ?? "within the limits")
            }
            if why != nil { throw ExitCode(1) }
        }
    }
}
