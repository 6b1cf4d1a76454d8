import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle

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

/// The limits the HTTP server puts on its clients.
///
/// Hummingbird (SwiftNIO underneath) serves every connection on its event loops, so an idle or slow
/// connection costs a socket and a little memory, not a thread: many half-sent requests (a slowloris)
/// do not delay a health probe. Each connection has `readTimeout` seconds from its acceptance to send
/// a whole request head (bytes that do not complete the head do not extend it), and after a response
/// the same again for the next request; a connection past its deadline is closed without a response.
/// A request head larger than `maxHeadBytes` is refused. At `maxConnections` open connections the
/// server stops accepting: a new connection waits in the listen backlog until one closes, which a
/// half-open one does at its deadline (it is not evicted early, as the earlier hand-written server did).
public struct HTTPLimits: Sendable, Equatable {
    /// The largest request head (request line and header fields), in bytes.
    public var maxHeadBytes: Int
    /// Seconds a connection has to send a whole request head.
    public var readTimeout: Double
    /// The most connections served at once.
    public var maxConnections: Int

    public init(maxHeadBytes: Int = 8192, readTimeout: Double = 5, maxConnections: Int = 512) {
        self.maxHeadBytes = maxHeadBytes
        self.readTimeout = readTimeout
        self.maxConnections = maxConnections
    }
}

/// The daemon's HTTP server (Hummingbird 2): `/healthz`, `/readyz` and `/metrics`, and the query API
/// (`QueryAPI`: `/v1/completions`, `/v1/score`, `/v1/model`).
public enum HealthEndpoints {
    /// The content type of the Prometheus text exposition format.
    public static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The routes:
    /// - `GET /healthz`: 200 `ok` while the process can answer at all;
    /// - `GET /readyz`: 200 `ready` when `readiness()` says so (with its reason, if it gives one: a follower's lag), else 503 with its reason;
    /// - `GET /metrics`: `exposition()` (the Prometheus text format, `DaemonMetrics.exposition`);
    /// - HEAD of each: the same status and headers without the body;
    /// - with `query`, its routes (`QueryAPI.routes`);
    /// - anything else: 404 (unknown path) or 405 (another method).
    ///
    /// `readiness` and `exposition` run on the concurrency pool for every request, so they only read state.
    public static func router(exposition: @escaping @Sendable () -> String,
                              readiness: @escaping @Sendable () -> Readiness, query: QueryAPI? = nil) -> Router<BasicRequestContext> {
        let routes: [String: @Sendable () -> Response] = [
            "/healthz": { text(.ok, "ok\n") },
            "/readyz": {
                let state = readiness()
                if state.isReady { return text(.ok, state.reason.isEmpty ? "ready\n" : "ready: \(state.reason)\n") }
                return text(.serviceUnavailable, "not ready: \(state.reason.isEmpty ? "unknown" : state.reason)\n")
            },
            "/metrics": { text(.ok, exposition(), contentType: metricsContentType) },
        ]
        let router = Router()
        var allowed = Dictionary(uniqueKeysWithValues: routes.keys.map { ($0, [HTTPRequest.Method.get, .head]) })
        if query != nil { allowed.merge(QueryAPI.routes) { probe, _ in probe } }
        router.add(middleware: AllowedMethods(allowed: allowed))
        for (path, respond) in routes {
            router.get(RouterPath(path)) { _, _ in respond() }
            router.head(RouterPath(path)) { _, _ in
                // The GET response's status and headers, its length announced, no body.
                var response = respond()
                let length = response.body.contentLength ?? 0
                response.body = .init()
                response.headers[.contentLength] = String(length)
                return response
            }
        }
        query?.register(on: router)
        return router
    }

    /// Answers 405 (with `Allow`) to a method a known path does not serve: in plain text on the
    /// probes' paths, in the query API's error shape on its paths.
    struct AllowedMethods: RouterMiddleware {
        typealias Context = BasicRequestContext
        let allowed: [String: [HTTPRequest.Method]]
        func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
            guard let methods = allowed[request.uri.path], !methods.contains(request.method) else {
                return try await next(request, context)
            }
            if QueryAPI.routes[request.uri.path] != nil { return QueryAPI.methodNotAllowed(methods) }
            var response = text(.methodNotAllowed, "method not allowed\n")
            response.headers[.allow] = methods.map(\.rawValue).joined(separator: ", ")
            return response
        }
    }

    /// A plain-text response.
    static func text(_ status: HTTPResponse.Status, _ body: String, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The server on `address` with `limits`, as a Service (it stops accepting and drains in its turn
    /// of a graceful shutdown). `onRunning` receives the port it listens on (the kernel's choice for 0).
    public static func service(address: HTTPListenAddress, limits: HTTPLimits = HTTPLimits(),
                               router: Router<BasicRequestContext>, logger: Logger,
                               onRunning: @escaping @Sendable (Int) -> Void = { _ in }) -> HTTPService {
        HTTPService(application: application(address: address, limits: limits, router: router, logger: logger, onRunning: onRunning))
    }

    static func application(address: HTTPListenAddress, limits: HTTPLimits, router: Router<BasicRequestContext>, logger: Logger,
                            onRunning: @escaping @Sendable (Int) -> Void) -> some ApplicationProtocol {
        Application(
            router: router,
            server: .http1(configuration: .init(
                idleTimeout: .milliseconds(Int64(limits.readTimeout * 1000)),
                httpDecoderConfiguration: .init(maxHeaderFieldSize: limits.maxHeadBytes, maxHeaderListSize: limits.maxHeadBytes,
                                                maxHeaderFieldCount: 100))),
            configuration: .init(address: .hostname(address.host, port: Int(address.port)),
                                 availableConnectionsDelegate: MaximumAvailableConnections(limits.maxConnections, logger: logger)),
            onServerRunning: { channel in onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
    }
}

/// The HTTP server as a Service whose tasks run on threads of their own (`HTTPExecutor`), not on the
/// Swift concurrency pool: whatever blocks the pool (two threads here), the probes are answered.
public struct HTTPService: Service {
    let application: any ApplicationProtocol
    let executor = HTTPExecutor()

    public func run() async throws {
        try await withTaskExecutorPreference(executor) { try await application.run() }
    }
}

/// A task executor on a concurrent dispatch queue: the HTTP server's tasks (and the child tasks
/// Hummingbird starts per connection, which inherit the preference) run on its threads.
public final class HTTPExecutor: TaskExecutor, @unchecked Sendable {  // the queue is thread-safe
    private let queue = DispatchQueue(label: "mesa-http", attributes: .concurrent)

    public init() {}

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }
    }
}
