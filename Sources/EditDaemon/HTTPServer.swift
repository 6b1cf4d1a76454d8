import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A host and port to listen on, as parsed from `host:port` or `[ipv6]:port`.
public struct HTTPListenAddress: Equatable, Sendable, CustomStringConvertible {
    /// An IPv4 address, an IPv6 address (without brackets) or a host name.
    public var host: String
    /// The TCP port; 0 asks the kernel for an ephemeral one.
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A failure to parse a listen address or to start listening.
public enum HTTPServerError: Error, Equatable, CustomStringConvertible {
    /// The listen string is not `host:port` or `[ipv6]:port`.
    case invalidListenAddress(String, reason: String)
    /// The host did not resolve to an address.
    case resolve(host: String, message: String)
    /// A socket call failed with this errno.
    case socket(operation: String, errno: Int32)
    /// `start()` was called on a server that was already started.
    case alreadyStarted

    public var description: String {
        switch self {
        case let .invalidListenAddress(s, reason): return "invalid listen address \"\(s)\": \(reason)"
        case let .resolve(host, message): return "cannot resolve \(host): \(message)"
        case let .socket(operation, code): return "\(operation): \(String(cString: strerror(code)))"
        case .alreadyStarted: return "the HTTP server was already started"
        }
    }
}

/// A small HTTP/1.1 server for health and metrics endpoints, on POSIX sockets.
///
/// One dedicated thread accepts connections; each connection is served on its own short-lived
/// thread (at most `maxConnections` at once), so a slow client delays no one else. A request head may
/// be at most `maxRequestBytes` (else 431) and must arrive whole within `readTimeout` seconds of the
/// connection's acceptance (else 408): a deadline for the head, which a client trickling bytes cannot
/// extend. At capacity, a new connection makes room by closing the one that has been reading its head
/// the longest, so that half-sent requests (a slowloris) cannot lock out a health probe; only when every
/// connection is past its head (its response being computed or sent) is the newcomer answered 503.
/// Only GET and HEAD reach the handler; other methods get 405 and malformed requests 400. Every
/// response carries `Content-Length` and `Connection: close`.
///
/// The handler runs on the connection threads, several at once. Call `stop()` (not from the
/// handler) before dropping the server: its threads keep it alive while it runs.
public final class HTTPServer: @unchecked Sendable {
    /// Maps a GET or HEAD request to its response (for HEAD the server drops the body).
    public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse

    /// The address asked for.
    public let host: String
    /// The port asked for (0 for an ephemeral one; see `boundPort`).
    public let port: UInt16
    /// The largest request head accepted, in bytes.
    public let maxRequestBytes: Int
    /// Seconds a client has, from its connection's acceptance, to send its whole request head; also the send timeout.
    public let readTimeout: TimeInterval
    /// The most connections served at once (connections closed to make room are not counted while they close).
    public let maxConnections: Int

    private let handler: Handler
    private let state = NSCondition()
    private enum Phase { case idle, running, stopped }
    private var phase = Phase.idle
    private var listenFD: Int32 = -1
    private var wakeFDs: [Int32] = [-1, -1]
    private var port_: UInt16 = 0
    /// The connections being served, by descriptor. Under `state`.
    private var connections: [Int32: Connection] = [:]
    private let acceptLoopDone = DispatchSemaphore(value: 0)

    public init(host: String = "127.0.0.1", port: UInt16 = 0, maxRequestBytes: Int = 8192,
                readTimeout: TimeInterval = 5, maxConnections: Int = 16, handler: @escaping Handler) {
        self.host = host
        self.port = port
        self.maxRequestBytes = maxRequestBytes
        self.readTimeout = readTimeout
        self.maxConnections = maxConnections
        self.handler = handler
    }

    /// A server listening on `address`.
    public convenience init(address: HTTPListenAddress, maxRequestBytes: Int = 8192, readTimeout: TimeInterval = 5,
                            maxConnections: Int = 16, handler: @escaping Handler) {
        self.init(host: address.host, port: address.port, maxRequestBytes: maxRequestBytes,
                  readTimeout: readTimeout, maxConnections: maxConnections, handler: handler)
    }

    /// The port the server listens on once started (the kernel's choice when `port` was 0), else 0.
    public var boundPort: UInt16 {
        state.lock(); defer { state.unlock() }
        return port_
    }

