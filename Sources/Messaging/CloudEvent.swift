import Contracts
import Foundation

/// A CloudEvents 1.0 event with its Kafka protocol binding
/// (https://github.com/cloudevents/spec/blob/main/cloudevents/bindings/kafka-protocol-binding.md).
///
/// Binary mode carries the attributes as `ce_<name>` headers (UTF-8) and `datacontenttype` as the
/// `content-type` header, with `data` as the record value. Structured mode carries the whole event as
/// a JSON envelope in the value, with `content-type: application/cloudevents+json`.
public struct CloudEvent: Equatable, Sendable {
    public var id: String
    public var source: String
    public var type: String
    public var specversion: String
    public var time: Date?
    public var subject: String?
    public var datacontenttype: String?
    public var dataschema: String?
    /// Extension attributes (`partitionkey`, `traceparent`, …) as strings.
    public var extensions: [String: String]
    public var data: [UInt8]

    public init(id: String, source: String, type: String, specversion: String = "1.0", time: Date? = nil,
                subject: String? = nil, datacontenttype: String? = nil, dataschema: String? = nil,
                extensions: [String: String] = [:], data: [UInt8]) {
        self.id = id
        self.source = source
        self.type = type
        self.specversion = specversion
        self.time = time
        self.subject = subject
        self.datacontenttype = datacontenttype
        self.dataschema = dataschema
        self.extensions = extensions
        self.data = data
    }

    /// The content type of a structured-mode record.
    public static let structuredContentType = "application/cloudevents+json; charset=UTF-8"

    private static let knownAttributes: Set<String> = [
        "id", "source", "type", "specversion", "time", "subject", "datacontenttype", "dataschema", "data", "data_base64",
    ]

    /// Binary-mode headers: `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, the optional `ce_time`,
    /// `ce_subject`, `ce_dataschema`, one `ce_<name>` per extension, and `content-type` for `datacontenttype`.
    public func kafkaHeaders() -> [KafkaHeader] {
        var h = [
            KafkaHeader(key: "ce_specversion", string: specversion),
            KafkaHeader(key: "ce_id", string: id),
            KafkaHeader(key: "ce_source", string: source),
            KafkaHeader(key: "ce_type", string: type),
        ]
        if let time { h.append(KafkaHeader(key: "ce_time", string: Self.formatTime(time))) }
        if let subject { h.append(KafkaHeader(key: "ce_subject", string: subject)) }
        if let dataschema { h.append(KafkaHeader(key: "ce_dataschema", string: dataschema)) }
        for (name, value) in extensions.sorted(by: { $0.key < $1.key }) {
            h.append(KafkaHeader(key: "ce_" + name, string: value))
        }
        if let datacontenttype { h.append(KafkaHeader(key: "content-type", string: datacontenttype)) }
        return h
    }

    /// The structured-mode record value: the JSON event format, `data` inline when `datacontenttype` is
    /// JSON and `data` is valid JSON, otherwise `data_base64`. Send it with a `content-type` header of
    /// `CloudEvent.structuredContentType`.
    public func structuredPayload() throws -> [UInt8] {
        var envelope: [(String, JSONValue)] = [("specversion", .string(specversion)), ("id", .string(id)), ("source", .string(source)),
                                               ("type", .string(type))]
        if let time { envelope.append(("time", .string(Self.formatTime(time)))) }
        if let subject { envelope.append(("subject", .string(subject))) }
        if let datacontenttype { envelope.append(("datacontenttype", .string(datacontenttype))) }
        if let dataschema { envelope.append(("dataschema", .string(dataschema))) }
        for (name, value) in extensions.sorted(by: { $0.key < $1.key }) { envelope.append((name, .string(value))) }
        if Self.isJSON(datacontenttype), let value = try? JSONValue.parse(data, limits: JSONParseLimits(rejectDuplicateKeys: true)) {
            envelope.append(("data", value))
        } else if !data.isEmpty {
            envelope.append(("data_base64", .string(Data(data).base64EncodedString())))
        }
        return Array(JSONValue.object(JSONObject(envelope)).jsonText().utf8)
    }

    /// Decodes a CloudEvent from a record in binary mode (`ce_` headers) or structured mode
    /// (`content-type: application/cloudevents+json`); nil for a plain record that is neither.
    /// - Throws: `CloudEventError` for a record that claims to be a CloudEvent but is not a valid one.
    public static func decode(_ m: KafkaMessage) throws -> CloudEvent? {
        let contentType = try m.headers.last(where: { $0.key.lowercased() == "content-type" }).map { try headerString($0) }
        let mediaType = contentType.map { $0.split(separator: ";", maxSplits: 1)[0].trimmingCharacters(in: .whitespaces).lowercased() }
        if mediaType == "application/cloudevents-batch+json" {
            throw CloudEventError("batched CloudEvents (application/cloudevents-batch+json) are not supported")
        }
        if mediaType == "application/cloudevents+json" { return try decodeStructured(m.payload) }
        guard m.headers.contains(where: { $0.key.hasPrefix("ce_") }) else { return nil }
        return try decodeBinary(m, contentType: contentType)
    }

