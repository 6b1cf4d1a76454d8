import Foundation

/// A one-line progress bar on stderr, redrawn at most a few times a second.
public final class ProgressBar {
    public let label: String
    private var last = Date.distantPast
    private let tty = isatty(2) != 0
    public init(_ label: String) { self.label = label }

    /// `start`: units already done before `seconds` began (a resumed run), left out of the rate.
    public func update(_ done: Int, _ total: Int, unit: String, seconds: Double, start: Int = 0, force: Bool = false, extra: String = "") {
        guard force || Date().timeIntervalSince(last) > 0.25 || done >= total else { return }
        last = Date()
        let frac = total > 0 ? min(1, Double(done) / Double(total)) : 1
        let width = 28, filled = Int(frac * Double(width))
        let rate = seconds > 0 ? Double(done - start) / seconds : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let line = String(format: "%@ [%@] %3.0f%% %d/%d %@ %.3g %@/s ETA %.0fs", label, bar, frac * 100, done, total, unit, rate, unit, eta)
            + (extra.isEmpty ? "" : "  " + extra)
        FileHandle.standardError.write(Data(((tty ? "\r" : "") + line + (tty ? "" : "\n")).utf8))
    }

    public func finish() { if tty { FileHandle.standardError.write(Data("\n".utf8)) } }
}
