import Foundation

/// Whether the daemon can take work, and if not, why.
public struct Readiness: Equatable, Sendable {
    /// True when the model is loaded, the consumer assigned and the stores open.
    public var isReady: Bool
    /// What is missing when not ready, e.g. `model not loaded`.
    public var reason: String

    public init(isReady: Bool, reason: String = "") {
        self.isReady = isReady
        self.reason = reason
    }

    /// Ready.
    public static let ready = Readiness(isReady: true)

    /// Not ready, because of `reason`.
    public static func notReady(_ reason: String) -> Readiness { Readiness(isReady: false, reason: reason) }
}

/// The daemon's HTTP routes: `/healthz`, `/readyz` and `/metrics`.
public enum HealthEndpoints {
    /// The content type of the Prometheus text exposition format.
    public static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    /// A handler for `HTTPServer`:
    /// - `/healthz`: 200 `ok` while the process can answer at all;
    /// - `/readyz`: 200 `ready` when `readiness()` says so, else 503 with its reason;
    /// - `/metrics`: `exposition()` (the Prometheus text format, `DaemonMetrics.exposition`);
    /// - anything else: 404.
    ///
    /// `readiness` runs on a connection thread for every probe, so it should only read state.
    public static func handler(exposition: @escaping @Sendable () -> String,
                               readiness: @escaping @Sendable () -> Readiness) -> HTTPServer.Handler {
        return { request in
            switch request.path {
            case "/healthz":
                return .text(200, "ok\n")
            case "/readyz":
                let state = readiness()
                if state.isReady { return .text(200, "ready\n") }
                return .text(503, "not ready: \(state.reason.isEmpty ? "unknown" : state.reason)\n")
            case "/metrics":
                return .text(200, exposition(), contentType: metricsContentType)
            default:
                return .text(404, "not found\n")
            }
        }
    }
}
