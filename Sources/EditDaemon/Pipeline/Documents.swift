import Contracts
import Evaluation
import Foundation
import Messaging
import Storage
import Tensor

// How the daemon fills the result and dead-letter documents of the wire contract (Contracts/Documents/).

extension EditResultDocument.Scores {
    /// A CounterFact case's scores; a score that was not measured (NaN) is left out.
    init(_ s: CaseScores) {
        func v(_ x: Double) -> Double? { x.isNaN ? nil : x }
        self.init(es: v(s.es), em: v(s.em), ps: v(s.ps), pm: v(s.pm), ns: v(s.ns), nm: v(s.nm), pNew: s.rewrite.first.map { exp(-$0.nllNew) })
    }
}

extension DeadLetterDocument {
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
