/// Bounds applied while parsing JSON text.
public struct JSONParseLimits: Sendable, Hashable {
    /// Maximum nesting depth of arrays and objects. Deeper input fails with `.depthLimitExceeded`.
    /// Parsing itself never recurses, but releasing (and serializing) a value recurses once per
    /// level, so keep this in the low thousands at most.
    public var maxDepth: Int
    /// Maximum input size in bytes. Larger input fails with `.inputTooLarge` before parsing.
    public var maxInputBytes: Int
    /// When `true`, a repeated key in an object is an error (`.duplicateKey`); when `false`
    /// (the default) the last value wins and the key keeps the position of its first occurrence.
    public var rejectDuplicateKeys: Bool

    public init(maxDepth: Int = 512, maxInputBytes: Int = 64 << 20, rejectDuplicateKeys: Bool = false) {
        self.maxDepth = maxDepth
        self.maxInputBytes = maxInputBytes
        self.rejectDuplicateKeys = rejectDuplicateKeys
    }

    /// Defaults: depth 512, 64 MiB, duplicate keys allowed (last wins).
    public static let `default` = JSONParseLimits()
}

/// A JSON syntax error or a violated parse limit, with the byte offset where it was detected.
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case unexpectedEndOfInput
        case unexpectedByte(UInt8)
        case invalidNumber
        case invalidEscape
        case invalidUTF8
        case controlCharacterInString
        case trailingContent
        case depthLimitExceeded(limit: Int)
        case inputTooLarge(size: Int, limit: Int)
        case duplicateKey(String)
    }

    public let kind: Kind
    /// Byte offset in the input.
    public let offset: Int

    public var description: String {
        let what: String
        switch kind {
        case .unexpectedEndOfInput: what = "unexpected end of input"
        case .unexpectedByte(let byte):
            what = byte >= 0x20 && byte < 0x7F
                ? "unexpected character '\(Character(Unicode.Scalar(byte)))'"
                : "unexpected byte 0x\(String(byte, radix: 16))"
        case .invalidNumber: what = "invalid number"
        case .invalidEscape: what = "invalid escape sequence in string"
        case .invalidUTF8: what = "invalid UTF-8"
        case .controlCharacterInString: what = "unescaped control character in string"
        case .trailingContent: what = "unexpected content after the JSON value"
        case .depthLimitExceeded(let limit): what = "nesting deeper than the limit of \(limit)"
        case .inputTooLarge(let size, let limit): what = "input of \(size) bytes exceeds the limit of \(limit) bytes"
        case .duplicateKey(let key): what = "duplicate object key \"\(key)\""
        }
        return "JSON parse error at byte \(offset): \(what)"
    }
}

extension JSONValue {
    /// Parses UTF-8 JSON text (RFC 8259). A leading UTF-8 byte order mark is skipped.
    ///
    /// Parsing is iterative, so nesting depth is bounded only by `limits.maxDepth`, never by the
    /// call stack. Lone UTF-16 surrogates in `\u` escapes are replaced by U+FFFD.
    public static func parse(
        _ bytes: some Collection<UInt8>, limits: JSONParseLimits = .default
    ) throws(JSONParseError) -> JSONValue {
        if bytes.count > limits.maxInputBytes {
            throw JSONParseError(kind: .inputTooLarge(size: bytes.count, limit: limits.maxInputBytes), offset: 0)
        }
        let result: Result<JSONValue, JSONParseError>? = bytes.withContiguousStorageIfAvailable { buffer in
            var parser = JSONParser(bytes: buffer, limits: limits)
            return Result { () throws(JSONParseError) in try parser.parseDocument() }
        }
        if let result { return try result.get() }
        let copy = Array(bytes)
        return try copy.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            var parser = JSONParser(bytes: buffer, limits: limits)
            return try parser.parseDocument()
        }
    }

    /// Parses JSON text from a string.
    public static func parse(_ text: String, limits: JSONParseLimits = .default) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), limits: limits)
    }
}

