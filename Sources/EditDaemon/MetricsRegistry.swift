import Foundation

/// A set of Prometheus metrics that renders itself in the text exposition format 0.0.4.
///
/// Metrics are registered once by name, with their help text and label names, and updated through
/// the returned handles (`Counter`, `Gauge`, `Histogram`) from any thread. Scrape-time gauges are
/// registered with `registerGaugeFunction`; their closure runs during `render()` with no lock held,
/// so it may itself read other metrics.
///
/// Registering a name twice with the same kind and label names returns the existing metric; any
/// other clash, or an invalid metric or label name, is a programming error and stops the process.
public final class MetricsRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private var families: [String: Family] = [:]

    public init() {}

    /// Registers (or returns) a counter. Its name must end in `_total`.
    public func counter(name: String, help: String, labels: [String] = []) -> Counter {
        precondition(name.hasSuffix("_total"), "counter \(name): a counter's name ends in _total")
        return Counter(register(name: name, help: help, labels: labels, kind: .counter) { Series(name: name, labelNames: labels) })
    }

    /// Registers (or returns) a gauge.
    public func gauge(name: String, help: String, labels: [String] = []) -> Gauge {
        Gauge(register(name: name, help: help, labels: labels, kind: .gauge) { Series(name: name, labelNames: labels) })
    }

    /// Registers (or returns) a histogram with the given upper bounds (`+Inf` is implicit).
    public func histogram(name: String, help: String, labels: [String] = [],
                          buckets: [Double] = Histogram.defaultBuckets) -> Histogram {
        precondition(!labels.contains("le"), "histogram \(name): the label name le is reserved")
        let bounds = buckets.filter { $0 != .infinity }
        precondition(bounds.allSatisfy { !$0.isNaN } && zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 },
                     "histogram \(name): buckets must be strictly increasing")
        let family = register(name: name, help: help, labels: labels, kind: .histogram) {
            HistogramSeries(name: name, labelNames: labels, bounds: bounds)
        }
        let series = family.storage as! HistogramSeries
        precondition(series.bounds == bounds, "histogram \(name): registered again with other buckets")
        return Histogram(family)
    }

    /// Registers a gauge whose samples are computed at scrape time by `samples`, which returns one
    /// value per label set (keyed by the label names given here). Replaces an earlier function of
    /// the same name.
    public func registerGaugeFunction(name: String, help: String, labels: [String] = [],
                                      _ samples: @escaping @Sendable () -> [([String: String], Double)]) {
        validate(name: name, labels: labels)
        lock.lock(); defer { lock.unlock() }
        if let existing = families[name] {
            precondition(existing.storage is GaugeFunction,
                         "metric \(name) is already registered as a \(existing.kind.rawValue)")
        }
        families[name] = Family(name: name, help: help, kind: .gauge, labelNames: labels,
                                storage: GaugeFunction(name: name, labelNames: labels, samples: samples))
    }

    /// The exposition text: families sorted by name, samples by label values, `\n` after each line.
    public func render() -> String {
        lock.lock()
        let snapshot = families.values.sorted { $0.name < $1.name }
        lock.unlock()
        var out = ""
        for family in snapshot {
            out += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            out += "# TYPE \(family.name) \(family.kind.rawValue)\n"
            family.storage.render(into: &out)
        }
        return out
    }

    private func register(name: String, help: String, labels: [String], kind: Family.Kind,
                          make: () -> SeriesStorage) -> Family {
        validate(name: name, labels: labels)
        lock.lock(); defer { lock.unlock() }
        if let existing = families[name] {
            precondition(existing.kind == kind && existing.labelNames == labels && !(existing.storage is GaugeFunction),
                         "metric \(name) is already registered as a \(existing.kind.rawValue) with labels \(existing.labelNames)")
            return existing
        }
        let family = Family(name: name, help: help, kind: kind, labelNames: labels, storage: make())
        families[name] = family
        return family
    }

    private func validate(name: String, labels: [String]) {
        precondition(isValidMetricName(name), "invalid metric name \(name)")
        for label in labels {
            precondition(isValidLabelName(label), "metric \(name): invalid label name \(label)")
        }
        precondition(Set(labels).count == labels.count, "metric \(name): repeated label name")
    }
}

/// A monotonically increasing count; its name ends in `_total`.
public struct Counter: Sendable {
    let family: Family
    init(_ family: Family) { self.family = family }

