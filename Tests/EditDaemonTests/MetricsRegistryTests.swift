@testable import EditDaemon
import Foundation
import Testing

@Suite struct MetricsRegistryTests {
    @Test func rendersExactExpositionText() {
        let registry = MetricsRegistry()
        let requests = registry.counter(name: "app_requests_total", help: "Requests served.", labels: ["code", "path"])
        let temperature = registry.gauge(name: "app_temperature", help: "Current temperature.")
        let latency = registry.histogram(name: "app_latency_seconds", help: "Latency.", buckets: [0.125, 0.5, 1])
        requests.inc(labels: ["path": "/b", "code": "200"])
        requests.inc(2, labels: ["path": "/a", "code": "200"])
        requests.inc(labels: ["path": "/a", "code": "500"])
        temperature.set(21.5)
        temperature.dec(0.25)
        for v in [0.0625, 0.125, 0.25, 0.75, 3] { latency.observe(v) }

        let expected = """
            # HELP app_latency_seconds Latency.
            # TYPE app_latency_seconds histogram
            app_latency_seconds_bucket{le="0.125"} 2
            app_latency_seconds_bucket{le="0.5"} 3
            app_latency_seconds_bucket{le="1"} 4
            app_latency_seconds_bucket{le="+Inf"} 5
            app_latency_seconds_sum 4.1875
            app_latency_seconds_count 5
            # HELP app_requests_total Requests served.
            # TYPE app_requests_total counter
            app_requests_total{code="200",path="/a"} 2
            app_requests_total{code="200",path="/b"} 1
            app_requests_total{code="500",path="/a"} 1
            # HELP app_temperature Current temperature.
            # TYPE app_temperature gauge
            app_temperature 21.25

            """
        #expect(registry.render() == expected)
    }

    @Test func labelledHistogramAndEmptyFamilies() {
        let registry = MetricsRegistry()
        let h = registry.histogram(name: "job_seconds", help: "Job time.", labels: ["kind"], buckets: [1, 2])
        _ = registry.counter(name: "nothing_total", help: "Never incremented.", labels: ["x"])
        _ = registry.counter(name: "plain_total", help: "No labels.")
        h.observe(1.5, labels: ["kind": "b"])
        h.observe(0.5, labels: ["kind": "a"])
        h.observe(2, labels: ["kind": "a"])
        let expected = """
            # HELP job_seconds Job time.
            # TYPE job_seconds histogram
            job_seconds_bucket{kind="a",le="1"} 1
            job_seconds_bucket{kind="a",le="2"} 2
            job_seconds_bucket{kind="a",le="+Inf"} 2
            job_seconds_sum{kind="a"} 2.5
            job_seconds_count{kind="a"} 2
            job_seconds_bucket{kind="b",le="1"} 0
            job_seconds_bucket{kind="b",le="2"} 1
            job_seconds_bucket{kind="b",le="+Inf"} 1
            job_seconds_sum{kind="b"} 1.5
            job_seconds_count{kind="b"} 1
            # HELP nothing_total Never incremented.
            # TYPE nothing_total counter
            # HELP plain_total No labels.
            # TYPE plain_total counter
            plain_total 0

            """
        #expect(registry.render() == expected)
        #expect(h.summary(labels: ["kind": "a"]).count == 2)
        #expect(h.summary(labels: ["kind": "a"]).sum == 2.5)
    }

    @Test func escapesLabelValuesAndHelp() {
        let registry = MetricsRegistry()
        let c = registry.counter(name: "odd_total", help: "Back\\slash and\nnewline \"quoted\".", labels: ["v"])
        c.inc(labels: ["v": "a\\b\"c\nd"])
        let expected = """
            # HELP odd_total Back\\\\slash and\\nnewline "quoted".
            # TYPE odd_total counter
            odd_total{v="a\\\\b\\"c\\nd"} 1

            """
        #expect(registry.render() == expected)
    }

