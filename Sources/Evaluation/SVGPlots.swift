import Foundation

extension ReportWriter {
    /// Series colors shared by the plots.
    private static let palette = (pre: "#b0b0b0", post: "#1f77b4", es: "#1f77b4", ps: "#ff7f0e", ns: "#2ca02c", s: "#d62728")

    /// A self-contained SVG with two panels.
    ///
    /// Top: grouped bars of ES, PS, NS and S before and after editing on a 0–100 axis, with one
    /// standard error as whiskers. Bottom: the running mean of the per-case ES, PS and NS over the
    /// cases in report order (post-edit scores, or pre-edit scores when no case has post-edit
    /// ones). In a sequential run the first cases were edited first, so a falling curve shows
    /// later edits overwriting earlier ones.
    public static func svgPlot(_ r: EvalReport) -> String {
        var svg = SVGCanvas(width: 760, height: 600)
        let cases = r.cases.count
        svg.text(x: 380, y: 26, "\(r.method) on \(r.model): CounterFact, \(cases) case\(cases == 1 ? "" : "s")",
                 anchor: "middle", size: 16, weight: "bold")

        let bars = PlotArea(left: 70, right: 730, top: 80, bottom: 300)
        svg.percentAxis(bars, label: "percent")
        let metrics: [(String, (Metrics) -> Double, (MetricErrors) -> Double)] = [
            ("ES", \.es, \.es), ("PS", \.ps, \.ps), ("NS", \.ns, \.ns), ("S", \.s, \.s),
        ]
        let series: [(name: String, color: String, metrics: Metrics)] =
            [("pre", palette.pre, r.pre)] + (r.post.map { [("post", palette.post, $0)] } ?? [])
        let groupWidth = bars.width / Double(metrics.count)
        let barWidth = 56.0
        for (group, metric) in metrics.enumerated() {
            let center = bars.left + groupWidth * (Double(group) + 0.5)
            let firstLeft = center - barWidth * Double(series.count) / 2
            for (position, entry) in series.enumerated() {
                let x = firstLeft + barWidth * Double(position)
                let value = metric.1(entry.metrics)
                guard !value.isNaN else {
                    svg.text(x: x + barWidth / 2, y: bars.bottom - 6, "n/a", anchor: "middle", size: 11)
                    continue
                }
                let top = bars.y(value)
                svg.rect(x: x + 4, y: top, width: barWidth - 8, height: bars.bottom - top, fill: entry.color)
                let error = metric.2(entry.metrics.stderr)
                var labelBase = top
                if error.isFinite, error > 0 {
                    let mid = x + barWidth / 2
                    let upper = bars.y(value + error), lower = bars.y(value - error)
                    svg.line(x1: mid, y1: lower, x2: mid, y2: upper, stroke: "#333333")
                    svg.line(x1: mid - 6, y1: upper, x2: mid + 6, y2: upper, stroke: "#333333")
                    svg.line(x1: mid - 6, y1: lower, x2: mid + 6, y2: lower, stroke: "#333333")
                    labelBase = min(top, upper)
                }
                svg.text(x: x + barWidth / 2, y: labelBase - 5, number(value, digits: 1), anchor: "middle", size: 11)
            }
            svg.text(x: center, y: bars.bottom + 18, metric.0, anchor: "middle", size: 13, weight: "bold")
        }
        svg.legend(x: bars.right - 130, y: 48, series.map { ($0.name == "pre" ? "pre-edit" : "post-edit", $0.color) })

        let running = PlotArea(left: 70, right: 730, top: 390, bottom: 550)
        let usePost = r.cases.contains { $0.post != nil }
        let scores = r.cases.compactMap { usePost ? $0.post : $0.pre }
        svg.text(x: running.left, y: running.top - 24,
                 "Running mean over cases in report order (\(usePost ? "post-edit" : "pre-edit"))", size: 13, weight: "bold")
        svg.percentAxis(running, label: "percent", step: 25)
        svg.text(x: (running.left + running.right) / 2, y: running.bottom + 34, "case", anchor: "middle", size: 12)
        if scores.isEmpty {
            svg.text(x: (running.left + running.right) / 2, y: (running.top + running.bottom) / 2, "no cases", anchor: "middle")
        } else {
            let n = scores.count
            for tick in caseTicks(n) {
                let x = n == 1 ? running.left : running.left + running.width * Double(tick - 1) / Double(n - 1)
                svg.line(x1: x, y1: running.bottom, x2: x, y2: running.bottom + 5, stroke: "#333333")
                svg.text(x: x, y: running.bottom + 17, "\(tick)", anchor: "middle", size: 11)
            }
            let lines: [(String, String, (CaseScores) -> Double)] = [
                ("ES", palette.es, \.es), ("PS", palette.ps, \.ps), ("NS", palette.ns, \.ns),
            ]
            for line in lines {
                let means = runningMeans(scores.map(line.2))
                var indices = Array(stride(from: 0, to: n, by: max(1, n / 400)))
                if indices.last != n - 1 { indices.append(n - 1) }
                var points: [(Double, Double)] = []
                for index in indices where !means[index].isNaN {
                    let x = n == 1 ? running.left : running.left + running.width * Double(index) / Double(n - 1)
                    points.append((x, running.y(means[index])))
                }
                svg.polyline(points, stroke: line.1)
            }
            svg.legend(x: running.right - 170, y: running.top - 28, lines.map { ($0.0, $0.1) }, horizontal: true)
        }
        return svg.render(title: "CounterFact evaluation of \(r.method) on \(r.model)")
    }

