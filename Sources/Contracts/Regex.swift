import Foundation

/// Outcome of a guarded regular-expression search.
enum PatternOutcome {
    case match
    case noMatch
    /// The input was longer than `ValidatorOptions.maxPatternInputLength` and was not searched.
    case inputTooLong
    /// The search was abandoned after `ValidatorOptions.patternTimeBudget`.
    case timedOut
}

/// An ECMA-262 regular expression compiled once for repeated searches.
///
/// Patterns that are plain literals (optionally anchored with `^` / `$`) are matched by byte
/// comparison, and patterns in the subset handled by `SimplePattern` (character classes with
/// quantifiers, the shape of most schema patterns) by a linear-time NFA; neither invokes the regex
/// engine or can backtrack catastrophically. Everything else is translated to ICU syntax
/// (the engine behind `NSRegularExpression`) so that ECMA semantics are kept where they differ:
/// `\d`, `\w` and `\s` are the ASCII/ECMA classes rather than Unicode ones, `$` matches only at the
/// very end of input, `[^]` and `[]` keep their ECMA meaning.
///
/// Searches are bounded: inputs longer than a configured length are rejected without searching, and
/// the ICU search reports progress to a callback that abandons it once a time budget is spent, so a
/// catastrophically backtracking pattern such as `^(a+)+$` ends in `.timedOut` rather than a hang.
final class CompiledPattern: @unchecked Sendable {  // immutable after init; the matcher's NSRegularExpression is safe for concurrent use
    // NSRegularExpression is immutable after creation and documented as safe for concurrent use.

    private enum Matcher {
        case literal(needle: [UInt8], anchoredStart: Bool, anchoredEnd: Bool)
        case simple(SimplePattern)
        case regex(NSRegularExpression)
    }

    /// The pattern as written in the schema.
    let source: String
    private let matcher: Matcher

    /// Compiles `pattern`; throws a description of the problem if it is not a valid regex.
    init(_ pattern: String) throws(PatternSyntaxError) {
        source = pattern
        if let literal = Self.literal(pattern) {
            matcher = .literal(needle: literal.needle, anchoredStart: literal.start, anchoredEnd: literal.end)
            return
        }
        if let simple = SimplePattern(pattern) {
            matcher = .simple(simple)
            return
        }
        guard let translated = Self.translate(pattern) else {
            throw PatternSyntaxError(pattern: pattern, reason: "unbalanced character class or trailing backslash")
        }
        do {
            matcher = .regex(try NSRegularExpression(pattern: translated, options: []))
        } catch {
            throw PatternSyntaxError(pattern: pattern, reason: "not a valid regular expression")
        }
    }

    /// Searches `string` for a match anywhere (ECMA `RegExp.prototype.test` semantics).
    func search(_ string: String, maxInputLength: Int, timeBudget: Double) -> PatternOutcome {
        switch matcher {
        case .literal(let needle, let anchoredStart, let anchoredEnd):
            return Self.literalSearch(needle, anchoredStart, anchoredEnd, in: string) ? .match : .noMatch
        case .simple(let simple):
            return simple.matches(string) ? .match : .noMatch
        case .regex(let regex):
            let length = string.utf16.count
            if length > maxInputLength { return .inputTooLong }
            var outcome = PatternOutcome.noMatch
            let started = DispatchTime.now().uptimeNanoseconds
            let budget = UInt64(max(0, timeBudget) * 1e9)
            regex.enumerateMatches(in: string, options: [.reportProgress], range: NSRange(location: 0, length: length)) { result, _, stop in
                if result != nil {
                    outcome = .match
                    stop.pointee = true
                } else if DispatchTime.now().uptimeNanoseconds &- started > budget {
                    outcome = .timedOut
                    stop.pointee = true
                }
            }
            return outcome
        }
    }

    private static func literalSearch(_ needle: [UInt8], _ anchoredStart: Bool, _ anchoredEnd: Bool, in string: String) -> Bool {
        var string = string
        return string.withUTF8 { haystack in
            let n = needle.count
            let h = haystack.count
            if n > h { return false }
            if n == 0 { return !(anchoredStart && anchoredEnd) || h == 0 }
            if anchoredStart && anchoredEnd && n != h { return false }
            return needle.withUnsafeBufferPointer { needleBuffer in
                if anchoredStart { return memcmp(needleBuffer.baseAddress!, haystack.baseAddress!, n) == 0 }
                if anchoredEnd { return memcmp(needleBuffer.baseAddress!, haystack.baseAddress! + (h - n), n) == 0 }
                let first = needleBuffer[0]
                var index = 0
                while index <= h - n {
                    if haystack[index] == first && memcmp(needleBuffer.baseAddress!, haystack.baseAddress! + index, n) == 0 { return true }
                    index += 1
                }
                return false
            }
        }
    }

