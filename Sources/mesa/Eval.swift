import ArgumentParser
import Editing
import Evaluation
import Foundation
import ModelRuntime

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Edit and score CounterFact records; write a JSON report, a Markdown summary and an SVG plot.",
        discussion: """
        Each record is scored on the unedited model, edited, and scored again (ES/EM on the rewrite \
        prompt, PS/PM on paraphrases, NS/NM on neighborhood prompts: token-averaged NLL of the new vs. \
        the true object). The weights are restored bit-exactly before the next record, unless \
        --sequential, which keeps every edit and scores all records again after the last one.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var editOptions: EditOptions

    @Option(name: .long, help: "Editing method: rome, memit or alphaedit (hyperparameters from deploy/hparams/<method>/<model>.json, or --hparams).") var method: String = "rome"
    @Option(name: .long, help: "CounterFact file (either layout).") var data: String?
    @Option(name: .long, help: "First record.") var start: Int = 0
    @Option(name: .long, help: "Number of records.") var limit: Int = 10
    @Flag(name: .long, help: "Keep the edits (sequential editing).") var sequential = false
    @Option(name: .customLong("checkpoints"), parsing: .upToNextOption,
            help: "With --sequential: also score every record edited so far after this many edits (e.g. 100 250 500 1000).")
    var checkpoints: [Int] = []
    @Option(name: .long, help: "Directory for the report.") var out: String = "out"

    func run() throws {
        try reportingErrors {
            guard ["rome", "memit", "alphaedit"].contains(method) else { throw fail("unknown method \(method) (rome, memit, alphaedit)") }
            guard checkpoints.isEmpty || sequential else { throw fail("--checkpoints needs --sequential") }
            let path = try modelOptions.path
            let dataPath = data ?? defaultDataPath
            let records = try loadRecords(dataPath, start: start, limit: limit)
            let model = try modelOptions.load()
            let editor: FactEditor = method == "rome"
                ? try makeRomeEditor(model: model, modelPath: path, options: editOptions)
                : try makeMemitEditor(model: model, modelPath: path, options: editOptions, alphaEdit: method == "alphaedit")
            var runner = CounterFactRunner(model: model, editor: editor, sequential: sequential)
            runner.checkpoints = checkpoints
            let (cases, seconds, curve) = try runner.run(records)
            let edits = cases.compactMap(\.editSeconds)
            var timing: [String: Double] = ["total": seconds]
            if !edits.isEmpty { timing["editMean"] = edits.reduce(0, +) / Double(edits.count) }
            for phase in ["k_star", "v_star", "closed_form"] {
                let v = cases.compactMap { $0.phases?[phase] }
                if !v.isEmpty { timing["\(phase)Mean"] = v.reduce(0, +) / Double(v.count) }
            }
            let report = EvalReport(method: method, model: EditOptions.modelName(path), modelHash: model.weightHash, data: dataPath,
                                    start: start, limit: limit, sequential: sequential, settings: runner.settings(), cases: cases, timing: timing)
            let base = "\(method)-\(URL(fileURLWithPath: dataPath).deletingPathExtension().lastPathComponent)-\(start)-\(records.count)\(sequential ? "-seq" : "")"
            let files = try ReportWriter.write(report, to: out, basename: base)
            func line(_ name: String, _ m: Metrics) {
                print(String(format: "%@  ES %6.2f  EM %6.2f  PS %6.2f  PM %6.2f  NS %6.2f  NM %6.2f  S %6.2f  (%d cases)",
                             name, m.es, m.em, m.ps, m.pm, m.ns, m.nm, m.s, m.cases))
            }
            line("pre ", report.pre)
            if let post = report.post { line("post", post) }
            if !report.failedCases.isEmpty { print("\(report.failedCases.count) case(s) failed; see the report") }
            print(String(format: "edit %.2f s mean; total %.0f s", timing["editMean"] ?? .nan, seconds))
            for f in files { print("wrote \(f)") }
            if !curve.isEmpty {
                let url = URL(fileURLWithPath: out).appendingPathComponent(base + "-curve.json")
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                try enc.encode(curve).write(to: url)
                let svg = ReportWriter.curveSVG(title: "\(method) on \(EditOptions.modelName(path)): S after n sequential edits",
                                                series: [(method, curve.map { (Double($0.edits), $0.metrics.s) })])
                try svg.write(toFile: url.deletingPathExtension().path + ".svg", atomically: true, encoding: .utf8)
                print("wrote \(url.path) and its .svg")
            }
        }
    }
}

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

    func run() throws {
        try reportingErrors {
            let path = try modelOptions.path
            let dataPath = data ?? defaultDataPath
            let records = try loadRecords(dataPath, start: start, limit: limit)
            let model = try modelOptions.load()
            let layers = candidates.isEmpty ? Array(0..<model.config.layers) : candidates
            var h = try editOptions.romeHyperparameters(modelPath: path)
            let state = EditState(home: editOptions.home, baseHash: model.weightHash)
            let templates = try state.templates(model: model, groups: h.contextTemplates, seed: h.templateSeed, log: log)
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
                let (cases, seconds, _) = try runner.run(records)
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
        }
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
