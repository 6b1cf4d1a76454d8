import CKernels
import Foundation

/// The process's resident memory: what `/proc/self/status` reports, and a way to hand freed heap
/// pages back to the kernel.
///
/// glibc keeps freed blocks in its arenas, and its mmap threshold grows with the largest block freed
/// (up to 32 MiB), so after a model load or an edit the temporaries of tens of MiB each stay resident
/// although nothing uses them: the process carries the high-water mark of every phase into the next.
/// `release()` returns the free pages of every arena (malloc_trim(0)); the loader calls it after a
/// load and the daemon after every message or batch, where a few milliseconds are nothing.
public enum ResidentMemory {
    /// Figures in bytes; nil where the kernel does not report them.
    public struct Figures: Sendable, Equatable {
        /// VmRSS: resident now.
        public var resident: Int
        /// VmHWM: the high-water mark (since start or the last `resetPeak`).
        public var peak: Int
        /// RssAnon: heap and anonymous maps (the model's weights, the editor's state).
        public var anonymous: Int
        /// RssFile: file-backed pages (libraries, LMDB's map, the model file while it is mapped).
        public var file: Int
    }

    /// This process's figures, or nil off Linux.
    public static func current() -> Figures? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        var kb: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let v = Int(parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") else { continue }
            kb[String(parts[0])] = v
        }
        guard let rss = kb["VmRSS"], let hwm = kb["VmHWM"] else { return nil }
        return Figures(resident: rss * 1024, peak: hwm * 1024, anonymous: (kb["RssAnon"] ?? 0) * 1024, file: (kb["RssFile"] ?? 0) * 1024)
    }

    /// Resets the high-water mark to the resident set now (Linux: `/proc/self/clear_refs` 5).
    public static func resetPeak() {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return }
        h.write(Data("5".utf8))
        try? h.close()
    }

    /// Returns the free pages of every malloc arena to the kernel.
    public static func release() {
        _ = mesa_release_free_memory()
    }
}
