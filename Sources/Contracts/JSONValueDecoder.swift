/// Decodes `Decodable` values from a parsed `JSONValue`, so that the document a schema validated is
/// the document the program acts on (no second reading of the bytes by another parser that might
/// resolve duplicate keys, escapes or numbers differently).
///
/// Numbers convert strictly: an integer type takes only an integral value in its range, a `Double`
/// or `Float` only a value whose nearest binary value is finite and, for a non-zero number, not
/// zero (`1e400` and `1e-400` are errors, not infinity and zero).
public struct JSONValueDecoder: Sendable {
    public enum KeyStrategy: Sendable {
        /// Swift property names are the JSON keys.
        case useDefaultKeys
        /// `snake_case` JSON keys map to `camelCase` properties (as `JSONDecoder`'s strategy does).
        case convertFromSnakeCase
    }

    public var keyStrategy: KeyStrategy

    public init(keyStrategy: KeyStrategy = .useDefaultKeys) {
        self.keyStrategy = keyStrategy
    }

    public func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try T(from: ValueDecoder(value: value, path: [], strategy: keyStrategy))
    }

    /// `camelCase(_:)` for tests.
    public static func camelCaseForTesting(_ key: String) -> String { camelCase(key) }

    /// `snake_case` → `camelCase` as Foundation's `convertFromSnakeCase` does it: leading and
    /// trailing underscores are kept, inner runs of underscores are removed and the next letter is
    /// uppercased.
    static func camelCase(_ key: String) -> String {
        guard key.contains("_") else { return key }
        let chars = Array(key)
        guard let first = chars.firstIndex(where: { $0 != "_" }) else { return key }
        let last = chars.lastIndex(where: { $0 != "_" })!
        var out = String(chars[..<first])
        var upper = false
        for c in chars[first...last] {
            if c == "_" { upper = true; continue }
            out.append(upper ? Character(c.uppercased()) : c)
            upper = false
        }
        out += String(chars[(last + 1)...])
        return out
    }
}

/// A coding key for array positions and converted object keys.
struct JSONCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) { stringValue = "\(intValue)"; self.intValue = intValue }
}

private struct ValueDecoder: Decoder {
    let value: JSONValue
    let path: [CodingKey]
    let strategy: JSONValueDecoder.KeyStrategy
    var codingPath: [CodingKey] { path }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let object) = value else { throw mismatch([String: JSONValue].self, value, path) }
        return KeyedDecodingContainer(KeyedContainer<Key>(object: object, path: path, strategy: strategy))
    }

    func unkeyedContainer() throws -> UnkeyedDecodingContainer {
        guard case .array(let elements) = value else { throw mismatch([JSONValue].self, value, path) }
        return UnkeyedContainer(elements: elements, path: path, strategy: strategy)
    }

    func singleValueContainer() throws -> SingleValueDecodingContainer { SingleContainer(value: value, path: path, strategy: strategy) }
}

private func mismatch(_ type: Any.Type, _ value: JSONValue, _ path: [CodingKey]) -> DecodingError {
    .typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(type), found \(value.typeName)"))
}