    /// A line plot of post-edit ES, PS, NS and S against the edited layer, with the best S circled.
    public static func layerSVG(_ rows: [LayerSweepRow]) -> String {
        let sorted = rows.sorted { $0.layer < $1.layer }
        var svg = SVGCanvas(width: 760, height: 420)
        svg.text(x: 380, y: 26, "CounterFact metrics by edited layer", anchor: "middle", size: 16, weight: "bold")
        let area = PlotArea(left: 70, right: 730, top: 70, bottom: 360)
        svg.percentAxis(area, label: "percent")
        svg.text(x: (area.left + area.right) / 2, y: area.bottom + 36, "layer", anchor: "middle", size: 12)
        guard let first = sorted.first, let last = sorted.last else {
            svg.text(x: (area.left + area.right) / 2, y: (area.top + area.bottom) / 2, "no layers", anchor: "middle")
            return svg.render(title: "CounterFact metrics by edited layer")
        }
        let span = Double(last.layer - first.layer)
        func x(_ layer: Int) -> Double {
            span == 0 ? (area.left + area.right) / 2 : area.left + area.width * Double(layer - first.layer) / span
        }
        let labelEvery = max(1, sorted.count / 16)
        for (position, row) in sorted.enumerated() where position % labelEvery == 0 {
            svg.line(x1: x(row.layer), y1: area.bottom, x2: x(row.layer), y2: area.bottom + 5, stroke: "#333333")
            svg.text(x: x(row.layer), y: area.bottom + 18, "\(row.layer)", anchor: "middle", size: 11)
        }
        let lines: [(String, String, (Metrics) -> Double)] = [
            ("ES", palette.es, \.es), ("PS", palette.ps, \.ps), ("NS", palette.ns, \.ns), ("S", palette.s, \.s),
        ]
        for line in lines {
            let points = sorted.compactMap { row -> (Double, Double)? in
                let value = line.2(row.metrics)
                return value.isNaN ? nil : (x(row.layer), area.y(value))
            }
            svg.polyline(points, stroke: line.1, width: line.0 == "S" ? 2.5 : 1.5)
            for point in points { svg.circle(cx: point.0, cy: point.1, r: 3, fill: line.1) }
        }
        if let best = bestLayer(sorted), let row = sorted.first(where: { $0.layer == best }) {
            let cy = area.y(row.metrics.s)
            svg.circle(cx: x(best), cy: cy, r: 8, fill: "none", stroke: palette.s)
            let anchor = x(best) > area.right - 100 ? "end" : x(best) < area.left + 100 ? "start" : "middle"
            svg.text(x: x(best), y: cy - 13, "best S \(number(row.metrics.s, digits: 1)) at layer \(best)", anchor: anchor, size: 11, weight: "bold")
        }
        svg.legend(x: area.right - 230, y: 48, lines.map { ($0.0, $0.1) }, horizontal: true)
        return svg.render(title: "CounterFact metrics by edited layer")
    }

