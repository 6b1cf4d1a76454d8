/// JSON Schema instance types as a bit set; `number` includes integers.
struct TypeMask: OptionSet, Sendable {
    let rawValue: UInt8
    static let null = TypeMask(rawValue: 1)
    static let boolean = TypeMask(rawValue: 2)
    static let integer = TypeMask(rawValue: 4)
    static let number = TypeMask(rawValue: 8)
    static let string = TypeMask(rawValue: 16)
    static let array = TypeMask(rawValue: 32)
    static let object = TypeMask(rawValue: 64)

    static let byName: [String: TypeMask] = [
        "null": .null, "boolean": .boolean, "integer": .integer, "number": .number,
        "string": .string, "array": .array, "object": .object,
    ]
}

/// The vocabularies enabled for a schema resource by its dialect.
struct Vocabularies: OptionSet, Sendable, Hashable {
    let rawValue: UInt8
    static let core = Vocabularies(rawValue: 1)
    static let applicator = Vocabularies(rawValue: 2)
    static let unevaluated = Vocabularies(rawValue: 4)
    static let validation = Vocabularies(rawValue: 8)
    static let formatAssertion = Vocabularies(rawValue: 16)
    static let standard: Vocabularies = [.core, .applicator, .unevaluated, .validation]

    static let byURI: [String: Vocabularies] = [
        "https://json-schema.org/draft/2020-12/vocab/core": .core,
        "https://json-schema.org/draft/2020-12/vocab/applicator": .applicator,
        "https://json-schema.org/draft/2020-12/vocab/unevaluated": .unevaluated,
        "https://json-schema.org/draft/2020-12/vocab/validation": .validation,
        "https://json-schema.org/draft/2020-12/vocab/format-assertion": .formatAssertion,
        "https://json-schema.org/draft/2020-12/vocab/format-annotation": [],
        "https://json-schema.org/draft/2020-12/vocab/meta-data": [],
        "https://json-schema.org/draft/2020-12/vocab/content": [],
    ]
}

/// `properties` / `patternProperties` / `additionalProperties` of one schema, evaluated together.
final class PropertyApplicator: Sendable {
    let properties: [String: Int]
    let patterns: [(pattern: CompiledPattern, node: Int)]
    let additional: Int?

    init(properties: [String: Int], patterns: [(pattern: CompiledPattern, node: Int)], additional: Int?) {
        self.properties = properties
        self.patterns = patterns
        self.additional = additional
    }
}

/// One compiled keyword. Child schemas are node indices.
enum Op: Sendable {
    case ref(Int)
    case dynamicRef(name: String, fallback: Int)
    case type(TypeMask)
    case enumeration([JSONValue])
    case const(JSONValue)
    case multipleOf(JSONNumber)
    case maximum(JSONNumber)
    case exclusiveMaximum(JSONNumber)
    case minimum(JSONNumber)
    case exclusiveMinimum(JSONNumber)
    case maxLength(Int)
    case minLength(Int)
    case pattern(CompiledPattern)
    case format(String)
    case maxItems(Int)
    case minItems(Int)
    case uniqueItems
    case maxProperties(Int)
    case minProperties(Int)
    case required([String])
    case dependentRequired([(property: String, required: [String])])
    case allOf([Int])
    case anyOf([Int])
    case oneOf([Int])
    case not(Int)
    case conditional(ifNode: Int, thenNode: Int?, elseNode: Int?)
    case dependentSchemas([(property: String, node: Int)])
    case items(prefix: [Int], rest: Int?)
    case contains(Int, min: Int, max: Int?)
    case properties(PropertyApplicator)
    case propertyNames(Int)
    case unevaluatedItems(Int)
    case unevaluatedProperties(Int)
}

