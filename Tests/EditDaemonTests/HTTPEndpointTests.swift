import EditDaemon
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A response as a raw TCP client saw it.
struct RawResponse {
    var status: Int
    var headers: [String: String]
    var body: String
}

struct ClientError: Error, CustomStringConvertible {
    var description: String
}

/// Opens a TCP connection to `host` (a numeric address) and `port`, with a 5 s receive timeout.
func connectTCP(host: String = "127.0.0.1", port: UInt16) throws -> Int32 {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV
    var result: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, String(port), &hints, &result) == 0, let ai = result else {
        throw ClientError(description: "getaddrinfo \(host)")
    }
    defer { freeaddrinfo(result) }
    let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ClientError(description: "socket") }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
        let code = errno
        close(fd)
        throw ClientError(description: "connect: \(String(cString: strerror(code)))")
    }
    return fd
}

func sendBytes(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            if n <= 0 { return }
            offset += n
        }
    }
}

/// Reads until the server closes the connection and parses the response.
func readResponse(_ fd: Int32) throws -> RawResponse {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { bytes += chunk[..<n] } else if n < 0 && errno == EINTR { continue } else { break }
    }
    let text = String(decoding: bytes, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw ClientError(description: "no response head in \(text.debugDescription)") }
    let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
    let statusParts = lines[0].split(separator: " ")
    guard statusParts.count >= 2, statusParts[0] == "HTTP/1.1", let status = Int(statusParts[1]) else {
        throw ClientError(description: "bad status line \(lines[0])")
    }
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
        let pair = line.split(separator: ":", maxSplits: 1)
        headers[pair[0].lowercased()] = pair[1].trimmingCharacters(in: .whitespaces)
    }
    return RawResponse(status: status, headers: headers, body: String(text[split.upperBound...]))
}

/// Sends `request` as is on a new connection and returns the response.
func exchange(_ request: String, port: UInt16, host: String = "127.0.0.1") throws -> RawResponse {
    try exchange(Array(request.utf8), port: port, host: host)
}

func exchange(_ request: [UInt8], port: UInt16, host: String = "127.0.0.1") throws -> RawResponse {
    let fd = try connectTCP(host: host, port: port)
    defer { close(fd) }
    sendBytes(fd, request)
    return try readResponse(fd)
}

func get(_ path: String, port: UInt16, method: String = "GET", host: String = "127.0.0.1") throws -> RawResponse {
    try exchange("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nUser-Agent: mesa-test\r\nConnection: close\r\n\r\n", port: port, host: host)
}

func ipv6LoopbackAvailable() -> Bool {
    let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_addr = in6addr_loopback
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
    } == 0
}

func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A running server: its port, and a stop that shuts its service group down gracefully.
final class RunningEndpoint: @unchecked Sendable {
    let port: UInt16
    private let group: ServiceGroup
    private let finished: DispatchSemaphore
    let failure: LockedBox<Error?>

    init(port: UInt16, group: ServiceGroup, finished: DispatchSemaphore, failure: LockedBox<Error?>) {
        self.port = port
        self.group = group
        self.finished = finished
        self.failure = failure
    }

    /// Triggers a graceful shutdown and waits until the server has stopped.
    func stop() {
        let g = group
        Task(executorPreference: HTTPExecutor()) { await g.triggerGracefulShutdown() }
        finished.wait()
        finished.signal()
    }
}

/// Starts the daemon's HTTP server on `address` in a service group of its own and waits until it listens.
func startEndpoint(address: HTTPListenAddress = HTTPListenAddress(host: "127.0.0.1", port: 0), limits: HTTPLimits = HTTPLimits(),
                   readiness: LockedBox<Readiness> = LockedBox(.ready), metrics: DaemonMetrics = DaemonMetrics(version: "test")) throws -> RunningEndpoint {
    let port = LockedBox(0)
    let failure = LockedBox<Error?>(nil)
    let app = HealthEndpoints.service(address: address, limits: limits,
                                          router: HealthEndpoints.router(exposition: metrics.exposition) { readiness.value },
                                          logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }) { port.value = $0 }
    let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }))
    let finished = DispatchSemaphore(value: 0)
    // Off the concurrency pool, which the suite's blocking tests may hold.
    Task(executorPreference: HTTPExecutor()) {
        do { try await group.run() } catch { failure.value = error }
        finished.signal()
    }
    let deadline = monotonicNow() + 10
    while port.value == 0 && failure.value == nil && monotonicNow() < deadline { Thread.sleep(forTimeInterval: 0.01) }
    if let error = failure.value { throw error }
    guard port.value != 0 else { throw ClientError(description: "the server did not start") }
    return RunningEndpoint(port: UInt16(port.value), group: group, finished: finished, failure: failure)
}

