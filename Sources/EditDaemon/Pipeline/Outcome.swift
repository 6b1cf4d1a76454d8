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

/// The topics the daemon reads and writes.
public struct Topics: Codable, Sendable, Equatable {
    public var factUpdates = "mesa.fact-updates"
    public var control = "mesa.control"
    public var results = "mesa.edit-results"
    public var deadLetters = "mesa.dead-letters"
    /// Every change of the weights (edits, batches, rollbacks) as a `WeightDelta` record, for replicas.
    public var weightDeltas = "mesa.weight-deltas"
    public init() {}
    public var inputs: [String] { [factUpdates, control] }
    public var all: [String] { [factUpdates, control, results, deadLetters, weightDeltas] }
}

/// A record to publish.
public struct OutboundRecord: Sendable {
    public var topic: String
    public var key: [UInt8]?
    public var payload: [UInt8]
    public var headers: [KafkaHeader]
    /// A smaller record to send instead when the broker refuses this one as too large (dead letters).
    public var smaller: (@Sendable () -> OutboundRecord)?
}

/// What processing one event produced: records to publish before its offset is committed, and what
/// happened, for metrics and logs.
public struct Outcome: Sendable {
    public enum Kind: Sendable, Equatable {
        case applied(method: String)
        case dryRun
        case redelivery
        case rolledBack
        case labelled
        case deadLetter(DeadLetterReason)
    }
    public var kind: Kind
    public var records: [OutboundRecord]
    /// Seconds spent in the edit math (update computation and scoring), excluded from the overhead.
    public var editSeconds: Double
    public var eventId: String?
    public var summary: String
    /// Seconds of the daemon's own steps (e.g. "hash", "snapshot"; the daemon adds "publish" and
    /// "commit"), for metrics and benchmarks.
    public var steps: [String: Double] = [:]
    /// The canary figures of the weights after the event (when a quality guard runs).
    public var canary: CanaryFigures?

    /// The outcome as log fields: `outcome`, `event_id`, `seconds` (the whole event) and `edit_seconds`.
    public func logMetadata(total: Double) -> Logger.Metadata {
        var m: Logger.Metadata = ["outcome": "\(kind.label)", "seconds": "\(String(format: "%.4f", total))"]
        if let eventId { m["event_id"] = "\(eventId)" }
        if editSeconds > 0 { m["edit_seconds"] = "\(String(format: "%.4f", editSeconds))" }
        return m
    }
}

extension Outcome.Kind {
    /// A short name: applied, dry_run, redelivery, rolled_back, labelled, dead_letter.
    public var label: String {
        switch self {
        case .applied: return "applied"
        case .dryRun: return "dry_run"
        case .redelivery: return "redelivery"
        case .rolledBack: return "rolled_back"
        case .labelled: return "labelled"
        case .deadLetter: return "dead_letter"
        }
    }
}

extension Pipeline {
    // MARK: output records

    func resultRecord(_ doc: EditResultDocument) -> OutboundRecord {
        let payload = (try? JSONCoding.encoder().encode(doc)).map(Array.init) ?? []
        let ce = CloudEvent(id: UUID().uuidString.lowercased(), source: EventTypes.source, type: EventTypes.editResult,
                            subject: doc.eventId, datacontenttype: "application/json", data: payload)
        return OutboundRecord(topic: topics.results, key: Array(host.modelName.utf8), payload: payload, headers: ce.kafkaHeaders())
    }

    /// The dead letter for `m`: the reason, the message and the original record, bounded so that it
    /// always fits the broker's message limit (`DeadLetterDocument.Limits`).
    public func deadLetter(_ m: KafkaMessage, _ r: Rejection) -> Outcome {
        let doc = DeadLetterDocument(m, r, limits: deadLetterLimits)
        return Outcome(kind: .deadLetter(r.reason), records: [deadLetterRecord(doc, key: m.key)], editSeconds: 0, eventId: r.eventId,
                       summary: "dead letter (\(r.reason.rawValue)) for \(m.topic)/\(m.partition)@\(m.offset): \(r.message)")
    }

    /// The record of a dead letter, keyed by the original key when that is short; its smaller form
    /// carries none of the original bytes (only their lengths and SHA-256), for a broker whose message
    /// limit is below the dead letter's.
    public func deadLetterRecord(_ doc: DeadLetterDocument, key: [UInt8]?) -> OutboundRecord {
        let topic = topics.deadLetters
        @Sendable func record(_ doc: DeadLetterDocument, key: [UInt8]?) -> OutboundRecord {
            let payload = (try? JSONCoding.encoder().encode(doc)).map(Array.init) ?? []
            let ce = CloudEvent(id: UUID().uuidString.lowercased(), source: EventTypes.source, type: EventTypes.deadLetter,
                                subject: doc.eventId, datacontenttype: "application/json", data: payload)
            return OutboundRecord(topic: topic, key: key, payload: payload, headers: ce.kafkaHeaders())
        }
        var r = record(doc, key: key.flatMap { $0.count <= deadLetterLimits.keyBytes ? $0 : nil })
        let bare = doc.withoutOriginalBytes()
        r.smaller = { record(bare, key: nil) }
        return r
    }

    /// The id a record claims, for a dead letter that cannot say more (best effort: the CloudEvents id
    /// or the JSON body's "id").
    public func eventIdHint(_ m: KafkaMessage) -> String? {
        if let ce = try? CloudEvent.decode(m) { return ce.id.utf8.count <= 256 ? ce.id : nil }
        guard m.payload.count <= maxEventBytes, let v = try? JSONValue.parse(m.payload, limits: JSONParseLimits(maxDepth: 64)) else { return nil }
        return EventReader.eventId(v)
    }
}
