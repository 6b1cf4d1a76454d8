import Foundation
import ModelRuntime
import Storage
import Tensor

/// What `mesa export` writes.
public enum ExportFormat: String, CaseIterable, Sendable {
    /// The whole edited model as one GGUF file (llama.cpp): unchanged tensors keep their encoding,
    /// changed ones are F32.
    case gguf
    /// The whole edited model as a transformers checkpoint directory (Float32).
    case safetensors
    /// The snapshot's accumulated updates as a PEFT LoRA adapter directory.
    case peftLora = "peft-lora"
}

/// A refused or failed export, with what to do about it.
public struct ExportError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ message: String, cause: (any Error)? = nil) { self.message = message; self.cause = cause }
    public var description: String { message }
}

/// What an export wrote and how it was checked.
public struct ExportSummary: Sendable {
    public var format: ExportFormat
    public var snapshot: UInt64
    /// The snapshot's recorded weight hash, which the materialized weights matched.
    public var weightHash: String
    public var baseHash: String
    /// The snapshots whose updates the weights hold, root first.
    public var lineage: [UInt64]
    public var path: String
    public var files: [String]
    /// What the check after writing found (nil when skipped).
    public var verification: String?
    /// peft-lora: the adapter's r and each module's total rank.
    public var adapterRank: Int?
    public var modules: [(parameter: String, rank: Int)] = []
}

/// Exports snapshot N of a snapshot store: loads nothing itself, takes the freshly loaded base model.
///
/// The store is only read (its head is not moved). The model must be the store's base (same weight
/// hash); the weights are brought to snapshot N by `ModelHost.materialize`, which replays N's
/// lineage (parent links, so a rollback's abandoned branch is not included) and checks the recorded
/// hash, then the chosen format is written into a temporary sibling of `out` and renamed into place.
public enum SnapshotExporter {
    /// Checks that `store` records `model` (freshly loaded) as its base; returns the base hash.
    public static func checkBase(model: LanguageModel, store: SnapshotStore) throws -> String {
        guard let base = try store.baseHash() else {
            throw ExportError("the snapshot store holds no base model (the daemon never attached one): nothing to export")
        }
        let loaded = model.weightHash
        guard base == loaded else {
            throw ExportError("""
                the snapshot store belongs to base model \(base.prefix(16)) (\(try store.modelName() ?? "?")), but the loaded \
                model's weights hash to \(loaded.prefix(16)): pass the model the daemon serves (--model, or the config's "model")
                """)
        }
        return base
    }

    /// The snapshots whose updates give snapshot `seq`, root first (empty for 0, the base model).
    public static func lineage(store: SnapshotStore, snapshot seq: UInt64) throws -> [SnapshotRecord] {
        do { return try store.lineage(to: seq) } catch let e as SnapshotStoreError where e.code == .notFound {
            let known = (try? store.sequenceNumbers()) ?? []
            let range = known.isEmpty ? "only 0, the base model" : "0 (the base model) and \(known.first!)…\(known.last!)"
            throw ExportError("no snapshot \(seq) in the store: it holds \(range) (`mesa snapshots` lists them)", cause: e)
        }
    }

    /// Brings `model` (freshly loaded) to snapshot `seq` of `store`, checking the base and the
    /// recorded hash. Returns the host (whose `baseValues` hold the touched tensors' base values).
    public static func materialize(model: LanguageModel, modelName: String, store: SnapshotStore, snapshot seq: UInt64) throws -> ModelHost {
        _ = try checkBase(model: model, store: store)
        _ = try lineage(store: store, snapshot: seq)
        let host = try ModelHost(model: model, modelName: modelName, store: store, attach: false)
        if seq != 0 { try host.materialize(seq) }
        let want = try store.hash(at: seq)
        guard model.weightHash == want else {
            throw ExportError("the weights of snapshot \(seq) hash to \(model.weightHash), recorded \(want)")
        }
        return host
    }

