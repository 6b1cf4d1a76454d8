import Contracts
import Foundation
import Messaging
import Storage
import Tensor

/// One record of the weight-deltas topic: a change of the live weights, enough for a replica that
/// holds the same base model to follow without recomputing an edit.
///
/// Every applied edit or batch edit (`kind` "edit": its low-rank factors, in the order applied) and
/// every rollback (`kind` "rollback": no factors; the replica restores the snapshot from the edits it
/// has applied) publishes one, keyed by the model, in the order the weights changed. `parent` is the
/// head before and `snapshot` the head after; `weight_hash` is the hash the weights must have after
/// applying it (the same code path, `LanguageModel.apply(LowRankUpdate)`, gives the same bits). A
/// redelivered event publishes its record again: a replica that already holds `snapshot` skips it.
///
/// Layout: the 4 bytes `MWD1`, the header's length in bytes (UInt32, little-endian), the header
/// (UTF-8 JSON, `Schemas/weight-delta.schema.json`), then the data: the tensors the header lists,
/// Float32 little-endian, at the byte offsets it gives; `data_sha256` covers the data.
public struct WeightDelta: Sendable, Equatable {
    public static let magic: [UInt8] = Array("MWD1".utf8)
    public static let format = "mesa.weight-delta/v1"
    /// The CloudEvents type of the record (binary mode headers).
    public static let eventType = "dev.mesa.weight-delta.v1"
    public static let contentType = "application/vnd.mesa.weight-delta"

    public struct Model: Codable, Sendable, Equatable {
        public var name: String
        public var baseHash: String
    }

    /// Where a tensor's values are in the data: `count` Float32 values from byte `offset`, row-major `shape`.
    public struct TensorRef: Codable, Sendable, Equatable {
        public var shape: [Int]
        public var offset: Int
        public var count: Int
    }

    /// One factor pair: ΔW = L·R added to `parameter` ([rows, cols]); L [rows, rank], R [rank, cols].
    public struct Update: Codable, Sendable, Equatable {
        public var parameter: String
        public var layer: Int
        public var rows: Int
        public var cols: Int
        public var rank: Int
        public var left: TensorRef
        public var right: TensorRef
    }

    public struct Header: Codable, Sendable, Equatable {
        public var format: String
        /// "edit" or "rollback".
        public var kind: String
        public var model: Model
        /// The head before.
        public var parent: UInt64
        /// The head after.
        public var snapshot: UInt64
        /// The weight hash before and after.
        public var hashBefore: String
        public var weightHash: String
        /// The events an edit applies (a batch: all of them), or the rollback command's id.
        public var eventIds: [String]
        /// The edit's method (edits only).
        public var method: String?
        /// The factors, in the order they are applied (empty for a rollback).
        public var updates: [Update]
        public var dataBytes: Int
        public var dataSha256: String
        /// Set when the factors were left out because the record would exceed the broker's message
        /// limit: a replica cannot apply this record from the topic and must stop (and say so).
        public var omitted: String?
    }

    public var header: Header
    /// The factors, as `LowRankUpdate`s (empty when omitted or for a rollback).
    public var updates: [LowRankUpdate]

    public init(header: Header, updates: [LowRankUpdate]) {
        self.header = header
        self.updates = updates
    }

    /// The record of an edit or batch edit that moved the head from `parent` to `snapshot`.
    public static func edit(model: Model, parent: UInt64, snapshot: UInt64, hashBefore: String, hashAfter: String,
                            eventIds: [String], method: String, updates: [LowRankUpdate]) -> WeightDelta {
        var refs: [Update] = []
        var offset = 0
        func ref(_ shape: [Int]) -> TensorRef {
            let count = shape.reduce(1, *)
            defer { offset += 4 * count }
            return TensorRef(shape: shape, offset: offset, count: count)
        }
        for u in updates {
            let left = ref([u.rows, u.rank]), right = ref([u.rank, u.cols])
            refs.append(Update(parameter: u.parameter, layer: u.layer, rows: u.rows, cols: u.cols, rank: u.rank, left: left, right: right))
        }
        let header = Header(format: format, kind: "edit", model: model, parent: parent, snapshot: snapshot, hashBefore: hashBefore,
                            weightHash: hashAfter, eventIds: eventIds, method: method, updates: refs, dataBytes: offset,
                            dataSha256: SHA256.hex(SHA256.hash(data(updates))), omitted: nil)
        return WeightDelta(header: header, updates: updates)
    }

    /// The record of a rollback from `parent` to `snapshot`.
    public static func rollback(model: Model, parent: UInt64, snapshot: UInt64, hashBefore: String, hashAfter: String,
                                commandId: String) -> WeightDelta {
        let header = Header(format: format, kind: "rollback", model: model, parent: parent, snapshot: snapshot, hashBefore: hashBefore,
                            weightHash: hashAfter, eventIds: [commandId], method: nil, updates: [], dataBytes: 0,
                            dataSha256: SHA256.hex(SHA256.hash([])), omitted: nil)
        return WeightDelta(header: header, updates: [])
    }

