import Foundation

/// A schema that cannot be read or compiled, an unknown schema, or a document that does not conform.
public struct SchemaCatalogError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// The error this one wraps, when it wraps one (`message` quotes its text).
    public var cause: (any Error)?
    public init(_ message: String, cause: (any Error)? = nil) { self.message = message; self.cause = cause }
    public var description: String { message }
}

/// Every schema in Schemas/, registered once and compiled on first use.
public final class SchemaCatalog: @unchecked Sendable {  // `compiled`, the only mutable state, is guarded by `lock`
    private var compiled: [String: CompiledSchema] = [:]
    private let registry: SchemaRegistry
    private let byFile: [String: String]
    private let lock = NSLock()

    public init(directory: URL) throws {
        // Formats are asserted: the events rely on them (ids are UUIDs, times are RFC 3339 date-times).
        var r = SchemaRegistry(options: ValidatorOptions(formatAssertion: true))
        var files: [String: String] = [:]
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".schema.json") }.sorted()
        for name in names {
            do {
                let uri = try r.registerFile(at: directory.appendingPathComponent(name).path)
                files[name] = uri
            } catch { throw SchemaCatalogError("\(name): \(error)", cause: error) }
        }
        registry = r
        byFile = files
    }

    /// The compiled schema of `file` (e.g. "fact-update.schema.json").
    public func schema(_ file: String) throws -> CompiledSchema {
        lock.lock(); defer { lock.unlock() }
        if let c = compiled[file] { return c }
        guard let uri = byFile[file] else { throw SchemaCatalogError("no schema \(file)") }
        let c: CompiledSchema
        do { c = try registry.compile(uri) } catch { throw SchemaCatalogError("\(file): \(error)", cause: error) }
        compiled[file] = c
        return c
    }

    /// Validates a document's bytes; throws `SchemaCatalogError` listing the first violations.
    public func check(_ data: Data, against file: String, what: String) throws {
        let value: JSONValue
        do { value = try JSONValue.parse(data, limits: JSONParseLimits(rejectDuplicateKeys: true)) } catch {
            throw SchemaCatalogError("\(what) is not valid JSON: \(error)", cause: error)
        }
        let result = try schema(file).validate(value)
        guard result.valid else {
            let why = result.errors.prefix(5).map { "\($0.instanceLocation): \($0.message)" }.joined(separator: "; ")
            throw SchemaCatalogError("\(what) does not conform to \(file): \(why)")
        }
    }
}
