import Foundation

/// Finds the default model and mesa's data directory.
public enum ModelLocator {
    public static let defaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// `$MESA_HOME`, else `~/.local/share/mesa` (where ops/install.sh puts models, the broker and libraries).
    public static var mesaHome: String {
        if let h = ProcessInfo.processInfo.environment["MESA_HOME"], !h.isEmpty { return h }
        return (NSHomeDirectory() as NSString).appendingPathComponent(".local/share/mesa")
    }

    /// `$MESA_MODEL` if set, else the default model under `$MESA_HOME/models`.
    public static func defaultModelPath() throws -> String {
        if let m = ProcessInfo.processInfo.environment["MESA_MODEL"], !m.isEmpty { return m }
        let p = (mesaHome as NSString).appendingPathComponent("models/\(defaultModelFile)")
        guard FileManager.default.fileExists(atPath: p) else {
            throw ModelError(.fileNotFound, "the default model is not installed; run ops/install.sh (or pass --model, or set MESA_MODEL)", path: p)
        }
        return p
    }
}
