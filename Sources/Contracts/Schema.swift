import Foundation

/// Options for compiling and evaluating schemas.
public struct ValidatorOptions: Sendable {
    /// Assert the formats in `FormatChecker.known` (`date-time`, `email`, `uuid`, `uri`, `ipv4`,
    /// `ipv6`, ...) instead of treating `format` as an annotation only. Default `false`, as the
    /// specification requires for the format-annotation vocabulary.
    public var formatAssertion: Bool
    /// Maximum depth of nested schema evaluation (subschemas and `$ref` hops). Exceeding it, e.g.
    /// through a `$ref` cycle that never consumes the instance, makes the instance invalid with
    /// `ValidationResult.limitExceeded == .evaluationDepth`.
    public var maxEvaluationDepth: Int
    /// Strings longer than this (in UTF-16 code units) are not searched by regex `pattern` /
    /// `patternProperties` checks; the check fails with `.patternInputLength`. Literal patterns
    /// (no metacharacters) are exempt.
    public var maxPatternInputLength: Int
    /// Wall-clock budget in seconds for one regex search; a search that runs longer is abandoned
    /// and fails with `.patternTimeBudget`.
    public var patternTimeBudget: Double
    /// Limits for parsing schema and instance text.
    public var parseLimits: JSONParseLimits

    public init(formatAssertion: Bool = false, maxEvaluationDepth: Int = 512, maxPatternInputLength: Int = 100_000,
                patternTimeBudget: Double = 0.1, parseLimits: JSONParseLimits = .default) {
        self.formatAssertion = formatAssertion
        self.maxEvaluationDepth = maxEvaluationDepth
        self.maxPatternInputLength = maxPatternInputLength
        self.patternTimeBudget = patternTimeBudget
        self.parseLimits = parseLimits
    }
}

/// Why a schema could not be loaded or compiled. Reported at load time, never during validation.
public enum SchemaLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `$schema` names a dialect that is neither draft 2020-12 nor a registered 2020-12 meta-schema.
    case unknownDialect(String, location: String)
    /// A meta-schema requires a vocabulary this validator does not implement.
    case unsupportedVocabulary(String, location: String)
    /// A `$ref` / `$dynamicRef` target does not exist (unknown resource, anchor or pointer).
    case unresolvableReference(String, location: String)
    /// A keyword has an invalid value (wrong type, negative length, bad regex, ...).
    case invalidSchema(String, location: String)
    /// Schema text is not valid JSON.
    case invalidJSON(JSONParseError, source: String)
    /// A file could not be read.
    case unreadable(path: String, reason: String)
    /// No schema with the requested URI is registered.
    case unknownSchema(String)

    public var description: String {
        switch self {
        case .unknownDialect(let uri, let location):
            return "unknown $schema dialect \"\(uri)\" at \(location) (supported: \(MetaSchemas.draft202012) and registered 2020-12 meta-schemas)"
        case .unsupportedVocabulary(let uri, let location):
            return "meta-schema at \(location) requires unsupported vocabulary \"\(uri)\""
        case .unresolvableReference(let reference, let location):
            return "unresolvable reference \"\(reference)\" at \(location)"
        case .invalidSchema(let message, let location):
            return "invalid schema at \(location): \(message)"
        case .invalidJSON(let error, let source):
            return "\(source): \(error)"
        case .unreadable(let path, let reason):
            return "cannot read \(path): \(reason)"
        case .unknownSchema(let uri):
            return "no schema registered as \"\(uri)\""
        }
    }
}

/// A set of schema documents addressable by URI, from which schemas are compiled.
///
/// Register every document a schema may reference (by `$id` or by an explicit URI), then compile
/// the ones to validate against. The 2020-12 meta-schemas are always available. References to
/// URIs that are not registered are passed to `retriever`, if set; otherwise they are load errors.
///
/// ```swift
/// var registry = SchemaRegistry()
/// try registry.registerDirectory(at: "Schemas")
/// let schema = try registry.compile("https://mesa.dev/schemas/fact-update/v1.json")
/// let result = schema.validate(try JSONValue.parse(bytes))
/// ```
public struct SchemaRegistry: Sendable {
    /// Registered documents by absolute URI (without fragment).
    public private(set) var documents: [String: JSONValue] = [:]
    /// Called for URIs that are not registered; returns the document or `nil`.
    public var retriever: (@Sendable (String) -> JSONValue?)?
    /// Options used by `compile`.
    public var options: ValidatorOptions

    public init(options: ValidatorOptions = ValidatorOptions(), retriever: (@Sendable (String) -> JSONValue?)? = nil) {
        self.options = options
        self.retriever = retriever
    }

