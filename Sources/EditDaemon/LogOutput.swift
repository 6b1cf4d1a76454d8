#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging

/// How log lines are written: `text` for people (the default), `json` for log collectors.
public enum LogFormat: String, CaseIterable, Sendable {
    /// `2026-12-04T18:02:03.123Z info mesa serve: message key=value …`
    case text
    /// One JSON object a line: `{"ts", "level", "logger", "message", <metadata>…}`.
    case json

    /// Parses `text` or `json`.
    public init(parsing s: String) throws {
        guard let f = LogFormat(rawValue: s.lowercased()) else { throw SetupError("log format \(s) is not one of text, json") }
        self = f
    }
}

extension Logger.Level {
    /// Parses a swift-log level name (`trace`, `debug`, `info`, `notice`, `warning`, `error`, `critical`).
    public init(parsing s: String) throws {
        guard let l = Logger.Level(rawValue: s.lowercased()) else {
            throw SetupError("log level \(s) is not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = l
    }
}

/// A `LogHandler` that writes one line per message to a file descriptor (stderr by default), in
/// `LogFormat.text` or `LogFormat.json`. Lines from many threads never interleave: each is one write.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level
    let label: String
    let format: LogFormat
    let sink: LineSink

    public init(label: String, format: LogFormat, level: Logger.Level = .info, sink: LineSink = .standardError,
                metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.sink = sink
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let m = event.metadata { all.merge(m) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        sink.write(Self.line(format: format, date: Date(), level: event.level, label: label, message: event.message.description, metadata: all))
    }

    /// One formatted line, ending in a newline.
    public static func line(format: LogFormat, date: Date, level: Logger.Level, label: String, message: String,
                            metadata: Logger.Metadata) -> String {
        let ts = timestamp(date)
        switch format {
        case .text:
            var s = "\(ts) \(level.rawValue) \(label): \(message)"
            for (k, v) in metadata.sorted(by: { $0.key < $1.key }) { s += " \(k)=\(textValue(v))" }
            return s + "\n"
        case .json:
            var s = "{\"ts\":\(quoted(ts)),\"level\":\(quoted(level.rawValue)),\"logger\":\(quoted(label)),\"message\":\(quoted(message))"
            for (k, v) in metadata.sorted(by: { $0.key < $1.key }) where !["ts", "level", "logger", "message"].contains(k) {
                s += ",\(quoted(k)):\(jsonValue(v))"
            }
            return s + "}\n"
        }
    }

    static func timestamp(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tm = tm()
        gmtime_r(&t, &tm)
        let ms = Int((date.timeIntervalSince1970 - Double(t)) * 1000)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                      Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), min(ms, 999))
    }

    static func textValue(_ v: Logger.Metadata.Value) -> String {
        let s = "\(v)"
        return s.isEmpty || s.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }) ? quoted(s) : s
    }

    static func jsonValue(_ v: Logger.Metadata.Value) -> String {
        switch v {
        case .string(let s): return quoted(s)
        case .stringConvertible(let c): return quoted(c.description)
        case .array(let a): return "[" + a.map(jsonValue).joined(separator: ",") + "]"
        case .dictionary(let d): return "{" + d.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(jsonValue($0.value))" }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

/// Where `LineLogHandler` writes: a file descriptor, or (in tests) a closure.
public struct LineSink: Sendable {
    let write: @Sendable (String) -> Void

    public init(_ write: @escaping @Sendable (String) -> Void) { self.write = write }

    func write(_ line: String) { write(line) }

    /// Standard error, one `write(2)` per line.
    public static let standardError = LineSink { line in
        var bytes = Array(line.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + done, $0.count - done) }
            if n <= 0 { if errno == EINTR { continue }; return }
            done += n
        }
    }
}

/// The process's log setup: `bootstrap` once at start (it installs `LineLogHandler` on stderr),
/// `configure` when the command knows its format and level, then `Logger(label:)` anywhere: a logger
/// takes the format and level configured when it is created.
public enum MesaLogging {
    /// Installs `LineLogHandler` as the process's log handler, in `format` at `level` until `configure`
    /// says otherwise. swift-log allows one bootstrap per process: a second call is ignored.
    public static func bootstrap(format: LogFormat = .text, level: Logger.Level = .info) {
        lock.lock(); defer { lock.unlock() }
        current = (format, level)
        guard !bootstrapped else { return }
        bootstrapped = true
        LoggingSystem.bootstrap { label in
            let (format, level) = MesaLogging.settings
            return LineLogHandler(label: label, format: format, level: level)
        }
    }

    /// Sets the format and level of loggers created from now on.
    public static func configure(format: LogFormat, level: Logger.Level) {
        lock.lock(); defer { lock.unlock() }
        current = (format, level)
    }

    /// The format and level configured now.
    public static var settings: (format: LogFormat, level: Logger.Level) {
        lock.lock(); defer { lock.unlock() }
        return current
    }

    /// A logger that drops everything (benchmarks, tests that do not read the log).
    public static func discarding(_ label: String = "mesa") -> Logger {
        Logger(label: label) { _ in SwiftLogNoOpLogHandler() }
    }

    private static let lock = NSLock()
    /// Guarded by `lock`.
    nonisolated(unsafe) private static var bootstrapped = false
    /// Guarded by `lock`.
    nonisolated(unsafe) private static var current: (format: LogFormat, level: Logger.Level) = (.text, .info)
}
