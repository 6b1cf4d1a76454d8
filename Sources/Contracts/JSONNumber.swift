/// An exact JSON number.
///
/// Numbers keep their exact decimal value: `1`, `1.0` and `10e-1` are the same number, `0.1` is
/// exactly one tenth (not the nearest binary double), and integers of any size (`1e400`,
/// `98249283749234923498293171823948729348710298301928331`) are represented without loss.
///
/// Values that are integers fitting in `Int64` use a compact representation; everything else is
/// kept as a normalized decimal significand (no leading or trailing zeros) and a base-10 exponent.
/// Equality and hashing therefore compare mathematical values.
public struct JSONNumber: Hashable, Sendable, Comparable, CustomStringConvertible {
    @usableFromInline
    enum Storage: Hashable, Sendable {
        /// An integer in `Int64` range.
        case integer(Int64)
        /// A non-zero value outside the `.integer` case: `(-1)^negative * digits * 10^exponent`,
        /// with `digits` holding decimal digits 0...9, no leading and no trailing zeros.
        case decimal(negative: Bool, digits: [UInt8], exponent: Int)
    }

    @usableFromInline
    let storage: Storage

    /// Creates a number from an integer.
    public init(_ value: Int) {
        storage = .integer(Int64(value))
    }

    /// Creates a number from an `Int64`.
    public init(_ value: Int64) {
        storage = .integer(value)
    }

    /// Creates a number from a finite `Double`, using its shortest round-tripping decimal form
    /// (so `0.1` becomes exactly one tenth). Returns `nil` for NaN and infinities.
    public init?(_ value: Double) {
        guard value.isFinite else { return nil }
        if value == value.rounded(), abs(value) < 9.2e18 {
            storage = .integer(Int64(value))
            return
        }
        guard let parsed = JSONNumber(literal: "\(value)") else { return nil }
        self = parsed
    }

    /// Parses a JSON number literal such as `-12.5e3`. Returns `nil` if `literal` is not valid
    /// JSON number syntax.
    public init?(literal: String) {
        var utf8 = Array(literal.utf8)
        let parsed: JSONNumber? = utf8.withUnsafeMutableBufferPointer { buffer in
            var scanner = NumberScanner(bytes: UnsafeBufferPointer(buffer), position: 0)
            guard let number = scanner.scan(), scanner.position == buffer.count else { return nil }
            return number
        }
        guard let parsed else { return nil }
        self = parsed
    }

    @usableFromInline
    init(storage: Storage) {
        self.storage = storage
    }

    /// Builds a normalized number from raw decimal digits (may contain leading/trailing zeros).
    init(negative: Bool, rawDigits: [UInt8], exponent: Int) {
        var start = 0
        while start < rawDigits.count && rawDigits[start] == 0 { start += 1 }
        var end = rawDigits.count
        var exponent = exponent
        while end > start && rawDigits[end - 1] == 0 {
            end -= 1
            exponent = exponent.addingSaturated(1)
        }
        if start == end {
            storage = .integer(0)
            return
        }
        let count = end - start
        if exponent >= 0 && count + exponent <= 19 {
            var magnitude: UInt64 = 0
            var overflow = false
            for index in start..<end {
                let (m1, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (m2, o2) = m1.addingReportingOverflow(UInt64(rawDigits[index]))
                magnitude = m2
                overflow = overflow || o1 || o2
            }
            for _ in 0..<exponent where !overflow {
                let (m, o) = magnitude.multipliedReportingOverflow(by: 10)
                magnitude = m
                overflow = overflow || o
            }
            if !overflow {
                if !negative && magnitude <= UInt64(Int64.max) {
                    storage = .integer(Int64(magnitude))
                    return
                }
                if negative && magnitude <= UInt64(Int64.max) + 1 {
                    storage = .integer(magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude))
                    return
                }
            }
        }
        storage = .decimal(negative: negative, digits: Array(rawDigits[start..<end]), exponent: exponent)
    }

    /// `true` if the value is mathematically an integer (`1.0` and `1e400` are integers).
    public var isInteger: Bool {
        switch storage {
        case .integer: return true
        case .decimal(_, _, let exponent): return exponent >= 0
        }
    }