    /// Registers `schema` under its `$id`, or under `uri` if given (which then also serves as
    /// the base URI of a schema without `$id`). Returns the URI it was registered as.
    @discardableResult
    public mutating func register(_ schema: JSONValue, uri: String? = nil) throws(SchemaLoadError) -> String {
        var key = uri.map(URIs.normalize)
        if key == nil, case .string(let id)? = schema["$id"] {
            key = URIs.normalize(id)
        }
        guard let key, !key.isEmpty else {
            throw SchemaLoadError.invalidSchema("schema has no $id and no URI was given", location: "#")
        }
        if let uri, case .string(let id)? = schema["$id"] {
            // Also reachable under its own $id, resolved against the retrieval URI.
            let resolved = URIs.normalize(URIs.resolve(id, against: uri))
            documents[URIs.splitFragment(resolved).base] = schema
        }
        documents[URIs.splitFragment(key).base] = schema
        return key
    }

    /// Parses and registers JSON text; see `register(_:uri:)`.
    @discardableResult
    public mutating func register(jsonText bytes: some Collection<UInt8>, uri: String? = nil) throws(SchemaLoadError) -> String {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes, limits: options.parseLimits)
        } catch {
            throw SchemaLoadError.invalidJSON(error, source: uri ?? "schema")
        }
        return try register(value, uri: uri)
    }

    /// Reads and registers one schema file. A schema without `$id` is registered under its
    /// `file://` URL.
    @discardableResult
    public mutating func registerFile(at path: String) throws(SchemaLoadError) -> String {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SchemaLoadError.unreadable(path: path, reason: error.localizedDescription)
        }
        let value: JSONValue
        do {
            value = try JSONValue.parse(data, limits: options.parseLimits)
        } catch {
            throw SchemaLoadError.invalidJSON(error, source: path)
        }
        return try register(value, uri: value["$id"] == nil ? url.absoluteString : nil)
    }

    /// Registers every `*.json` file in `directory` (not recursive). Returns the registered URIs.
    @discardableResult
    public mutating func registerDirectory(at directory: String) throws(SchemaLoadError) -> [String] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw SchemaLoadError.unreadable(path: directory, reason: error.localizedDescription)
        }
        var registered: [String] = []
        for name in names.sorted() where name.hasSuffix(".json") {
            registered.append(try registerFile(at: (directory as NSString).appendingPathComponent(name)))
        }
        return registered
    }

    /// Compiles the registered schema at `uri` (may include a fragment such as `#/$defs/x`).
    /// All references reachable from it, and every subschema of its document, are resolved now.
    public func compile(_ uri: String) throws(SchemaLoadError) -> CompiledSchema {
        let compiler = SchemaCompiler(registry: self)
        return try compiler.compile(rootURI: URIs.normalize(uri))
    }

    /// Compiles a standalone schema value (registered temporarily under `uri` or its `$id`).
    public func compile(_ schema: JSONValue, uri: String? = nil) throws(SchemaLoadError) -> CompiledSchema {
        var copy = self
        let key: String
        if uri == nil && schema["$id"] == nil {
            key = "urn:mesa:anonymous-schema"
            try copy.register(schema, uri: key)
        } else {
            key = try copy.register(schema, uri: uri)
        }
        return try copy.compile(key)
    }
}

/// A schema compiled into a flat graph of nodes with resolved references and compiled regexes.
/// Immutable and safe to share between threads; `validate` may be called concurrently.
public final class CompiledSchema: Sendable {
    let nodes: [SchemaNode]
    let root: Int
    /// Per resource: `$dynamicAnchor` name → node, for `$dynamicRef` resolution.
    let dynamicAnchors: [[String: Int]]
    let options: ValidatorOptions
    /// The URI of the root schema.
    public let uri: String

    init(nodes: [SchemaNode], root: Int, dynamicAnchors: [[String: Int]], options: ValidatorOptions, uri: String) {
        self.nodes = nodes
        self.root = root
        self.dynamicAnchors = dynamicAnchors
        self.options = options
        self.uri = uri
    }

    /// Compiles a standalone schema with default registry contents.
    public convenience init(_ schema: JSONValue, options: ValidatorOptions = ValidatorOptions()) throws(SchemaLoadError) {
        let compiled = try SchemaRegistry(options: options).compile(schema)
        self.init(nodes: compiled.nodes, root: compiled.root, dynamicAnchors: compiled.dynamicAnchors,
                  options: compiled.options, uri: compiled.uri)
    }

    /// Validates `instance`, collecting every error.
    public func validate(_ instance: JSONValue) -> ValidationResult {
        let evaluator = Evaluator(schema: self)
        return evaluator.run(instance)
    }

    /// Validates `instance`, stopping at the first error; faster when only validity matters.
    public func isValid(_ instance: JSONValue) -> Bool {
        let evaluator = Evaluator(schema: self)
        evaluator.collect = false
        return evaluator.run(instance).valid
    }
}