    /// Recognizes patterns without metacharacters (escaped punctuation allowed).
    private static func literal(_ pattern: String) -> (needle: [UInt8], start: Bool, end: Bool)? {
        var bytes = Array(pattern.utf8)
        var start = false
        var end = false
        if bytes.first == UInt8(ascii: "^") {
            start = true
            bytes.removeFirst()
        }
        if bytes.last == UInt8(ascii: "$") {
            // `\$` at the end is an escaped dollar, not an anchor.
            var backslashes = 0
            var index = bytes.count - 2
            while index >= 0 && bytes[index] == UInt8(ascii: "\\") { backslashes += 1; index -= 1 }
            if backslashes % 2 == 0 {
                end = true
                bytes.removeLast()
            }
        }
        var needle: [UInt8] = []
        var index = 0
        let meta: Set<UInt8> = Set("^$.|?*+()[]{}".utf8)
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count else { return nil }
                let next = bytes[index + 1]
                // Only escaped ASCII punctuation is a literal; `\d`, `\b`, `\u..` etc. are not.
                guard next < 0x80, !(next >= 0x30 && next <= 0x39), !(next >= 0x41 && next <= 0x5A), !(next >= 0x61 && next <= 0x7A) else { return nil }
                needle.append(next)
                index += 2
                continue
            }
            if meta.contains(byte) { return nil }
            needle.append(byte)
            index += 1
        }
        return (needle, start, end)
    }

    private static let ecmaSpace = "\\t\\n\\x{0B}\\f\\r\\x{2028}\\x{2029}\\x{FEFF}\\p{Zs}"

    /// Translates ECMA-262 syntax to ICU syntax; `nil` on unbalanced classes.
    static func translate(_ pattern: String) -> String? {
        let scalars = Array(pattern.unicodeScalars)
        var output = ""
        var index = 0
        var inClass = false
        while index < scalars.count {
            let scalar = scalars[index]
            if scalar == "\\" {
                guard index + 1 < scalars.count else { return nil }
                let next = scalars[index + 1]
                index += 2
                switch next {
                case "d": output += inClass ? "0-9" : "[0-9]"
                case "D": output += "[^0-9]"
                case "w": output += inClass ? "a-zA-Z0-9_" : "[a-zA-Z0-9_]"
                case "W": output += "[^a-zA-Z0-9_]"
                case "s": output += inClass ? ecmaSpace : "[\(ecmaSpace)]"
                case "S": output += "[^\(ecmaSpace)]"
                case "b" where inClass: output += "\\x{08}"
                default:
                    output.unicodeScalars.append("\\")
                    output.unicodeScalars.append(next)
                }
                continue
            }
            if inClass {
                switch scalar {
                case "]":
                    inClass = false
                    output += "]"
                case "[", "&":
                    output += "\\" + String(scalar)
                default:
                    output.unicodeScalars.append(scalar)
                }
                index += 1
                continue
            }
            switch scalar {
            case "[":
                if index + 1 < scalars.count, scalars[index + 1] == "]" {
                    output += "(?!)"
                    index += 2
                    continue
                }
                if index + 2 < scalars.count, scalars[index + 1] == "^", scalars[index + 2] == "]" {
                    output += "[\\s\\S]"
                    index += 3
                    continue
                }
                inClass = true
                output += "["
                index += 1
                if index < scalars.count, scalars[index] == "^" {
                    output += "^"
                    index += 1
                }
                // A leading `]` is literal in ICU but closes the class in ECMA (handled above).
            case "$":
                output += "\\z"
                index += 1
            default:
                output.unicodeScalars.append(scalar)
                index += 1
            }
        }
        return inClass ? nil : output
    }
}

/// A `pattern` / `patternProperties` value that is not a valid regular expression.
struct PatternSyntaxError: Error {
    let pattern: String
    let reason: String
}
