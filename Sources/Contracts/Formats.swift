import Foundation

/// Checkers for the `format` keyword, used when format assertion is enabled.
///
/// Formats are annotations by default. With `ValidatorOptions.formatAssertion` (or a dialect that
/// enables the format-assertion vocabulary) the formats listed in `FormatChecker.known` are
/// asserted; unknown format names are always ignored.
enum FormatChecker {
    /// Names of the formats this validator can assert.
    static let known: Set<String> = [
        "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "ipv4", "ipv6",
        "uri", "uri-reference", "iri", "iri-reference", "uuid", "json-pointer", "relative-json-pointer", "regex",
        "uri-template",
    ]

    /// `true` if `value` conforms to `format` (unknown formats always conform).
    static func check(_ format: String, _ value: String) -> Bool {
        switch format {
        case "date-time": return isDateTime(value)
        case "date": return isDate(Array(value.utf8)[...])
        case "time": return isTime(Array(value.utf8)[...])
        case "duration": return isDuration(value)
        case "email": return isEmail(value, international: false)
        case "idn-email": return isEmail(value, international: true)
        case "hostname": return isHostname(value)
        case "ipv4": return isIPv4(Substring(value))
        case "ipv6": return isIPv6(value)
        case "uri": return isURI(value, requireScheme: true, international: false)
        case "uri-reference": return isURI(value, requireScheme: false, international: false)
        case "iri": return isURI(value, requireScheme: true, international: true)
        case "iri-reference": return isURI(value, requireScheme: false, international: true)
        case "uuid": return isUUID(value)
        case "json-pointer": return isJSONPointer(Substring(value))
        case "relative-json-pointer": return isRelativeJSONPointer(value)
        case "regex": return isECMARegex(value)
        case "uri-template": return isURITemplate(value)
        default: return true
        }
    }

    // MARK: Dates and times (RFC 3339)

    private static func number(_ bytes: ArraySlice<UInt8>, _ offset: Int, _ count: Int) -> Int? {
        let start = bytes.startIndex + offset
        guard start + count <= bytes.endIndex else { return nil }
        var value = 0
        for index in start..<(start + count) {
            let byte = bytes[index]
            guard byte >= 48 && byte <= 57 else { return nil }
            value = value * 10 + Int(byte - 48)
        }
        return value
    }

    static func isDate(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.count == 10, bytes[bytes.startIndex + 4] == UInt8(ascii: "-"), bytes[bytes.startIndex + 7] == UInt8(ascii: "-"),
              let year = number(bytes, 0, 4), let month = number(bytes, 5, 2), let day = number(bytes, 8, 2)
        else { return false }
        guard (1...12).contains(month), day >= 1 else { return false }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        return day <= days
    }

    /// `HH:MM:SS[.frac](Z|±HH:MM)`, with a leap second allowed only at 23:59:60 UTC.
    static func isTime(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.count >= 9, bytes[bytes.startIndex + 2] == UInt8(ascii: ":"), bytes[bytes.startIndex + 5] == UInt8(ascii: ":"),
              let hour = number(bytes, 0, 2), let minute = number(bytes, 3, 2), let second = number(bytes, 6, 2),
              hour <= 23, minute <= 59, second <= 60
        else { return false }
        var index = bytes.startIndex + 8
        if bytes[index] == UInt8(ascii: ".") {
            index += 1
            let digitsStart = index
            while index < bytes.endIndex, bytes[index] >= 48, bytes[index] <= 57 { index += 1 }
            guard index > digitsStart else { return false }
        }
        guard index < bytes.endIndex else { return false }
        var offsetMinutes = 0
        switch bytes[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            guard index + 1 == bytes.endIndex else { return false }
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            let offset = bytes[(index + 1)...]
            guard offset.count == 5, offset[offset.startIndex + 2] == UInt8(ascii: ":"),
                  let offsetHour = number(offset, 0, 2), let offsetMinute = number(offset, 3, 2),
                  offsetHour <= 23, offsetMinute <= 59
            else { return false }
            offsetMinutes = (offsetHour * 60 + offsetMinute) * (bytes[index] == UInt8(ascii: "+") ? 1 : -1)
        default:
            return false
        }
        if second == 60 {
            let utc = ((hour * 60 + minute - offsetMinutes) % 1440 + 1440) % 1440
            return utc == 23 * 60 + 59
        }
        return true
    }

    static func isDateTime(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        guard bytes.count > 11, bytes[10] == UInt8(ascii: "T") || bytes[10] == UInt8(ascii: "t") else { return false }
        return isDate(bytes[0..<10]) && isTime(bytes[11...])
    }

    private static let durationRegex = try! NSRegularExpression(pattern:
        "^P(?:(?:[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)(?:T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S))?"
        + "|T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)|[0-9]+W)\\z")

    static func isDuration(_ value: String) -> Bool {
        guard value.utf8.allSatisfy({ $0 < 0x80 }) else { return false }
        return durationRegex.firstMatch(in: value, range: NSRange(location: 0, length: value.utf16.count)) != nil
    }

