import Foundation
import ModelRuntime
import Tokenizers

/// One fact to write: "{subject} …" should continue with `targetNew` instead of `targetTrue`.
public struct EditRequest: Codable, Sendable, Equatable {
    public var subject: String
    /// The prompt with `{}` exactly once where the subject goes, e.g. "{} is located in".
    public var prompt: String
    public var targetNew: String
    public var targetTrue: String?

    public init(subject: String, prompt: String, targetNew: String, targetTrue: String? = nil) {
        self.subject = subject
        self.prompt = prompt
        self.targetNew = targetNew
        self.targetTrue = targetTrue
    }

    /// The prompt with the subject filled in.
    public var filledPrompt: String { prompt.replacingOccurrences(of: "{}", with: subject) }

    /// Checks the request's shape before any model work.
    public func validate() throws {
        let s = subject.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !s.isEmpty else { throw EditError(.subjectNotFound, "the subject is empty") }
        let holes = prompt.components(separatedBy: "{}").count - 1
        if holes == 0 {
            if prompt.contains(subject) {
                throw EditError(.promptPlaceholder, "the prompt has no {} placeholder; write {} where the subject \"\(subject)\" goes")
            }
            throw EditError(.subjectNotFound, "the subject \"\(subject)\" does not occur in the prompt \"\(prompt)\", which has no {} placeholder")
        }
        guard holes == 1 else { throw EditError(.promptPlaceholder, "the prompt has \(holes) {} placeholders; it needs exactly one") }
        let t = targetNew.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !t.isEmpty else { throw EditError(.emptyTarget, "target_new is empty") }
        if let tt = targetTrue {
            let tt = tt.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !tt.isEmpty else { throw EditError(.emptyTarget, "target_true is empty") }
            guard tt != t else { throw EditError(.targetUnchanged, "target_new equals target_true (\"\(t)\"): nothing to edit") }
        }
    }
}

/// A tokenized sentence and the index of the subject's last token in it.
public struct SubjectPrompt: Sendable, Equatable {
    public var tokens: [Int32]
    public var subjectLast: Int
}

/// Turns edit text into token ids the way every method and metric must agree on.
///
/// - Sentences are tokenized whole (prefix + prompt with the subject filled in), never piecewise, and
///   the subject's last token is found by byte offsets: byte-level BPE makes the tokens' bytes
///   concatenate to the text, so the token covering the subject's last byte is exact even when BPE
///   merges across the subject's boundary (piecewise tokenization, as the reference code does, can be
///   off by one there).
/// - A BOS token is prepended to sentences only when the tokenizer is configured to add one, and
///   never inside a target.
/// - Targets are tokenized as `" " + target` (one leading space, however many the caller gave), and
///   appended to the prompt's ids, not re-tokenized with it: the ids scored are the ids trained.
/// - Special-token text in user input is treated as ordinary text.
public struct EditTokenizer: Sendable {
    public let tokenizer: BPETokenizer
    public let contextLength: Int

    public init(model: LanguageModel) {
        tokenizer = model.tokenizer
        contextLength = model.config.contextLength
    }

    var bos: [Int32] { tokenizer.addBOS ? tokenizer.bosId.map { [$0] } ?? [] : [] }

    /// Tokens of `prefix + prompt(subject)` and the subject's last token index.
    public func subjectPrompt(prefix: String, prompt: String, subject: String) throws -> SubjectPrompt {
        guard let hole = prompt.range(of: "{}") else { throw EditError(.promptPlaceholder, "the prompt has no {} placeholder") }
        let head = prefix + String(prompt[..<hole.lowerBound])
        // Trailing whitespace would double the target's own leading space.
        var tail = String(prompt[hole.upperBound...])
        while tail.last?.isWhitespace == true { tail.removeLast() }
        let text = head + subject + tail
        let subjectEnd = head.utf8.count + subject.utf8.count  // byte offset just past the subject
        guard subject.utf8.count > 0 else { throw EditError(.subjectNotFound, "the subject is empty") }
        let body = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
        var bytes = 0, last = -1
        for (i, id) in body.enumerated() where last < 0 {
            bytes += tokenizer.tokenBytes(id).count
            if bytes >= subjectEnd { last = i }
        }
        guard byteCount(body) == text.utf8.count, last >= 0 else {
            throw EditError(.subjectNotFound, "the text \"\(text)\" does not tokenize losslessly, so the subject cannot be located")
        }
        let tokens = bos + body
        guard tokens.count <= contextLength else { throw EditError(.tooLong, "\(tokens.count) tokens exceed the context of \(contextLength)") }
        return SubjectPrompt(tokens: tokens, subjectLast: last + bos.count)
    }