    /// S (0–100) against the number of sequential edits, one line per method: `series` is
    /// (method, [(edits, S)]).
    public static func curveSVG(title: String, series: [(String, [(Double, Double)])]) -> String {
        var svg = SVGCanvas(width: 760, height: 420)
        svg.text(x: 380, y: 26, title, anchor: "middle", size: 15, weight: "bold")
        let area = PlotArea(left: 70, right: 730, top: 70, bottom: 360)
        svg.percentAxis(area, label: "S")
        svg.text(x: (area.left + area.right) / 2, y: area.bottom + 36, "sequential edits", anchor: "middle", size: 12)
        let maxX = series.flatMap { $0.1.map(\.0) }.max() ?? 1
        func x(_ v: Double) -> Double { area.left + area.width * v / max(1, maxX) }
        for t in caseTicks(Int(maxX)) {
            svg.line(x1: x(Double(t)), y1: area.bottom, x2: x(Double(t)), y2: area.bottom + 5, stroke: "#333333")
            svg.text(x: x(Double(t)), y: area.bottom + 18, "\(t)", anchor: "middle", size: 11)
        }
        let colors = [palette.s, palette.es, palette.ps, palette.ns]
        for (i, entry) in series.enumerated() {
            let color = colors[i % colors.count]
            let points = entry.1.filter { !$0.1.isNaN }.map { (x($0.0), area.y($0.1)) }
            svg.polyline(points, stroke: color, width: 2)
            for p in points { svg.circle(cx: p.0, cy: p.1, r: 3, fill: color) }
        }
        let entries = series.enumerated().map { ($0.element.0, colors[$0.offset % colors.count]) }
        let span = entries.map { SVGCanvas.legendAdvance($0.0) }.reduce(0, +)
        svg.legend(x: min(area.right - 230, area.right + 20 - span), y: 48, entries, horizontal: true)
        return svg.render(title: title)
    }

    /// 1-based case numbers to label on the running-mean axis: the first, the last, and up to
    /// four round numbers in between.
    static func caseTicks(_ count: Int) -> [Int] {
        guard count > 1 else { return count == 1 ? [1] : [] }
        let rough = Double(count) / 5
        let magnitude = pow(10, floor(log10(rough)))
        let step = max(1, Int([1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough } ?? 10 * magnitude))
        let margin = Double(count) * 0.08
        let inner = stride(from: step, to: count, by: step).filter { $0 > 1 && Double($0) > margin && Double(count - $0) > margin }
        return [1] + inner + [count]
    }

    /// Running means ×100 of per-case values in [0, 1], skipping NaN entries; NaN until the first defined value.
    public static func runningMeans(_ values: [Double]) -> [Double] {
        var sum = 0.0
        var count = 0
        return values.map { value in
            if !value.isNaN {
                sum += value
                count += 1
            }
            return count == 0 ? .nan : 100 * sum / Double(count)
        }
    }
}

/// A rectangular plot region in SVG user units with a 0–100 vertical scale.
struct PlotArea {
    var left, right, top, bottom: Double

    var width: Double { right - left }

    /// The vertical coordinate of `percent`, clamped to the area.
    func y(_ percent: Double) -> Double {
        bottom - (bottom - top) * min(max(percent, 0), 100) / 100
    }
}

/// Accumulates SVG elements; every text is XML-escaped.
struct SVGCanvas {
    let width: Double
    let height: Double
    private var elements: [String] = []