    /// The factors' values in the order of `updates`: each L then R, Float32 little-endian.
    static func data(_ updates: [LowRankUpdate]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(updates.reduce(0) { $0 + 4 * ($1.left.count + $1.right.count) })
        for u in updates {
            for v in u.left + u.right { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        }
        return out
    }

    /// The record's bytes.
    public func encoded() -> [UInt8] {
        let headerBytes = Array((try? JSONCoding.encoder().encode(header)) ?? Data())
        var out = Self.magic
        withUnsafeBytes(of: UInt32(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out += headerBytes
        if header.omitted == nil { out += Self.data(updates) }
        return out
    }

    /// The record without its factors, saying why (for a broker that refuses the whole record).
    public func withoutFactors(_ why: String) -> WeightDelta {
        var h = header
        h.omitted = why
        return WeightDelta(header: h, updates: [])
    }

    /// Reads a record, checking everything a replica relies on before it touches its weights: the
    /// magic and lengths, the header's format and kind, the data's size and SHA-256, and each
    /// factor's shape against its place in the data; the values must be finite.
    public init(decoding bytes: [UInt8]) throws {
        func fail(_ why: String, cause: (any Error)? = nil) -> WeightDeltaError { WeightDeltaError(why, cause: cause) }
        guard bytes.count >= 8, Array(bytes[0..<4]) == Self.magic else { throw fail("not a weight-delta record (no MWD1 magic)") }
        let length = Int(bytes[4..<8].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) })
        guard length <= bytes.count - 8 else { throw fail("the header claims \(length) bytes; the record has \(bytes.count - 8) after the magic") }
        let h: Header
        do { h = try JSONCoding.decoder().decode(Header.self, from: Data(bytes[8..<(8 + length)])) } catch {
            throw fail("the header does not decode: \(error)", cause: error)
        }
        guard h.format == Self.format else { throw fail("unknown format \(h.format)") }
        guard h.kind == "edit" || h.kind == "rollback" else { throw fail("unknown kind \(h.kind)") }
        let data = Array(bytes[(8 + length)...])
        header = h
        updates = []
        if h.omitted != nil {
            guard data.isEmpty else { throw fail("a record whose factors are omitted carries \(data.count) data bytes") }
            return
        }
        guard data.count == h.dataBytes else { throw fail("the data has \(data.count) bytes; the header says \(h.dataBytes)") }
        guard SHA256.hex(SHA256.hash(data)) == h.dataSha256 else { throw fail("the data does not match its SHA-256") }
        guard h.kind == "edit" || h.updates.isEmpty else { throw fail("a rollback carries factors") }
        func values(_ r: TensorRef, _ shape: [Int]) throws -> [Float] {
            guard r.shape == shape, shape.allSatisfy({ $0 > 0 }), r.count == shape.reduce(1, *), r.offset >= 0, r.offset % 4 == 0,
                  r.offset + 4 * r.count <= data.count else { throw fail("a tensor of shape \(r.shape) at byte \(r.offset) does not fit") }
            let v = (0..<r.count).map { i -> Float in
                let at = r.offset + 4 * i
                return Float(bitPattern: UInt32(data[at]) | UInt32(data[at + 1]) << 8 | UInt32(data[at + 2]) << 16 | UInt32(data[at + 3]) << 24)
            }
            guard v.allSatisfy(\.isFinite) else { throw fail("a factor of \(shape) has non-finite values") }
            return v
        }
        updates = try h.updates.map { u in
            LowRankUpdate(parameter: u.parameter, layer: u.layer, rows: u.rows, cols: u.cols, rank: u.rank,
                          left: try values(u.left, [u.rows, u.rank]), right: try values(u.right, [u.rank, u.cols]))
        }
    }
}

/// A weight-delta record that cannot be read.
public struct WeightDeltaError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ message: String, cause: (any Error)? = nil) { self.message = message; self.cause = cause }
    public var description: String { "weight delta: \(message)" }
}

extension Pipeline {
    var deltaModel: WeightDelta.Model { WeightDelta.Model(name: host.modelName, baseHash: host.baseHash) }

    /// The weight-deltas record of `delta`, keyed by the model; its smaller form (for a broker whose
    /// message limit is below it) carries the header alone, marked as omitting the factors.
    func deltaRecord(_ delta: WeightDelta) -> OutboundRecord {
        let topic = topics.weightDeltas, key = Array(host.modelName.utf8)
        @Sendable func record(_ d: WeightDelta) -> OutboundRecord {
            let payload = d.encoded()
            let ce = CloudEvent(id: UUID().uuidString.lowercased(), source: EventTypes.source, type: WeightDelta.eventType,
                                subject: "snapshot \(d.header.snapshot)", datacontenttype: WeightDelta.contentType, data: payload)
            return OutboundRecord(topic: topic, key: key, payload: payload, headers: ce.kafkaHeaders())
        }
        var r = record(delta)
        if !delta.updates.isEmpty {
            let bare = delta.withoutFactors("the record (\(r.payload.count) bytes) is larger than the broker accepts (message.max.bytes)")
            r.smaller = { record(bare) }
        }
        return r
    }

    /// The record of the edit or batch edit snapshot `r` holds.
    func deltaRecord(of r: SnapshotRecord) -> OutboundRecord {
        deltaRecord(.edit(model: deltaModel, parent: r.parent, snapshot: r.seq, hashBefore: r.hashBefore, hashAfter: r.hashAfter,
                          eventIds: r.eventIds, method: r.method, updates: r.factors))
    }

    /// The record of the rollback journalled as `entry`.
    func deltaRecord(rollback entry: JournalEntry, hashBefore: String, commandId: String) -> OutboundRecord {
        deltaRecord(.rollback(model: deltaModel, parent: entry.headBefore, snapshot: entry.headAfter, hashBefore: hashBefore,
                              hashAfter: entry.hash, commandId: commandId))
    }
}