    /// The value as an `Int64` if it is an integer in range.
    public var int64Value: Int64? {
        if case .integer(let value) = storage { return value }
        return nil
    }

    /// The nearest `Double` (may be infinite for huge magnitudes, or zero for tiny ones).
    public var doubleValue: Double {
        switch storage {
        case .integer(let value): return Double(value)
        case .decimal: return Double(description) ?? .nan
        }
    }

    /// -1, 0 or 1.
    var signum: Int {
        switch storage {
        case .integer(let value): return value == 0 ? 0 : (value < 0 ? -1 : 1)
        case .decimal(let negative, _, _): return negative ? -1 : 1
        }
    }

    /// Decimal parts `(negative, digits, exponent)` with normalized digits; `nil` for zero.
    func decimalParts() -> (negative: Bool, digits: [UInt8], exponent: Int)? {
        switch storage {
        case .decimal(let negative, let digits, let exponent):
            return (negative, digits, exponent)
        case .integer(let value):
            if value == 0 { return nil }
            var magnitude = value.magnitude
            var digits: [UInt8] = []
            var exponent = 0
            while magnitude % 10 == 0 {
                magnitude /= 10
                exponent += 1
            }
            while magnitude > 0 {
                digits.append(UInt8(magnitude % 10))
                magnitude /= 10
            }
            digits.reverse()
            return (value < 0, digits, exponent)
        }
    }

    /// Canonical JSON text for the value (`1`, `0.25`, `1.5e+400`, ...).
    public var description: String {
        switch storage {
        case .integer(let value):
            return String(value)
        case .decimal(let negative, let digits, let exponent):
            var text = negative ? "-" : ""
            let digitText = String(decoding: digits.map { $0 + 48 }, as: UTF8.self)
            let adjusted = digits.count + exponent  // position of the decimal point
            if exponent >= 0 && adjusted <= 40 {
                text += digitText + String(repeating: "0", count: exponent)
            } else if exponent < 0 && adjusted > 0 {
                text += String(digitText.prefix(adjusted)) + "." + String(digitText.dropFirst(adjusted))
            } else if exponent < 0 && adjusted > -6 {
                text += "0." + String(repeating: "0", count: -adjusted) + digitText
            } else {
                text += String(digitText.prefix(1))
                if digits.count > 1 { text += "." + String(digitText.dropFirst()) }
                let e = adjusted - 1
                text += e >= 0 ? "e+\(e)" : "e\(e)"
            }
            return text
        }
    }

    // MARK: Comparison

    /// Exact three-way comparison: -1 if `lhs < rhs`, 0 if equal, 1 if `lhs > rhs`.
    public static func compare(_ lhs: JSONNumber, _ rhs: JSONNumber) -> Int {
        switch (lhs.storage, rhs.storage) {
        case (.integer(let a), .integer(let b)):
            return a == b ? 0 : (a < b ? -1 : 1)
        case (.integer(let a), .decimal):
            return -compareDecimal(rhs, toInteger: a)
        case (.decimal, .integer(let b)):
            return compareDecimal(lhs, toInteger: b)
        case (.decimal(let na, let da, let ea), .decimal(let nb, let db, let eb)):
            if na != nb { return na ? -1 : 1 }
            let magnitude = compareMagnitude(da, ea, db, eb)
            return na ? -magnitude : magnitude
        }
    }

    public static func < (lhs: JSONNumber, rhs: JSONNumber) -> Bool {
        compare(lhs, rhs) < 0
    }

    /// Compares a `.decimal` value with an integer without allocating.
    private static func compareDecimal(_ value: JSONNumber, toInteger integer: Int64) -> Int {
        guard case .decimal(let negative, let digits, let exponent) = value.storage else { return 0 }
        // A decimal with exponent >= 0 is an integer outside Int64 range.
        if exponent >= 0 { return negative ? -1 : 1 }
        let integerDigits = digits.count + exponent
        if integerDigits > 18 { return negative ? -1 : 1 }
        var truncated: Int64 = 0
        if integerDigits > 0 {
            for index in 0..<integerDigits { truncated = truncated * 10 + Int64(digits[index]) }
        }
        if negative { truncated = -truncated }
        // value lies strictly between truncated and truncated +/- 1 (it has a fractional part).
        if negative {
            return integer < truncated ? 1 : -1
        } else {
            return integer > truncated ? -1 : 1
        }
    }

