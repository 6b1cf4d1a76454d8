#if canImport(Glibc)
import Glibc
#endif
import Foundation

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

    /// Parses `host:port` or `[ipv6]:port` (`http.listen`).
    public init(parsing string: String) throws {
        func fail(_ reason: String) -> HTTPListenError { HTTPListenError(listen: string, reason: reason) }
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
            guard host.utf8.allSatisfy(Self.isHostByte) else { throw fail("invalid host") }
        }
        guard !host.isEmpty else { throw fail("missing host (use 0.0.0.0 or [::] for all interfaces)") }
        guard !portText.isEmpty, portText.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let port = UInt16(portText) else { throw fail("invalid port") }
        self.init(host: String(host), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// A byte of an HTTP token (RFC 9110 tchar): letters, digits and ``!#$%&'*+-.^_`|~``.
    static func isHostByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return Array("!#$%&'*+-.^_`|~".utf8).contains(b)
        }
    }
}

/// A listen string that is not `host:port` or `[ipv6]:port`.
public struct HTTPListenError: Error, Equatable, CustomStringConvertible {
    public var listen: String
    public var reason: String
    public var description: String { "invalid listen address \"\(listen)\": \(reason)" }
}
