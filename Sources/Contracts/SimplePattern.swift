/// A linear-time matcher for the common subset of ECMA-262 patterns: a sequence of literals,
/// `.`, ASCII character classes (`[a-z0-9_]`, `[^/]`, `\d`, `\w` and their negations) with
/// quantifiers (`?`, `*`, `+`, `{n}`, `{n,}`, `{n,m}`), optionally anchored with `^` and `$`.
///
/// It simulates a Thompson NFA, so matching is O(length × pattern size) with no backtracking and
/// no allocation; anything outside the subset (groups, alternation, lookaround, backreferences,
/// Unicode classes) is left to the ICU engine.
struct SimplePattern: Sendable {
    /// A set of code points.
    struct CharacterSet: Sendable {
        var low: UInt64 = 0
        var high: UInt64 = 0
        var matchesNonASCII = false
        var excludesLineSeparators = false
        var scalar: UInt32?

        static func single(_ value: UInt32) -> CharacterSet {
            if value < 128 {
                var set = CharacterSet()
                set.insert(value)
                return set
            }
            var set = CharacterSet()
            set.scalar = value
            return set
        }

        mutating func insert(_ value: UInt32) {
            if value < 64 { low |= 1 << UInt64(value) } else { high |= 1 << UInt64(value - 64) }
        }

        mutating func insert(_ range: ClosedRange<UInt32>) {
            for value in range { insert(value) }
        }

        mutating func formUnion(_ other: CharacterSet) {
            low |= other.low
            high |= other.high
            matchesNonASCII = matchesNonASCII || other.matchesNonASCII
        }

        func inverted() -> CharacterSet {
            var set = CharacterSet()
            set.low = ~low
            set.high = ~high
            set.matchesNonASCII = !matchesNonASCII
            return set
        }

        @inline(__always)
        func contains(_ value: UInt32) -> Bool {
            if let scalar { return value == scalar }
            if value < 64 { return low & (1 << UInt64(value)) != 0 }
            if value < 128 { return high & (1 << UInt64(value - 64)) != 0 }
            if excludesLineSeparators && (value == 0x2028 || value == 0x2029) { return false }
            return matchesNonASCII
        }

        static let digits: CharacterSet = {
            var set = CharacterSet()
            set.insert(48...57)
            return set
        }()

        static let word: CharacterSet = {
            var set = CharacterSet()
            set.insert(48...57)
            set.insert(65...90)
            set.insert(97...122)
            set.insert(95)
            return set
        }()

        static let dot: CharacterSet = {
            var set = CharacterSet().inverted()
            set.low &= ~((1 << 10) | (1 << 13))
            set.excludesLineSeparators = true
            return set
        }()
    }

    enum Repeat: Sendable { case one, optional, star }

    struct Element: Sendable {
        let set: CharacterSet
        let mode: Repeat
    }

    let elements: [Element]
    let anchoredStart: Bool
    let anchoredEnd: Bool

    static let maxElements = 256