    init(width: Double, height: Double) {
        self.width = width
        self.height = height
    }

    func render(title: String) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\" "
        out += "viewBox=\"0 0 \(f(width)) \(f(height))\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
        out += "<title>\(Self.escape(title))</title>\n"
        out += "<rect x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\" fill=\"#ffffff\"/>\n"
        out += elements.joined(separator: "\n")
        out += "\n</svg>\n"
        return out
    }

    mutating func rect(x: Double, y: Double, width: Double, height: Double, fill: String) {
        elements.append("<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(max(width, 0)))\" height=\"\(f(max(height, 0)))\" fill=\"\(fill)\"/>")
    }

    mutating func line(x1: Double, y1: Double, x2: Double, y2: Double, stroke: String, width: Double = 1) {
        elements.append("<line x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(f(width))\"/>")
    }

    mutating func circle(cx: Double, cy: Double, r: Double, fill: String, stroke: String? = nil) {
        let outline = stroke.map { " stroke=\"\($0)\" stroke-width=\"2\"" } ?? ""
        elements.append("<circle cx=\"\(f(cx))\" cy=\"\(f(cy))\" r=\"\(f(r))\" fill=\"\(fill)\"\(outline)/>")
    }

    mutating func polyline(_ points: [(Double, Double)], stroke: String, width: Double = 1.5) {
        guard !points.isEmpty else { return }
        let coordinates = points.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " ")
        elements.append("<polyline points=\"\(coordinates)\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"\(f(width))\" stroke-linejoin=\"round\"/>")
    }

    mutating func text(x: Double, y: Double, _ content: String, anchor: String = "start", size: Double = 12, weight: String = "normal") {
        elements.append("<text x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"\(anchor)\" font-size=\"\(f(size))\" font-weight=\"\(weight)\">\(Self.escape(content))</text>")
    }

    /// Horizontal gridlines and labels every `step` percent from 0 to 100, the frame, and a vertical axis label.
    mutating func percentAxis(_ area: PlotArea, label: String, step: Int = 20) {
        for value in stride(from: 0, through: 100, by: step) {
            let y = area.y(Double(value))
            line(x1: area.left, y1: y, x2: area.right, y2: y, stroke: value == 0 ? "#333333" : "#dddddd")
            text(x: area.left - 8, y: y + 4, "\(value)", anchor: "end", size: 11)
        }
        line(x1: area.left, y1: area.top, x2: area.left, y2: area.bottom, stroke: "#333333")
        let middle = (area.top + area.bottom) / 2
        elements.append("<text x=\"\(f(area.left - 44))\" y=\"\(f(middle))\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 \(f(area.left - 44)) \(f(middle)))\">\(Self.escape(label))</text>")
    }

    /// Color swatches with labels, stacked vertically or laid out in a row.
    mutating func legend(x: Double, y: Double, _ entries: [(String, String)], horizontal: Bool = false) {
        var ex = x
        for (position, entry) in entries.enumerated() {
            if horizontal, position > 0 { ex += Self.legendAdvance(entries[position - 1].0) }
            let ey = horizontal ? y : y + Double(position) * 18
            rect(x: ex, y: ey - 10, width: 14, height: 12, fill: entry.1)
            text(x: ex + 20, y: ey, entry.0, size: 12)
        }
    }

    /// The horizontal space one legend entry takes: swatch, gap, the label at about 7 px a character, margin.
    static func legendAdvance(_ label: String) -> Double { max(60, 34 + 7 * Double(label.count)) }

    /// Escapes the five XML special characters and drops characters XML 1.0 does not allow.
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            default:
                let value = scalar.value
                if value >= 0x20 && !(0xFFFE...0xFFFF).contains(value) { out.unicodeScalars.append(scalar) }
            }
        }
        return out
    }

    private func f(_ value: Double) -> String {
        String(format: "%.1f", value.isFinite ? value : 0)
    }
}
