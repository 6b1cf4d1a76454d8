@testable import EditDaemon
import Testing

@Suite struct HTTPParsingTests {
    @Test func parsesListenAddresses() throws {
        #expect(try HTTPServer.parseListen("127.0.0.1:9464") == HTTPListenAddress(host: "127.0.0.1", port: 9464))
        #expect(try HTTPServer.parseListen("[::1]:9464") == HTTPListenAddress(host: "::1", port: 9464))
        #expect(try HTTPServer.parseListen("[::]:0") == HTTPListenAddress(host: "::", port: 0))
        #expect(try HTTPServer.parseListen("0.0.0.0:65535") == HTTPListenAddress(host: "0.0.0.0", port: 65535))
        #expect(try HTTPServer.parseListen("localhost:80") == HTTPListenAddress(host: "localhost", port: 80))
        #expect(HTTPListenAddress(host: "::1", port: 9464).description == "[::1]:9464")
        for bad in ["", "9464", ":9464", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:94a",
                    "::1:9464", "[::1]", "[::1]9464", "[not-v6]:1", "[::1:9464", "host name:1", "127.0.0.1:+80"] {
            #expect(throws: HTTPServerError.self, "\(bad)") { _ = try HTTPServer.parseListen(bad) }
        }
    }

    @Test func parsesRequestHeads() throws {
        let head = Array("GET /metrics?name[]=a HTTP/1.1\r\nHost: example\r\nAccept:  text/plain \t\r\n\r\n".utf8)
        #expect(HTTPParser.headEnd(head) == head.count)
        let request = try HTTPParser.parse(head[...])
        #expect(request.method == "GET")
        #expect(request.target == "/metrics?name[]=a")
        #expect(request.path == "/metrics")
        #expect(request.query == "name[]=a")
        #expect(request.version == "HTTP/1.1")
        #expect(request.header("accept") == "text/plain")
        #expect(request.header("HOST") == "example")
        #expect(request.header("missing") == nil)

        let absolute = try HTTPParser.parse(Array("GET http://h:1/readyz?x HTTP/1.0\n\n".utf8)[...])
        #expect(absolute.path == "/readyz")
        #expect(absolute.query == "x")
        #expect(try HTTPParser.parse(Array("GET http://h HTTP/1.0\n\n".utf8)[...]).path == "/")
        #expect(HTTPParser.headEnd(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)) == nil)
        #expect(throws: HTTPParseError.versionNotSupported) { try HTTPParser.parse(Array("GET / HTTP/3.0\r\n\r\n".utf8)[...]) }
    }

    @Test func formatsHTTPDates() {
        #expect(httpDate(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(httpDate(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
    }

    @Test func serializesResponses() {
        var response = HTTPResponse.text(200, "hi")
        response.headers.append(("X-Evil", "a\r\nSet-Cookie: b"))
        response.headers.append(("content-length", "999"))
        let text = String(decoding: response.serialized(includeBody: true, date: "D"), as: UTF8.self)
        #expect(text == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Evil: aSet-Cookie: b\r\n"
                + "Content-Length: 2\r\nConnection: close\r\nDate: D\r\n\r\nhi")
    }
}