/// Blocking socket calls run on the test's threads; serialized, so that they never hold every
/// thread of the concurrency pool the server's handlers run on.
@Suite(.serialized) struct HTTPEndpointTests {
    @Test func servesHealthReadinessAndMetrics() throws {
        let readiness = LockedBox(Readiness.notReady("model not loaded"))
        let metrics = DaemonMetrics(version: "test")
        let server = try startEndpoint(readiness: readiness, metrics: metrics)
        defer { server.stop() }
        let port = server.port

        let health = try get("/healthz", port: port)
        #expect(health.status == 200)
        #expect(health.body == "ok\n")
        #expect(health.headers["content-length"] == "3")
        #expect(health.headers["content-type"] == "text/plain; charset=utf-8")
        #expect(health.headers["date"]?.hasSuffix(" GMT") == true)

        let notReady = try get("/readyz", port: port)
        #expect(notReady.status == 503)
        #expect(notReady.body == "not ready: model not loaded\n")
        readiness.value = .ready
        let ready = try get("/readyz", port: port)
        #expect(ready.status == 200)
        #expect(ready.body == "ready\n")

        metrics.eventConsumed(topic: "edits")
        metrics.deadLettered(.schema)
        metrics.editDuration.record(0.3)
        let scrape = try get("/metrics", port: port)
        #expect(scrape.status == 200)
        #expect(scrape.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(scrape.body == metrics.exposition())
        #expect(scrape.headers["content-length"] == String(scrape.body.utf8.count))
        #expect(scrape.body.contains("\nmesa_events_consumed_total{topic=\"edits\"} 1\n"))
        #expect(scrape.body.contains("\nmesa_dead_letters_total{reason=\"schema\"} 1\n"))
        #expect(scrape.body.contains("mesa_edit_duration_seconds_bucket{le=\"0.25\"} 0\nmesa_edit_duration_seconds_bucket{le=\"0.5\"} 1\n"))
        #expect(scrape.body.contains("# TYPE mesa_edit_duration_seconds histogram\n"))

        #expect(try get("/healthz?verbose=1", port: port).status == 200)
        #expect(try get("/nope", port: port).status == 404)
    }

