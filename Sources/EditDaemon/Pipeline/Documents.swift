import Contracts
import Editing
import Evaluation
import Foundation
import Logging
import Messaging
import ModelRuntime
import SparseAutoencoder
import Storage
import Tensor

/// Schemas/edit-result.schema.json.
public struct EditResultDocument: Codable, Sendable, Equatable {
    public struct Model: Codable, Sendable, Equatable { public var name: String; public var baseHash: String }
    public struct Scores: Codable, Sendable, Equatable {
        public var es, em, ps, pm, ns, nm: Double?
        public var pNew: Double?
        init(_ s: CaseScores) {
            func v(_ x: Double) -> Double? { x.isNaN ? nil : x }
            es = v(s.es); em = v(s.em); ps = v(s.ps); pm = v(s.pm); ns = v(s.ns); nm = v(s.nm)
            pNew = s.rewrite.first.map { exp(-$0.nllNew) }
        }
    }
    public struct Metrics: Codable, Sendable, Equatable { public var pre: Scores?; public var post: Scores? }
    public struct Source: Codable, Sendable, Equatable { public var topic: String; public var partition: Int; public var offset: Int }

    public var eventId: String
    public var kind: String
    public var status: String
    public var redelivery: Bool?
    public var model: Model
    public var snapshot: UInt64?
    public var parent: UInt64?
    public var head: UInt64
    public var hashBefore: String?
    public var weightHash: String
    public var method: String?
    public var subject: String?
    public var targetNew: String?
    public var targetTrue: String?
    public var targetTrueInferred: Bool?
    public var metrics: Metrics?
    public var timings: [String: Double]?
    public var snapshotBytes: Int?
    public var label: String?
    public var source: Source?
    /// MESA: the SAE the value vector was refined through and how much of the written change it
    /// represents, or why refinement is off.
    public var refinement: Refinement?
    /// A batch edit: the events edited together in one computation and stored as one snapshot.
    public var batch: Batch?
    /// A redelivery: whether the snapshot that applied the event is still on the head's lineage.
    public var onHeadLineage: Bool?
    /// A word to the subscriber, e.g. why a redelivered edit is no longer in the live weights.
    public var note: String?
    /// The quality guard's canary figures on the weights after the event, beside the base model's.
    public var canary: Canary?

    public struct Canary: Codable, Sendable, Equatable {
        public var accuracy: Double
        public var perplexity: Double
        public var baseAccuracy: Double
        public var basePerplexity: Double
    }
    public var processedAt: String

    public struct Batch: Codable, Sendable, Equatable {
        public var size: Int
        /// This event's place in the batch, from 0.
        public var index: Int
        public var eventIds: [String]
    }

    public struct Refinement: Codable, Sendable, Equatable {
        public var sae: String?
        public var coverage: Double?
        public var outside: Double?
        public var fallback: String?
    }
}

/// Schemas/dead-letter.schema.json.
public struct DeadLetterDocument: Codable, Sendable, Equatable {
    /// How much of the original record a dead letter carries. Past a limit it carries the first bytes,
    /// the whole length and the SHA-256 of the whole, so that it always fits the broker's message
    /// limit (1 MB by default) whatever the original was.
    public struct Limits: Sendable, Equatable {
        public var payloadBytes = 65_536
        public var keyBytes = 1_024
        public var headerValueBytes = 1_024
        public var headers = 64
        public var messageCharacters = 4_096
        public init() {}
    }
    public struct Header: Codable, Sendable, Equatable {
        public var key: String
        public var valueBase64: String?
        public var valueBytes: Int?
        public var valueSha256: String?
    }
    public struct Original: Codable, Sendable, Equatable {
        public var topic: String
        public var partition: Int
        public var offset: Int
        public var keyBase64: String?
        /// The key's length and SHA-256 when `key_base64` holds only its first bytes.
        public var keyBytes: Int?
        public var keySha256: String?
        public var payloadBase64: String
        /// The payload's length and SHA-256 when `payload_base64` holds only its first bytes.
        public var payloadBytes: Int?
        public var payloadSha256: String?
        public var headers: [Header]
        /// How many headers were left out past the limit.
        public var headersOmitted: Int?
    }
    public var reason: String
    public var message: String
    public var eventId: String?
    public var details: [String]?
    public var original: Original
    public var deadLetteredAt: String

    public init(reason: String, message: String, eventId: String?, details: [String]?, original: Original, deadLetteredAt: String) {
        self.reason = reason
        self.message = message
        self.eventId = eventId
        self.details = details
        self.original = original
        self.deadLetteredAt = deadLetteredAt
    }

    /// The same dead letter with none of the original bytes: lengths and SHA-256 only.
    public func withoutOriginalBytes() -> DeadLetterDocument {
        var d = self
        func bytes(_ b64: String?, _ n: Int?) -> Int? { n ?? b64.flatMap { Data(base64Encoded: $0)?.count } }
        func digest(_ b64: String?, _ h: String?) -> String? { h ?? b64.flatMap { Data(base64Encoded: $0) }.map { SHA256.hex(SHA256.hash(Array($0))) } }
        let o = original
        d.original.payloadBytes = bytes(o.payloadBase64, o.payloadBytes)
        d.original.payloadSha256 = digest(o.payloadBase64, o.payloadSha256)
        d.original.payloadBase64 = ""
        if o.keyBase64 != nil {
            d.original.keyBytes = bytes(o.keyBase64, o.keyBytes)
            d.original.keySha256 = digest(o.keyBase64, o.keySha256)
            d.original.keyBase64 = ""
        }
        d.original.headersOmitted = (o.headersOmitted ?? 0) + o.headers.count
        d.original.headers = []
        if d.original.headersOmitted == 0 { d.original.headersOmitted = nil }
        return d
    }

    /// The dead letter of `m` rejected for `r`, within `limits`.
    public init(_ m: KafkaMessage, _ r: Rejection, limits: Limits) {
        /// The first `limit` bytes in base64, and the whole length and SHA-256 when cut.
        func cut(_ b: [UInt8], _ limit: Int) -> (String, Int?, String?) {
            guard b.count > limit else { return (Data(b).base64EncodedString(), nil, nil) }
            return (Data(b.prefix(limit)).base64EncodedString(), b.count, SHA256.hex(SHA256.hash(b)))
        }
        func clip(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n)) + "… (\(s.count) characters)" }
        let key = m.key.map { cut($0, limits.keyBytes) }
        let payload = cut(m.payload, limits.payloadBytes)
        let headers = m.headers.prefix(limits.headers).map { h -> Header in
            let v = h.value.map { cut($0, limits.headerValueBytes) }
            return Header(key: clip(h.key, 256), valueBase64: v?.0, valueBytes: v?.1, valueSha256: v?.2)
        }
        self.init(
            reason: r.reason.rawValue, message: clip(r.message, limits.messageCharacters),
            eventId: r.eventId.map { clip($0, 256) }, details: r.details.isEmpty ? nil : r.details.prefix(20).map { clip($0, 1_024) },
            original: Original(topic: m.topic, partition: Int(m.partition), offset: Int(m.offset), keyBase64: key?.0, keyBytes: key?.1,
                               keySha256: key?.2, payloadBase64: payload.0, payloadBytes: payload.1, payloadSha256: payload.2,
                               headers: headers, headersOmitted: m.headers.count > limits.headers ? m.headers.count - limits.headers : nil),
            deadLetteredAt: Timestamp.now())
    }
}