/// A compiled (sub)schema.
final class SchemaNode: @unchecked Sendable {  // filled in by the compiler on one thread, then only read once the compiled schema is published
    enum Kind { case alwaysTrue, alwaysFalse, keywords }
    // Fields are written only while compiling, before the node is published in a CompiledSchema.
    var kind: Kind = .alwaysTrue
    var ops: [Op] = []
    /// Index of the schema resource (for `$dynamicRef` scope tracking).
    var resource = 0
    /// Absolute location: resource URI + `#` + JSON Pointer of the schema within the resource.
    var absoluteLocation = ""
    /// The node has `unevaluatedItems` / `unevaluatedProperties` and needs annotations from its
    /// in-place applicators.
    var needsAnnotations = false
}

/// Builds `CompiledSchema`s from a registry: indexes resources and anchors, resolves references and
/// compiles every reachable subschema exactly once (a worklist, so schema depth never recurses).
final class SchemaCompiler {
    private struct Document {
        let root: JSONValue
        let uri: String
    }

    private struct Resource {
        let uri: String
        let document: Int
        let pointer: [String]
        var anchors: [String: [String]] = [:]
        var dynamicAnchors: [String: [String]] = [:]
    }

    private struct LocationKey: Hashable {
        let document: Int
        let pointer: [String]
    }

    private struct LocationInfo {
        let resource: Int
        let base: String
        let vocabularies: Vocabularies
    }

    private let registry: SchemaRegistry
    private var documents: [Document] = []
    private var documentByURI: [String: Int] = [:]
    private var resources: [Resource] = []
    private var resourceByURI: [String: Int] = [:]
    private var locations: [LocationKey: LocationInfo] = [:]
    private var nodes: [SchemaNode] = []
    private var nodeByLocation: [LocationKey: Int] = [:]
    private var worklist: [(node: Int, location: LocationKey)] = []
    private var dialectCache: [String: Vocabularies] = [:]
    private var dialectsInProgress: Set<String> = []
    private var embeddedMetaSchemas: [String: String] = [:]

    init(registry: SchemaRegistry) {
        self.registry = registry
        for (uri, text) in MetaSchemas.documents { embeddedMetaSchemas[uri] = text }
    }

    func compile(rootURI: String) throws(SchemaLoadError) -> CompiledSchema {
        let (base, fragment) = URIs.splitFragment(rootURI)
        guard let document = try loadDocument(base) else { throw SchemaLoadError.unknownSchema(rootURI) }
        let root = try resolve(reference: fragment.isEmpty ? base : rootURI, base: "", from: base)
        // Compile every subschema of the root document so that bad references anywhere in it are
        // load-time errors, even in unused definitions.
        for key in locations.keys where key.document == document { _ = nodeIndex(key) }
        try drainWorklist()
        // Compile `$dynamicAnchor` targets of every resource that may be in dynamic scope.
        var table: [[String: Int]] = []
        var processed = 0
        repeat {
            processed = nodes.count
            table = []
            let used = Set(nodes.map(\.resource))
            for (index, resource) in resources.enumerated() {
                var anchors: [String: Int] = [:]
                if used.contains(index) {
                    for (name, pointer) in resource.dynamicAnchors {
                        anchors[name] = nodeIndex(LocationKey(document: resource.document, pointer: pointer))
                    }
                }
                table.append(anchors)
            }
            try drainWorklist()
        } while nodes.count != processed
        return CompiledSchema(nodes: nodes, root: root, dynamicAnchors: table, options: registry.options, uri: rootURI)
    }

    // MARK: Documents and resources

    /// Loads (registry, embedded meta-schemas, then retriever) and indexes the document at `uri`.
    private func loadDocument(_ uri: String) throws(SchemaLoadError) -> Int? {
        if let existing = documentByURI[uri] { return existing }
        var value = registry.documents[uri]
        if value == nil, let text = embeddedMetaSchemas[uri] {
            do {
                value = try JSONValue.parse(text)
            } catch {
                throw SchemaLoadError.invalidJSON(error, source: uri)
            }
        }
        if value == nil { value = registry.retriever?(uri) }
        guard let value else { return nil }
        let index = documents.count
        documents.append(Document(root: value, uri: uri))
        documentByURI[uri] = index
        try scan(value, document: index, pointer: [], base: uri, resource: nil, vocabularies: .standard)
        if resourceByURI[uri] == nil, let root = resources.firstIndex(where: { $0.document == index && $0.pointer.isEmpty }) {
            resourceByURI[uri] = root
        }
        return index
    }