    /// Parses `host:port` (IPv4 or a host name) or `[ipv6]:port`, e.g. `127.0.0.1:9464`, `[::1]:9464`.
    /// The host may not be empty: listen on all interfaces with `0.0.0.0` or `[::]`.
    public static func parseListen(_ string: String) throws -> HTTPListenAddress {
        func fail(_ reason: String) -> HTTPServerError { .invalidListenAddress(string, reason: reason) }
        let host: Substring
        let portText: Substring
        if string.hasPrefix("[") {
            guard let close = string.firstIndex(of: "]") else { throw fail("missing ]") }
            host = string[string.index(after: string.startIndex)..<close]
            let rest = string[string.index(after: close)...]
            guard rest.hasPrefix(":") else { throw fail("expected :port after ]") }
            portText = rest.dropFirst()
            var address = in6_addr()
            let literal = host.split(separator: "%", maxSplits: 1).first.map(String.init) ?? ""
            guard inet_pton(AF_INET6, literal, &address) == 1 else { throw fail("not an IPv6 address") }
        } else {
            guard let colon = string.lastIndex(of: ":") else { throw fail("expected host:port") }
            host = string[..<colon]
            portText = string[string.index(after: colon)...]
            guard !host.contains(":") else { throw fail("write an IPv6 address in brackets, e.g. [::1]:9464") }
            guard host.utf8.allSatisfy({ HTTPParser.isTokenByte($0) && $0 != 58 }) else { throw fail("invalid host") }
        }
        guard !host.isEmpty else { throw fail("missing host (use 0.0.0.0 or [::] for all interfaces)") }
        guard !portText.isEmpty, portText.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let port = UInt16(portText) else { throw fail("invalid port") }
        return HTTPListenAddress(host: String(host), port: port)
    }

    /// Binds, listens and starts the accept thread. Throws if the address cannot be bound.
    public func start() throws {
        state.lock(); defer { state.unlock() }
        guard phase == .idle else { throw HTTPServerError.alreadyStarted }
        let fd = try Self.bindListener(host: host, port: port)
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            let code = errno
            close(fd)
            throw HTTPServerError.socket(operation: "pipe", errno: code)
        }
        for pipeFD in fds {
            setCloseOnExec(pipeFD)
            _ = fcntl(pipeFD, F_SETFL, fcntl(pipeFD, F_GETFL) | O_NONBLOCK)
        }
        listenFD = fd
        wakeFDs = fds
        port_ = Self.localPort(fd)
        phase = .running
        let wake = fds[0]
        let thread = Thread { [self] in
            acceptLoop(listener: fd, wake: wake)
            acceptLoopDone.signal()
        }
        thread.name = "mesa-http-accept"
        thread.start()
    }

    /// Stops accepting, closes the listening socket, joins the accept thread, and waits for the
    /// connections being served (which it shuts down) to finish. Safe to call more than once.
    public func stop() {
        state.lock()
        guard phase == .running else { state.unlock(); return }
        phase = .stopped
        var byte: UInt8 = 1
        _ = write(wakeFDs[1], &byte, 1)
        state.unlock()

        acceptLoopDone.wait()

        state.lock()
        close(listenFD)
        close(wakeFDs[0])
        close(wakeFDs[1])
        listenFD = -1
        wakeFDs = [-1, -1]
        port_ = 0
        for fd in connections.keys { shutdown(fd, Int32(SHUT_RDWR)) }
        while !connections.isEmpty { state.wait() }
        state.unlock()
    }

    // MARK: - Sockets

    private static func bindListener(host: String, port: UInt16) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw HTTPServerError.resolve(host: host, message: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(result) }
        var lastError = HTTPServerError.resolve(host: host, message: "no address")
        var info: UnsafeMutablePointer<addrinfo>? = first
        while let ai = info {
            info = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { lastError = .socket(operation: "socket", errno: errno); continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 {
                lastError = .socket(operation: "bind \(host):\(port)", errno: errno)
                close(fd)
                continue
            }
            if listen(fd, 64) != 0 {
                lastError = .socket(operation: "listen \(host):\(port)", errno: errno)
                close(fd)
                continue
            }
            return fd
        }
        throw lastError
    }