    /// Checks, before any model work, that every sequence an edit of `request` and its evaluation
    /// run fits the model's context: each template prefix with the prompt, the "{} is a" prompt and
    /// target_new (the optimization), and each scored prompt (the rewrite prompt, paraphrases,
    /// neighbourhood prompts) with the longest of `candidates` or `generated` tokens. Parts are
    /// tokenized separately, which never undercounts by more than the merges at their seams, so the
    /// bound keeps one token of slack per seam. Throws `.tooLong` naming the text that does not fit.
    public func checkFits(_ request: EditRequest, prefixes: [String], scoredPrompts: [(what: String, text: String)],
                          candidates: [String], generated: Int = 0) throws {
        func count(_ text: String) -> Int { tokenizer.encode(text, addSpecial: false, parseSpecial: false).count }
        func check(_ n: Int, _ what: String) throws {
            guard n <= contextLength else {
                throw EditError(.tooLong, "\(what) needs about \(n) tokens; the model's context is \(contextLength) tokens")
            }
        }
        // Each text alone first, so that the error names the culprit.
        try check(count(request.subject) + bos.count, "the subject")
        let targetNew = try target(request.targetNew).count
        try check(targetNew, "target_new")
        let lengths = try candidates.map { try target($0).count }
        let answer = max(lengths.max() ?? 0, generated, targetNew)
        let filled = bos.count + count(request.filledPrompt)
        try check(filled, "the prompt with the subject filled in")
        let prefix = prefixes.map(count).max() ?? 0
        try check(prefix + filled + targetNew + 2, "the longest context template with the prompt and target_new")
        try check(bos.count + count(request.subject + " is a") + targetNew + 1, "the \"{} is a\" prompt with target_new")
        for (what, text) in scoredPrompts {
            try check(bos.count + count(text) + answer + 1, "\(what) with its longest answer")
        }
    }

    /// Bytes the tokens stand for; equal to the text's UTF-8 length exactly when nothing was dropped.
    func byteCount(_ ids: [Int32]) -> Int { ids.reduce(0) { $0 + tokenizer.tokenBytes($1).count } }

    /// Tokens of a plain prompt (no subject), with BOS if configured.
    public func prompt(_ text: String) -> [Int32] { bos + tokenizer.encode(text, addSpecial: false, parseSpecial: false) }

    /// Tokens of a target continuation: `" " + target` with surrounding whitespace normalized.
    public func target(_ text: String) throws -> [Int32] {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !t.isEmpty else { throw EditError(.emptyTarget, "the target is empty") }
        let ids = tokenizer.encode(" " + t, addSpecial: false, parseSpecial: false)
        guard !ids.isEmpty, byteCount(ids) == (" " + t).utf8.count else {
            throw EditError(.emptyTarget, "the target \"\(t)\" cannot be tokenized by this model's vocabulary")
        }
        return ids
    }
}

/// The CounterFact scorer on a model (METHODS §3.2): the token-averaged NLL of `" " + candidate`
/// after the prompt, tokenized exactly as edits are (`EditTokenizer`), one prompt pass shared by
/// all candidates through a KV cache.
public enum CounterFactScorer {
    public static func make(_ model: LanguageModel) -> (_ prompt: String, _ candidates: [String]) throws -> [Double] {
        let tok = EditTokenizer(model: model)
        return { prompt, candidates in
            try model.candidateNLL(prompt: tok.prompt(prompt), candidates: candidates.map { try tok.target($0) })
        }
    }
}