    /// Parses `pattern`; `nil` if it uses syntax outside the supported subset.
    init?(_ pattern: String) {
        let scalars = Array(pattern.unicodeScalars)
        var index = 0
        var end = scalars.count
        anchoredStart = scalars.first == "^"
        if anchoredStart { index = 1 }
        var trailingDollar = false
        if end > index, scalars[end - 1] == "$" {
            var backslashes = 0
            var probe = end - 2
            while probe >= index && scalars[probe] == "\\" { backslashes += 1; probe -= 1 }
            if backslashes % 2 == 0 {
                trailingDollar = true
                end -= 1
            }
        }
        anchoredEnd = trailingDollar
        var elements: [Element] = []
        while index < end {
            var set: CharacterSet
            let scalar = scalars[index]
            switch scalar {
            case "\\":
                guard index + 1 < end, let escaped = Self.escape(scalars[index + 1]) else { return nil }
                set = escaped
                index += 2
            case "[":
                index += 1
                var negated = false
                if index < end && scalars[index] == "^" { negated = true; index += 1 }
                guard index < end, scalars[index] != "]" else { return nil }
                set = CharacterSet()
                var closed = false
                while index < end {
                    var member = scalars[index]
                    if member == "]" { closed = true; index += 1; break }
                    if member == "[" { return nil }
                    var memberSet: CharacterSet?
                    if member == "\\" {
                        guard index + 1 < end else { return nil }
                        let next = scalars[index + 1]
                        switch next {
                        case "d", "D", "w", "W":
                            memberSet = Self.escape(next)
                        default:
                            guard next.isASCII, !next.properties.isAlphabetic, !("0"..."9").contains(next) else { return nil }
                            member = next
                        }
                        index += 2
                    } else {
                        index += 1
                    }
                    if let memberSet {
                        set.formUnion(memberSet)
                        continue
                    }
                    guard member.isASCII else { return nil }
                    if index + 1 < end, scalars[index] == "-", scalars[index + 1] != "]" {
                        var upper = scalars[index + 1]
                        if upper == "\\" {
                            guard index + 2 < end, scalars[index + 2].isASCII, !scalars[index + 2].properties.isAlphabetic else { return nil }
                            upper = scalars[index + 2]
                            index += 1
                        }
                        guard upper.isASCII, upper.value >= member.value else { return nil }
                        set.insert(member.value...upper.value)
                        index += 2
                    } else {
                        set.insert(member.value)
                    }
                }
                guard closed else { return nil }
                if negated { set = set.inverted() }
            case ".":
                set = .dot
                index += 1
            case "(", ")", "|", "*", "+", "?", "{", "}", "^", "$", "]":
                return nil
            default:
                set = .single(scalar.value)
                index += 1
            }
            // Quantifier.
            var minimum = 1
            var maximum: Int? = 1
            if index < end {
                switch scalars[index] {
                case "?": minimum = 0; maximum = 1; index += 1
                case "*": minimum = 0; maximum = nil; index += 1
                case "+": minimum = 1; maximum = nil; index += 1
                case "{":
                    guard let close = scalars[index..<end].firstIndex(of: "}") else { return nil }
                    let body = String(String.UnicodeScalarView(scalars[(index + 1)..<close]))
                    let parts = body.split(separator: ",", omittingEmptySubsequences: false)
                    guard (1...2).contains(parts.count), let low = Int(parts[0]) else { return nil }
                    minimum = low
                    if parts.count == 1 {
                        maximum = low
                    } else if parts[1].isEmpty {
                        maximum = nil
                    } else {
                        guard let high = Int(parts[1]), high >= low else { return nil }
                        maximum = high
                    }
                    index = close + 1
                default:
                    break
                }
                if minimum != 1 || maximum != 1, index < end, scalars[index] == "?" { index += 1 }
                if index < end, "?*+{".unicodeScalars.contains(scalars[index]) { return nil }
            }
            let copies = minimum + (maximum.map { $0 - minimum } ?? 1)
            guard elements.count + copies <= Self.maxElements else { return nil }
            for _ in 0..<minimum { elements.append(Element(set: set, mode: .one)) }
            if let maximum {
                for _ in minimum..<maximum { elements.append(Element(set: set, mode: .optional)) }
            } else {
                elements.append(Element(set: set, mode: .star))
            }
        }
        self.elements = elements
    }

    private static func escape(_ scalar: Unicode.Scalar) -> CharacterSet? {
        switch scalar {
        case "d": return .digits
        case "D": return CharacterSet.digits.inverted()
        case "w": return .word
        case "W": return CharacterSet.word.inverted()
        case "n": return .single(10)
        case "r": return .single(13)
        case "t": return .single(9)
        default:
            guard scalar.isASCII, !scalar.properties.isAlphabetic, !("0"..."9").contains(scalar) else { return nil }
            return .single(scalar.value)
        }
    }

    /// `true` if the pattern matches somewhere in `string` (anchors permitting).
    func matches(_ string: String) -> Bool {
        let count = elements.count
        return withUnsafeTemporaryAllocation(of: Bool.self, capacity: 2 * (count + 1)) { buffer in
            var current = UnsafeMutableBufferPointer(rebasing: buffer[0...count])
            var next = UnsafeMutableBufferPointer(rebasing: buffer[(count + 1)...])
            current.initialize(repeating: false)
            next.initialize(repeating: false)
            addState(0, to: current)
            if current[count] && !anchoredEnd { return true }
            for scalar in string.unicodeScalars {
                let value = scalar.value
                for state in 0...count { next[state] = false }
                var any = false
                for state in 0..<count where current[state] {
                    let element = elements[state]
                    guard element.set.contains(value) else { continue }
                    any = true
                    addState(element.mode == .star ? state : state + 1, to: next)
                }
                if !anchoredStart {
                    addState(0, to: next)
                    any = true
                }
                if !any { return false }
                swap(&current, &next)
                if current[count] && !anchoredEnd { return true }
            }
            return current[count]
        }
    }

    /// Marks `state` and every state reachable from it by skipping optional elements.
    @inline(__always)
    private func addState(_ state: Int, to set: UnsafeMutableBufferPointer<Bool>) {
        var state = state
        while true {
            set[state] = true
            guard state < elements.count, elements[state].mode != .one else { return }
            state += 1
        }
    }
}
