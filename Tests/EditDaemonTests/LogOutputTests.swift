import EditDaemon
import Foundation
import Logging
import Testing

@Suite struct LogOutputTests {
    /// A logger whose lines land in `lines`.
    final class Lines: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: [String] = []
        var all: [String] { lock.lock(); defer { lock.unlock() }; return stored }
        func logger(_ format: LogFormat, level: Logger.Level = .info) -> Logger {
            let sink = LineSink { [self] line in lock.lock(); stored.append(line); lock.unlock() }
            return Logger(label: "mesa serve") { label in LineLogHandler(label: label, format: format, level: level, sink: sink) }
        }
    }

    @Test func textLinesCarryTheLevelTheLabelAndTheFields() {
        let lines = Lines()
        var logger = lines.logger(.text)
        logger[metadataKey: "component"] = "worker"
        logger.info("applied e1 as snapshot 3", metadata: ["event_id": "e1", "note": "two words"])
        logger.debug("not shown at info")
        let line = try! #require(lines.all.first)
        #expect(lines.all.count == 1)
        #expect(line.hasSuffix(" info mesa serve: applied e1 as snapshot 3 component=worker event_id=e1 note=\"two words\"\n"), "\(line)")
        #expect(line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "#, options: .regularExpression) != nil, "\(line)")
    }

    @Test func jsonLinesAreOneObjectEach() throws {
        let lines = Lines()
        let logger = lines.logger(.json, level: .debug)
        logger.debug("a \"quoted\"\nmessage", metadata: ["event_id": "e1", "steps": ["decode", "edit"], "level": "shadowed"])
        logger.error("failed", error: SetupError("disk full"))
        let all = lines.all
        #expect(all.count == 2 && all.allSatisfy { $0.hasSuffix("}\n") && $0.filter { $0 == "\n" }.count == 1 })
        let first = try #require(try JSONSerialization.jsonObject(with: Data(all[0].utf8)) as? [String: Any])
        #expect(first["level"] as? String == "debug" && first["logger"] as? String == "mesa serve")
        #expect(first["message"] as? String == "a \"quoted\"\nmessage" && first["event_id"] as? String == "e1")
        #expect(first["steps"] as? [String] == ["decode", "edit"])
        #expect(first["ts"] is String)
        let second = try #require(try JSONSerialization.jsonObject(with: Data(all[1].utf8)) as? [String: Any])
        #expect(second["level"] as? String == "error" && (second["error"] as? String)?.contains("disk full") == true, "\(second)")
    }

    @Test func levelsAndFormatsParse() throws {
        #expect(try Logger.Level(parsing: "WARNING") == .warning)
        #expect(try LogFormat(parsing: "json") == .json)
        #expect(throws: SetupError.self) { try Logger.Level(parsing: "verbose") }
        #expect(throws: SetupError.self) { try LogFormat(parsing: "logfmt") }
    }

    @Test func valuesAreQuotedOrEscapedWhereTheyMustBe() throws {
        let lines = Lines()
        lines.logger(.text).warning("m", metadata: ["empty": "", "eq": "a=b", "plain": "x", "nested": ["k": "v"]])
        let text = try #require(lines.all.first)
        #expect(text.contains(#" warning mesa serve: m empty="" eq="a=b" nested=""#) && text.hasSuffix("\" plain=x\n"), "\(text)")
        let json = Lines()
        json.logger(.json).info("bell \u{7}", metadata: ["nested": ["k": ["v", "w"]]])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.all[0].utf8)) as? [String: Any])
        #expect(object["message"] as? String == "bell \u{7}" && json.all[0].contains("\\u0007"))
        #expect((object["nested"] as? [String: Any])?["k"] as? [String] == ["v", "w"])
    }
}