    @Test func headHasNoBodyAndOtherMethodsAreRefused() throws {
        let server = try startEndpoint()
        defer { server.stop() }
        let head = try get("/healthz", port: server.port, method: "HEAD")
        #expect(head.status == 200)
        #expect(head.headers["content-length"] == "3")
        #expect(head.body == "")
        let metricsHead = try get("/metrics", port: server.port, method: "HEAD")
        #expect(metricsHead.status == 200 && metricsHead.body == "" && metricsHead.headers["content-type"] == HealthEndpoints.metricsContentType)
        // A method the HTTP parser does not know is a malformed request.
        #expect(try get("/healthz", port: server.port, method: "BREW").status == 400)
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            let response = try get("/healthz", port: server.port, method: method)
            #expect(response.status == 405, "\(method)")
            #expect(response.headers["allow"] == "GET, HEAD")
        }
        #expect(try get("/nope", port: server.port, method: "POST").status == 404)
    }

    @Test func answersJunkWithAnErrorAndKeepsServing() throws {
        let server = try startEndpoint()
        defer { server.stop() }
        let port = server.port
        for request in ["\u{1}\u{2}garbage\r\n\r\n", "GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", "GET /he\u{7F}lthz HTTP/1.1\r\n\r\n"] {
            #expect(try junkStatus(request, port: port) == 400, "\(request.debugDescription)")
        }
        var junk: [UInt8] = (0..<2000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }
        junk += [13, 10, 13, 10]
        #expect(try junkStatus(junk, port: port) == 400)
        #expect(try get("/healthz", port: port).status == 200)
    }

    @Test func refusesOversizedHeadsAndKeepsServing() throws {
        let server = try startEndpoint()
        defer { server.stop() }
        let port = server.port
        let bigHeader = "GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 10_000) + "\r\nConnection: close\r\n\r\n"
        // Hummingbird answers a head over the limit with 400 (the hand-written server said 431).
        #expect(try junkStatus(bigHeader, port: port) == 400)
        let manyFields = "GET /healthz HTTP/1.1\r\n" + (0..<2000).map { "X-\($0): \($0)\r\n" }.joined() + "\r\n"
        #expect(try junkStatus(manyFields, port: port) == 400)
        // Under the limit is fine.
        let fits = "GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 7000) + "\r\nConnection: close\r\n\r\n"
        #expect(try exchange(fits, port: port).status == 200)
        #expect(try get("/healthz", port: port).status == 200)
    }

    @Test func survivesHalfRequestsAndClientsThatVanish() throws {
        let server = try startEndpoint()
        defer { server.stop() }
        let port = server.port
        for partial in ["", "GET /hea", "GET /healthz HTTP/1.1\r\nHost: x\r\n"] {
            let fd = try connectTCP(port: port)
            sendBytes(fd, Array(partial.utf8))
            close(fd)
        }
        for _ in 0..<20 {
            let quitter = try connectTCP(port: port)
            sendBytes(quitter, Array("GET /metrics HTTP/1.1\r\n\r\n".utf8))
            close(quitter)
        }
        #expect(try get("/healthz", port: port).status == 200)
    }

    /// A client trickling a request head is cut off by the deadline counted from its connection's
    /// acceptance (a byte does not extend it), and other clients are served meanwhile.
    @Test func slowClientsAreClosedAtTheirDeadlineWithoutBlockingOthers() throws {
        let server = try startEndpoint(limits: HTTPLimits(readTimeout: 1))
        defer { server.stop() }
        let port = server.port
        let slow = try connectTCP(port: port)
        defer { close(slow) }
        sendBytes(slow, Array("GET /healthz HTTP/1.1\r\n".utf8))

        let started = monotonicNow()
        #expect(try get("/healthz", port: port).status == 200)
        #expect(monotonicNow() - started < 0.9)

        let trickler = try connectTCP(port: port)
        defer { close(trickler) }
        let trickleStart = monotonicNow()
        let closedAt = LockedBox(0.0)
        let done = DispatchSemaphore(value: 0)
        Thread {
            var scratch = [UInt8](repeating: 0, count: 64)
            while recv(trickler, &scratch, scratch.count, 0) > 0 {}
            closedAt.value = monotonicNow()
            done.signal()
        }.start()
        var cut = false
        for byte in Array("X-Trickle: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 40) {
            sendBytes(trickler, [byte])
            if done.wait(timeout: .now() + 0.1) == .success { cut = true; break }
        }
        if !cut { done.wait() }
        #expect(cut, "the trickling client was not cut off while it sent")
        #expect(closedAt.value - trickleStart < 2.5)
        var byte: UInt8 = 0
        #expect(recv(slow, &byte, 1, 0) <= 0, "the slow client's connection is closed")
        #expect(try get("/healthz", port: port).status == 200)
    }

    /// At capacity the server accepts no more connections; a new one waits in the listen backlog until
    /// a half-open connection reaches its deadline and is closed, then it is served.
    @Test func atCapacityANewConnectionIsServedWhenAHalfOpenOneTimesOut() throws {
        let server = try startEndpoint(limits: HTTPLimits(readTimeout: 2, maxConnections: 2))
        defer { server.stop() }
        let port = server.port
        let first = try connectTCP(port: port)
        defer { close(first) }
        let second = try connectTCP(port: port)
        defer { close(second) }
        let opened = monotonicNow()
        Thread.sleep(forTimeInterval: 0.3)
        let answered = LockedBox(0.0)
        let done = DispatchSemaphore(value: 0)
        Thread {
            if (try? get("/healthz", port: port))?.status == 200 { answered.value = monotonicNow() }
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 1) == .timedOut, "answered at capacity before any slot was free")
        done.wait()
        #expect(answered.value > 0, "not answered once a slot was free")
        #expect(answered.value - opened >= 1.9 && answered.value - opened < 4, "\(answered.value - opened) s")
        var byte: UInt8 = 0
        #expect(recv(first, &byte, 1, 0) <= 0 && recv(second, &byte, 1, 0) <= 0, "the half-open connections are closed")
    }

    /// A slowloris: many connections that send part of a request head and then a byte every 100 ms.
    /// Health checks are answered at once, and every half-open connection is closed by its deadline.
    @Test func healthIsAnsweredWhileHalfSentRequestsTrickle() throws {
        let limits = HTTPLimits()
        let server = try startEndpoint(limits: limits)
        defer { server.stop() }
        let port = server.port
        let opened = monotonicNow()
        let slow = try (0..<64).map { _ in
            let fd = try connectTCP(port: port)
            sendBytes(fd, Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".utf8))
            return fd
        }
        defer { slow.forEach { close($0) } }
        let closed = LockedBox(Set<Int32>())
        let stop = LockedBox(false)
        let stopped = DispatchSemaphore(value: 0)
        Thread {
            while !stop.value {
                for fd in slow where !closed.value.contains(fd) {
                    var scratch = [UInt8](repeating: 0, count: 512)
                    let n = recv(fd, &scratch, scratch.count, Int32(MSG_DONTWAIT))
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                        closed.update { $0.insert(fd) }
                    } else if n < 0 {
                        var byte = UInt8(ascii: "a")
                        _ = send(fd, &byte, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                    }
                }
                Thread.sleep(forTimeInterval: 0.1)
            }
            stopped.signal()
        }.start()
        defer {
            stop.value = true
            stopped.wait()
        }

        Thread.sleep(forTimeInterval: 0.5)
        for _ in 0..<3 {
            let started = monotonicNow()
            #expect(try get("/healthz", port: port).status == 200)
            #expect(monotonicNow() - started < 1)
            Thread.sleep(forTimeInterval: 0.3)
        }
        let deadline = opened + limits.readTimeout + 3
        while closed.value.count < slow.count, monotonicNow() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        #expect(closed.value.count == slow.count, "\(slow.count - closed.value.count) half-open connections still open")
    }

    /// A connection may carry several requests; idle after a response, it is closed at the deadline.
    @Test func keptAliveConnectionsServeAgainAndCloseWhenIdle() throws {
        let server = try startEndpoint(limits: HTTPLimits(readTimeout: 1))
        defer { server.stop() }
        let fd = try connectTCP(port: server.port)
        defer { close(fd) }
        for _ in 0..<2 {
            sendBytes(fd, Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            var got: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 512)
            while !String(decoding: got, as: UTF8.self).hasSuffix("\r\n\r\nok\n") {
                let n = recv(fd, &chunk, chunk.count, 0)
                guard n > 0 else { break }
                got += chunk[..<n]
            }
            #expect(String(decoding: got, as: UTF8.self).hasPrefix("HTTP/1.1 200"), "\(String(decoding: got, as: UTF8.self))")
        }
        let idleSince = monotonicNow()
        var byte: UInt8 = 0
        #expect(recv(fd, &byte, 1, 0) <= 0)
        #expect(monotonicNow() - idleSince > 0.8 && monotonicNow() - idleSince < 3)
    }

    @Test func gracefulShutdownClosesTheSocketPromptly() throws {
        let server = try startEndpoint(limits: HTTPLimits(readTimeout: 10))
        let port = server.port
        #expect(try get("/healthz", port: port).status == 200)
        let idle = try connectTCP(port: port)
        defer { close(idle) }
        Thread.sleep(forTimeInterval: 0.1)
        let started = monotonicNow()
        server.stop()
        #expect(monotonicNow() - started < 2)
        #expect(server.failure.value == nil)
        #expect(throws: ClientError.self) { _ = try connectTCP(port: port) }
    }

    @Test func reportsBindFailures() throws {
        let first = try startEndpoint()
        defer { first.stop() }
        #expect(throws: (any Error).self) { _ = try startEndpoint(address: HTTPListenAddress(host: "127.0.0.1", port: first.port)) }
        #expect(throws: (any Error).self) { _ = try startEndpoint(address: HTTPListenAddress(host: "203.0.113.1", port: 0)) }
    }

    @Test(.enabled(if: ipv6LoopbackAvailable())) func servesOnIPv6Loopback() throws {
        let server = try startEndpoint(address: try HTTPListenAddress(parsing: "[::1]:0"))
        defer { server.stop() }
        let response = try get("/healthz", port: server.port, host: "::1")
        #expect(response.status == 200)
        #expect(response.body == "ok\n")
    }

    /// The status a malformed request gets, or 0 when the server closed the connection without one.
    func junkStatus(_ request: String, port: UInt16) throws -> Int { try junkStatus(Array(request.utf8), port: port) }

    func junkStatus(_ request: [UInt8], port: UInt16) throws -> Int {
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        sendBytes(fd, request)
        return (try? readResponse(fd))?.status ?? 0
    }
}
