import Foundation

/// One parsed HTTP/1.x request head (the server reads no body: it serves only GET and HEAD).
public struct HTTPRequest: Sendable {
    /// The method token as sent, e.g. `GET`.
    public var method: String
    /// The request target as sent, e.g. `/metrics?name=x`.
    public var target: String
    /// The path part of the target, e.g. `/metrics` (not percent-decoded).
    public var path: String
    /// The query part of the target without the `?`, if there is one.
    public var query: String?
    /// `HTTP/1.0` or `HTTP/1.1`.
    public var version: String
    /// The header fields in the order received, values trimmed of surrounding whitespace.
    public var headers: [(name: String, value: String)]

    public init(method: String, target: String, path: String, query: String? = nil, version: String = "HTTP/1.1",
                headers: [(name: String, value: String)] = []) {
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
    }

    /// The first value of the header `name`, compared case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
    }
}

/// A response the handler returns; the server adds `Content-Length`, `Connection: close` and `Date`.
public struct HTTPResponse: Sendable {
    /// The status code, e.g. 200.
    public var status: Int
    /// Extra header fields, e.g. `Content-Type`. CR and LF are removed from names and values.
    public var headers: [(name: String, value: String)]
    /// The body (not sent in answer to HEAD, though its length is).
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A `text/plain` response (or `contentType`) with a UTF-8 body.
    public static func text(_ status: Int, _ body: String,
                            contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", contentType)], body: Array(body.utf8))
    }

    /// The reason phrase for the status codes this server uses.
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }

    /// The bytes on the wire: status line, headers, blank line, and the body unless `includeBody` is false.
    func serialized(includeBody: Bool, date: String) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(HTTPResponse.reasonPhrase(status))\r\n"
        let reserved: Set<String> = ["content-length", "connection", "date", "transfer-encoding"]
        for (name, value) in headers where !reserved.contains(name.lowercased()) {
            head += "\(stripCRLF(name)): \(stripCRLF(value))\r\n"
        }
        head += "Content-Length: \(body.count)\r\nConnection: close\r\nDate: \(date)\r\n\r\n"
        var bytes = Array(head.utf8)
        if includeBody { bytes += body }
        return bytes
    }
}

private func stripCRLF(_ s: String) -> String {
    String(s.unicodeScalars.filter { $0 != "\r" && $0 != "\n" })
}

/// Why a request head could not be parsed, with the status to answer.
enum HTTPParseError: Error, Equatable {
    case badRequest(String)
    case versionNotSupported

    var status: Int {
        switch self {
        case .badRequest: return 400
        case .versionNotSupported: return 505
        }
    }
}

enum HTTPParser {
    /// The index just past the blank line that ends the head (`\r\n\r\n` or `\n\n`), if present.
    static func headEnd(_ bytes: [UInt8]) -> Int? {
        var i = 0
        while i < bytes.count {
            if bytes[i] == 10 {
                if i + 1 < bytes.count, bytes[i + 1] == 10 { return i + 2 }
                if i + 2 < bytes.count, bytes[i + 1] == 13, bytes[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    /// Parses a request head (request line and header fields, up to and including the blank line).
    static func parse(_ head: ArraySlice<UInt8>) throws(HTTPParseError) -> HTTPRequest {
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        for i in head.indices where head[i] == 10 {
            var line = head[start..<i]
            if line.last == 13 { line = line.dropLast() }
            lines.append(line)
            start = i + 1
        }
        // A client may send empty lines before the request line.
        while let first = lines.first, first.isEmpty { lines.removeFirst() }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        guard let requestLine = lines.first else { throw .badRequest("empty request") }

        let parts = requestLine.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .badRequest("malformed request line") }
        guard !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte) else { throw .badRequest("malformed method") }
        guard !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw .badRequest("malformed request target")
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            let digits = version.utf8.dropFirst(5)
            if version.hasPrefix("HTTP/"), digits.count == 3, digits.dropFirst().first == 46,
               let major = digits.first, major >= 48 && major <= 57,
               let minor = digits.last, minor >= 48 && minor <= 57 {
                throw .versionNotSupported
            }
            throw .badRequest("malformed HTTP version")
        }

        let path: String
        let query: String?
        if target.hasPrefix("/") {
            (path, query) = splitQuery(Substring(target))
        } else if let scheme = target.range(of: "://"), target.lowercased().hasPrefix("http") {
            let afterAuthority = target[scheme.upperBound...].drop { $0 != "/" && $0 != "?" }
            let (p, q) = splitQuery(afterAuthority)
            (path, query) = (p.isEmpty ? "/" : p, q)
        } else if target == "*" {
            (path, query) = ("*", nil)
        } else {
            throw .badRequest("malformed request target")
        }

        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            guard let first = line.first, first != 32, first != 9 else { throw .badRequest("folded header line") }
            guard let colon = line.firstIndex(of: 58) else { throw .badRequest("header line without a colon") }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { throw .badRequest("malformed header name") }
            var value = line[(colon + 1)...]
            while let f = value.first, f == 32 || f == 9 { value = value.dropFirst() }
            while let l = value.last, l == 32 || l == 9 { value = value.dropLast() }
            guard value.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else {
                throw .badRequest("control character in header value")
            }
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        return HTTPRequest(method: method, target: target, path: path, query: query, version: version, headers: headers)
    }

    private static func splitQuery(_ s: Substring) -> (String, String?) {
        guard let q = s.firstIndex(of: "?") else { return (String(s), nil) }
        return (String(s[..<q]), String(s[s.index(after: q)...]))
    }

    /// RFC 9110 `tchar`.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case 48...57, 65...90, 97...122: return true
        case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: return true
        default: return false
        }
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), independent of the C locale.
func httpDate(_ t: time_t = time(nil)) -> String {
    var clock = t
    var parts = tm()
    gmtime_r(&clock, &parts)
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
        + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
}