/// The scalar conversions shared by the three containers.
private func decodeScalar<T: Decodable>(_ type: T.Type, _ value: JSONValue, _ path: [CodingKey],
                                        _ strategy: JSONValueDecoder.KeyStrategy) throws -> T {
    func number() throws -> JSONNumber {
        guard case .number(let n) = value else { throw mismatch(type, value, path) }
        return n
    }
    func outOfRange(_ n: JSONNumber) -> DecodingError {
        .dataCorrupted(.init(codingPath: path, debugDescription: "the number \(n) does not fit in \(type)"))
    }
    func integer<I: FixedWidthInteger>(_: I.Type) throws -> I {
        let n = try number()
        guard n.isInteger, let v = n.int64Value.flatMap(I.init(exactly:)) ?? UInt64(n.description).flatMap(I.init(exactly:)) else {
            throw outOfRange(n)
        }
        return v
    }
    func double() throws -> Double {
        let n = try number()
        let d = n.doubleValue
        guard d.isFinite, d != 0 || n == JSONNumber(0) else { throw outOfRange(n) }
        return d
    }
    switch type {
    case is String.Type:
        guard case .string(let s) = value else { throw mismatch(type, value, path) }
        return s as! T
    case is Bool.Type:
        guard case .bool(let b) = value else { throw mismatch(type, value, path) }
        return b as! T
    case is Double.Type: return try double() as! T
    case is Float.Type:
        let d = try double()
        let f = Float(d)
        guard f.isFinite, f != 0 || d == 0 else { throw outOfRange(try number()) }
        return f as! T
    case is Int.Type: return try integer(Int.self) as! T
    case is Int8.Type: return try integer(Int8.self) as! T
    case is Int16.Type: return try integer(Int16.self) as! T
    case is Int32.Type: return try integer(Int32.self) as! T
    case is Int64.Type: return try integer(Int64.self) as! T
    case is UInt.Type: return try integer(UInt.self) as! T
    case is UInt8.Type: return try integer(UInt8.self) as! T
    case is UInt16.Type: return try integer(UInt16.self) as! T
    case is UInt32.Type: return try integer(UInt32.self) as! T
    case is UInt64.Type: return try integer(UInt64.self) as! T
    default: return try T(from: ValueDecoder(value: value, path: path, strategy: strategy))
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: JSONObject
    let path: [CodingKey]
    let strategy: JSONValueDecoder.KeyStrategy
    /// Swift name → JSON key.
    let names: [String: String]

    init(object: JSONObject, path: [CodingKey], strategy: JSONValueDecoder.KeyStrategy) {
        self.object = object
        self.path = path
        self.strategy = strategy
        var names: [String: String] = [:]
        for k in object.keys {
            let name = strategy == .convertFromSnakeCase ? JSONValueDecoder.camelCase(k) : k
            if names[name] == nil { names[name] = k }
        }
        self.names = names
    }

    var codingPath: [CodingKey] { path }
    var allKeys: [Key] { names.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { names[key.stringValue] != nil }

    private func member(_ key: Key) throws -> JSONValue {
        guard let k = names[key.stringValue], let v = object[k] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: path, debugDescription: "no value for \(key.stringValue)"))
        }
        return v
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        if case .null = try member(key) { return true }
        return false
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try decodeScalar(type, try member(key), path + [key], strategy)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try ValueDecoder(value: try member(key), path: path + [key], strategy: strategy).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> UnkeyedDecodingContainer {
        try ValueDecoder(value: try member(key), path: path + [key], strategy: strategy).unkeyedContainer()
    }

    func superDecoder() throws -> Decoder { try superDecoder(forKey: Key(stringValue: "super")!) }

    func superDecoder(forKey key: Key) throws -> Decoder {
        ValueDecoder(value: (try? member(key)) ?? .null, path: path + [key], strategy: strategy)
    }
}

private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let elements: [JSONValue]
    let path: [CodingKey]
    let strategy: JSONValueDecoder.KeyStrategy
    var currentIndex = 0

    init(elements: [JSONValue], path: [CodingKey], strategy: JSONValueDecoder.KeyStrategy) {
        self.elements = elements
        self.path = path
        self.strategy = strategy
    }

    var codingPath: [CodingKey] { path }
    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }

    private mutating func next(_ type: Any.Type) throws -> (JSONValue, [CodingKey]) {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(type, .init(codingPath: path + [JSONCodingKey(intValue: currentIndex)], debugDescription: "the array has no more elements"))
        }
        defer { currentIndex += 1 }
        return (elements[currentIndex], path + [JSONCodingKey(intValue: currentIndex)])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, case .null = elements[currentIndex] else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (v, p) = try next(type)
        return try decodeScalar(type, v, p, strategy)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (v, p) = try next([String: JSONValue].self)
        return try ValueDecoder(value: v, path: p, strategy: strategy).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> UnkeyedDecodingContainer {
        let (v, p) = try next([JSONValue].self)
        return try ValueDecoder(value: v, path: p, strategy: strategy).unkeyedContainer()
    }

    mutating func superDecoder() throws -> Decoder {
        let (v, p) = try next(JSONValue.self)
        return ValueDecoder(value: v, path: p, strategy: strategy)
    }
}

private struct SingleContainer: SingleValueDecodingContainer {
    let value: JSONValue
    let path: [CodingKey]
    let strategy: JSONValueDecoder.KeyStrategy
    var codingPath: [CodingKey] { path }

    func decodeNil() -> Bool {
        if case .null = value { return true }
        return false
    }

    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeScalar(type, value, path, strategy) }
}
