/// Splits text into pre-tokens before BPE, exactly as the reference tokenizers do.
///
/// Implemented by hand over Unicode scalars rather than with a regex engine: the GPT-2 pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` has a small,
/// fixed structure, and this is both exact and an order of magnitude faster.
public enum PreTokenizer: String, Codable, Sendable {
    /// GPT-2 byte-level split (Hugging Face `ByteLevel(use_regex=true)`).
    case gpt2
    /// SmolLM / StarCoder: every numeric character is its own piece (`Digits(individual_digits=true)`),
    /// then the GPT-2 split.
    case smollm
    /// Llama-3 / Qwen2 pattern: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (Qwen2 uses `\p{N}` single digits).
    case llama3
    case qwen2

    /// GGUF `tokenizer.ggml.pre` names mapped to a pre-tokenizer.
    public static func fromGGUF(_ name: String?) -> PreTokenizer? {
        switch name ?? "default" {
        case "gpt-2", "gpt2", "default", "refact", "starcoder", "jais", "olmo", "dbrx": return .gpt2
        case "smollm", "codeshell": return .smollm
        case "llama3", "llama-bpe", "smaug-bpe", "tekken", "falcon3", "pixtral", "exaone": return .llama3
        case "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez": return .qwen2
        default: return nil
        }
    }

    /// Pre-tokenizes `text`, returning pieces as ranges of its Unicode scalars.
    public func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(scalars.count / 3 + 1)
        switch self {
        case .gpt2:
            Self.gpt2Split(scalars, 0..<scalars.count, into: &out)
        case .smollm:
            var start = 0
            for i in 0..<scalars.count where Self.isNumber(scalars[i]) {
                if start < i { Self.gpt2Split(scalars, start..<i, into: &out) }
                out.append(i..<(i + 1))
                start = i + 1
            }
            if start < scalars.count { Self.gpt2Split(scalars, start..<scalars.count, into: &out) }
        case .llama3:
            Self.llama3Split(scalars, maxDigits: 3, into: &out)
        case .qwen2:
            Self.llama3Split(scalars, maxDigits: 1, into: &out)
        }
        return out
    }

    // MARK: Character classes (as Oniguruma/`regex` classify them with Unicode enabled).

    @inline(__always) static func isLetter(_ c: Unicode.Scalar) -> Bool {
        if c.value < 0x80 { return (c.value | 0x20) >= 0x61 && (c.value | 0x20) <= 0x7a }
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    @inline(__always) static func isNumber(_ c: Unicode.Scalar) -> Bool {
        if c.value < 0x80 { return c.value >= 0x30 && c.value <= 0x39 }
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    @inline(__always) static func isSpace(_ c: Unicode.Scalar) -> Bool {
        if c.value < 0x80 { return c.value == 0x20 || (c.value >= 0x09 && c.value <= 0x0d) }
        return c.properties.isWhitespace
    }

    @inline(__always) static func isOther(_ c: Unicode.Scalar) -> Bool { !isSpace(c) && !isLetter(c) && !isNumber(c) }

    /// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at i, or 0. `caseInsensitive` for Llama 3.
    @inline(__always) static func contraction(_ s: [Unicode.Scalar], _ i: Int, _ end: Int, caseInsensitive: Bool) -> Int {
        guard s[i] == "'" , i + 1 < end else { return 0 }
        func lower(_ c: Unicode.Scalar) -> Unicode.Scalar {
            caseInsensitive && c.value >= 0x41 && c.value <= 0x5a ? Unicode.Scalar(c.value + 32)! : c
        }
        let c1 = lower(s[i + 1])
        if c1 == "s" || c1 == "t" || c1 == "m" || c1 == "d" { return 2 }
        if i + 2 < end {
            let c2 = lower(s[i + 2])
            if (c1 == "r" && c2 == "e") || (c1 == "v" && c2 == "e") || (c1 == "l" && c2 == "l") { return 3 }
        }
        return 0
    }

    static func gpt2Split(_ s: [Unicode.Scalar], _ range: Range<Int>, into out: inout [Range<Int>]) {
        var i = range.lowerBound
        let end = range.upperBound
        func run(_ from: Int, _ pred: (Unicode.Scalar) -> Bool) -> Int {
            var j = from
            while j < end && pred(s[j]) { j += 1 }
            return j
        }
        while i < end {
            let c = s[i]
            let cl = contraction(s, i, end, caseInsensitive: false)
            if cl > 0 { out.append(i..<(i + cl)); i += cl; continue }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let start = i
            var j = i
            if c == " " && i + 1 < end && !isSpace(s[i + 1]) { j = i + 1 }
            let head = s[j]
            if isLetter(head) { let e = run(j, isLetter); out.append(start..<e); i = e; continue }
            if isNumber(head) { let e = run(j, isNumber); out.append(start..<e); i = e; continue }
            if !isSpace(head) { let e = run(j, isOther); out.append(start..<e); i = e; continue }
            // Whitespace: `\s+(?!\S)` then `\s+`.
            let e = run(i, isSpace)
            if e == end || e - i == 1 { out.append(i..<e); i = e } else { out.append(i..<(e - 1)); i = e - 1 }
        }
    }

    static func llama3Split(_ s: [Unicode.Scalar], maxDigits: Int, into out: inout [Range<Int>]) {
        let end = s.count
        var i = 0
        func isCRLF(_ c: Unicode.Scalar) -> Bool { c == "\r" || c == "\n" }
        while i < end {
            let c = s[i]
            let cl = contraction(s, i, end, caseInsensitive: true)
            if cl > 0 { out.append(i..<(i + cl)); i += cl; continue }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if isLetter(c) || (!isCRLF(c) && !isLetter(c) && !isNumber(c) && i + 1 < end && isLetter(s[i + 1])) {
                var j = isLetter(c) ? i : i + 1
                while j < end && isLetter(s[j]) { j += 1 }
                out.append(i..<j); i = j; continue
            }
            // `\p{N}{1,maxDigits}`
            if isNumber(c) {
                var j = i
                while j < end && j - i < maxDigits && isNumber(s[j]) { j += 1 }
                out.append(i..<j); i = j; continue
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            do {
                var j = i
                if c == " " && i + 1 < end && isOther(s[i + 1]) { j = i + 1 }
                if j < end && isOther(s[j]) {
                    while j < end && isOther(s[j]) { j += 1 }
                    while j < end && isCRLF(s[j]) { j += 1 }
                    out.append(i..<j); i = j; continue
                }
            }
            // `\s*[\r\n]+`: the longest whitespace run that ends with a newline.
            var e = i
            while e < end && isSpace(s[e]) { e += 1 }
            var lastNL = -1
            for k in i..<e where isCRLF(s[k]) { lastNL = k }
            if lastNL >= 0 {
                var j = lastNL + 1
                while j < e && isCRLF(s[j]) { j += 1 }
                out.append(i..<j); i = j; continue
            }
            // `\s+(?!\S)` then `\s+`.
            if e == end || e - i == 1 { out.append(i..<e); i = e } else { out.append(i..<(e - 1)); i = e - 1 }
        }
    }
}
