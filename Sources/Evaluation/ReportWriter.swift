import Foundation

/// Renders an `EvalReport` as JSON, Markdown and SVG, and layer sweeps as a terminal table and SVG.
public enum ReportWriter {
    /// The metric rows of the summary table, in the order ROME papers print them.
    static let metricRows: [(key: String, label: String, value: @Sendable (Metrics) -> Double, error: @Sendable (MetricErrors) -> Double)] = [
        ("ES", "efficacy success", \.es, \.es),
        ("EM", "efficacy magnitude", \.em, \.em),
        ("PS", "paraphrase success", \.ps, \.ps),
        ("PM", "paraphrase magnitude", \.pm, \.pm),
        ("NS", "neighborhood success", \.ns, \.ns),
        ("NM", "neighborhood magnitude", \.nm, \.nm),
        ("S", "score: hmean(ES, PS, NS)", \.s, \.s),
    ]

    // MARK: JSON

    /// The report as pretty-printed JSON with sorted keys (see `jsonEncoder()`).
    public static func json(_ r: EvalReport) throws -> Data {
        try jsonEncoder().encode(r)
    }

    /// Layer-sweep rows as JSON, encoded like `json(_:)`.
    public static func layerJSON(_ rows: [LayerSweepRow]) throws -> Data {
        try jsonEncoder().encode(rows)
    }

