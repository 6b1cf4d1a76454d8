import Testing
@testable import Tokenizers

@Suite struct PreTokenizerTests {
    func pieces(_ s: String, _ p: PreTokenizer) -> [String] {
        let sc = Array(s.unicodeScalars)
        return p.split(sc).map { r in var v = String.UnicodeScalarView(); v.append(contentsOf: sc[r]); return String(v) }
    }

    @Test func gpt2Pattern() {
        #expect(pieces("Hello world", .gpt2) == ["Hello", " world"])
        #expect(pieces("I'm here, they'll go", .gpt2) == ["I", "'m", " here", ",", " they", "'ll", " go"])
        #expect(pieces("a  b", .gpt2) == ["a", " ", " b"])  // \s+(?!\S) leaves one space for the word
        #expect(pieces("a\n\nb", .gpt2) == ["a", "\n", "\n", "b"])
        #expect(pieces("x   ", .gpt2) == ["x", "   "])
        #expect(pieces("abc123 def", .gpt2) == ["abc", "123", " def"])
        #expect(pieces(" !!? ok", .gpt2) == [" !!?", " ok"])
        #expect(pieces("I'M", .gpt2) == ["I", "'", "M"])  // contractions are lowercase-only in GPT-2
    }

    @Test func smollmIsolatesDigits() {
        #expect(pieces("abc123 def", .smollm) == ["abc", "1", "2", "3", " def"])
        #expect(pieces("in 1984.", .smollm) == ["in", " ", "1", "9", "8", "4", "."])
        #expect(pieces("½ and ٣", .smollm) == ["½", " and", " ", "٣"])
    }

    @Test func llama3Pattern() {
        #expect(pieces("Hello world 12345", .llama3) == ["Hello", " world", " ", "123", "45"])
        #expect(pieces("I'M ok", .llama3) == ["I", "'M", " ok"])
        #expect(pieces("a\n\n b", .llama3) == ["a", "\n\n", " b"])
    }
}

@Suite struct StreamingDecoderTests {
    @Test func holdsBackIncompleteUTF8() {
        var d = StreamingDecoder()
        let bytes = Array("é€😀".utf8)
        var out = ""
        for b in bytes { out += d.push([b]) }
        out += d.flush()
        #expect(out == "é€😀")
        var d2 = StreamingDecoder()
        #expect(d2.push(Array(bytes[0..<1])) == "")
        #expect(d2.push(Array(bytes[1..<3])) == "é")
    }
}

@Suite struct CanonicalEquivalenceTests {
    /// NFC and NFD spellings are different byte sequences and must tokenize differently.
    @Test func nfcAndNfdAreNotConflated() throws {
        let vocab = (0..<256).map { String(ByteLevel.byteToScalar[$0]) }
        let tok = try BPETokenizer(vocab: vocab, merges: [], specialIds: [], preTokenizer: .gpt2)
        let nfc = "\u{D55C}", nfd = "\u{1112}\u{1161}\u{11AB}"
        #expect(nfc == nfd)  // Swift String equality is canonical equivalence...
        #expect(tok.encode(nfc).count == 3)
        #expect(tok.encode(nfd).count == 9)  // ...but the bytes differ.
        #expect(tok.encode(nfc).count == 3)
    }
}
