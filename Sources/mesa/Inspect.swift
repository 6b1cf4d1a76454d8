import ArgumentParser
import Foundation
import ModelRuntime
import Tensor

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Model metadata, tensor types and the weight hash.")

    @OptionGroup var modelOptions: ModelOptions

    @Flag(name: .long, help: "List every tensor with its stored type and shape.")
    var tensors = false

    @Flag(name: .long, help: "List all file metadata.")
    var metadata = false

    func run() throws {
        try reportingErrors {
            let t0 = Date()
            let model = try modelOptions.load()
            let loadSeconds = Date().timeIntervalSince(t0)
            let c = model.config
            print("model       \(model.source.path)")
            print("format      \(model.source.format.rawValue)")
            print("arch        \(c.architecture.rawValue): \(c.layers) layers, hidden \(c.hidden), mlp \(c.intermediate), heads \(c.heads)/\(c.kvHeads) kv, head dim \(c.headDim)")
            print("context     \(c.contextLength), rope \(c.ropeStyle.map { "\($0.rawValue) base \(c.ropeBase)" } ?? "none"), norm eps \(c.normEps), tied embeddings \(c.tiedEmbeddings)")
            print("parameters  \(c.parameterCount) (\(String(format: "%.1f", Double(c.parameterCount) * 4 / 1_048_576)) MiB as Float32)")
            print("vocab       \(c.vocabSize), tokenizer \(model.tokenizer.preTokenizer.rawValue), bos \(model.tokenizer.bosId.map(String.init) ?? "-"), eos \(model.tokenizer.eosId.map(String.init) ?? "-"), add bos \(model.tokenizer.addBOS)")
            var counts: [String: Int] = [:]
            for t in model.source.tensorTypes { counts[t.type, default: 0] += 1 }
            print("tensor types \(counts.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: ", "))")
            let h0 = Date()
            let hash = model.weightHash
            print("weight hash \(hash)")
            print(String(format: "load %.2f s, hash %.2f s; %@", loadSeconds, Date().timeIntervalSince(h0), BLAS.configuration.description))
            if tensors {
                for t in model.source.tensorTypes { print("  \(t.name)  \(t.type)  \(t.shape)") }
            }
            if metadata {
                for m in model.source.metadata { print("  \(m.key) = \(m.value)") }
            }
        }
    }
}
