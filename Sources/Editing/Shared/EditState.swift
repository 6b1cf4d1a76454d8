import Foundation
import Logging
import ModelRuntime
import Tensor

/// Where a model's edit state lives on disk: `<state directory>/<first 16 hex of the base weight hash>/`
/// (the state directory is `$MESA_HOME/state` by default) with `templates-<groups>-seed<S>.json`,
/// `stats/<spec key>.stat` (+ `.ckpt` while computing) and the snapshot store `lmdb/`.
/// The templates and statistics are derived from the base model and a fixed seed, so they are created
/// once and then reused; creating them is announced through the logger, never done silently.
public struct EditState: Sendable {
    public let root: URL
    public let baseHash: String

    /// The state of the model `baseHash` under a state directory: `<directory>/<hash16>/`.
    public init(directory: URL, baseHash: String) {
        self.baseHash = baseHash
        root = directory.appendingPathComponent(String(baseHash.prefix(16)))
    }

    /// The model's snapshot store (the daemon's LMDB environment): `<directory>/<hash16>/lmdb`.
    public var snapshotStore: URL { root.appendingPathComponent("lmdb") }

    public func templatesURL(groups: [ContextTemplates.Group], seed: UInt64) -> URL {
        let g = groups.map { "\($0.length)x\($0.count)" }.joined(separator: "_")
        return root.appendingPathComponent("templates-\(g)-seed\(seed).json")
    }

    public func statisticsURL(_ spec: KeyStatisticsSpec) -> URL {
        root.appendingPathComponent("stats").appendingPathComponent(spec.key + ".stat")
    }

    /// The checkpoint of one pass over several specs: their keys joined, or past 240 bytes (six layers or
    /// more; a file name, with ".ckpt.tmp", holds at most 255) the first key, the count of the others and a digest of all.
    public func checkpointURL(_ specs: [KeyStatisticsSpec]) -> URL {
        let joined = specs.map(\.key).joined(separator: "+")
        let name = joined.utf8.count <= 240 ? joined
            : "\(specs[0].key)+\(specs.count - 1)-more-\(SHA256.hex(SHA256.hash(Array(joined.utf8))).prefix(16))"
        return root.appendingPathComponent("stats").appendingPathComponent(name + ".ckpt")
    }

    /// Loads the stored templates, or generates and stores them (announced through `logger`).
    public func templates(model: LanguageModel, groups: [ContextTemplates.Group], seed: UInt64,
                          logger: Logger) throws -> ContextTemplates {
        let url = templatesURL(groups: groups, seed: seed)
        if let d = FileManager.default.contents(atPath: url.path) {
            guard let t = try? JSONDecoder().decode(ContextTemplates.self, from: d), t.groups == groups, t.seed == seed,
                  t.prefixes.count == 1 + groups.reduce(0, { $0 + $1.count }) else {
                throw EditError(.state, "\(url.path) is not a valid template file for these settings; move it away to regenerate")
            }
            return t
        }
        let t = try ContextTemplates.generate(model: model, groups: groups, seed: seed)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            try enc.encode(t).write(to: url, options: .atomic)
        } catch { throw EditError(.io, "cannot store context templates at \(url.path): \(error)", cause: error) }
        logger.notice("generated \(t.prefixes.count) context templates and stored them", metadata: ["seed": "\(seed)", "path": "\(url.path)"])
        return t
    }

    /// Loads cached statistics; nil when not computed yet.
    public func cachedStatistics(_ spec: KeyStatisticsSpec) throws -> KeyStatistics? {
        let url = statisticsURL(spec)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        let s = try KeyStatistics.read(from: url)
        guard s.spec == spec else { throw EditError(.state, "\(url.path) holds statistics for other settings") }
        return s
    }
}