    @Test func gaugeFunctionIsComputedAtScrapeTime() {
        let registry = MetricsRegistry()
        let box = LockedBox<[([String: String], Double)]>([])
        registry.registerGaugeFunction(name: "lag", help: "Lag.", labels: ["topic", "partition"]) { box.value }
        #expect(registry.render() == "# HELP lag Lag.\n# TYPE lag gauge\n")
        box.value = [(["topic": "t", "partition": "1"], 7), (["topic": "t", "partition": "0"], 3)]
        #expect(registry.render() == """
            # HELP lag Lag.
            # TYPE lag gauge
            lag{topic="t",partition="0"} 3
            lag{topic="t",partition="1"} 7

            """)
    }

    @Test func gaugeFunctionMayReadTheRegistry() {
        let registry = MetricsRegistry()
        let c = registry.counter(name: "a_total", help: "A.")
        c.inc(4)
        registry.registerGaugeFunction(name: "b", help: "Twice a.") { [([:], c.value() * 2)] }
        #expect(registry.render().contains("\nb 8\n"))
    }

    @Test func formatsValuesLikePrometheus() {
        #expect(formatValue(0) == "0")
        #expect(formatValue(-0.0) == "0")
        #expect(formatValue(3) == "3")
        #expect(formatValue(120) == "120")
        #expect(formatValue(0.0025) == "0.0025")
        #expect(formatValue(1.5e-7) == "1.5e-07")
        #expect(formatValue(.infinity) == "+Inf")
        #expect(formatValue(-.infinity) == "-Inf")
        #expect(formatValue(.nan) == "NaN")
        #expect(formatValue(1e20) == "1e+20")
    }

    @Test func defaultBucketsSpanOneMillisecondToTwoMinutes() {
        let registry = MetricsRegistry()
        let h = registry.histogram(name: "d_seconds", help: "D.")
        h.observe(200)
        let text = registry.render()
        let les = text.split(separator: "\n").filter { $0.hasPrefix("d_seconds_bucket") }.map {
            $0.split(separator: "\"")[1]
        }
        #expect(les == ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                        "5", "10", "30", "60", "120", "+Inf"])
        #expect(text.contains("d_seconds_bucket{le=\"120\"} 0\nd_seconds_bucket{le=\"+Inf\"} 1\n"))
    }

    @Test func registeringAgainReturnsTheSameMetric() {
        let registry = MetricsRegistry()
        registry.counter(name: "x_total", help: "X.", labels: ["a"]).inc(labels: ["a": "1"])
        registry.counter(name: "x_total", help: "X.", labels: ["a"]).inc(labels: ["a": "1"])
        #expect(registry.counter(name: "x_total", help: "X.", labels: ["a"]).value(labels: ["a": "1"]) == 2)
    }

    @Test func missingLabelsAreEmptyAndUnknownOnesIgnored() {
        let registry = MetricsRegistry()
        let g = registry.gauge(name: "g", help: "G.", labels: ["a", "b"])
        g.set(1, labels: ["a": "x", "zzz": "ignored"])
        #expect(registry.render().hasSuffix("g{a=\"x\",b=\"\"} 1\n"))
    }

    @Test func validatesNames() {
        #expect(isValidMetricName("mesa_events_consumed_total"))
        #expect(isValidMetricName("a:b_c9"))
        #expect(!isValidMetricName("9abc"))
        #expect(!isValidMetricName("a-b"))
        #expect(!isValidMetricName(""))
        #expect(isValidLabelName("topic"))
        #expect(!isValidLabelName("__reserved"))
        #expect(!isValidLabelName("a:b"))
    }

    @Test func concurrentUpdatesAreExact() {
        let registry = MetricsRegistry()
        let c = registry.counter(name: "hits_total", help: "Hits.", labels: ["worker"])
        let total = registry.counter(name: "all_total", help: "All.")
        let g = registry.gauge(name: "level", help: "Level.")
        let h = registry.histogram(name: "t_seconds", help: "T.", buckets: [0.5])
        let threads = 8, perThread = 20_000
        DispatchQueue.concurrentPerform(iterations: threads) { i in
            for k in 0..<perThread {
                c.inc(labels: ["worker": String(i % 2)])
                total.inc()
                g.inc()
                h.observe(k % 2 == 0 ? 0.25 : 1)
                if k % 1000 == 0 { _ = registry.render() }
            }
        }
        #expect(total.value() == Double(threads * perThread))
        #expect(c.value(labels: ["worker": "0"]) + c.value(labels: ["worker": "1"]) == Double(threads * perThread))
        #expect(g.value() == Double(threads * perThread))
        #expect(h.summary().count == UInt64(threads * perThread))
        #expect(registry.render().contains("t_seconds_bucket{le=\"0.5\"} \(threads * perThread / 2)\n"))
    }
}
