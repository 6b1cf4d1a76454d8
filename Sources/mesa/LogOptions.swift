import ArgumentParser
import EditDaemon
import Editing
import Foundation
import Logging

/// `--log-format` and `--log-level` of the long-running commands (serve, results, replay, eval, stats,
/// sae train). Precedence: these flags, then `MESA_LOG_FORMAT` / `MESA_LOG_LEVEL`, then (serve) the
/// configuration file's `log` block, then text at info.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log line format on stderr: text or json (default: $MESA_LOG_FORMAT, the file's log.format, or text).")
    var logFormat: String?

    @Option(name: .long, help: "Lowest level logged: trace, debug, info, notice, warning, error, critical (default: $MESA_LOG_LEVEL, the file's log.level, or info).")
    var logLevel: String?

    func validate() throws {
        do {
            _ = try logFormat.map(LogFormat.init(parsing:))
            _ = try logLevel.map(Logger.Level.init(parsing:))
        } catch { throw ValidationError("\(error)") }
    }

    /// Applies the flags over `format` and `level` (the environment's or the configuration's).
    func configure(format: LogFormat, level: Logger.Level) throws {
        MesaLogging.configure(format: try logFormat.map(LogFormat.init(parsing:)) ?? format,
                              level: try logLevel.map(Logger.Level.init(parsing:)) ?? level)
    }

    /// Applies the flags over the environment.
    func configure() throws {
        let env = ProcessInfo.processInfo.environment
        let format = try env["MESA_LOG_FORMAT"].flatMap { $0.isEmpty ? nil : $0 }.map(LogFormat.init(parsing:)) ?? .text
        let level = try env["MESA_LOG_LEVEL"].flatMap { $0.isEmpty ? nil : $0 }.map(Logger.Level.init(parsing:)) ?? .info
        try configure(format: format, level: level)
    }
}

/// A command with `LogOptions`: `Mesa.main` applies them before `run`.
/// `SendableMetatype`: its conformances are not main-actor isolated, so `Mesa.main`'s cast to it keeps the command sendable to `run`.
protocol LoggingCommand: SendableMetatype {
    var logOptions: LogOptions { get }
}

/// Logs `message` at info through a logger labelled `mesa` (stderr, in the configured format).
func log(_ message: String, metadata: Logger.Metadata? = nil) { Logger(label: "mesa").info("\(message)", metadata: metadata) }

extension EditMethod: ExpressibleByArgument {}