    // MARK: Network formats

    static func isIPv4(_ value: Substring) -> Bool {
        let parts = value.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        for part in parts {
            guard !part.isEmpty, part.utf8.count <= 3, part.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
            if part.utf8.count > 1 && part.utf8.first == 48 { return false }
            guard let octet = Int(part), octet <= 255 else { return false }
        }
        return true
    }

    static func isIPv6(_ value: String) -> Bool {
        guard !value.isEmpty, value.utf8.allSatisfy({ $0 < 0x80 }) else { return false }
        let halves = value.components(separatedBy: "::")
        guard halves.count <= 2 else { return false }
        var groups = 0
        for (halfIndex, half) in halves.enumerated() {
            if half.isEmpty { continue }
            let parts = half.split(separator: ":", omittingEmptySubsequences: false)
            for (partIndex, part) in parts.enumerated() {
                let isLast = halfIndex == halves.count - 1 && partIndex == parts.count - 1
                if isLast && part.contains(".") {
                    guard isIPv4(part) else { return false }
                    groups += 2
                    continue
                }
                guard (1...4).contains(part.utf8.count), part.utf8.allSatisfy({ isHex($0) }) else { return false }
                groups += 1
            }
        }
        return halves.count == 2 ? groups <= 7 : groups == 8
    }

