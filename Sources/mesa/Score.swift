import ArgumentParser
import Foundation
import ModelRuntime

struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Token-averaged NLL and probability of a target after a prompt (teacher-forced).",
        discussion: """
        The target is tokenized on its own and appended to the prompt's tokens, as CounterFact \
        evaluation does. A target that does not start with whitespace gets one leading space \
        (" Paris"), unless --raw-target is given.
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The prompt text.")
    var prompt: String

    @Option(name: .long, help: "The target continuation.")
    var target: String

    @Flag(name: .long, help: "Tokenize the target exactly as given (no leading space added).")
    var rawTarget = false

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            let model = try modelOptions.load()
            let t = rawTarget || target.first?.isWhitespace == true ? target : " " + target
            let p = model.tokenizer.encode(prompt, addSpecial: true)
            let ids = model.tokenizer.encode(t, parseSpecial: false)
            guard !p.isEmpty else { throw fail("the prompt is empty") }
            guard !ids.isEmpty else { throw fail("the target is empty") }
            let s = try model.score(prompt: p, target: ids)
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(s), as: UTF8.self))
            } else {
                print(String(format: "nll %.6f  probability %.6f  (%d target tokens)", s.meanNLL, s.probability, ids.count))
                for (j, id) in ids.enumerated() {
                    print(String(format: "  %6d %@  nll %.4f", id, model.tokenizer.decode([id]).debugDescription, s.tokenNLL[j]))
                }
            }
        }
    }
}
