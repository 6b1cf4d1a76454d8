import ArgumentParser
import EditDaemon
import EditEvaluation
import Editing
import Evaluation
import Foundation
import Logging
import ModelRuntime
import SparseAutoencoder

struct Eval: ParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        abstract: "Edit and score CounterFact records; write a JSON report, a Markdown summary and an SVG plot.",
        discussion: """
        Each record is scored on the unedited model, edited, and scored again (ES/EM on the rewrite \
        prompt, PS/PM on paraphrases, NS/NM on neighborhood prompts: token-averaged NLL of the new vs. \
        the true object). The weights are restored bit-exactly before the next record, unless \
        --sequential, which keeps every edit and scores all records again after the last one.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var logOptions: LogOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .long, help: "Editing method: rome, memit, alphaedit or encore (hyperparameters from deploy/hparams/<method>/<model>.json, or --hparams).") var method: EditMethod = .rome
    @Option(name: .long, help: "CounterFact file (either layout).") var data: String?
    @Option(name: .long, help: "First record.") var start: Int = 0
    @Option(name: .long, help: "Number of records.") var limit: Int = 10
    @Flag(name: .long, help: "Keep the edits (sequential editing).") var sequential = false
    @Option(name: .customLong("checkpoints"), parsing: .upToNextOption,
            help: "With --sequential: also score every record edited so far after this many edits (e.g. 100 250 500 1000).")
    var checkpoints: [Int] = []
    @Option(name: .long, help: "With --sequential, memit, alphaedit or encore: edit this many records together in one computation (the AlphaEdit paper's protocol: 100).")
    var batch: Int = 1
    @Option(name: .long, help: "Directory for the report.") var out: String = "out"
    @Option(name: .long, help: "Journal the run in this directory (with --sequential every edit in a snapshot store, otherwise every scored case), so that an interrupted run (Ctrl-C, kill, a closed session) resumes where it stopped when the same command is run again.")
    var resume: String?
    @Option(name: .long, help: "With --sequential: canary facts (the quality guard's set: facts the base model answers, from the data directory's known_1000.json) scored along the stream, beside the perplexity of WikiText-2; 0 turns the canary off. Without those files (and without --canary-file) the run goes on without a canary.")
    var canaryFacts: Int = 64
    @Option(name: .long, help: "With --sequential: the canary set as a file ({\"facts\": [{\"prompt\", \"answer\"}], \"text\"}, as the daemon's quality_guard.canary_file) instead of the default one.")
    var canaryFile: String?
    @Option(name: .long, help: "With --sequential: tokens of WikiText-2 whose perplexity the canary measures.")
    var canaryTokens: Int = 512
    @Option(name: .long, help: "With --sequential: score the canary every this many edits, besides the checkpoints and the end (default: every batch when --batch > 1, else only there).")
    var canaryEvery: Int?

    func run() throws {
        try reportingErrors {
            var evaluation = CounterFactEvaluation(method: method, dataPath: data ?? defaultDataPath, start: start, limit: limit, sequential: sequential,
                                                   checkpoints: checkpoints, batch: batch, out: out, resume: resume)
            try evaluation.validate()
            let path = try modelOptions.path
            let records = try loadRecords(evaluation.dataPath, start: start, limit: limit)
            let model = try modelOptions.load()
            let editor = try makeEditor(method, model: model, modelPath: path, options: editOptions)
            if sequential, canaryFacts > 0 {
                var c = DaemonConfiguration()
                c.stateDir = editOptions.stateDirectory.path
                c.qualityGuard = DaemonConfiguration.QualityGuard(canaryFile: canaryFile, facts: canaryFacts, perplexityTokens: canaryTokens)
                let defaults = QualityGuard.defaultCanaryInputs(data: c.dataDirectory(paths))
                let inputs = [defaults.knownFacts.path, defaults.wikitext.path]
                if canaryFile != nil || inputs.allSatisfy(FileManager.default.fileExists) {
                    // Measured now, on the base weights (a resumed journal moves them to its last edit).
                    evaluation.canary = try QualityGuard.make(model: model, config: c, paths: paths, logger: Logger(label: "mesa"))
                    evaluation.canaryEvery = canaryEvery ?? (batch > 1 ? batch : 0)
                } else {
                    Logger(label: "mesa").notice("no canary along this run: \(inputs.joined(separator: " or ")) is missing (--canary-file gives one)")
                }
            }
            // Ctrl-C stops a journaled run between two edits, to be resumed by the same command.
            func run(shouldStop: @escaping () -> Bool) throws {
                try evaluation.run(records: records, model: model, modelPath: path, editor: editor, shouldStop: shouldStop, output: { print($0) })
            }
            if resume != nil { try trappingInterrupt { stop in try run { stop.isRaised } } } else { try run { false } }
        }
    }
}

/// The CounterFact split `mesa eval` and `mesa layers` read by default.
var defaultDataPath: String { paths.data.appendingPathComponent("counterfact/counterfact-val.json").path }

struct Layers: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sweep the edit layer: edit a few CounterFact records at each candidate layer and print ES/PS/NS/S per layer.",
        discussion: """
        Key statistics for every candidate layer are computed in one pass (and cached). --record FILE \
        stores the sweep in a hyperparameter file under "layer_sweep" (the "layer" key is not changed).
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .customLong("candidates"), parsing: .upToNextOption, help: "Candidate layers (default: every layer).")
    var candidates: [Int] = []
    @Option(name: .long, help: "CounterFact file (either layout).") var data: String?
    @Option(name: .long, help: "First record.") var start: Int = 0
    @Option(name: .long, help: "Records per layer.") var limit: Int = 20
    @Option(name: .long, help: "Directory for the sweep's JSON and SVG.") var out: String = "out"
    @Option(name: .long, help: "Hyperparameter file to store the sweep in.") var record: String?
    @Option(name: .long, help: "SAE per candidate layer, {layer} standing for the layer: a directory pattern or a name under <state>/<hash16>/sae/ (e.g. mlp_out{layer}-w2304-k32). Adds MESA's template commonality and a specificity score per layer, and recommends a layer.")
    var sae: String?
    @Flag(name: .long, help: "With --sae: skip the edit sweep and use the one recorded in the hyperparameter file.") var saeOnly = false

    func run() throws {
        try reportingErrors {
            let path = try modelOptions.path
            let dataPath = data ?? defaultDataPath
            let records = try loadRecords(dataPath, start: start, limit: limit)
            let model = try modelOptions.load()
            let layers = candidates.isEmpty ? Array(0..<model.config.layers) : candidates
            var h = try editOptions.romeHyperparameters(modelPath: path)
            h.mesa = nil
            let state = editOptions.state(baseHash: model.weightHash)
            let templates = try state.templates(model: model, groups: h.contextTemplates, seed: h.templateSeed, logger: Logger(label: "mesa"))
            guard !saeOnly || sae != nil else { throw fail("--sae-only needs --sae") }
            if saeOnly {
                let recorded = try recordedSweep(try editOptions.hparamsURL(method: .rome, modelPath: path))
                try printSAEScores(model: model, state: state, records: records, templates: templates, layers: layers, sweepS: recorded)
                return
            }
            var stats: [Int: KeyStatistics] = [:]
            if h.mom2Adjustment {
                let specs = layers.map { h.statisticsSpec(modelHash: state.baseHash, layer: $0) }
                for s in try keyStatistics(model: model, options: editOptions, specs: specs) { stats[s.spec.layer] = s }
            }
            var rows: [LayerSweepRow] = []
            for l in layers {
                h.layer = l
                let editor = try RomeEditor(model: model, hparams: h, templates: templates, statistics: stats[l])
                var runner = CounterFactRunner(model: model, editor: editor, sequential: false)
                runner.label = "layer \(l)"
                let outcome = try runner.run(records)
                let (cases, seconds) = (outcome.cases, outcome.seconds)
                let (pre, post) = EvalReport.metrics(of: cases)
                guard let post else { throw fail("every edit at layer \(l) failed: \(cases.first?.error ?? "")") }
                rows.append(LayerSweepRow(layer: l, metrics: post, pre: pre, seconds: seconds))
            }
            print(ReportWriter.layerTable(rows))
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let base = "\(out)/layers-\(EditOptions.modelName(path))-\(start)-\(records.count)"
            try ReportWriter.layerJSON(rows).write(to: URL(fileURLWithPath: base + ".json"))
            try ReportWriter.layerSVG(rows).write(toFile: base + ".svg", atomically: true, encoding: .utf8)
            print("wrote \(base).json and \(base).svg")
            if let record {
                try storeSweep(rows, records: records.count, dataPath: dataPath, into: record)
                print("stored the sweep in \(record) under \"layer_sweep\"")
            }
            if sae != nil {
                try printSAEScores(model: model, state: state, records: records, templates: templates, layers: layers,
                                   sweepS: Dictionary(uniqueKeysWithValues: rows.map { ($0.layer, $0.metrics.s) }))
            }
        }
    }

    /// S per layer from a hyperparameter file's "layer_sweep".
    func recordedSweep(_ url: URL) throws -> [Int: Double] {
        guard let d = FileManager.default.contents(atPath: url.path),
              let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any],
              let sweep = obj["layer_sweep"] as? [String: Any], let results = sweep["results"] as? [[String: Any]] else { return [:] }
        var out: [Int: Double] = [:]
        for r in results { if let l = (r["layer"] as? NSNumber)?.intValue, let s = (r["s"] as? NSNumber)?.doubleValue { out[l] = s } }
        log("using the sweep recorded in \(url.path) (\(out.count) layers)")
        return out
    }

    func printSAEScores(model: LanguageModel, state: EditState, records: [CounterFactRecord], templates: ContextTemplates,
                        layers: [Int], sweepS: [Int: Double]) throws {
        guard let pattern = sae else { return }
        let requests = records.map { EditRequest(subject: $0.subject, prompt: $0.prompt, targetNew: $0.targetNew, targetTrue: $0.targetTrue) }
        var scores: [SAELayerScore] = []
        for l in layers {
            let name = pattern.replacingOccurrences(of: "{layer}", with: String(l))
            let dir = name.hasPrefix("/") ? URL(fileURLWithPath: name) : state.saeDirectory.appendingPathComponent(name)
            let sae: SparseAutoencoder
            do { sae = try SparseAutoencoder.load(from: dir) } catch { throw fail("layer \(l): \(error)") }
            scores.append(try SAELayerChoice.score(model: model, sae: sae, layer: l, requests: requests, templates: templates))
        }
        print("layer   S(sweep)  common  jaccard  contrast  specificity  |A_t|")
        for s in scores {
            let sw = sweepS[s.layer].map { String(format: "%8.2f", $0) } ?? "       -"
            print(String(format: "%5d  %@  %6.4f  %7.3f  %8.3f  %11.3f  %5.1f", s.layer, sw, s.common, s.jaccard, s.contrast, s.specificity, s.activeMean))
        }
        if let best = SAELayerChoice.recommend(scores: scores, sweepS: sweepS) {
            print("recommended layer: \(best) (the most specific layer among those within 2 S points of the sweep's best)")
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let file = "\(out)/layers-sae-\(records.count).json"
        try enc.encode(scores).write(to: URL(fileURLWithPath: file))
        print("wrote \(file)")
    }

    /// Adds or replaces "layer_sweep" in a hyperparameter file, keeping everything else.
    func storeSweep(_ rows: [LayerSweepRow], records: Int, dataPath: String, into file: String) throws {
        guard let d = FileManager.default.contents(atPath: file),
              var obj = try JSONSerialization.jsonObject(with: d) as? [String: Any] else { throw fail("cannot read \(file)") }
        func r2(_ x: Double) -> Double { (x * 100).rounded() / 100 }
        obj["layer_sweep"] = [
            "command": "mesa layers --data \(URL(fileURLWithPath: dataPath).lastPathComponent) --start \(start) --limit \(records) --candidates \(rows.map { String($0.layer) }.joined(separator: " "))",
            "best_layer": ReportWriter.bestLayer(rows) as Any,
            "results": rows.map { ["layer": $0.layer, "es": r2($0.metrics.es), "ps": r2($0.metrics.ps), "ns": r2($0.metrics.ns), "s": r2($0.metrics.s)] },
        ] as [String: Any]
        let out = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try (String(decoding: out, as: UTF8.self) + "\n").write(toFile: file, atomically: true, encoding: .utf8)
    }
}