    /// Writes snapshot `seq` as `format` at `out` (a file for gguf, a directory otherwise). With
    /// `verify`, reads the export back (gguf, safetensors: loads it and compares the weight hash;
    /// peft-lora: compares base + B·A with every edited tensor). `overwrite` replaces an existing `out`.
    public static func export(model: LanguageModel, modelName: String, store: SnapshotStore, snapshot seq: UInt64,
                              format: ExportFormat, to out: String, baseModel: String? = nil, verify: Bool = true,
                              overwrite: Bool = false) throws -> ExportSummary {
        let fm = FileManager.default
        if fm.fileExists(atPath: out) && !overwrite {
            throw ExportError("\(out) already exists (--force replaces it)")
        }
        let parent = URL(fileURLWithPath: out).deletingLastPathComponent()
        guard fm.fileExists(atPath: parent.path) else { throw ExportError("the directory \(parent.path) does not exist") }
        _ = try checkBase(model: model, store: store)
        let lineage = try Self.lineage(store: store, snapshot: seq)
        // Checked before the (slower) replay: a LoRA export of an unfitting lineage is refused at once.
        var modules: [PEFTLoRAExporter.Module] = []
        if format == .peftLora {
            do { modules = try PEFTLoRAExporter.modules(lineage.flatMap(\.factors), config: model.config) } catch let e as ModelError {
                throw ExportError(e.message, cause: e)
            }
            guard !modules.isEmpty else {
                throw ExportError("snapshot \(seq) changes no weight (\(seq == 0 ? "0 is the base model" : "its lineage records no update")): there is no adapter to export")
            }
        }
        let host = try materialize(model: model, modelName: modelName, store: store, snapshot: seq)
        let hash = try store.hash(at: seq)
        let provenance: [String: String] = [
            "mesa.snapshot": "\(seq)", "mesa.weight_hash": hash, "mesa.base_hash": host.baseHash, "mesa.model": modelName,
            "mesa.lineage": lineage.map { "\($0.seq)" }.joined(separator: ","),
        ]
        var summary = ExportSummary(format: format, snapshot: seq, weightHash: hash, baseHash: host.baseHash,
                                    lineage: lineage.map(\.seq), path: out, files: [])
        let tmp = parent.appendingPathComponent(".\(URL(fileURLWithPath: out).lastPathComponent).partial-\(UUID().uuidString.prefix(8))")
        defer { try? fm.removeItem(at: tmp) }
        switch format {
        case .gguf:
            try ModelExporter.writeGGUF(model, to: tmp.path, metadata: provenance.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
            summary.files = [URL(fileURLWithPath: out).lastPathComponent]
            if verify {
                let back = try ModelLoader.load(path: tmp.path)
                guard back.weightHash == hash else { throw ExportError("the written GGUF loads with weight hash \(back.weightHash), not \(hash)") }
                summary.verification = "loaded back: weight hash \(hash.prefix(16)) matches"
            }
        case .safetensors:
            try fm.createDirectory(at: tmp, withIntermediateDirectories: false)
            try HFExporter.write(model, to: tmp.path, metadata: provenance)
            summary.files = try fm.contentsOfDirectory(atPath: tmp.path).sorted()
            if verify {
                let back = try ModelLoader.load(path: tmp.path)
                // A GGUF source holds Wq/Wk in llama.cpp's row order; compare in that order.
                let interleaved = model.config.ropeStyle == .interleaved
                let got = interleaved ? HFExporter.ggufLayoutHash(back) : back.weightHash
                guard got == hash else { throw ExportError("the written checkpoint loads with weight hash \(got), not \(hash)") }
                summary.verification = "loaded back: weight hash \(hash.prefix(16)) matches" + (interleaved ? " (Wq/Wk in llama.cpp's row order)" : "")
            }
        case .peftLora:
            try fm.createDirectory(at: tmp, withIntermediateDirectories: false)
            try PEFTLoRAExporter.write(modules, baseModel: baseModel ?? modelName, metadata: provenance, to: tmp.path)
            summary.files = try fm.contentsOfDirectory(atPath: tmp.path).sorted()
            summary.adapterRank = PEFTLoRAExporter.adapterRank(modules)
            summary.modules = modules.map { ($0.parameter, $0.rank) }
            if verify { summary.verification = try checkAdapter(modules, host: host) }
        }
        if fm.fileExists(atPath: out) { try fm.removeItem(atPath: out) }
        try fm.moveItem(at: tmp, to: URL(fileURLWithPath: out))
        return summary
    }

    /// Compares base + B·A with the materialized weights of every adapted tensor (all in
    /// transformers' row order). The updates were applied one by one in Float32, the adapter sums
    /// them at once: they agree to rounding, within 1e-5 × (max |W| + max |B·A|) per tensor.
    static func checkAdapter(_ modules: [PEFTLoRAExporter.Module], host: ModelHost) throws -> String {
        let c = host.model.config
        var worst: Float = 0
        for m in modules {
            guard let p = host.model.weights.all.first(where: { $0.name == m.parameter }), let base = host.baseValues(m.parameter) else {
                throw ExportError("no base values of \(m.parameter): the lineage's replay did not touch it")
            }
            var edited = p.data, original = base   // [rows, cols]
            if c.ropeStyle == .interleaved, let heads = m.projection == "q_proj" ? c.heads : m.projection == "k_proj" ? c.kvHeads : nil {
                edited = RoPERowLayout.toHF(edited, heads: heads, headDim: c.headDim, cols: m.cols)
                original = RoPERowLayout.toHF(original, heads: heads, headDim: c.headDim, cols: m.cols)
            }
            let delta = PEFTLoRAExporter.delta(m)
            var err: Float = 0, scaleW: Float = 0, scaleD: Float = 0
            for i in 0..<delta.count {
                err = max(err, abs(original[i] + delta[i] - edited[i]))
                scaleW = max(scaleW, abs(edited[i]))
                scaleD = max(scaleD, abs(delta[i]))
            }
            let tolerance = 1e-5 * (scaleW + scaleD)
            guard err <= tolerance else {
                throw ExportError("base + B·A differs from the materialized \(m.parameter) by up to \(err) (tolerance \(tolerance))")
            }
            worst = max(worst, err)
        }
        return "base + B·A reproduces \(modules.count) edited tensor(s): max |difference| \(worst)"
    }
}