    private static func decodeBinary(_ m: KafkaMessage, contentType: String?) throws -> CloudEvent {
        var attributes: [String: String] = [:]
        for h in m.headers where h.key.hasPrefix("ce_") {
            attributes[String(h.key.dropFirst(3))] = try headerString(h)
        }
        func required(_ name: String) throws -> String {
            guard let v = attributes[name], !v.isEmpty else { throw CloudEventError("binary mode: missing ce_\(name) header") }
            return v
        }
        let specversion = try required("specversion")
        guard specversion == "1.0" else { throw CloudEventError("unsupported specversion \(specversion)") }
        return CloudEvent(
            id: try required("id"), source: try required("source"), type: try required("type"),
            specversion: specversion, time: try attributes["time"].map(parseTime), subject: attributes["subject"],
            datacontenttype: contentType, dataschema: attributes["dataschema"],
            extensions: attributes.filter { !knownAttributes.contains($0.key) }, data: m.payload)
    }

    /// Structured mode, read with the same JSON parser that validates events: a repeated key is an
    /// error (readers disagree on which copy counts), and a JSON `data` value is passed on as its
    /// exact text (numbers and strings as written, not as Foundation re-reads them).
    private static func decodeStructured(_ payload: [UInt8]) throws -> CloudEvent {
        let parsed: JSONValue
        do {
            parsed = try JSONValue.parse(payload, limits: JSONParseLimits(maxDepth: 64, rejectDuplicateKeys: true))
        } catch {
            throw CloudEventError("structured mode: the value is not usable JSON (\(error))", cause: error)
        }
        guard case .object(let envelope) = parsed else {
            throw CloudEventError("structured mode: the value is not a JSON object")
        }
        func string(_ name: String) throws -> String? {
            guard let v = envelope[name], v != .null else { return nil }
            guard case .string(let s) = v else { throw CloudEventError("structured mode: \(name) is not a string") }
            return s
        }
        func required(_ name: String) throws -> String {
            guard let v = try string(name), !v.isEmpty else { throw CloudEventError("structured mode: missing \(name)") }
            return v
        }
        let specversion = try required("specversion")
        guard specversion == "1.0" else { throw CloudEventError("unsupported specversion \(specversion)") }
        let datacontenttype = try string("datacontenttype")
        var data: [UInt8] = []
        if let b64 = try string("data_base64") {
            guard envelope["data"] == nil || envelope["data"] == .null else {
                throw CloudEventError("structured mode: both data and data_base64 are present")
            }
            guard let d = Data(base64Encoded: b64) else { throw CloudEventError("structured mode: data_base64 is not base64") }
            data = Array(d)
        } else if let value = envelope["data"], value != .null {
            if case .string(let s) = value, !isJSON(datacontenttype) {
                data = Array(s.utf8)
            } else {
                data = Array(value.jsonText().utf8)
            }
        }
        var extensions: [String: String] = [:]
        for (name, value) in envelope where !knownAttributes.contains(name) {
            switch value {
            case .string(let s): extensions[name] = s
            case .number(let n): extensions[name] = n.description
            case .bool(let b): extensions[name] = b ? "true" : "false"
            case .null: continue
            default: throw CloudEventError("structured mode: extension \(name) is not a string, number or boolean")
            }
        }
        return CloudEvent(
            id: try required("id"), source: try required("source"), type: try required("type"),
            specversion: specversion, time: try string("time").map(parseTime), subject: try string("subject"),
            datacontenttype: datacontenttype, dataschema: try string("dataschema"), extensions: extensions, data: data)
    }

    private static func headerString(_ h: KafkaHeader) throws -> String {
        guard let value = h.value else { throw CloudEventError("header \(h.key) has no value") }
        guard let s = String(validating: value, as: UTF8.self) else { throw CloudEventError("header \(h.key) is not UTF-8") }
        return s
    }

    /// Whether a content type is JSON (`application/json`, `text/json`, `…+json`); absent means JSON.
    private static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return true }
        let media = contentType.split(separator: ";", maxSplits: 1)[0].trimmingCharacters(in: .whitespaces).lowercased()
        return media == "application/json" || media == "text/json" || media.hasSuffix("+json")
    }

    static func formatTime(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }

    static func parseTime(_ s: String) throws -> Date {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: s) { return d }
        f.formatOptions = [.withInternetDateTime]
        if let d = f.date(from: s) { return d }
        throw CloudEventError("time \(s) is not an RFC 3339 timestamp")
    }
}

/// A record that claims to be a CloudEvent (ce_ headers or a cloudevents content type) but is not a valid one.
public struct CloudEventError: Error, CustomStringConvertible, Equatable, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ message: String, cause: (any Error)? = nil) { self.message = message; self.cause = cause }
    public var description: String { "cloudevent: \(message)" }
    /// Equal when the messages are: the cause is not Equatable, and the message quotes it.
    public static func == (a: CloudEventError, b: CloudEventError) -> Bool { a.message == b.message }
}
