import Foundation

/// Finds the installed default model.
public enum ModelLocator {
    public static let defaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// The default model under mesa's data directory `home` (`<home>/models/`, where ops/install.sh puts it).
    public static func defaultModelPath(home: URL) throws -> String {
        let p = home.appendingPathComponent("models").appendingPathComponent(defaultModelFile).path
        guard FileManager.default.fileExists(atPath: p) else {
            throw ModelError(.fileNotFound, "the default model is not installed; run ops/install.sh (or pass --model, or set MESA_MODEL)", path: p)
        }
        return p
    }
}
