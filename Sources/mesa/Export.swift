import ArgumentParser
import EditDaemon
import Editing
import Foundation
import ModelRuntime
import Storage

extension ExportFormat: ExpressibleByArgument {}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write snapshot N (0 = the base model) as a GGUF, a transformers checkpoint, or a PEFT LoRA adapter.",
        discussion: """
        Loads the base model, replays snapshot N's lineage from the daemon's snapshot store (found as \
        `mesa serve` finds it: --config / --state-dir and the model's hash; or --store), checks the \
        recorded weight hash, and writes it.

        gguf: the whole edited model as one file for llama.cpp (unchanged tensors keep their encoding, \
        changed ones are F32). safetensors: a directory for transformers (model.safetensors in F32 with \
        Hugging Face names and Wq/Wk in rotate-half order, config.json, tokenizer.json, \
        tokenizer_config.json, generation_config.json). peft-lora: a directory with adapter_config.json \
        and adapter_model.safetensors, the lineage's updates as B·A per module (r = the largest total \
        rank, lora_alpha = r), refused when the factors would outgrow the tensor.

        The export is written beside --out and renamed into place; by default it is read back and \
        checked (the weight hash, or base + B·A against the edited tensors). The store is only read: \
        the daemon may be running.
        """)

    @OptionGroup var daemonOptions: DaemonOptions
    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .long, help: "The snapshot sequence number (0 = the base model).") var snapshot: UInt64
    @Option(name: .long, help: "gguf, safetensors or peft-lora.") var format: ExportFormat
    @Option(name: .long, help: "Where to write: a file for gguf, a directory for safetensors and peft-lora.") var out: String
    @Option(name: .long, help: "The snapshot store's LMDB directory (default: <state dir>/<first 16 hex of the model's hash>/lmdb).") var store: String?
    @Option(name: .long, help: "peft-lora: base_model_name_or_path in adapter_config.json (default: the model's name). The updates are relative to the dequantized GGUF weights: an export of snapshot 0 with --format safetensors is the exact base.") var baseModel: String?
    @Flag(name: .long, help: "Skip reading the export back.") var noVerify = false
    @Flag(name: .long, help: "Replace an existing --out.") var force = false

    func run() throws {
        try reportingErrors {
            let config = try daemonOptions.resolve()
            let path = try modelOptions.model ?? config.model ?? modelOptions.path
            let t0 = Date()
            let model = try modelOptions.load(path: path)
            let name = Installation.modelName(path)
            let lmdb = store.map { URL(fileURLWithPath: $0) }
                ?? EditState(directory: config.stateDirectory(paths), baseHash: model.weightHash).snapshotStore
            guard FileManager.default.fileExists(atPath: lmdb.appendingPathComponent("data.mdb").path) else {
                throw fail("no snapshot store for this model at \(lmdb.path) (the state directory of `mesa serve`, or --store)")
            }
            let snapshots = try SnapshotStore(path: lmdb.path)
            let s = try SnapshotExporter.export(model: model, modelName: name, store: snapshots, snapshot: snapshot, format: format,
                                                to: out, baseModel: baseModel, verify: !noVerify, overwrite: force)
            print("exported snapshot \(s.snapshot) of \(name) as \(s.format.rawValue) to \(s.path)")
            print("  weight hash \(s.weightHash) (base \(s.baseHash.prefix(16)), lineage \(s.lineage.isEmpty ? "none" : s.lineage.map(String.init).joined(separator: " → ")))")
            print("  files \(s.files.joined(separator: ", "))")
            if let r = s.adapterRank {
                print("  adapter r \(r), lora_alpha \(r): " + s.modules.map { "\($0.parameter) rank \($0.rank)" }.joined(separator: ", "))
            }
            print("  check \(s.verification ?? "skipped (--no-verify)")")
            log(String(format: "mesa export: %.2f s", Date().timeIntervalSince(t0)))
        }
    }
}