    private static func localPort(_ fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return 0 }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) } }
        default:
            return 0
        }
    }

    private func acceptLoop(listener: Int32, wake: Int32) {
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, -1)
            if rc < 0 {
                if errno != EINTR { usleep(10_000) }
                continue
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                // Out of descriptors: back off rather than spin on a connection we cannot take.
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM { usleep(10_000) }
                continue
            }
            setCloseOnExec(fd)
            // Linux does not pass O_NONBLOCK on to accepted sockets; make sure of it elsewhere too.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            let acceptedAt = monotonicSeconds()
            state.lock()
            let admitted = admit(fd, at: acceptedAt)
            state.unlock()
            guard admitted else {
                // Read what has arrived, so that closing does not reset the connection under the 503.
                var scratch = [UInt8](repeating: 0, count: 4096)
                _ = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                let busy = HTTPResponse.text(503, "too many connections\n").serialized(includeBody: true, date: httpDate())
                _ = busy.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            let thread = Thread { [self] in
                serve(fd, deadline: acceptedAt + readTimeout)
                state.lock()
                connections[fd] = nil
                close(fd)
                state.broadcast()
                state.unlock()
            }
            thread.name = "mesa-http-conn"
            thread.start()
        }
    }

    // MARK: - Capacity

    /// A connection being served.
    private struct Connection {
        /// When it was accepted, while it is still reading its request head; nil once it is past it.
        var readingSince: TimeInterval?
        /// Closed to make room for a newer connection; its thread is finishing.
        var evicted = false
    }

    /// Takes `fd` in if there is room, making room by closing the connection that has been reading its
    /// head the longest when the server is at capacity. Under `state`.
    private func admit(_ fd: Int32, at now: TimeInterval) -> Bool {
        if connections.values.filter({ !$0.evicted }).count >= maxConnections {
            let oldest = connections.filter { !$0.value.evicted && $0.value.readingSince != nil }
                .min { $0.value.readingSince! < $1.value.readingSince! }
            guard let oldest else { return false }
            connections[oldest.key]!.evicted = true
            // Wakes its thread's recv (end of stream); the thread closes the descriptor, so it is not reused meanwhile.
            shutdown(oldest.key, Int32(SHUT_RDWR))
        }
        connections[fd] = Connection(readingSince: now)
        return true
    }

    /// Marks `fd` as past its request head, so it is no longer closed to make room; false if it was
    /// closed to make room already.
    private func finishReading(_ fd: Int32) -> Bool {
        state.lock()
        defer { state.unlock() }
        guard connections[fd]?.evicted == false else { return false }
        connections[fd]!.readingSince = nil
        return true
    }

    // MARK: - One connection

    /// Reads the request head until `deadline` (monotonic seconds), then answers.
    private func serve(_ fd: Int32, deadline: TimeInterval) {
        setTimeout(fd, SO_SNDTIMEO, readTimeout)
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var response: HTTPResponse
        var isHead = false
        while true {
            if let end = HTTPParser.headEnd(buffer) {
                // Past the head: the handler's time does not count as reading, nor make it evictable.
                guard finishReading(fd) else { return }
                if end > maxRequestBytes {
                    response = .text(431, "request head larger than \(maxRequestBytes) bytes\n")
                } else {
                    (response, isHead) = respond(to: buffer[..<end])
                }
                break
            }
            if buffer.count >= maxRequestBytes {
                response = .text(431, "request head larger than \(maxRequestBytes) bytes\n")
                break
            }
            let remaining = deadline - monotonicSeconds()
            if remaining <= 0 {
                response = .text(408, "request timeout\n")
                break
            }
            setTimeout(fd, SO_RCVTIMEO, remaining)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer += chunk[..<n]
            } else if n == 0 {
                if buffer.isEmpty { return }
                response = .text(400, "incomplete request\n")
                break
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                response = .text(408, "request timeout\n")
                break
            } else {
                return
            }
        }
        guard finishReading(fd) else { return }  // closed to make room: nothing to answer on
        sendAll(fd, response.serialized(includeBody: !isHead, date: httpDate()))
        lingeringClose(fd)
    }

    private func respond(to head: ArraySlice<UInt8>) -> (HTTPResponse, isHead: Bool) {
        let request: HTTPRequest
        do {
            request = try HTTPParser.parse(head)
        } catch {
            switch error {
            case .badRequest(let why): return (.text(400, "bad request: \(why)\n"), false)
            case .versionNotSupported: return (.text(505, "HTTP version not supported\n"), false)
            }
        }
        guard request.method == "GET" || request.method == "HEAD" else {
            var response = HTTPResponse.text(405, "method not allowed\n")
            response.headers.append(("Allow", "GET, HEAD"))
            return (response, false)
        }
        return (handler(request), request.method == "HEAD")
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// Half-closes and reads what the client still sends (for at most a second), so that unread
    /// request bytes do not make the kernel reset the connection before the client has read the response.
    private func lingeringClose(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_WR))
        let deadline = monotonicSeconds() + min(readTimeout, 1)
        var scratch = [UInt8](repeating: 0, count: 4096)
        while true {
            let remaining = deadline - monotonicSeconds()
            if remaining <= 0 { return }
            setTimeout(fd, SO_RCVTIMEO, remaining)
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
        }
    }

    private func setTimeout(_ fd: Int32, _ option: Int32, _ seconds: TimeInterval) {
        let micros = max(1000, Int((seconds * 1_000_000).rounded(.up)))
        var tv = timeval(tv_sec: micros / 1_000_000, tv_usec: micros % 1_000_000)
        setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}

private func setCloseOnExec(_ fd: Int32) {
    _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
}

private func monotonicSeconds() -> TimeInterval {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return TimeInterval(ts.tv_sec) + TimeInterval(ts.tv_nsec) / 1e9
}