    /// Records resources, anchors and location info for a schema and its known subschemas.
    private func scan(_ value: JSONValue, document: Int, pointer: [String], base: String, resource: Int?,
                      vocabularies: Vocabularies) throws(SchemaLoadError) {
        var base = base
        var resource = resource
        var vocabularies = vocabularies
        guard case .object(let object) = value else {
            if case .bool = value {
                if let resource {
                    locations[LocationKey(document: document, pointer: pointer)] = LocationInfo(resource: resource, base: base, vocabularies: vocabularies)
                } else {
                    let created = addResource(uri: base, document: document, pointer: pointer)
                    locations[LocationKey(document: document, pointer: pointer)] = LocationInfo(resource: created, base: base, vocabularies: vocabularies)
                }
                return
            }
            throw SchemaLoadError.invalidSchema("a schema must be an object or a boolean, not \(value.typeName)",
                                                location: describe(document, pointer))
        }
        let id = object["$id"]
        if id != nil || resource == nil {
            if let id {
                guard case .string(let text) = id else {
                    throw SchemaLoadError.invalidSchema("$id must be a string", location: describe(document, pointer))
                }
                let resolved = URIs.splitFragment(URIs.resolve(text, against: base))
                guard resolved.fragment.isEmpty else {
                    throw SchemaLoadError.invalidSchema("$id must not contain a non-empty fragment", location: describe(document, pointer))
                }
                base = resolved.base
            }
            if let dialect = object["$schema"] {
                guard case .string(let dialectURI) = dialect else {
                    throw SchemaLoadError.invalidSchema("$schema must be a string", location: describe(document, pointer))
                }
                vocabularies = try self.vocabularies(forDialect: dialectURI, location: describe(document, pointer))
            }
            resource = addResource(uri: base, document: document, pointer: pointer)
        }
        guard let resource else { return }
        locations[LocationKey(document: document, pointer: pointer)] = LocationInfo(resource: resource, base: base, vocabularies: vocabularies)
        for keyword in ["$anchor", "$dynamicAnchor"] {
            guard let anchor = object[keyword] else { continue }
            guard case .string(let name) = anchor, Self.isValidAnchor(name) else {
                throw SchemaLoadError.invalidSchema("\(keyword) must be a valid anchor name", location: describe(document, pointer))
            }
            resources[resource].anchors[name] = pointer
            if keyword == "$dynamicAnchor" { resources[resource].dynamicAnchors[name] = pointer }
        }
        for keyword in Self.singleSchemaKeywords {
            if let child = object[keyword] {
                try scan(child, document: document, pointer: pointer + [keyword], base: base, resource: resource, vocabularies: vocabularies)
            }
        }
        for keyword in Self.schemaMapKeywords {
            guard let child = object[keyword] else { continue }
            guard case .object(let members) = child else {
                throw SchemaLoadError.invalidSchema("\(keyword) must be an object", location: describe(document, pointer))
            }
            for (name, member) in members {
                try scan(member, document: document, pointer: pointer + [keyword, name], base: base, resource: resource, vocabularies: vocabularies)
            }
        }
        if case .object(let members)? = object["dependencies"] {
            // Pre-2019 `dependencies`: schema-valued members are subschemas.
            for (name, member) in members where member.arrayValue == nil {
                try scan(member, document: document, pointer: pointer + ["dependencies", name], base: base, resource: resource, vocabularies: vocabularies)
            }
        }
        for keyword in Self.schemaArrayKeywords {
            guard let child = object[keyword] else { continue }
            guard case .array(let elements) = child, !elements.isEmpty || keyword == "prefixItems" else {
                throw SchemaLoadError.invalidSchema("\(keyword) must be a non-empty array", location: describe(document, pointer))
            }
            for (position, element) in elements.enumerated() {
                try scan(element, document: document, pointer: pointer + [keyword, String(position)], base: base, resource: resource, vocabularies: vocabularies)
            }
        }
    }

