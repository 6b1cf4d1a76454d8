/// JSON Pointer (RFC 6901) helpers.
public enum JSONPointer {
    /// Escapes one reference token (`~` → `~0`, `/` → `~1`).
    public static func escape(_ token: String) -> String {
        guard token.utf8.contains(where: { $0 == UInt8(ascii: "~") || $0 == UInt8(ascii: "/") }) else { return token }
        return token.replacingAll("~", with: "~0").replacingAll("/", with: "~1")
    }

    /// Splits a pointer such as `/a/b~1c` into unescaped tokens; `nil` if it is not a valid pointer.
    public static func tokens(_ pointer: String) -> [String]? {
        if pointer.isEmpty { return [] }
        guard pointer.hasPrefix("/") else { return nil }
        var result: [String] = []
        for raw in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            var token = ""
            var iterator = raw.makeIterator()
            while let character = iterator.next() {
                if character == "~" {
                    switch iterator.next() {
                    case "0": token.append("~")
                    case "1": token.append("/")
                    default: return nil
                    }
                } else {
                    token.append(character)
                }
            }
            result.append(token)
        }
        return result
    }

    /// Joins tokens into a pointer string.
    public static func join(_ tokens: [String]) -> String {
        var result = ""
        for token in tokens {
            result += "/"
            result += escape(token)
        }
        return result
    }

    /// Resolves `tokens` against `value`.
    public static func resolve(_ tokens: [String], in value: JSONValue) -> JSONValue? {
        var current = value
        for token in tokens {
            switch current {
            case .object(let object):
                guard let next = object[token] else { return nil }
                current = next
            case .array(let elements):
                guard let index = arrayIndex(token), index < elements.count else { return nil }
                current = elements[index]
            default:
                return nil
            }
        }
        return current
    }

    /// A JSON Pointer array index: `0` or digits without a leading zero.
    static func arrayIndex(_ token: String) -> Int? {
        guard !token.isEmpty, token.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        if token.utf8.count > 1 && token.utf8.first == 48 { return nil }
        return Int(token)
    }
}

extension String {
    /// Replaces every occurrence of `target` (non-empty) with `replacement`.
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var remainder = self[...]
        while let range = remainder.utf8Range(of: target) {
            result += remainder[..<range.lowerBound]
            result += replacement
            remainder = remainder[range.upperBound...]
        }
        result += remainder
        return result
    }

    /// Finds the first occurrence of `target` (exact code-unit match).
    func utf8Range(of target: String) -> Range<String.Index>? {
        self[...].utf8Range(of: target)
    }
}

extension Substring {
    /// Finds the first occurrence of `target` (exact UTF-8 match).
    func utf8Range(of target: String) -> Range<String.Index>? {
        let needle = Array(target.utf8)
        guard !needle.isEmpty else { return startIndex..<startIndex }
        let haystack = utf8
        var index = haystack.startIndex
        while index != haystack.endIndex {
            var probe = index
            var matched = 0
            while matched < needle.count && probe != haystack.endIndex && haystack[probe] == needle[matched] {
                matched += 1
                probe = haystack.index(after: probe)
            }
            if matched == needle.count { return index..<probe }
            index = haystack.index(after: index)
        }
        return nil
    }
}