struct Curves: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plot the S-vs-edits curves of several sequential runs side by side (SVG), from their -curve.json files.",
        discussion: "Each series is named after its method label (alphaedit, encore, memit, rome, alphaedit-mesa, …), or a --resume directory's name.")

    @Argument(help: "Curve files written by `mesa eval --sequential --checkpoints …` (or a --resume directory's curve.json).") var files: [String]
    @Option(name: .long, help: "The SVG to write.") var out: String
    @Option(name: .long, help: "Plot title.") var title = "S after n sequential edits"

    func run() throws {
        try reportingErrors {
            guard !files.isEmpty else { throw fail("give at least one curve file") }
            var series: [(String, [(Double, Double)])] = []
            for f in files {
                guard let d = FileManager.default.contents(atPath: f) else { throw fail("cannot read \(f)") }
                let points: [CounterFactRunner.Checkpoint]
                do { points = try JSONDecoder().decode([CounterFactRunner.Checkpoint].self, from: d) } catch {
                    throw fail("\(f) is not a curve file: \(error)")
                }
                var name = URL(fileURLWithPath: f).lastPathComponent
                // "<method>-<data>-<start>-<n>-seq-curve.json" → the method label; a journal's curve.json → its directory.
                let labels = EditMethod.allCases.map { $0.rawValue + "-mesa" } + EditMethod.allCases.map(\.rawValue)
                if let label = labels.first(where: { name.hasPrefix($0 + "-") }) { name = label }
                if name == "curve.json" { name = URL(fileURLWithPath: f).deletingLastPathComponent().lastPathComponent }
                series.append((name, points.map { (Double($0.edits), $0.metrics.s) }))
                print(name + ": " + points.map { String(format: "%d → S %.1f", $0.edits, $0.metrics.s) }.joined(separator: ", "))
            }
            try ReportWriter.curveSVG(title: title, series: series).write(toFile: out, atomically: true, encoding: .utf8)
            print("wrote \(out)")
        }
    }
}
