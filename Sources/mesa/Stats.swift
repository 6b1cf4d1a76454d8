import ArgumentParser
import Editing
import Foundation
import ModelRuntime

struct Stats: ParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute (or show the cached) key statistics C = E[k kᵀ] of the MLP keys at a layer.",
        discussion: """
        The keys are the down-projection inputs at every token of the Wikipedia sample (articles \
        shuffled with a fixed seed, <doc> lines stripped, the first --sequence-length tokens of each). \
        The result is cached under $MESA_HOME/state/<model hash>/stats/, keyed by model hash, layer, \
        N, sequence length and seed. Interrupting (Ctrl-C) saves a checkpoint; running the same \
        command again resumes from it. Several layers can be computed in one pass.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var logOptions: LogOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .customLong("layers"), parsing: .upToNextOption, help: "Layers (one pass for all).")
    var layers: [Int] = []

    @Option(name: .long, help: "Tokens to accumulate (N).")
    var tokens: Int = 300_000

    @Option(name: .long, help: "Tokens taken from each article.")
    var sequenceLength: Int = 512

    @Option(name: .long, help: "Article shuffle seed.")
    var seed: UInt64 = 0

    func run() throws {
        try reportingErrors {
            let model = try modelOptions.load()
            var ls = layers
            if let l = editOptions.layer { ls.append(l) }
            guard !ls.isEmpty else { throw fail("give --layer L (or --layers L1 L2 …)") }
            let hash = model.weightHash
            let state = editOptions.state(baseHash: hash)
            let specs = ls.map { KeyStatisticsSpec(modelHash: hash, layer: $0, tokens: tokens, sequenceLength: sequenceLength, seed: seed) }
            let t0 = Date()
            let stats = try keyStatistics(model: model, options: editOptions, specs: specs)
            for s in stats {
                var trace: Double = 0
                for i in 0..<s.dim { trace += Double(s.moment[i * s.dim + i]) }
                print(String(format: "layer %d: %d tokens, d_ff %d, trace(C) %.4g, file %@", s.spec.layer, s.count, s.dim, trace,
                             state.statisticsURL(s.spec).path))
            }
            log(String(format: "done in %.1f s", Date().timeIntervalSince(t0)))
        }
    }
}
