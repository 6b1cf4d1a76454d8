import EditDaemon
import Testing

@Suite struct HTTPListenAddressTests {
    @Test func parsesListenAddresses() throws {
        #expect(try HTTPListenAddress(parsing: "127.0.0.1:9464") == HTTPListenAddress(host: "127.0.0.1", port: 9464))
        #expect(try HTTPListenAddress(parsing: "[::1]:9464") == HTTPListenAddress(host: "::1", port: 9464))
        #expect(try HTTPListenAddress(parsing: "[::]:0") == HTTPListenAddress(host: "::", port: 0))
        #expect(try HTTPListenAddress(parsing: "0.0.0.0:65535") == HTTPListenAddress(host: "0.0.0.0", port: 65535))
        #expect(try HTTPListenAddress(parsing: "localhost:80") == HTTPListenAddress(host: "localhost", port: 80))
        #expect(HTTPListenAddress(host: "::1", port: 9464).description == "[::1]:9464")
        for bad in ["", "9464", ":9464", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:94a",
                    "::1:9464", "[::1]", "[::1]9464", "[not-v6]:1", "[::1:9464", "host name:1", "127.0.0.1:+80"] {
            #expect(throws: HTTPListenError.self, "\(bad)") { _ = try HTTPListenAddress(parsing: bad) }
        }
    }
}