    /// The encoder for reports: pretty-printed, sorted keys, unescaped slashes, and non-finite
    /// numbers written as the strings "nan", "inf" and "-inf". Metrics can be NaN (an undefined
    /// metric or standard error, e.g. with fewer than two cases), which a default `JSONEncoder`
    /// refuses to encode, so encode `Metrics` and everything holding them with this one.
    public static func jsonEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }

    /// The decoder matching `jsonEncoder()`.
    public static func jsonDecoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }

    /// Reads a report written by `json(_:)`.
    public static func decodeReport(_ data: Data) throws -> EvalReport {
        try jsonDecoder().decode(EvalReport.self, from: data)
    }

    // MARK: Markdown

    /// A Markdown summary: run metadata, a table of the seven metrics pre and post with one
    /// standard error, counts, timing, settings and the failed cases. `plotFile`, if given, is
    /// referenced as an image by that (relative) file name.
    public static func markdown(_ r: EvalReport, plotFile: String?) -> String {
        var lines: [String] = []
        let withPost = r.cases.filter { $0.post != nil }.count
        let failed = r.failedCases
        lines.append("# CounterFact evaluation: \(md(r.method)) on \(md(r.model))")
        lines.append("")
        lines.append("- data: \(md(r.data)) (start \(r.start), limit \(r.limit))")
        lines.append("- protocol: " + (r.sequential
            ? "sequential (edits accumulate, weights are not restored between cases)"
            : "single edit (weights restored after each case)"))
        lines.append("- model hash: \(md(r.modelHash))")
        lines.append("- created: \(md(r.createdAt))")
        lines.append("- cases: \(r.cases.count) evaluated, \(withPost) with post-edit scores, \(failed.count) failed")
        lines.append("")
        lines.append("## Metrics")
        lines.append("")
        lines.append("| metric | pre | post | post − pre |")
        lines.append("|---|---:|---:|---:|")
        for row in metricRows {
            let pre = row.value(r.pre)
            let post = r.post.map(row.value)
            let preCell = withError(pre, row.error(r.pre.stderr))
            let postCell = r.post.map { withError(row.value($0), row.error($0.stderr)) } ?? "–"
            let delta = post.map { signed($0 - pre) } ?? "–"
            lines.append("| \(row.key) (\(row.label)) | \(preCell) | \(postCell) | \(delta) |")
        }
        lines.append("")
        lines.append("Percentages, averaged over each case's prompts, then over cases (METHODS §3.3). "
            + "± is one standard error: binomial for ES/PS/NS, sample for EM/PM/NM, bootstrap over cases for S.")
        lines.append("")
        lines.append("| counts | pre | post |")
        lines.append("|---|---:|---:|")
        lines.append("| cases | \(r.pre.cases) | \(r.post.map { "\($0.cases)" } ?? "–") |")
        lines.append("| rewrite prompts | \(r.pre.rewritePrompts) | \(r.post.map { "\($0.rewritePrompts)" } ?? "–") |")
        lines.append("| paraphrase prompts | \(r.pre.paraphrasePrompts) | \(r.post.map { "\($0.paraphrasePrompts)" } ?? "–") |")
        lines.append("| neighborhood prompts | \(r.pre.neighborhoodPrompts) | \(r.post.map { "\($0.neighborhoodPrompts)" } ?? "–") |")
        if let plotFile {
            lines.append("")
            lines.append("![ES, PS, NS and S before and after editing](\(plotFile.replacingOccurrences(of: " ", with: "%20")))")
        }
        lines.append(contentsOf: timingSection(r))
        if !r.settings.isEmpty {
            lines.append("")
            lines.append("## Settings")
            lines.append("")
            lines.append("| setting | value |")
            lines.append("|---|---|")
            for key in r.settings.keys.sorted() {
                lines.append("| \(md(key)) | \(md(r.settings[key] ?? "")) |")
            }
        }
        lines.append("")
        lines.append("## Failed cases")
        lines.append("")
        if failed.isEmpty {
            lines.append("None.")
        } else {
            let shown = 50
            lines.append("| case_id | subject | error |")
            lines.append("|---:|---|---|")
            for item in failed.prefix(shown) {
                lines.append("| \(item.caseId) | \(md(item.subject)) | \(md(item.error ?? "no post-edit scores")) |")
            }
            if failed.count > shown {
                lines.append("")
                lines.append("… and \(failed.count - shown) more (see the JSON report).")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func timingSection(_ r: EvalReport) -> [String] {
        let editTimes = r.cases.compactMap(\.editSeconds)
        var phaseTimes: [String: [Double]] = [:]
        for item in r.cases {
            for (phase, seconds) in item.phases ?? [:] { phaseTimes[phase, default: []].append(seconds) }
        }
        guard !r.timing.isEmpty || !editTimes.isEmpty || !phaseTimes.isEmpty else { return [] }
        var lines = ["", "## Timing", "", "| timing | seconds |", "|---|---:|"]
        for key in r.timing.keys.sorted() {
            lines.append("| \(md(key)) | \(number(r.timing[key] ?? .nan, digits: 3)) |")
        }
        if !editTimes.isEmpty {
            let sorted = editTimes.sorted()
            let middle = sorted.count / 2
            let median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
            lines.append("| edit, mean over \(editTimes.count) cases | \(number(Statistics.mean(editTimes), digits: 3)) |")
            lines.append("| edit, median | \(number(median, digits: 3)) |")
            lines.append("| edit, max | \(number(sorted[sorted.count - 1], digits: 3)) |")
        }
        for phase in phaseTimes.keys.sorted() {
            let values = phaseTimes[phase] ?? []
            lines.append("| phase \(md(phase)), mean over \(values.count) cases | \(number(Statistics.mean(values), digits: 3)) |")
        }
        return lines
    }

    // MARK: Files

    /// Writes `basename.json`, `basename.md` and `basename.svg` into `directory` (created if
    /// needed) and returns their paths in that order. The Markdown references the SVG by its
    /// relative name.
    public static func write(_ r: EvalReport, to directory: String, basename: String) throws -> [String] {
        guard !basename.isEmpty, !basename.contains("/") else {
            throw EvaluationError(.unwritable, "basename must be a non-empty file name without '/', got \"\(basename)\"")
        }
        let folder = URL(fileURLWithPath: directory, isDirectory: true)
        let json = try json(r)
        let contents: [(String, Data)] = [
            ("\(basename).json", json),
            ("\(basename).md", Data(markdown(r, plotFile: "\(basename).svg").utf8)),
            ("\(basename).svg", Data(svgPlot(r).utf8)),
        ]
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            return try contents.map { name, data in
                let file = folder.appendingPathComponent(name)
                try data.write(to: file, options: .atomic)
                return file.path
            }
        } catch {
            throw EvaluationError(.unwritable, "cannot write the report into \(directory): \(error.localizedDescription)", cause: error)
        }
    }

    // MARK: Layer sweep

    /// A plain-text table for the terminal: ES, PS, NS and S (post-edit) per layer, the pre-edit S,
    /// and the time spent; the row with the best S is marked with '*'. Rows are sorted by layer.
    public static func layerTable(_ rows: [LayerSweepRow]) -> String {
        let sorted = rows.sorted { $0.layer < $1.layer }
        let best = bestLayer(sorted)
        let header = ["layer", "cases", "ES", "PS", "NS", "S", "pre S", "seconds"]
        var table: [[String]] = [header]
        for row in sorted {
            let mark = row.layer == best ? "*" : " "
            table.append([
                "\(row.layer)", "\(row.metrics.cases)",
                number(row.metrics.es, digits: 2), number(row.metrics.ps, digits: 2), number(row.metrics.ns, digits: 2),
                number(row.metrics.s, digits: 2) + mark, number(row.pre.s, digits: 2) + " ", number(row.seconds, digits: 1),
            ])
        }
        let widths = header.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
        var lines = table.map { cells in
            zip(cells, widths).map { cell, width in String(repeating: " ", count: width - cell.count) + cell }
                .joined(separator: "  ")
        }
        if let best {
            lines.append("* best S at layer \(best)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The layer with the highest post-edit S (the lowest such layer on ties); `nil` if no S is defined.
    public static func bestLayer(_ rows: [LayerSweepRow]) -> Int? {
        var best: LayerSweepRow?
        for row in rows.sorted(by: { $0.layer < $1.layer }) where !row.metrics.s.isNaN {
            if best.map({ row.metrics.s > $0.metrics.s }) ?? true { best = row }
        }
        return best?.layer
    }

    // MARK: Formatting

    /// `value` with `digits` decimals, or "n/a" for NaN.
    static func number(_ value: Double, digits: Int) -> String {
        guard !value.isNaN else { return "n/a" }
        guard value.isFinite else { return value > 0 ? "inf" : "-inf" }
        return String(format: "%.\(digits)f", value)
    }

    private static func withError(_ value: Double, _ error: Double) -> String {
        let text = number(value, digits: 2)
        return error.isFinite && !value.isNaN ? "\(text) ± \(number(error, digits: 2))" : text
    }

    private static func signed(_ value: Double) -> String {
        guard value.isFinite else { return number(value, digits: 2) }
        return (value >= 0 ? "+" : "") + number(value, digits: 2)
    }

    /// Escapes text for a Markdown table cell or list item: Markdown punctuation is backslash-escaped
    /// and line breaks become spaces.
    static func md(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "\\", "`", "*", "_", "[", "]", "<", ">", "|", "#":
                escaped.append("\\")
                escaped.append(character)
            case "\n", "\r", "\r\n":
                escaped.append(" ")
            default:
                escaped.append(character)
            }
        }
        return escaped
    }
}