/// Iterative JSON parser over a byte buffer.
struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let limits: JSONParseLimits
    var position = 0

    init(bytes: UnsafeBufferPointer<UInt8>, limits: JSONParseLimits) {
        self.bytes = bytes
        self.limits = limits
    }

    /// An open container on the explicit parse stack. Its members live in the shared value/key
    /// stacks from `valueStart` / `keyStart` on, so closing a container moves them out once.
    private struct Frame {
        let isObject: Bool
        let valueStart: Int
        let keyStart: Int
        /// Key positions for duplicate detection, built once an object grows large.
        var seen: [String: Int]?
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { position = 3 }
        var frames: [Frame] = []
        var valueStack: [JSONValue] = []
        var keyStack: [String] = []
        var value: JSONValue
        parsing: while true {
            // Parse one value start; containers push a frame and continue.
            skipWhitespace()
            guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "["):
                guard frames.count < limits.maxDepth else { throw error(.depthLimitExceeded(limit: limits.maxDepth)) }
                position += 1
                skipWhitespace()
                if peek() == UInt8(ascii: "]") {
                    position += 1
                    value = .array([])
                } else {
                    frames.append(Frame(isObject: false, valueStart: valueStack.count, keyStart: keyStack.count))
                    continue parsing
                }
            case UInt8(ascii: "{"):
                guard frames.count < limits.maxDepth else { throw error(.depthLimitExceeded(limit: limits.maxDepth)) }
                position += 1
                skipWhitespace()
                if peek() == UInt8(ascii: "}") {
                    position += 1
                    value = .object(JSONObject())
                } else {
                    frames.append(Frame(isObject: true, valueStart: valueStack.count, keyStart: keyStack.count))
                    keyStack.append(try parseKey())
                    continue parsing
                }
            case UInt8(ascii: "\""):
                value = .string(try parseString())
            case UInt8(ascii: "t"):
                try expectLiteral("true")
                value = .bool(true)
            case UInt8(ascii: "f"):
                try expectLiteral("false")
                value = .bool(false)
            case UInt8(ascii: "n"):
                try expectLiteral("null")
                value = .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                var scanner = NumberScanner(bytes: bytes, position: position)
                guard let number = scanner.scan() else {
                    position = scanner.position
                    throw error(.invalidNumber)
                }
                position = scanner.position
                value = .number(number)
            default:
                throw error(.unexpectedByte(byte))
            }

            // Attach the completed value to enclosing containers, closing them as needed.
            while true {
                guard !frames.isEmpty else {
                    skipWhitespace()
                    guard position == bytes.count else { throw error(.trailingContent) }
                    return value
                }
                let top = frames.count - 1
                if frames[top].isObject {
                    let keyIndex = keyStack.count - 1
                    let key = keyStack[keyIndex]
                    if let existing = existingKeyIndex(key, keyStack, from: frames[top].keyStart, to: keyIndex, seen: &frames[top].seen) {
                        if limits.rejectDuplicateKeys { throw error(.duplicateKey(key)) }
                        keyStack.removeLast()
                        valueStack[frames[top].valueStart + (existing - frames[top].keyStart)] = value
                    } else {
                        valueStack.append(value)
                    }
                } else {
                    valueStack.append(value)
                }
                skipWhitespace()
                guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
                let separator = bytes[position]
                if separator == UInt8(ascii: ",") {
                    position += 1
                    if frames[top].isObject {
                        skipWhitespace()
                        keyStack.append(try parseKey())
                    }
                    continue parsing
                }
                let frame = frames.removeLast()
                if frame.isObject {
                    guard separator == UInt8(ascii: "}") else { throw error(.unexpectedByte(separator)) }
                    let keys = Array(keyStack[frame.keyStart...])
                    let values = Array(valueStack[frame.valueStart...])
                    keyStack.removeSubrange(frame.keyStart...)
                    valueStack.removeSubrange(frame.valueStart...)
                    value = .object(JSONObject(uniqueKeys: keys, values: values))
                } else {
                    guard separator == UInt8(ascii: "]") else { throw error(.unexpectedByte(separator)) }
                    let elements = Array(valueStack[frame.valueStart...])
                    valueStack.removeSubrange(frame.valueStart...)
                    value = .array(elements)
                }
                position += 1
            }
        }
    }

    /// Index in `keys` of an earlier occurrence of `key` within `[from, to)`.
    private func existingKeyIndex(_ key: String, _ keys: [String], from: Int, to: Int, seen: inout [String: Int]?) -> Int? {
        if to - from <= 32 {
            for index in from..<to where keys[index] == key { return index }
            return nil
        }
        if seen == nil {
            var map = [String: Int](minimumCapacity: 64)
            for index in from..<to { map[keys[index]] = index }
            seen = map
        }
        if let existing = seen![key] { return existing }
        seen![key] = to
        return nil
    }

    /// Parses `"key"` followed by `:`.
    private mutating func parseKey() throws(JSONParseError) -> String {
        guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
        guard bytes[position] == UInt8(ascii: "\"") else { throw error(.unexpectedByte(bytes[position])) }
        let key = try parseString()
        skipWhitespace()
        guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
        guard bytes[position] == UInt8(ascii: ":") else { throw error(.unexpectedByte(bytes[position])) }
        position += 1
        return key
    }

    @inline(__always)
    private func peek() -> UInt8? {
        position < bytes.count ? bytes[position] : nil
    }

    @inline(__always)
    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x0A, 0x0D, 0x09: position += 1
            default: return
            }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard position + count <= bytes.count else { throw error(.unexpectedEndOfInput) }
        let pointer = literal.utf8Start
        for index in 0..<count where bytes[position + index] != pointer[index] {
            position += index
            throw error(.unexpectedByte(bytes[position]))
        }
        position += count
    }

    /// Parses a string starting at the opening quote.
    private mutating func parseString() throws(JSONParseError) -> String {
        position += 1
        let start = position
        var asciiOnly = true
        // Fast path: no escapes.
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                let slice = UnsafeBufferPointer(rebasing: bytes[start..<position])
                if !asciiOnly {
                    if let bad = UTF8Validation.firstInvalidOffset(slice) {
                        position = start + bad
                        throw error(.invalidUTF8)
                    }
                }
                position += 1
                return String(decoding: slice, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error(.controlCharacterInString) }
            if byte >= 0x80 { asciiOnly = false }
            position += 1
        }
        guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
        // Slow path with escapes.
        var buffer: [UInt8] = Array(UnsafeBufferPointer(rebasing: bytes[start..<position]))
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                position += 1
                if !asciiOnly, let bad = UTF8Validation.firstInvalidOffset(buffer) {
                    position = start + bad
                    throw error(.invalidUTF8)
                }
                return String(decoding: buffer, as: UTF8.self)
            }
            if byte < 0x20 { throw error(.controlCharacterInString) }
            if byte >= 0x80 { asciiOnly = false }
            if byte != UInt8(ascii: "\\") {
                buffer.append(byte)
                position += 1
                continue
            }
            position += 1
            guard position < bytes.count else { throw error(.unexpectedEndOfInput) }
            let escape = bytes[position]
            position += 1
            switch escape {
            case UInt8(ascii: "\""): buffer.append(0x22)
            case UInt8(ascii: "\\"): buffer.append(0x5C)
            case UInt8(ascii: "/"): buffer.append(0x2F)
            case UInt8(ascii: "b"): buffer.append(0x08)
            case UInt8(ascii: "f"): buffer.append(0x0C)
            case UInt8(ascii: "n"): buffer.append(0x0A)
            case UInt8(ascii: "r"): buffer.append(0x0D)
            case UInt8(ascii: "t"): buffer.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try parseHex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    // High surrogate: combine with a following low surrogate if present.
                    if position + 1 < bytes.count && bytes[position] == UInt8(ascii: "\\") && bytes[position + 1] == UInt8(ascii: "u") {
                        let save = position
                        position += 2
                        let low = try parseHex4()
                        if (0xDC00...0xDFFF).contains(low) {
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            position = save
                            scalar = 0xFFFD
                        }
                    } else {
                        scalar = 0xFFFD
                    }
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    scalar = 0xFFFD
                }
                appendUTF8(UInt32(scalar), to: &buffer)
            default:
                position -= 1
                throw error(.invalidEscape)
            }
        }
        throw error(.unexpectedEndOfInput)
    }

    private mutating func parseHex4() throws(JSONParseError) -> Int {
        guard position + 4 <= bytes.count else { throw error(.unexpectedEndOfInput) }
        var value = 0
        for _ in 0..<4 {
            let byte = bytes[position]
            let digit: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = Int(byte) - 48
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = Int(byte) - 87
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = Int(byte) - 55
            default: throw error(.invalidEscape)
            }
            value = value * 16 + digit
            position += 1
        }
        return value
    }

    private func appendUTF8(_ scalar: UInt32, to buffer: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            buffer.append(UInt8(scalar))
        case 0x80..<0x800:
            buffer.append(UInt8(0xC0 | (scalar >> 6)))
            buffer.append(UInt8(0x80 | (scalar & 0x3F)))
        case 0x800..<0x10000:
            buffer.append(UInt8(0xE0 | (scalar >> 12)))
            buffer.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            buffer.append(UInt8(0x80 | (scalar & 0x3F)))
        default:
            buffer.append(UInt8(0xF0 | (scalar >> 18)))
            buffer.append(UInt8(0x80 | ((scalar >> 12) & 0x3F)))
            buffer.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            buffer.append(UInt8(0x80 | (scalar & 0x3F)))
        }
    }

    private func error(_ kind: JSONParseError.Kind) -> JSONParseError {
        JSONParseError(kind: kind, offset: position)
    }
}

/// Strict UTF-8 validation (rejects overlongs, surrogates and code points above U+10FFFF).
enum UTF8Validation {
    static func firstInvalidOffset<C: RandomAccessCollection>(_ bytes: C) -> Int? where C.Element == UInt8, C.Index == Int {
        var index = bytes.startIndex
        let end = bytes.endIndex
        while index < end {
            let lead = bytes[index]
            if lead < 0x80 { index += 1; continue }
            let length: Int
            var lower: UInt8 = 0x80
            var upper: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; upper = 0x9F
            case 0xF0: length = 4; lower = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; upper = 0x8F
            default: return index - bytes.startIndex
            }
            guard index + length <= end else { return index - bytes.startIndex }
            let second = bytes[index + 1]
            guard second >= lower && second <= upper else { return index - bytes.startIndex }
            for offset in 2..<max(2, length) where bytes[index + offset] & 0xC0 != 0x80 {
                return index - bytes.startIndex
            }
            index += length
        }
        return nil
    }
}
