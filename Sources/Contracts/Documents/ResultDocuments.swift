import Foundation

/// Schemas/edit-result.schema.json.
public struct EditResultDocument: Codable, Sendable, Equatable {
    public struct Model: Codable, Sendable, Equatable {
        public var name: String
        public var baseHash: String
        public init(name: String, baseHash: String) {
            self.name = name
            self.baseHash = baseHash
        }
    }
    /// CounterFact scores of the rewrite (ES, EM), paraphrase (PS, PM) and neighborhood (NS, NM)
    /// prompts, and the new object's probability at the rewrite prompt; absent where not measured.
    public struct Scores: Codable, Sendable, Equatable {
        public var es, em, ps, pm, ns, nm: Double?
        public var pNew: Double?
        public init(es: Double?, em: Double?, ps: Double?, pm: Double?, ns: Double?, nm: Double?, pNew: Double?) {
            self.es = es; self.em = em; self.ps = ps; self.pm = pm; self.ns = ns; self.nm = nm
            self.pNew = pNew
        }
    }
    public struct Metrics: Codable, Sendable, Equatable {
        public var pre: Scores?
        public var post: Scores?
        public init(pre: Scores?, post: Scores?) {
            self.pre = pre
            self.post = post
        }
    }
    public struct Source: Codable, Sendable, Equatable {
        public var topic: String
        public var partition: Int
        public var offset: Int
        public init(topic: String, partition: Int, offset: Int) {
            self.topic = topic
            self.partition = partition
            self.offset = offset
        }
    }

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
    /// Per-edit uncertainty signals of methods that have them (ROME with mined neighbours:
    /// "neighbour_shift", "neighbour_shift_max").
    public var signals: [String: Double]?

    public struct Canary: Codable, Sendable, Equatable {
        public var accuracy: Double
        public var perplexity: Double
        public var baseAccuracy: Double
        public var basePerplexity: Double
        public init(accuracy: Double, perplexity: Double, baseAccuracy: Double, basePerplexity: Double) {
            self.accuracy = accuracy
            self.perplexity = perplexity
            self.baseAccuracy = baseAccuracy
            self.basePerplexity = basePerplexity
        }
    }
    public var processedAt: String

    public struct Batch: Codable, Sendable, Equatable {
        public var size: Int
        /// This event's place in the batch, from 0.
        public var index: Int
        public var eventIds: [String]
        public init(size: Int, index: Int, eventIds: [String]) {
            self.size = size
            self.index = index
            self.eventIds = eventIds
        }
    }

    public struct Refinement: Codable, Sendable, Equatable {
        public var sae: String?
        public var coverage: Double?
        public var outside: Double?
        /// The SAE's relative reconstruction error of the subject's activation at the edit site.
        public var subjectError: Double?
        /// With neighbours mined by SAE overlap: their mean overlap of active latents with the subject's.
        public var crowding: Double?
        public var fallback: String?
        public init(sae: String?, coverage: Double?, outside: Double?, fallback: String?) {
            self.sae = sae
            self.coverage = coverage
            self.outside = outside
            self.fallback = fallback
        }
    }

    public init(eventId: String, kind: String, status: String, redelivery: Bool? = nil, model: Model, snapshot: UInt64? = nil,
                parent: UInt64? = nil, head: UInt64, hashBefore: String? = nil, weightHash: String, method: String? = nil,
                subject: String? = nil, targetNew: String? = nil, targetTrue: String? = nil, targetTrueInferred: Bool? = nil,
                metrics: Metrics? = nil, timings: [String: Double]? = nil, snapshotBytes: Int? = nil, label: String? = nil,
                source: Source? = nil, refinement: Refinement? = nil, batch: Batch? = nil, onHeadLineage: Bool? = nil,
                note: String? = nil, canary: Canary? = nil, processedAt: String) {
        self.eventId = eventId
        self.kind = kind
        self.status = status
        self.redelivery = redelivery
        self.model = model
        self.snapshot = snapshot
        self.parent = parent
        self.head = head
        self.hashBefore = hashBefore
        self.weightHash = weightHash
        self.method = method
        self.subject = subject
        self.targetNew = targetNew
        self.targetTrue = targetTrue
        self.targetTrueInferred = targetTrueInferred
        self.metrics = metrics
        self.timings = timings
        self.snapshotBytes = snapshotBytes
        self.label = label
        self.source = source
        self.refinement = refinement
        self.batch = batch
        self.onHeadLineage = onHeadLineage
        self.note = note
        self.canary = canary
        self.processedAt = processedAt
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
        public init(key: String, valueBase64: String?, valueBytes: Int?, valueSha256: String?) {
            self.key = key
            self.valueBase64 = valueBase64
            self.valueBytes = valueBytes
            self.valueSha256 = valueSha256
        }
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
        public init(topic: String, partition: Int, offset: Int, keyBase64: String?, keyBytes: Int?, keySha256: String?,
                    payloadBase64: String, payloadBytes: Int?, payloadSha256: String?, headers: [Header], headersOmitted: Int?) {
            self.topic = topic
            self.partition = partition
            self.offset = offset
            self.keyBase64 = keyBase64
            self.keyBytes = keyBytes
            self.keySha256 = keySha256
            self.payloadBase64 = payloadBase64
            self.payloadBytes = payloadBytes
            self.payloadSha256 = payloadSha256
            self.headers = headers
            self.headersOmitted = headersOmitted
        }
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
}