    /// Compares the magnitudes of two normalized decimals.
    private static func compareMagnitude(_ da: [UInt8], _ ea: Int, _ db: [UInt8], _ eb: Int) -> Int {
        let adjustedA = da.count.addingSaturated(ea)
        let adjustedB = db.count.addingSaturated(eb)
        if adjustedA != adjustedB { return adjustedA < adjustedB ? -1 : 1 }
        let common = min(da.count, db.count)
        for index in 0..<common where da[index] != db[index] {
            return da[index] < db[index] ? -1 : 1
        }
        if da.count == db.count { return 0 }
        return da.count < db.count ? -1 : 1
    }

    // MARK: multipleOf

    /// `true` if `self` is an exact integer multiple of `divisor` (which must be positive).
    public func isMultiple(of divisor: JSONNumber) -> Bool {
        if case .integer(let a) = storage, case .integer(let b) = divisor.storage, b > 0 {
            return a % b == 0
        }
        guard let dividend = decimalParts() else { return true }
        guard let divisorParts = divisor.decimalParts() else { return false }
        // dividend = A * 10^ea, divisor = B * 10^eb; need B | A * 10^(ea - eb).
        let shift = dividend.exponent - divisorParts.exponent
        // A has no trailing zeros, so 10^k * B never divides A for k > 0.
        if shift < 0 { return false }
        return DecimalArithmetic.divides(divisorParts.digits, dividend.digits, timesPowerOfTen: shift)
    }
}

/// Arbitrary-precision helpers on decimal digit arrays used by `multipleOf`.
enum DecimalArithmetic {
    /// `true` if `divisor` divides `value * 10^shift`. Digits are most significant first.
    static func divides(_ divisor: [UInt8], _ value: [UInt8], timesPowerOfTen shift: Int) -> Bool {
        if divisor.count <= 18 {
            var b: UInt64 = 0
            for digit in divisor { b = b * 10 + UInt64(digit) }
            var remainder: UInt64 = 0
            for digit in value { remainder = mulmod(remainder, 10, b) &+ UInt64(digit) % b; remainder %= b }
            let power = powmod(10, shift, b)
            return mulmod(remainder, power, b) == 0
        }
        // Large divisor: split divisor = 2^p * 5^q * c with gcd(c, 10) = 1.
        var c = divisor
        var twos = 0
        var fives = 0
        while let half = divideSmall(c, by: 2) { c = half; twos += 1 }
        while let fifth = divideSmall(c, by: 5) { c = fifth; fives += 1 }
        if shift >= max(twos, fives) {
            return remainder(value, c).isEmpty
        }
        let extended = value + [UInt8](repeating: 0, count: shift)
        return remainder(extended, divisor).isEmpty
    }

    private static func mulmod(_ a: UInt64, _ b: UInt64, _ m: UInt64) -> UInt64 {
        let product = a.multipliedFullWidth(by: b)
        return m.dividingFullWidth((high: product.high, low: product.low)).remainder
    }

    private static func powmod(_ base: UInt64, _ exponent: Int, _ m: UInt64) -> UInt64 {
        if m == 1 { return 0 }
        var result: UInt64 = 1
        var b = base % m
        var e = exponent
        while e > 0 {
            if e & 1 == 1 { result = mulmod(result, b, m) }
            b = mulmod(b, b, m)
            e >>= 1
        }
        return result
    }

    /// Exact division by a small number; `nil` if there is a remainder.
    private static func divideSmall(_ digits: [UInt8], by divisor: UInt8) -> [UInt8]? {
        var quotient: [UInt8] = []
        quotient.reserveCapacity(digits.count)
        var remainder = 0
        for digit in digits {
            let current = remainder * 10 + Int(digit)
            let q = current / Int(divisor)
            remainder = current % Int(divisor)
            if !(quotient.isEmpty && q == 0) { quotient.append(UInt8(q)) }
        }
        return remainder == 0 && !quotient.isEmpty ? quotient : nil
    }