    /// Adds `by` (zero or more) to the series with these labels, creating it at 0 first if new.
    ///
    /// Labels are matched to the registered label names: a missing one counts as the empty
    /// string and one that was not registered is ignored.
    public func inc(_ by: Double = 1, labels: [String: String] = [:]) {
        precondition(by >= 0, "counter \(family.name): increment \(by) is negative")
        (family.storage as! Series).add(by, labels: labels)
    }

    /// The current value of the series with these labels (0 if it does not exist yet).
    public func value(labels: [String: String] = [:]) -> Double {
        (family.storage as! Series).value(labels: labels)
    }
}

/// A value that goes up and down.
public struct Gauge: Sendable {
    let family: Family
    init(_ family: Family) { self.family = family }

    /// Sets the series with these labels to `value`. Labels are matched as for `Counter.inc`.
    public func set(_ value: Double, labels: [String: String] = [:]) {
        (family.storage as! Series).set(value, labels: labels)
    }

    /// Adds `by` to the series with these labels.
    public func inc(_ by: Double = 1, labels: [String: String] = [:]) {
        (family.storage as! Series).add(by, labels: labels)
    }

    /// Subtracts `by` from the series with these labels.
    public func dec(_ by: Double = 1, labels: [String: String] = [:]) {
        (family.storage as! Series).add(-by, labels: labels)
    }

    /// The current value of the series with these labels (0 if it does not exist yet).
    public func value(labels: [String: String] = [:]) -> Double {
        (family.storage as! Series).value(labels: labels)
    }
}

/// A distribution of observations (usually durations in seconds) over fixed buckets.
public struct Histogram: Sendable {
    /// Latency buckets from 1 ms to 120 s.
    public static let defaultBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

    let family: Family
    init(_ family: Family) { self.family = family }

    /// Records one observation in the series with these labels. Labels are matched as for `Counter.inc`.
    public func observe(_ value: Double, labels: [String: String] = [:]) {
        (family.storage as! HistogramSeries).observe(value, labels: labels)
    }

    /// The number of observations and their sum in the series with these labels.
    public func summary(labels: [String: String] = [:]) -> (count: UInt64, sum: Double) {
        (family.storage as! HistogramSeries).summary(labels: labels)
    }
}

// MARK: - Storage

final class Family: @unchecked Sendable {
    enum Kind: String { case counter, gauge, histogram }
    let name: String
    let help: String
    let kind: Kind
    let labelNames: [String]
    let storage: SeriesStorage

    init(name: String, help: String, kind: Kind, labelNames: [String], storage: SeriesStorage) {
        self.name = name
        self.help = help
        self.kind = kind
        self.labelNames = labelNames
        self.storage = storage
    }
}

protocol SeriesStorage: AnyObject {
    func render(into out: inout String)
}

/// Label values in the order of the registered label names, ordered lexicographically.
struct LabelValues: Hashable, Comparable {
    var values: [String]
    static func < (a: LabelValues, b: LabelValues) -> Bool { a.values.lexicographicallyPrecedes(b.values) }
}

func labelValues(_ labels: [String: String], names: [String]) -> LabelValues {
    LabelValues(values: names.map { labels[$0] ?? "" })
}

/// Counter and gauge values.
final class Series: SeriesStorage, @unchecked Sendable {
    private let lock = NSLock()
    private let name: String
    private let labelNames: [String]
    private var values: [LabelValues: Double] = [:]

    init(name: String, labelNames: [String]) {
        self.name = name
        self.labelNames = labelNames
        if labelNames.isEmpty { values[LabelValues(values: [])] = 0 }
    }

    func add(_ delta: Double, labels: [String: String]) {
        let key = labelValues(labels, names: labelNames)
        lock.lock(); defer { lock.unlock() }
        values[key, default: 0] += delta
    }

    func set(_ value: Double, labels: [String: String]) {
        let key = labelValues(labels, names: labelNames)
        lock.lock(); defer { lock.unlock() }
        values[key] = value
    }

    func value(labels: [String: String]) -> Double {
        let key = labelValues(labels, names: labelNames)
        lock.lock(); defer { lock.unlock() }
        return values[key] ?? 0
    }

    func render(into out: inout String) {
        lock.lock()
        let samples = values.sorted { $0.key < $1.key }
        lock.unlock()
        for (key, value) in samples {
            out += "\(name)\(formatLabels(labelNames, key.values)) \(formatValue(value))\n"
        }
    }
}

