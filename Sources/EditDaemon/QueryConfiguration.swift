import Foundation

extension DaemonConfiguration {
    /// The query API on the HTTP listener (`/v1/completions`, `/v1/score`, `/v1/model`).
    public struct Query: Codable, Sendable, Equatable {
        /// On by default.
        public var enabled: Bool?
        /// The largest request body (default 65536).
        public var maxBodyBytes: Int?
        /// The most new tokens a completion may ask for (default 512).
        public var maxTokens: Int?
        /// Requests served at once; more are answered 429 (default 4).
        public var maxConcurrent: Int?
        /// A request's time limit, waiting for an edit included, in milliseconds (default 30000).
        public var timeoutMs: Int?
        /// A file holding the bearer token every /v1 request must carry (default: none, or the
        /// token in `MESA_QUERY_TOKEN`).
        public var tokenFile: String?
        public init(enabled: Bool? = nil, maxBodyBytes: Int? = nil, maxTokens: Int? = nil, maxConcurrent: Int? = nil,
                    timeoutMs: Int? = nil, tokenFile: String? = nil) {
            self.enabled = enabled
            self.maxBodyBytes = maxBodyBytes
            self.maxTokens = maxTokens
            self.maxConcurrent = maxConcurrent
            self.timeoutMs = timeoutMs
            self.tokenFile = tokenFile
        }
    }

    /// Whether the query API is served (`query.enabled`, default true).
    public var queryEnabled: Bool { query?.enabled ?? true }

    /// The query API's limits without the token (`queryLimits(environment:)` adds it).
    public var queryLimitsWithoutToken: QueryLimits {
        let d = QueryLimits()
        return QueryLimits(maxBodyBytes: query?.maxBodyBytes ?? d.maxBodyBytes, maxTokens: query?.maxTokens ?? d.maxTokens,
                           defaultMaxTokens: d.defaultMaxTokens, maxConcurrent: query?.maxConcurrent ?? d.maxConcurrent,
                           timeout: query?.timeoutMs.map { Double($0) / 1000 } ?? d.timeout)
    }

    /// The query API's limits and its token: the contents of `query.token_file` (surrounding
    /// whitespace removed), or `MESA_QUERY_TOKEN`; both set, an empty token or an unreadable file is an error.
    public func queryLimits(environment env: [String: String]) throws -> QueryLimits {
        var limits = queryLimitsWithoutToken
        let fromEnvironment = env["MESA_QUERY_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        if let path = query?.tokenFile {
            guard fromEnvironment == nil else { throw SetupError("set the query token in query.token_file or in MESA_QUERY_TOKEN, not both") }
            guard let data = FileManager.default.contents(atPath: path) else { throw SetupError("cannot read the query token file \(path)") }
            limits.bearerToken = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        } else {
            limits.bearerToken = fromEnvironment?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if let t = limits.bearerToken {
            guard !t.isEmpty, t.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                throw SetupError("the query token must be printable ASCII without spaces, and not empty")
            }
        }
        return limits
    }

    /// MESA_QUERY, MESA_QUERY_TOKEN_FILE, MESA_QUERY_MAX_CONCURRENT, MESA_QUERY_MAX_TOKENS,
    /// MESA_QUERY_TIMEOUT_MS (MESA_QUERY_TOKEN is read by `queryLimits(environment:)`, so that the
    /// token itself is never part of the configuration).
    mutating func applyQueryEnvironment(_ env: [String: String]) throws {
        func value(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        func count(_ key: String) throws -> Int? {
            guard let v = value(key) else { return nil }
            guard let n = Int(v), n >= 0 else { throw SetupError("\(key)=\(v) is not a count") }
            return n
        }
        var q = query ?? Query()
        if let v = value("MESA_QUERY") {
            guard let b = Bool(v) else { throw SetupError("MESA_QUERY=\(v) is not true or false") }
            q.enabled = b
        }
        if let v = value("MESA_QUERY_TOKEN_FILE") { q.tokenFile = v }
        if let n = try count("MESA_QUERY_MAX_CONCURRENT") { q.maxConcurrent = n }
        if let n = try count("MESA_QUERY_MAX_TOKENS") { q.maxTokens = n }
        if let n = try count("MESA_QUERY_TIMEOUT_MS") { q.timeoutMs = n }
        if q != Query() || query != nil { query = q }
    }

    /// The query settings' ranges (the schema checks the file; this the environment and the flags too).
    func validateQuery() throws {
        let l = queryLimitsWithoutToken
        guard (1_024...16_777_216).contains(l.maxBodyBytes) else { throw SetupError("query.max_body_bytes \(l.maxBodyBytes) is outside 1024...16777216") }
        guard (1...8_192).contains(l.maxTokens) else { throw SetupError("query.max_tokens \(l.maxTokens) is outside 1...8192") }
        guard (1...256).contains(l.maxConcurrent) else { throw SetupError("query.max_concurrent \(l.maxConcurrent) is outside 1...256") }
        guard (100...600_000).contains(query?.timeoutMs ?? 30_000) else { throw SetupError("query.timeout_ms is outside 100...600000") }
    }
}

extension HTTPListenAddress {
    /// Whether only this host can connect: 127.0.0.0/8, ::1 or localhost.
    public var isLoopback: Bool {
        let h = host.lowercased()
        return h == "localhost" || h == "::1" || h.hasPrefix("127.")
    }
}
