import ArgumentParser
import Foundation
import ModelRuntime
import Tensor

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Continue a prompt with the resident model (greedy or top-k sampling, KV cache).")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The prompt text.")
    var prompt: String

    @Option(name: .long, help: "Maximum new tokens.")
    var maxTokens: Int = 32

    @Option(name: .long, help: "Sample from the k most likely tokens (0 = greedy).")
    var topK: Int = 0

    @Option(name: .long, help: "Sampling temperature (with --top-k).")
    var temperature: Float = 1.0

    @Option(name: .long, help: "Random seed for sampling.")
    var seed: UInt64 = 0

    @Flag(name: .long, help: "Wrap the prompt in the model's chat format (ChatML: <|im_start|>user … <|im_start|>assistant).")
    var chat = false

    @Flag(name: .long, help: "Print timing and BLAS configuration to stderr.")
    var verbose = false

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be ≥ 0") }
        guard topK >= 0 else { throw ValidationError("--top-k must be ≥ 0") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let model = try modelOptions.load()
            let text = chat ? "<|im_start|>user\n\(prompt)<|im_end|>\n<|im_start|>assistant\n" : prompt
            let ids = model.tokenizer.encode(text, addSpecial: true)
            guard !ids.isEmpty else { throw fail("the prompt is empty") }
            guard ids.count < model.config.contextLength else {
                throw fail("the prompt has \(ids.count) tokens; the model's context is \(model.config.contextLength)")
            }
            print(prompt, terminator: chat ? "\n" : "")
            let result = try model.generate(
                prompt: ids, maxTokens: maxTokens, sampling: topK > 0 ? .topK(k: topK, temperature: temperature) : .greedy,
                seed: seed, onText: { print($0, terminator: ""); fflush(nil) })  // nil: every output stream (stdout is a C global Swift 6 will not read)
            print()
            if verbose {
                let decodeRate = result.tokens.count > 1 ? Double(result.tokens.count - 1) / result.decodeSeconds : 0
                FileHandle.standardError.write(Data(String(
                    format: "prompt %d tokens, prefill %.1f ms (%.0f tok/s); %d new tokens, decode %.1f tok/s; %@\n",
                    ids.count, result.prefillSeconds * 1e3, Double(ids.count) / result.prefillSeconds,
                    result.tokens.count, decodeRate, BLAS.configuration.description).utf8))
            }
        }
    }
}