    /// `value mod divisor` as normalized digits (empty means zero).
    private static func remainder(_ value: [UInt8], _ divisor: [UInt8]) -> [UInt8] {
        var remainder: [UInt8] = []
        for digit in value {
            if !(remainder.isEmpty && digit == 0) { remainder.append(digit) }
            while compare(remainder, divisor) >= 0 { subtract(&remainder, divisor) }
        }
        return remainder
    }

    private static func compare(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.count != b.count { return a.count < b.count ? -1 : 1 }
        for index in 0..<a.count where a[index] != b[index] {
            return a[index] < b[index] ? -1 : 1
        }
        return 0
    }

    /// `a -= b`, requires `a >= b`; result normalized.
    private static func subtract(_ a: inout [UInt8], _ b: [UInt8]) {
        var borrow = 0
        var ai = a.count - 1
        var bi = b.count - 1
        while ai >= 0 {
            var value = Int(a[ai]) - borrow - (bi >= 0 ? Int(b[bi]) : 0)
            if value < 0 { value += 10; borrow = 1 } else { borrow = 0 }
            a[ai] = UInt8(value)
            ai -= 1
            bi -= 1
        }
        let firstNonZero = a.firstIndex { $0 != 0 } ?? a.count
        a.removeFirst(firstNonZero)
    }
}

extension Int {
    func addingSaturated(_ other: Int) -> Int {
        let (result, overflow) = addingReportingOverflow(other)
        if overflow { return other > 0 ? Int.max : Int.min }
        return result
    }
}

/// Scans a JSON number at a byte position; shared by the JSON parser and `JSONNumber(literal:)`.
struct NumberScanner {
    let bytes: UnsafeBufferPointer<UInt8>
    var position: Int

    /// Scans a number; returns `nil` (with `position` at the offending byte) on a syntax error.
    mutating func scan() -> JSONNumber? {
        let count = bytes.count
        var negative = false
        if position < count && bytes[position] == UInt8(ascii: "-") {
            negative = true
            position += 1
        }
        let integerStart = position
        guard position < count, isDigit(bytes[position]) else { return nil }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
        } else {
            while position < count && isDigit(bytes[position]) { position += 1 }
        }
        let integerEnd = position
        var fractionStart = position
        var fractionEnd = position
        if position < count && bytes[position] == UInt8(ascii: ".") {
            position += 1
            fractionStart = position
            guard position < count, isDigit(bytes[position]) else { return nil }
            while position < count && isDigit(bytes[position]) { position += 1 }
            fractionEnd = position
        }
        var exponent = 0
        var hasExponent = false
        if position < count && (bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E")) {
            hasExponent = true
            position += 1
            var exponentNegative = false
            if position < count && (bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-")) {
                exponentNegative = bytes[position] == UInt8(ascii: "-")
                position += 1
            }
            guard position < count, isDigit(bytes[position]) else { return nil }
            while position < count && isDigit(bytes[position]) {
                // Saturate: exponents beyond a trillion are treated as a trillion.
                if exponent < 1_000_000_000_000 { exponent = exponent * 10 + Int(bytes[position] - 48) }
                position += 1
            }
            if exponentNegative { exponent = -exponent }
        }
        let integerCount = integerEnd - integerStart
        if !hasExponent && fractionStart == fractionEnd && integerCount <= 18 {
            var value: Int64 = 0
            for index in integerStart..<integerEnd { value = value * 10 + Int64(bytes[index] - 48) }
            return JSONNumber(storage: .integer(negative ? -value : value))
        }
        var digits: [UInt8] = []
        digits.reserveCapacity(integerCount + fractionEnd - fractionStart)
        for index in integerStart..<integerEnd { digits.append(bytes[index] - 48) }
        for index in fractionStart..<fractionEnd { digits.append(bytes[index] - 48) }
        return JSONNumber(negative: negative, rawDigits: digits, exponent: exponent - (fractionEnd - fractionStart))
    }

    @inline(__always)
    private func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }
}
