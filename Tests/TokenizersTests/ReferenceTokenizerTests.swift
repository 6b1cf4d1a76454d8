import Foundation
import ModelRuntime
import TestSupport
import Testing
import Tokenizers

/// Golden tokenizations from the reference tokenizer (ops/reference/make_fixtures.py).
@Suite struct ReferenceTokenizerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// Decoded with JSONDecoder: JSONSerialization's bridged strings can lose a leading U+FEFF.
    struct Case: Decodable { var text: String; var ids: [Int32] }
    struct Cases: Decodable { var cases: [Case]? ; var tokenizer_cases: [Case]?; var text: String?; var ids: [Int32]? }
    static func cases(_ name: String) throws -> Cases {
        try JSONDecoder().decode(Cases.self, from: Data(contentsOf: root.appendingPathComponent("Tests/Fixtures/\(name)")))
    }

    func check(_ tok: BPETokenizer, _ cases: [Case], label: String) {
        var mismatches: [String] = []
        for c in cases {
            let got = tok.encode(c.text)
            if got != c.ids { mismatches.append("\(c.text.debugDescription): got \(got), want \(c.ids)") }
        }
        #expect(mismatches.isEmpty, "\(label): \(mismatches.count)/\(cases.count) differ; first: \(mismatches.prefix(5).joined(separator: "\n"))")
    }

    @Test func smolLM2MatchesReferenceExactly() throws {
        let cases = try #require(try Self.cases("smollm2-tokenizer.json").cases)
        #expect(cases.count >= 2000)
        let tok = try ModelLoader.loadTokenizer(gguf: try TestPaths.defaultModel())
        check(tok, cases, label: "SmolLM2")
        // Decoding inverts encoding (byte-level BPE is lossless for text whose bytes are all in the vocabulary).
        for c in cases.prefix(300) {
            #expect(Array(tok.decode(tok.encode(c.text)).unicodeScalars) == Array(c.text.unicodeScalars))
        }
    }

    @Test(arguments: ["tiny-llama", "tiny-qwen2", "tiny-gpt2"])
    func tokenizerJSONMatchesReference(dir: String) throws {
        let ref = try Self.cases("\(dir)/reference.json")
        let data = try Data(contentsOf: Self.root.appendingPathComponent("Tests/Fixtures/\(dir)/tokenizer.json"))
        let tok = try BPETokenizer.fromTokenizerJSON(data)
        check(tok, try #require(ref.tokenizer_cases), label: dir)
        check(tok, [Case(text: try #require(ref.text), ids: try #require(ref.ids))], label: dir)
    }
}