    private static let singleSchemaKeywords = [
        "items", "contains", "additionalProperties", "propertyNames", "not", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties", "contentSchema",
    ]
    private static let schemaMapKeywords = ["$defs", "properties", "patternProperties", "dependentSchemas"]
    private static let schemaArrayKeywords = ["prefixItems", "allOf", "anyOf", "oneOf"]

    private static func isValidAnchor(_ name: String) -> Bool {
        guard let first = name.utf8.first, FormatChecker.isAlphaNumeric(first) && !(first >= 48 && first <= 57) || first == UInt8(ascii: "_") else { return false }
        return name.utf8.allSatisfy { FormatChecker.isAlphaNumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
    }

    private func addResource(uri: String, document: Int, pointer: [String]) -> Int {
        if let existing = resourceByURI[uri], resources[existing].document == document, resources[existing].pointer == pointer {
            return existing
        }
        let index = resources.count
        resources.append(Resource(uri: uri, document: document, pointer: pointer))
        if resourceByURI[uri] == nil { resourceByURI[uri] = index }
        return index
    }

    /// The vocabularies of a dialect (`$schema` value).
    private func vocabularies(forDialect dialect: String, location: String) throws(SchemaLoadError) -> Vocabularies {
        let uri = URIs.normalize(dialect)
        if uri == MetaSchemas.draft202012 { return .standard }
        if let cached = dialectCache[uri] { return cached }
        guard !dialectsInProgress.contains(uri) else { return .standard }
        dialectsInProgress.insert(uri)
        defer { dialectsInProgress.remove(uri) }
        let split = URIs.splitFragment(uri)
        guard split.fragment.isEmpty, let document = try loadDocument(split.base),
              case .object(let metaSchema) = documents[document].root
        else {
            throw SchemaLoadError.unknownDialect(dialect, location: location)
        }
        guard let metaDialect = metaSchema["$schema"]?.stringValue,
              URIs.normalize(metaDialect) == MetaSchemas.draft202012 || dialectCache[URIs.normalize(metaDialect)] != nil
              || (try? vocabularies(forDialect: metaDialect, location: location)) != nil
        else {
            throw SchemaLoadError.unknownDialect(dialect, location: location)
        }
        var result: Vocabularies = .standard
        if case .object(let declared)? = metaSchema["$vocabulary"] {
            result = .core
            for (vocabulary, required) in declared {
                if let known = Vocabularies.byURI[vocabulary] {
                    result.formUnion(known)
                } else if required == .bool(true) {
                    throw SchemaLoadError.unsupportedVocabulary(vocabulary, location: location)
                }
            }
        }
        dialectCache[uri] = result
        return result
    }

    private func describe(_ document: Int, _ pointer: [String]) -> String {
        documents[document].uri + "#" + JSONPointer.join(pointer)
    }

    // MARK: References

    /// Resolves `reference` against `base` to a node index (compiled lazily).
    private func resolve(reference: String, base: String, from location: String) throws(SchemaLoadError) -> Int {
        let target = URIs.resolve(reference, against: base)
        let (uri, fragment) = URIs.splitFragment(target)
        var resourceIndex = resourceByURI[uri]
        if resourceIndex == nil {
            _ = try loadDocument(uri)
            resourceIndex = resourceByURI[uri]
        }
        guard let resourceIndex else {
            throw SchemaLoadError.unresolvableReference(reference, location: location)
        }
        let resource = resources[resourceIndex]
        var pointer = resource.pointer
        if fragment.hasPrefix("/") {
            guard let tokens = JSONPointer.tokens(fragment),
                  JSONPointer.resolve(resource.pointer + tokens, in: documents[resource.document].root) != nil
            else {
                throw SchemaLoadError.unresolvableReference(reference, location: location)
            }
            pointer += tokens
        } else if !fragment.isEmpty {
            guard let anchored = resource.anchors[fragment] else {
                throw SchemaLoadError.unresolvableReference(reference, location: location)
            }
            pointer = anchored
        }
        let key = LocationKey(document: resource.document, pointer: pointer)
        if locations[key] == nil { try scanUnindexedLocation(key, reference: reference, from: location) }
        return nodeIndex(key)
    }

    /// Indexes a schema reached by JSON Pointer through a location the scan did not visit (for
    /// example inside an unknown keyword), inheriting base URI and resource from its nearest
    /// indexed ancestor.
    private func scanUnindexedLocation(_ key: LocationKey, reference: String, from location: String) throws(SchemaLoadError) {
        var ancestor = key.pointer
        while !ancestor.isEmpty && locations[LocationKey(document: key.document, pointer: ancestor)] == nil {
            ancestor.removeLast()
        }
        guard let info = locations[LocationKey(document: key.document, pointer: ancestor)],
              let value = JSONPointer.resolve(key.pointer, in: documents[key.document].root)
        else {
            throw SchemaLoadError.unresolvableReference(reference, location: location)
        }
        try scan(value, document: key.document, pointer: key.pointer, base: info.base, resource: info.resource, vocabularies: info.vocabularies)
    }

    private func nodeIndex(_ key: LocationKey) -> Int {
        if let existing = nodeByLocation[key] { return existing }
        let index = nodes.count
        nodes.append(SchemaNode())
        nodeByLocation[key] = index
        worklist.append((index, key))
        return index
    }

    private func drainWorklist() throws(SchemaLoadError) {
        while let (index, key) = worklist.popLast() {
            try compileNode(nodes[index], at: key)
        }
    }

    // MARK: Keywords

    private func compileNode(_ node: SchemaNode, at key: LocationKey) throws(SchemaLoadError) {
        guard let info = locations[key], let value = JSONPointer.resolve(key.pointer, in: documents[key.document].root) else {
            throw SchemaLoadError.invalidSchema("schema location not indexed", location: describe(key.document, key.pointer))
        }
        let resource = resources[info.resource]
        node.resource = info.resource
        let relative = Array(key.pointer.dropFirst(resource.pointer.count))
        node.absoluteLocation = resource.uri + "#" + URIs.encodeFragment(JSONPointer.join(relative))
        let here = describe(key.document, key.pointer)
        switch value {
        case .bool(let flag):
            node.kind = flag ? .alwaysTrue : .alwaysFalse
            return
        case .object(let object):
            node.kind = .keywords
            node.ops = try compileKeywords(object, key: key, info: info, here: here)
            node.needsAnnotations = node.ops.contains {
                switch $0 {
                case .unevaluatedItems, .unevaluatedProperties: return true
                default: return false
                }
            }
        default:
            throw SchemaLoadError.invalidSchema("a schema must be an object or a boolean", location: here)
        }
    }

    private func compileKeywords(_ object: JSONObject, key: LocationKey, info: LocationInfo, here: String) throws(SchemaLoadError) -> [Op] {
        let vocabularies = info.vocabularies
        var ops: [Op] = []
        func child(_ path: String...) -> Int {
            nodeIndex(LocationKey(document: key.document, pointer: key.pointer + path))
        }
        func invalid(_ message: String) -> SchemaLoadError {
            .invalidSchema(message, location: here)
        }
        func nonNegative(_ keyword: String) throws(SchemaLoadError) -> Int? {
            try Self.nonNegative(object, keyword, here)
        }
        func numberValue(_ keyword: String) throws(SchemaLoadError) -> JSONNumber? {
            try Self.numberValue(object, keyword, here)
        }
        func pattern(_ source: String) throws(SchemaLoadError) -> CompiledPattern {
            try Self.pattern(source, here)
        }

        if vocabularies.contains(.core) {
            if let reference = object["$ref"] {
                guard case .string(let text) = reference else { throw invalid("$ref must be a string") }
                ops.append(.ref(try resolve(reference: text, base: info.base, from: here)))
            }
            if let reference = object["$dynamicRef"] {
                guard case .string(let text) = reference else { throw invalid("$dynamicRef must be a string") }
                let target = try resolve(reference: text, base: info.base, from: here)
                let fragment = URIs.splitFragment(URIs.resolve(text, against: info.base))
                let targetResource = resourceByURI[fragment.base].map { resources[$0] }
                if !fragment.fragment.isEmpty, !fragment.fragment.hasPrefix("/"),
                   targetResource?.dynamicAnchors[fragment.fragment] != nil {
                    ops.append(.dynamicRef(name: fragment.fragment, fallback: target))
                } else {
                    ops.append(.ref(target))
                }
            }
        }

        if vocabularies.contains(.validation) {
            if let type = object["type"] {
                var mask: TypeMask = []
                let names: [JSONValue]
                switch type {
                case .string: names = [type]
                case .array(let elements): names = elements
                default: throw invalid("type must be a string or an array of strings")
                }
                for name in names {
                    guard case .string(let text) = name, let bit = TypeMask.byName[text] else {
                        throw invalid("unknown type \(name)")
                    }
                    mask.insert(bit)
                }
                ops.append(.type(mask))
            }
            if let values = object["enum"] {
                guard case .array(let elements) = values else { throw invalid("enum must be an array") }
                ops.append(.enumeration(elements))
            }
            if let value = object["const"] { ops.append(.const(value)) }
            if let value = try numberValue("multipleOf") {
                guard value.signum > 0 else { throw invalid("multipleOf must be greater than 0") }
                ops.append(.multipleOf(value))
            }
            if let value = try numberValue("maximum") { ops.append(.maximum(value)) }
            if let value = try numberValue("exclusiveMaximum") { ops.append(.exclusiveMaximum(value)) }
            if let value = try numberValue("minimum") { ops.append(.minimum(value)) }
            if let value = try numberValue("exclusiveMinimum") { ops.append(.exclusiveMinimum(value)) }
            if let value = try nonNegative("maxLength") { ops.append(.maxLength(value)) }
            if let value = try nonNegative("minLength") { ops.append(.minLength(value)) }
            if let value = object["pattern"] {
                guard case .string(let source) = value else { throw invalid("pattern must be a string") }
                ops.append(.pattern(try pattern(source)))
            }
            if let value = try nonNegative("maxItems") { ops.append(.maxItems(value)) }
            if let value = try nonNegative("minItems") { ops.append(.minItems(value)) }
            if let value = object["uniqueItems"] {
                guard case .bool(let flag) = value else { throw invalid("uniqueItems must be a boolean") }
                if flag { ops.append(.uniqueItems) }
            }
            if let value = try nonNegative("maxProperties") { ops.append(.maxProperties(value)) }
            if let value = try nonNegative("minProperties") { ops.append(.minProperties(value)) }
            if let value = object["required"] {
                guard case .array(let elements) = value else { throw invalid("required must be an array of strings") }
                var names: [String] = []
                for element in elements {
                    guard case .string(let name) = element else { throw invalid("required must be an array of strings") }
                    names.append(name)
                }
                if !names.isEmpty { ops.append(.required(names)) }
            }
            if let value = object["dependentRequired"] {
                guard case .object(let members) = value else { throw invalid("dependentRequired must be an object") }
                var entries: [(property: String, required: [String])] = []
                for (property, list) in members {
                    guard case .array(let elements) = list else { throw invalid("dependentRequired values must be arrays of strings") }
                    var names: [String] = []
                    for element in elements {
                        guard case .string(let name) = element else { throw invalid("dependentRequired values must be arrays of strings") }
                        names.append(name)
                    }
                    entries.append((property, names))
                }
                ops.append(.dependentRequired(entries))
            }
        }

        if let value = object["format"], case .string(let format) = value,
           registry.options.formatAssertion || vocabularies.contains(.formatAssertion),
           FormatChecker.known.contains(format) {
            ops.append(.format(format))
        }

        if vocabularies.contains(.applicator) {
            for keyword in ["allOf", "anyOf", "oneOf"] {
                guard case .array(let elements)? = object[keyword] else { continue }
                let children = elements.indices.map { child(keyword, String($0)) }
                switch keyword {
                case "allOf": ops.append(.allOf(children))
                case "anyOf": ops.append(.anyOf(children))
                default: ops.append(.oneOf(children))
                }
            }
            if object["not"] != nil { ops.append(.not(child("not"))) }
            if object["if"] != nil {
                ops.append(.conditional(ifNode: child("if"),
                                        thenNode: object["then"] != nil ? child("then") : nil,
                                        elseNode: object["else"] != nil ? child("else") : nil))
            }
            if case .object(let members)? = object["dependentSchemas"] {
                ops.append(.dependentSchemas(members.keys.map { ($0, child("dependentSchemas", $0)) }))
            }
            if case .object(let members)? = object["dependencies"] {
                // Compatibility with the pre-2019 keyword, split into its two modern forms.
                var required: [(property: String, required: [String])] = []
                var schemas: [(property: String, node: Int)] = []
                for (name, member) in members {
                    if case .array(let elements) = member {
                        required.append((name, elements.compactMap(\.stringValue)))
                    } else {
                        schemas.append((name, child("dependencies", name)))
                    }
                }
                if !required.isEmpty { ops.append(.dependentRequired(required)) }
                if !schemas.isEmpty { ops.append(.dependentSchemas(schemas)) }
            }
            let prefix: [Int]
            if case .array(let elements)? = object["prefixItems"] {
                prefix = elements.indices.map { child("prefixItems", String($0)) }
            } else {
                prefix = []
            }
            let rest = object["items"] != nil ? child("items") : nil
            if !prefix.isEmpty || rest != nil { ops.append(.items(prefix: prefix, rest: rest)) }
            if object["contains"] != nil {
                var minimum = 1
                var maximum: Int?
                if vocabularies.contains(.validation) {
                    minimum = try nonNegative("minContains") ?? 1
                    maximum = try nonNegative("maxContains")
                }
                ops.append(.contains(child("contains"), min: minimum, max: maximum))
            }
            var properties: [String: Int] = [:]
            if case .object(let members)? = object["properties"] {
                for name in members.keys { properties[name] = child("properties", name) }
            }
            var patterns: [(pattern: CompiledPattern, node: Int)] = []
            if case .object(let members)? = object["patternProperties"] {
                for name in members.keys { patterns.append((try pattern(name), child("patternProperties", name))) }
            }
            let additional = object["additionalProperties"] != nil ? child("additionalProperties") : nil
            if !properties.isEmpty || !patterns.isEmpty || additional != nil {
                ops.append(.properties(PropertyApplicator(properties: properties, patterns: patterns, additional: additional)))
            }
            if object["propertyNames"] != nil { ops.append(.propertyNames(child("propertyNames"))) }
        }

        if vocabularies.contains(.unevaluated) {
            if object["unevaluatedItems"] != nil { ops.append(.unevaluatedItems(child("unevaluatedItems"))) }
            if object["unevaluatedProperties"] != nil { ops.append(.unevaluatedProperties(child("unevaluatedProperties"))) }
        }
        return ops
    }

    private static func nonNegative(_ object: JSONObject, _ keyword: String, _ here: String) throws(SchemaLoadError) -> Int? {
        guard let value = object[keyword] else { return nil }
        if case .number(let number) = value, number.isInteger, number.signum >= 0 {
            if let small = number.int64Value { return Int(clamping: small) }
            return Int.max
        }
        throw SchemaLoadError.invalidSchema(keyword + " must be a non-negative integer", location: here)
    }

    private static func numberValue(_ object: JSONObject, _ keyword: String, _ here: String) throws(SchemaLoadError) -> JSONNumber? {
        guard let value = object[keyword] else { return nil }
        guard case .number(let number) = value else {
            throw SchemaLoadError.invalidSchema("\(keyword) must be a number", location: here)
        }
        return number
    }

    private static func pattern(_ source: String, _ here: String) throws(SchemaLoadError) -> CompiledPattern {
        let compiled: CompiledPattern?
        var reason = ""
        do {
            compiled = try CompiledPattern(source)
        } catch {
            compiled = nil
            reason = error.reason
        }
        guard let compiled else {
            throw SchemaLoadError.invalidSchema("invalid regular expression \"\(source)\": \(reason)", location: here)
        }
        return compiled
    }
}