    static func isHostname(_ value: String) -> Bool {
        guard !value.isEmpty, value.utf8.count <= 253, value.utf8.allSatisfy({ $0 < 0x80 }) else { return false }
        let labels = value.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-" else { return false }
            guard label.utf8.allSatisfy({ isAlphaNumeric($0) || $0 == UInt8(ascii: "-") }) else { return false }
            let lower = label.lowercased()
            // Labels with hyphens in positions 3-4 are reserved for IDNA ("xn--").
            if lower.count >= 4 && Array(lower.utf8)[2...3] == [45, 45] && !lower.hasPrefix("xn--") { return false }
        }
        return true
    }

    private static let emailSymbols = Set("!#$%&'*+-/=?^_`{|}~.".unicodeScalars)

    static func isEmail(_ value: String, international: Bool) -> Bool {
        guard let at = value.lastIndex(of: "@") else { return false }
        let local = value[..<at]
        let domain = value[value.index(after: at)...]
        guard !local.isEmpty, !domain.isEmpty else { return false }
        if local.hasPrefix("\"") {
            guard local.count >= 2, local.hasSuffix("\"") else { return false }
            var escaped = false
            for scalar in local.unicodeScalars.dropFirst().dropLast() {
                if escaped { escaped = false; continue }
                if scalar == "\\" { escaped = true; continue }
                if scalar == "\"" || scalar.value < 0x20 || scalar.value == 0x7F { return false }
            }
            if escaped { return false }
        } else {
            guard !local.hasPrefix("."), !local.hasSuffix("."), !local.contains("..") else { return false }
            for scalar in local.unicodeScalars {
                let ok = (scalar.isASCII && (isAlphaNumeric(UInt8(scalar.value)) || emailSymbols.contains(scalar)))
                    || (international && scalar.value >= 0x80)
                if !ok { return false }
            }
        }
        if domain.hasPrefix("[") {
            guard domain.hasSuffix("]") else { return false }
            let literal = domain.dropFirst().dropLast()
            if literal.hasPrefix("IPv6:") { return isIPv6(String(literal.dropFirst(5))) }
            return isIPv4(literal)
        }
        if international { return !domain.contains(" ") && !domain.hasPrefix(".") && !domain.hasSuffix(".") && !domain.contains("..") }
        return isHostname(String(domain))
    }

    // MARK: URIs

    /// RFC 3986 URI / URI-reference (or RFC 3987 IRI when `international`), syntax only.
    static func isURI(_ value: String, requireScheme: Bool, international: Bool) -> Bool {
        let reference = URIReference(value)
        if requireScheme && reference.scheme == nil { return false }
        if let scheme = reference.scheme, scheme.isEmpty { return false }
        if reference.scheme == nil, let colon = reference.path.firstIndex(of: ":"),
           !reference.path[..<colon].contains("/") { return false }
        if let authority = reference.authority {
            var host = Substring(authority)
            if let at = host.lastIndex(of: "@") {
                guard validComponent(host[..<at], extra: ":", international: international) else { return false }
                host = host[host.index(after: at)...]
            }
            if host.hasPrefix("[") {
                guard let close = host.firstIndex(of: "]") else { return false }
                let literal = host[host.index(after: host.startIndex)..<close]
                guard isIPv6(String(literal)) || (literal.first == "v" || literal.first == "V") else { return false }
                host = host[host.index(after: close)...]
                if !host.isEmpty {
                    guard host.first == ":", host.dropFirst().utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
                }
            } else {
                if let colon = host.lastIndex(of: ":") {
                    guard host[host.index(after: colon)...].utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
                    host = host[..<colon]
                }
                guard validComponent(host, extra: "", international: international) else { return false }
            }
        }
        return validComponent(Substring(reference.path), extra: ":@/", international: international)
            && validComponent(Substring(reference.query ?? ""), extra: ":@/?", international: international)
            && validComponent(Substring(reference.fragment ?? ""), extra: ":@/?", international: international)
    }

    /// unreserved / pct-encoded / sub-delims / `extra` (plus non-ASCII for IRIs).
    private static func validComponent(_ text: Substring, extra: String, international: Bool) -> Bool {
        let bytes = Array(text.utf8)
        var index = 0
        let allowed = Set("-._~!$&'()*+,;=".utf8).union(extra.utf8)
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%") {
                guard index + 2 < bytes.count, isHex(bytes[index + 1]), isHex(bytes[index + 2]) else { return false }
                index += 3
                continue
            }
            if byte >= 0x80 {
                guard international else { return false }
            } else if !(isAlphaNumeric(byte) || allowed.contains(byte)) {
                return false
            }
            index += 1
        }
        return true
    }

    static func isUUID(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard byte == UInt8(ascii: "-") else { return false }
            } else if !isHex(byte) {
                return false
            }
        }
        return true
    }

    // MARK: Regex and URI templates

    /// Compiles as a pattern and rejects syntax ICU accepts but ECMA-262 (with `u`) does not:
    /// inline flag and comment groups, and identity escapes of letters such as `\a`.
    static func isECMARegex(_ value: String) -> Bool {
        let scalars = Array(value.unicodeScalars)
        var index = 0
        while index < scalars.count {
            if scalars[index] == "\\", index + 1 < scalars.count {
                let next = scalars[index + 1]
                if next.properties.isAlphabetic && next.isASCII && !"dDwWsSbBnrtfvcxuk0pP".unicodeScalars.contains(next) { return false }
                index += 2
                continue
            }
            if scalars[index] == "(", index + 2 < scalars.count, scalars[index + 1] == "?" {
                let marker = scalars[index + 2]
                if marker == "#" || (marker.properties.isAlphabetic && marker.isASCII) || marker == "-" { return false }
            }
            index += 1
        }
        return (try? CompiledPattern(value)) != nil
    }

    /// RFC 6570 level 4 syntax.
    static func isURITemplate(_ value: String) -> Bool {
        var scalars = value.unicodeScalars[...]
        while let scalar = scalars.first {
            scalars = scalars.dropFirst()
            if scalar == "}" { return false }
            if scalar != "{" {
                if scalar.value <= 0x20 || scalar.value == 0x7F || "\"<>\\^`|".unicodeScalars.contains(scalar) { return false }
                continue
            }
            guard let close = scalars.firstIndex(of: "}") else { return false }
            var expression = scalars[..<close]
            scalars = scalars[scalars.index(after: close)...]
            if let first = expression.first, "+#./;?&=,!@|".unicodeScalars.contains(first) { expression = expression.dropFirst() }
            let varspecs = String(String.UnicodeScalarView(expression)).split(separator: ",", omittingEmptySubsequences: false)
            for varspec in varspecs {
                var name = Substring(varspec)
                if name.hasSuffix("*") {
                    name = name.dropLast()
                } else if let colon = name.firstIndex(of: ":") {
                    let length = name[name.index(after: colon)...]
                    guard (1...4).contains(length.count), length.first != "0", length.allSatisfy({ $0.isASCII && $0.isNumber }) else { return false }
                    name = name[..<colon]
                }
                guard !name.isEmpty, !name.hasPrefix("."), !name.hasSuffix("."), !name.contains("..") else { return false }
                for character in name.unicodeScalars {
                    let ok = (character.isASCII && (FormatChecker.isAlphaNumeric(UInt8(character.value)) || character == "_" || character == "." || character == "%"))
                    if !ok { return false }
                }
            }
        }
        return true
    }

    // MARK: JSON Pointer

    static func isJSONPointer(_ value: Substring) -> Bool {
        if value.isEmpty { return true }
        guard value.hasPrefix("/") else { return false }
        var iterator = value.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "~") {
                guard let next = iterator.next(), next == UInt8(ascii: "0") || next == UInt8(ascii: "1") else { return false }
            }
        }
        return true
    }

    static func isRelativeJSONPointer(_ value: String) -> Bool {
        let digits = value.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, !(digits.count > 1 && digits.hasPrefix("0")) else { return false }
        var rest = value[digits.endIndex...]
        if rest.hasPrefix("+") || rest.hasPrefix("-") {
            let sign = rest.first!
            rest = rest.dropFirst()
            let offset = rest.prefix { $0.isASCII && $0.isNumber }
            guard !offset.isEmpty, !(offset.count > 1 && offset.hasPrefix("0")), !(sign == "-" && offset == "0") else { return false }
            rest = rest[offset.endIndex...]
        }
        return rest == "#" || isJSONPointer(rest)
    }

    // MARK: Character classes

    @inline(__always)
    static func isHex(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 70) || (byte >= 97 && byte <= 102)
    }

    @inline(__always)
    static func isAlphaNumeric(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
    }
}
