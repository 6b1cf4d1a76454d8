import EditDaemon
import Editing
import Evaluation
import Foundation
import ModelRuntime

/// `mesa eval`: CounterFact records edited and scored with one editor (`CounterFactRunner`), then the
/// report (JSON, Markdown, SVG) and, with checkpoints, the S-vs-edits curve written under `out`.
public struct CounterFactEvaluation {
    public var method: EditMethod
    /// The CounterFact file and the records `start..<start+limit` of it.
    public var dataPath: String
    public var start: Int
    public var limit: Int
    /// Keep the edits (sequential editing), scoring every record again after the last one.
    public var sequential: Bool
    /// With `sequential`: also score every record edited so far after this many edits.
    public var checkpoints: [Int]
    /// With `sequential` and a MEMIT-family method: records edited together in one computation.
    public var batch: Int
    /// The report directory.
    public var out: String
    /// The journal directory that makes the run resumable (`SequentialJournal` for a sequential run,
    /// `CaseJournal` otherwise).
    public var resume: String?
    /// With `sequential`: the quality guard's canary set, measured on the base model before the run,
    /// scored along the stream (`CounterFactRunner.canary`) and written as `<report>-canary.json`.
    public var canary: QualityGuard?
    public var canaryEvery = 0

    public init(method: EditMethod, dataPath: String, start: Int, limit: Int, sequential: Bool, checkpoints: [Int], batch: Int,
                out: String, resume: String?) {
        self.method = method
        self.dataPath = dataPath
        self.start = start
        self.limit = limit
        self.sequential = sequential
        self.checkpoints = checkpoints
        self.batch = batch
        self.out = out
        self.resume = resume
    }

    /// The settings that depend on one another, checked before anything is loaded.
    public func validate() throws {
        guard checkpoints.isEmpty || sequential else { throw EvaluationRunError("--checkpoints needs --sequential") }
        guard batch >= 1, batch == 1 || sequential else {
            throw EvaluationRunError("--batch N needs --sequential (a batch's updates stay applied for the next batch)")
        }
    }

    /// Edits and scores `records` with `editor` on `model` (loaded from `modelPath`, whose base weights
    /// it holds), writes the report and the curve, and hands each line of the summary to `output`.
    /// `shouldStop` is polled between the edits of a journaled run, which then stops resumably.
    public func run(records: [CounterFactRecord], model: LanguageModel, modelPath: String, editor: FactEditor,
                    shouldStop: @escaping () -> Bool, output: (String) -> Void) throws {
        let modelName = Installation.modelName(modelPath)
        // The base model's hash: a resumed journal moves the weights to its last edit.
        let baseHash = model.weightHash
        var runner = CounterFactRunner(model: model, editor: editor, sequential: sequential)
        runner.checkpoints = checkpoints
        runner.batch = batch
        runner.canary = canary
        runner.canaryEvery = canaryEvery
        if let resume {
            let fingerprint = SequentialJournal.signature(editor: editor, dataPath: dataPath, start: start, baseHash: baseHash, batch: batch)
            if sequential {
                runner.journal = try SequentialJournal(directory: URL(fileURLWithPath: resume), model: model, modelName: modelName,
                                                       editor: editor, fingerprint: fingerprint)
            } else {
                runner.caseJournal = try CaseJournal(directory: URL(fileURLWithPath: resume), fingerprint: fingerprint + " independent")
            }
            runner.shouldStop = shouldStop
        }
        let outcome = try runner.run(records)
        let (cases, seconds, curve) = (outcome.cases, outcome.seconds, outcome.checkpoints)
        let edits = cases.compactMap(\.editSeconds)
        var timing: [String: Double] = ["total": seconds]
        if !edits.isEmpty { timing["editMean"] = edits.reduce(0, +) / Double(edits.count) }
        for phase in ["k_star", "v_star", "closed_form", "v_steps", "z_steps"] {
            let v = cases.compactMap { $0.phases?[phase] }
            if !v.isEmpty { timing["\(phase)Mean"] = v.reduce(0, +) / Double(v.count) }
        }
        let coverage = cases.compactMap(\.saeCoverage)
        if !coverage.isEmpty { timing["saeCoverageMean"] = coverage.reduce(0, +) / Double(coverage.count) }
        let label = editor.method.lowercased().replacingOccurrences(of: "+", with: "-")
        let report = EvalReport(method: label, model: modelName, modelHash: baseHash, data: dataPath,
                                start: start, limit: limit, sequential: sequential, settings: runner.settings(), cases: cases, timing: timing)
        let base = "\(label)-\(URL(fileURLWithPath: dataPath).deletingPathExtension().lastPathComponent)-\(start)-\(records.count)\(sequential ? "-seq" : "")\(batch > 1 ? "-b\(batch)" : "")"
        let files = try ReportWriter.write(report, to: out, basename: base)
        func line(_ name: String, _ m: Metrics) {
            output(String(format: "%@  ES %6.2f  EM %6.2f  PS %6.2f  PM %6.2f  NS %6.2f  NM %6.2f  S %6.2f  (%d cases)",
                          name, m.es, m.em, m.ps, m.pm, m.ns, m.nm, m.s, m.cases))
        }
        line("pre ", report.pre)
        if let post = report.post { line("post", post) }
        if let immediate = report.immediate { line("imm.", immediate) }
        if !report.failedCases.isEmpty { output("\(report.failedCases.count) case(s) failed; see the report") }
        output(String(format: "edit %.2f s mean (%.1f facts per minute)%@; total %.0f s", timing["editMean"] ?? .nan, 60 / (timing["editMean"] ?? .nan),
                      batch > 1 ? " in batches of \(batch)" : "", seconds))
        if let c = timing["saeCoverageMean"] { output(String(format: "SAE coverage of the written change: %.3f mean", c)) }
        for f in files { output("wrote \(f)") }
        if let first = outcome.canary.first, let last = outcome.canary.last, let canary {
            output(String(format: "canary after %d edits: accuracy %.2f (base %.2f), perplexity %.4f (base %.4f, %+.2f%%); %d facts, %d tokens",
                          last.edits, last.accuracy, first.accuracy, last.perplexity, first.perplexity, 100 * (last.perplexity / first.perplexity - 1),
                          canary.canary.facts.count, canary.perplexityTokens))
            let url = URL(fileURLWithPath: out).appendingPathComponent(base + "-canary.json")
            let doc: [String: Any] = ["facts": canary.canary.facts.count, "perplexity_tokens": canary.perplexityTokens,
                                      "source": canary.canary.source ?? "", "every": canaryEvery,
                                      "points": outcome.canary.map { ["edits": $0.edits, "accuracy": $0.accuracy, "perplexity": $0.perplexity] }]
            try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]).write(to: url)
            output("wrote \(url.path)")
        }
        if !curve.isEmpty {
            let url = URL(fileURLWithPath: out).appendingPathComponent(base + "-curve.json")
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(curve).write(to: url)
            let svg = ReportWriter.curveSVG(title: "\(method) on \(modelName): S after n sequential edits",
                                            series: [(method.rawValue, curve.map { (Double($0.edits), $0.metrics.s) })])
            try svg.write(toFile: url.deletingPathExtension().path + ".svg", atomically: true, encoding: .utf8)
            output("wrote \(url.path) and its .svg")
        }
    }
}
