import EditDaemon
import Foundation
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
    try exchange("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nUser-Agent: mesa-test\r\n\r\n", port: port, host: host)
}

/// The status of GET `path`, retried for up to 3 s while the server answers 503 (all connection
/// slots busy, e.g. while earlier connections are still being closed).
func statusOnceFree(_ path: String, port: UInt16) throws -> Int {
    let deadline = monotonicNow() + 3
    while true {
        let status = try get(path, port: port).status
        if status != 503 || monotonicNow() > deadline { return status }
        Thread.sleep(forTimeInterval: 0.05)
    }
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

@Suite struct HTTPServerTests {
    func startServer(readTimeout: TimeInterval = 5, maxConnections: Int = 16,
                     readiness: LockedBox<Readiness> = LockedBox(.ready),
                     metrics: DaemonMetrics = DaemonMetrics(version: "test")) throws -> HTTPServer {
        let server = HTTPServer(readTimeout: readTimeout, maxConnections: maxConnections,
                                handler: HealthEndpoints.handler(exposition: metrics.exposition) { readiness.value })
        try server.start()
        return server
    }

    @Test func servesHealthReadinessAndMetrics() throws {
        let readiness = LockedBox(Readiness.notReady("model not loaded"))
        let metrics = DaemonMetrics(version: "test")
        let server = try startServer(readiness: readiness, metrics: metrics)
        defer { server.stop() }
        let port = server.boundPort
        #expect(port != 0)

        let health = try get("/healthz", port: port)
        #expect(health.status == 200)
        #expect(health.body == "ok\n")
        #expect(health.headers["content-length"] == "3")
        #expect(health.headers["connection"] == "close")
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
        #expect(scrape.body.contains("\nmesa_edit_duration_seconds_bucket{le=\"0.25\"} 0\nmesa_edit_duration_seconds_bucket{le=\"0.5\"} 1\n"))
        #expect(scrape.body.contains("# TYPE mesa_edit_duration_seconds histogram\n"))

        #expect(try get("/healthz?verbose=1", port: port).status == 200)
        #expect(try get("http://localhost/healthz", port: port).status == 200)
        let missing = try get("/nope", port: port)
        #expect(missing.status == 404)
        #expect(try get("/healthz/", port: port).status == 404)
    }

    @Test func headHasLengthButNoBodyAndOtherMethodsGet405() throws {
        let server = try startServer()
        defer { server.stop() }
        let head = try get("/healthz", port: server.boundPort, method: "HEAD")
        #expect(head.status == 200)
        #expect(head.headers["content-length"] == "3")
        #expect(head.body == "")
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "BREW"] {
            let response = try get("/healthz", port: server.boundPort, method: method)
            #expect(response.status == 405)
            #expect(response.headers["allow"] == "GET, HEAD")
        }
    }

    @Test func answersJunkWithErrorsAndKeepsServing() throws {
        let server = try startServer()
        defer { server.stop() }
        let port = server.boundPort
        let cases: [(String, Int)] = [
            ("\u{1}\u{2}garbage\r\n\r\n", 400),
            ("GET /healthz\r\n\r\n", 400),
            ("GET  /healthz HTTP/1.1\r\n\r\n", 400),
            ("GET /healthz HTTP/1.1 extra\r\n\r\n", 400),
            ("GET healthz HTTP/1.1\r\n\r\n", 400),
            ("GET /healthz HTTP/2.0\r\n\r\n", 505),
            ("GET /healthz SPDY/3\r\n\r\n", 400),
            ("GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            ("GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            ("GET /healthz HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
            ("GET /healthz HTTP/1.1\r\nX: a\u{1}b\r\n\r\n", 400),
            ("GET /he\u{7F}lthz HTTP/1.1\r\n\r\n", 400),
            ("\r\n\r\n", 400),
        ]
        for (request, status) in cases {
            let response = try exchange(request, port: port)
            #expect(response.status == status, "\(request.debugDescription)")
            #expect(response.headers["connection"] == "close")
        }
        // Binary junk, including NUL and bytes that are not UTF-8.
        var junk: [UInt8] = (0..<2000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }
        junk += [13, 10, 13, 10]
        #expect(try exchange(junk, port: port).status == 400)
        // A client that sends bare LF line ends and a request line after an empty line is served.
        #expect(try exchange("\r\nGET /healthz HTTP/1.0\nHost: x\n\n", port: port).status == 200)
        #expect(try get("/healthz", port: port).status == 200)
    }

    @Test func rejectsOversizedRequestsAndKeepsServing() throws {
        let server = try startServer()
        defer { server.stop() }
        let port = server.boundPort
        let bigHeader = "GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 10_000) + "\r\n\r\n"
        #expect(try exchange(bigHeader, port: port).status == 431)
        let endless = String(repeating: "A", count: 100_000)
        #expect(try exchange(endless, port: port).status == 431)
        // Just under the limit is fine.
        let prefix = "GET /healthz HTTP/1.1\r\nX-Big: "
        let fits = prefix + String(repeating: "b", count: 8192 - prefix.utf8.count - 4) + "\r\n\r\n"
        #expect(fits.utf8.count == 8192)
        #expect(try exchange(fits, port: port).status == 200)
        #expect(try get("/healthz", port: port).status == 200)
    }

    @Test func survivesHalfRequestsAndClientsThatVanish() throws {
        let server = try startServer()
        defer { server.stop() }
        let port = server.boundPort
        for partial in ["", "GET /hea", "GET /healthz HTTP/1.1\r\nHost: x\r\n"] {
            let fd = try connectTCP(port: port)
            sendBytes(fd, Array(partial.utf8))
            close(fd)
        }
        // A client that half-closes after a partial request gets a 400.
        let fd = try connectTCP(port: port)
        sendBytes(fd, Array("GET /healthz HT".utf8))
        shutdown(fd, Int32(SHUT_WR))
        #expect(try readResponse(fd).status == 400)
        close(fd)
        // A client that sends a request and closes without reading.
        for _ in 0..<20 {
            let quitter = try connectTCP(port: port)
            sendBytes(quitter, Array("GET /metrics HTTP/1.1\r\n\r\n".utf8))
            close(quitter)
        }
        #expect(try statusOnceFree("/healthz", port: port) == 200)
    }

    @Test func slowClientsTimeOutWithoutBlockingOthers() throws {
        let server = try startServer(readTimeout: 1)
        defer { server.stop() }
        let port = server.boundPort
        let slow = try connectTCP(port: port)
        defer { close(slow) }
        sendBytes(slow, Array("GET /healthz HTTP/1.1\r\n".utf8))

        let started = monotonicNow()
        #expect(try get("/healthz", port: port).status == 200)
        #expect(monotonicNow() - started < 0.9)

        // A client trickling bytes is cut off by the whole-request deadline, not a per-read one.
        let trickler = try connectTCP(port: port)
        defer { close(trickler) }
        let trickleStart = monotonicNow()
        let status = LockedBox(0)
        let done = DispatchSemaphore(value: 0)
        Thread {
            status.value = (try? readResponse(trickler))?.status ?? -1
            done.signal()
        }.start()
        var answered = false
        for byte in Array("X-Trickle: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 40) {
            sendBytes(trickler, [byte])
            if done.wait(timeout: .now() + 0.1) == .success { answered = true; break }
        }
        if !answered { done.wait() }
        #expect(answered)
        #expect(status.value == 408)
        #expect(monotonicNow() - trickleStart < 2.5)

        #expect(try readResponse(slow).status == 408)
        #expect(try get("/healthz", port: port).status == 200)
    }

    @Test func atCapacityTheLongestHalfOpenConnectionMakesRoom() throws {
        let server = try startServer(readTimeout: 3, maxConnections: 2)
        defer { server.stop() }
        let port = server.boundPort
        let first = try connectTCP(port: port)
        defer { close(first) }
        Thread.sleep(forTimeInterval: 0.1)
        let second = try connectTCP(port: port)
        defer { close(second) }
        Thread.sleep(forTimeInterval: 0.2)
        let started = monotonicNow()
        #expect(try get("/healthz", port: port).status == 200)
        #expect(monotonicNow() - started < 1)
        // The oldest was closed to make room; the other one still has its time.
        var byte: UInt8 = 0
        #expect(recv(first, &byte, 1, 0) <= 0)
        #expect(recv(second, &byte, 1, Int32(MSG_DONTWAIT)) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    }

    @Test func answers503OnlyWhenEveryConnectionIsPastItsHead() throws {
        let gate = DispatchSemaphore(value: 0)
        let server = HTTPServer(readTimeout: 3, maxConnections: 2) { request in
            if request.path == "/block" { gate.wait() }
            return .text(200, request.path)
        }
        try server.start()
        defer { server.stop() }
        let port = server.boundPort
        let statuses = LockedBox([Int]())
        let finished = DispatchGroup()
        for _ in 0..<2 {
            finished.enter()
            Thread {
                let status = (try? get("/block", port: port))?.status ?? -1
                statuses.update { $0.append(status) }
                finished.leave()
            }.start()
        }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(try get("/healthz", port: port).status == 503)
        gate.signal()
        gate.signal()
        finished.wait()
        #expect(statuses.value == [200, 200])
        #expect(try statusOnceFree("/healthz", port: port) == 200)
    }

    /// A slowloris: many connections that send part of a request head and then a byte every 100 ms.
    /// Health checks are answered at once, and every half-open connection is closed by its deadline.
    @Test func healthIsAnsweredWhileHalfSentRequestsTrickle() throws {
        let server = try startServer()
        defer { server.stop() }
        let port = server.boundPort
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
        let deadline = opened + server.readTimeout + 3
        while closed.value.count < slow.count, monotonicNow() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        #expect(closed.value.count == slow.count, "\(slow.count - closed.value.count) half-open connections still open")
    }

    @Test func stopClosesTheSocketPromptlyAndIsIdempotent() throws {
        let server = try startServer(readTimeout: 10)
        let port = server.boundPort
        #expect(try get("/healthz", port: port).status == 200)
        let idle = try connectTCP(port: port)
        defer { close(idle) }
        Thread.sleep(forTimeInterval: 0.1)
        let started = monotonicNow()
        server.stop()
        #expect(monotonicNow() - started < 2)
        #expect(server.boundPort == 0)
        server.stop()
        #expect(throws: ClientError.self) { _ = try connectTCP(port: port) }
        #expect(throws: HTTPServerError.alreadyStarted) { try server.start() }
    }

    @Test func reportsBindFailures() throws {
        let first = try startServer()
        defer { first.stop() }
        let second = HTTPServer(port: first.boundPort) { _ in .text(200, "") }
        #expect(throws: HTTPServerError.self) { try second.start() }
        let notLocal = HTTPServer(host: "203.0.113.1") { _ in .text(200, "") }
        #expect(throws: HTTPServerError.self) { try notLocal.start() }
    }

    @Test(.enabled(if: ipv6LoopbackAvailable())) func servesOnIPv6Loopback() throws {
        let address = try HTTPServer.parseListen("[::1]:0")
        let server = HTTPServer(address: address) { request in .text(200, request.path) }
        try server.start()
        defer { server.stop() }
        let response = try get("/x", port: server.boundPort, host: "::1")
        #expect(response.status == 200)
        #expect(response.body == "/x")
    }

    @Test func concurrentClients() throws {
        let hits = LockedBox(0)
        let server = HTTPServer { request in
            hits.update { $0 += 1 }
            return .text(200, request.path)
        }
        try server.start()
        defer { server.stop() }
        let port = server.boundPort
        let failures = LockedBox(0)
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            for k in 0..<25 {
                let path = "/c\(i)/\(k)"
                let response = try? get(path, port: port)
                if response?.status != 200 || response?.body != path { failures.update { $0 += 1 } }
            }
        }
        #expect(failures.value == 0)
        #expect(hits.value == 200)
    }
}
