import Foundation
import Tensor

/// Saves a resident (possibly edited) model.
public enum ModelExporter {
    /// Writes a GGUF with the source file's metadata. Tensors whose values still equal the source's
    /// (checked by digest against a fresh dequantization) keep their original encoding byte for
    /// byte; changed tensors are stored as F32, so an edit is saved exactly. `metadata` entries are
    /// added after the source's (replacing a source entry of the same key), e.g. provenance.
    public static func writeGGUF(_ model: LanguageModel, to path: String, metadata: [(String, GGUFValue)] = []) throws {
        guard model.source.format == .gguf else {
            throw ModelError(.invalidInput, "saving is implemented for models loaded from GGUF", path: model.source.path)
        }
        let src = try GGUFFile(path: model.source.path)
        var w = GGUFWriter()
        if let a = src.int("general.alignment"), a > 0 { w.alignment = a }
        let added = Set(metadata.map(\.0))
        for k in src.metadataKeys where !added.contains(k) { if let v = src.metadata[k] { w.set(k, v) } }
        for (k, v) in metadata { w.set(k, v) }
        let byName = Dictionary(model.weights.all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for info in src.tensors {
            if let p = byName[info.name], p.count == info.elementCount {
                let original = try src.floats(info)
                var h = SHA256()
                original.withUnsafeBytes { h.update($0) }
                if h.finalize() != p.digest {
                    w.add(info.name, shape: info.shape, data: p.data, type: .f32)
                    continue
                }
            }
            w.addRaw(info.name, shape: info.shape, rawType: info.type.rawValue, bytes: try src.rawBytes(info))
        }
        do { try w.write(to: path) } catch { throw ModelError(.ioError, "cannot write \(path): \(error)", path: path, cause: error) }
    }
}