final class HistogramSeries: SeriesStorage, @unchecked Sendable {
    struct State {
        var counts: [UInt64]  // per bucket, not cumulative; the last one is +Inf
        var sum: Double = 0
        var count: UInt64 = 0
    }

    private let lock = NSLock()
    private let name: String
    private let labelNames: [String]
    let bounds: [Double]
    private var states: [LabelValues: State] = [:]

    init(name: String, labelNames: [String], bounds: [Double]) {
        self.name = name
        self.labelNames = labelNames
        self.bounds = bounds
        if labelNames.isEmpty { states[LabelValues(values: [])] = State(counts: Array(repeating: 0, count: bounds.count + 1)) }
    }

    func observe(_ value: Double, labels: [String: String]) {
        let key = labelValues(labels, names: labelNames)
        let index = bounds.firstIndex { value <= $0 } ?? bounds.count
        lock.lock(); defer { lock.unlock() }
        var state = states[key] ?? State(counts: Array(repeating: 0, count: bounds.count + 1))
        state.counts[index] += 1
        state.sum += value
        state.count += 1
        states[key] = state
    }

    func summary(labels: [String: String]) -> (count: UInt64, sum: Double) {
        let key = labelValues(labels, names: labelNames)
        lock.lock(); defer { lock.unlock() }
        let state = states[key]
        return (state?.count ?? 0, state?.sum ?? 0)
    }

    func render(into out: inout String) {
        lock.lock()
        let samples = states.sorted { $0.key < $1.key }
        lock.unlock()
        let bucketLabelNames = labelNames + ["le"]
        let les = bounds.map(formatValue) + ["+Inf"]
        for (key, state) in samples {
            var cumulative: UInt64 = 0
            for (i, le) in les.enumerated() {
                cumulative += state.counts[i]
                out += "\(name)_bucket\(formatLabels(bucketLabelNames, key.values + [le])) \(cumulative)\n"
            }
            let labels = formatLabels(labelNames, key.values)
            out += "\(name)_sum\(labels) \(formatValue(state.sum))\n"
            out += "\(name)_count\(labels) \(state.count)\n"
        }
    }
}

/// A gauge computed at scrape time; a label set returned twice keeps its last value.
final class GaugeFunction: SeriesStorage, @unchecked Sendable {
    private let name: String
    private let labelNames: [String]
    private let samples: @Sendable () -> [([String: String], Double)]

    init(name: String, labelNames: [String], samples: @escaping @Sendable () -> [([String: String], Double)]) {
        self.name = name
        self.labelNames = labelNames
        self.samples = samples
    }

    func render(into out: inout String) {
        var byLabels: [LabelValues: Double] = [:]
        for (labels, value) in samples() { byLabels[labelValues(labels, names: labelNames)] = value }
        for (key, value) in byLabels.sorted(by: { $0.key < $1.key }) {
            out += "\(name)\(formatLabels(labelNames, key.values)) \(formatValue(value))\n"
        }
    }
}

// MARK: - Formatting

func isValidMetricName(_ name: String) -> Bool {
    guard let first = name.utf8.first else { return false }
    let isStart = { (c: UInt8) in (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 || c == 58 }
    return isStart(first) && name.utf8.allSatisfy { isStart($0) || ($0 >= 48 && $0 <= 57) }
}

func isValidLabelName(_ name: String) -> Bool {
    guard let first = name.utf8.first, !name.hasPrefix("__") else { return false }
    let isStart = { (c: UInt8) in (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 }
    return isStart(first) && name.utf8.allSatisfy { isStart($0) || ($0 >= 48 && $0 <= 57) }
}

/// `{a="x",b="y"}`, or nothing when there are no labels.
func formatLabels(_ names: [String], _ values: [String]) -> String {
    if names.isEmpty { return "" }
    let pairs = zip(names, values).map { "\($0)=\"\(escapeLabelValue($1))\"" }
    return "{" + pairs.joined(separator: ",") + "}"
}

/// Escapes a label value: backslash, double quote and line feed.
func escapeLabelValue(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.utf8.count)
    for c in s.unicodeScalars {
        switch c {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}

/// Escapes help text: backslash and line feed.
func escapeHelp(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
        switch c {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}

/// A sample value as Prometheus writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`,
/// otherwise the shortest round-tripping decimal.
func formatValue(_ v: Double) -> String {
    if v.isNaN { return "NaN" }
    if v == .infinity { return "+Inf" }
    if v == -.infinity { return "-Inf" }
    if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
    return "\(v)"
}
