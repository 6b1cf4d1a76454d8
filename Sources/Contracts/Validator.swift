/// Evaluated-location annotations used by `unevaluatedItems` / `unevaluatedProperties`.
/// Only built while a schema that needs them is being evaluated.
struct Annotations {
    var allProperties = false
    var properties: Set<String> = []
    var allItems = false
    var itemsUpTo = 0
    var containsIndices: Set<Int> = []

    mutating func merge(_ other: Annotations) {
        allProperties = allProperties || other.allProperties
        if !other.properties.isEmpty { properties.formUnion(other.properties) }
        allItems = allItems || other.allItems
        itemsUpTo = max(itemsUpTo, other.itemsUpTo)
        if !other.containsIndices.isEmpty { containsIndices.formUnion(other.containsIndices) }
    }

    func isEvaluated(property: String) -> Bool {
        allProperties || properties.contains(property)
    }

    func isEvaluated(item: Int) -> Bool {
        allItems || item < itemsUpTo || containsIndices.contains(item)
    }
}

/// One step of an instance or keyword path; pointer strings are built only when reporting errors.
enum PathSegment {
    case keyword(String)
    case key(String)
    case index(Int)

    static func pointer(_ segments: [PathSegment]) -> String {
        var result = ""
        for segment in segments {
            result += "/"
            switch segment {
            case .keyword(let keyword): result += JSONPointer.escape(keyword)
            case .key(let key): result += JSONPointer.escape(key)
            case .index(let index): result += String(index)
            }
        }
        return result
    }
}

/// Evaluates one instance against a compiled schema. Created per validation; not shared.
final class Evaluator {
    let schema: CompiledSchema
    let nodes: [SchemaNode]
    let options: ValidatorOptions
    /// When `false`, evaluation stops at the first failure and records no errors (used inside
    /// `not`, `if`, `contains` and the first pass of `anyOf` / `oneOf`).
    var collect = true
    private var errors: [ValidationError] = []
    private var limitErrors: [ValidationError] = []
    private var limit: ValidationLimit?
    private var keywordPath: [PathSegment] = []
    private var instancePath: [PathSegment] = []
    /// Schema resources entered, outermost first (the dynamic scope for `$dynamicRef`).
    private var scope: [Int] = []
    private var depth = 0

    init(schema: CompiledSchema) {
        self.schema = schema
        nodes = schema.nodes
        options = schema.options
        keywordPath.reserveCapacity(16)
        instancePath.reserveCapacity(16)
        scope.reserveCapacity(4)
    }

    func run(_ instance: JSONValue) -> ValidationResult {
        var annotations = Annotations()
        let valid = evaluate(schema.root, instance, track: false, &annotations)
        if limit != nil {
            return ValidationResult(valid: false, errors: errors + limitErrors, limitExceeded: limit)
        }
        if !valid && errors.isEmpty && collect {
            errors.append(ValidationError(instanceLocation: "", keywordLocation: "", absoluteKeywordLocation: nodes[schema.root].absoluteLocation,
                                          keyword: "", message: "value is not valid"))
        }
        return ValidationResult(valid: valid, errors: errors, limitExceeded: nil)
    }

    // MARK: Schema evaluation

    /// Evaluates node `index` against `instance`. When `track` is set and the result is valid, the
    /// locations evaluated by this schema (and its in-place subschemas) are merged into `annotations`.
    func evaluate(_ index: Int, _ instance: JSONValue, track: Bool, _ annotations: inout Annotations) -> Bool {
        let node = nodes[index]
        switch node.kind {
        case .alwaysTrue:
            return true
        case .alwaysFalse:
            if collect { reportFalseSchema(node, instance) }
            return false
        case .keywords:
            break
        }
        if limit != nil { return false }
        if depth >= options.maxEvaluationDepth {
            hitLimit(.evaluationDepth, node, keyword: "$ref",
                     message: "evaluation depth limit of \(options.maxEvaluationDepth) exceeded (recursive schema?)")
            return false
        }
        depth += 1
        let pushed = scope.last != node.resource
        if pushed { scope.append(node.resource) }
        defer {
            depth -= 1
            if pushed { scope.removeLast() }
        }
        let tracking = track || node.needsAnnotations
        var local = Annotations()
        var valid = true
        for op in node.ops where !apply(op, node, instance, tracking, &local) {
            valid = false
            if !collect || limit != nil { break }
        }
        if valid && track { annotations.merge(local) }
        return valid
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    private func apply(_ op: Op, _ node: SchemaNode, _ instance: JSONValue, _ tracking: Bool, _ local: inout Annotations) -> Bool {
        switch op {
        case .ref(let target):
            keywordPath.append(.keyword("$ref"))
            defer { keywordPath.removeLast() }
            return evaluate(target, instance, track: tracking, &local)

        case .dynamicRef(let name, let fallback):
            var target = fallback
            for resource in scope {
                if let anchored = schema.dynamicAnchors[resource][name] {
                    target = anchored
                    break
                }
            }
            keywordPath.append(.keyword("$dynamicRef"))
            defer { keywordPath.removeLast() }
            return evaluate(target, instance, track: tracking, &local)

        case .type(let mask):
            if Self.matches(mask, instance) { return true }
            fail(node, "type", "expected \(Self.describe(mask)) but got \(Self.describeType(instance))")
            return false

        case .enumeration(let values):
            if values.contains(instance) { return true }
            fail(node, "enum", "value must be one of \(Self.preview(values))")
            return false

        case .const(let value):
            if value == instance { return true }
            fail(node, "const", "value must be \(Self.preview([value]))")
            return false

        case .multipleOf(let divisor):
            guard case .number(let number) = instance, !number.isMultiple(of: divisor) else { return true }
            fail(node, "multipleOf", "\(number) is not a multiple of \(divisor)")
            return false

        case .maximum(let bound):
            guard case .number(let number) = instance, JSONNumber.compare(number, bound) > 0 else { return true }
            fail(node, "maximum", "\(number) is greater than the maximum \(bound)")
            return false

        case .exclusiveMaximum(let bound):
            guard case .number(let number) = instance, JSONNumber.compare(number, bound) >= 0 else { return true }
            fail(node, "exclusiveMaximum", "\(number) must be less than \(bound)")
            return false

        case .minimum(let bound):
            guard case .number(let number) = instance, JSONNumber.compare(number, bound) < 0 else { return true }
            fail(node, "minimum", "\(number) is less than the minimum \(bound)")
            return false

        case .exclusiveMinimum(let bound):
            guard case .number(let number) = instance, JSONNumber.compare(number, bound) <= 0 else { return true }
            fail(node, "exclusiveMinimum", "\(number) must be greater than \(bound)")
            return false

        case .maxLength(let maximum):
            guard case .string(let string) = instance, string.utf8.count > maximum else { return true }
            let length = string.unicodeScalars.count
            if length <= maximum { return true }
            fail(node, "maxLength", "string of \(length) characters is longer than \(maximum)")
            return false

        case .minLength(let minimum):
            guard case .string(let string) = instance, string.utf8.count < minimum.multipliedReportingOverflow(by: 4).partialValue else { return true }
            let length = string.unicodeScalars.count
            if length >= minimum { return true }
            fail(node, "minLength", "string of \(length) characters is shorter than \(minimum)")
            return false

        case .pattern(let pattern):
            guard case .string(let string) = instance else { return true }
            return checkPattern(pattern, string, node, keyword: "pattern") {
                "string does not match pattern \(pattern.source)"
            }

        case .format(let format):
            guard case .string(let string) = instance, !FormatChecker.check(format, string) else { return true }
            fail(node, "format", "\(Self.preview([instance])) is not a valid \(format)")
            return false

        case .maxItems(let maximum):
            guard case .array(let elements) = instance, elements.count > maximum else { return true }
            fail(node, "maxItems", "array has \(elements.count) items, more than \(maximum)")
            return false

        case .minItems(let minimum):
            guard case .array(let elements) = instance, elements.count < minimum else { return true }
            fail(node, "minItems", "array has \(elements.count) items, fewer than \(minimum)")
            return false

        case .uniqueItems:
            guard case .array(let elements) = instance, let (first, second) = Self.duplicate(in: elements) else { return true }
            fail(node, "uniqueItems", "items at index \(first) and \(second) are equal")
            return false

        case .maxProperties(let maximum):
            guard case .object(let object) = instance, object.count > maximum else { return true }
            fail(node, "maxProperties", "object has \(object.count) properties, more than \(maximum)")
            return false

        case .minProperties(let minimum):
            guard case .object(let object) = instance, object.count < minimum else { return true }
            fail(node, "minProperties", "object has \(object.count) properties, fewer than \(minimum)")
            return false

        case .required(let names):
            guard case .object(let object) = instance else { return true }
            var valid = true
            for name in names where object.position(of: name) == nil {
                valid = false
                if !collect { return false }
                fail(node, "required", "required property \"\(name)\" is missing")
            }
            return valid

        case .dependentRequired(let entries):
            guard case .object(let object) = instance else { return true }
            var valid = true
            for entry in entries where object.position(of: entry.property) != nil {
                for name in entry.required where object.position(of: name) == nil {
                    valid = false
                    if !collect { return false }
                    fail(node, "dependentRequired", "property \"\(name)\" is required when \"\(entry.property)\" is present")
                }
            }
            return valid

        case .allOf(let children):
            var valid = true
            for (position, child) in children.enumerated() {
                keywordPath.append(.keyword("allOf"))
                keywordPath.append(.index(position))
                let ok = evaluate(child, instance, track: tracking, &local)
                keywordPath.removeLast(2)
                if !ok {
                    valid = false
                    if !collect { return false }
                }
            }
            return valid

        case .anyOf(let children):
            let saved = collect
            collect = false
            var matched = false
            for (position, child) in children.enumerated() {
                keywordPath.append(.keyword("anyOf"))
                keywordPath.append(.index(position))
                let ok = evaluate(child, instance, track: tracking, &local)
                keywordPath.removeLast(2)
                if ok {
                    matched = true
                    if !tracking { break }
                }
            }
            collect = saved
            if matched { return true }
            if collect {
                reportBranches("anyOf", children, instance)
                fail(node, "anyOf", "value does not match any of the \(children.count) alternatives")
            }
            return false

        case .oneOf(let children):
            let saved = collect
            collect = false
            var matches: [Int] = []
            var branchAnnotations = Annotations()
            for (position, child) in children.enumerated() {
                keywordPath.append(.keyword("oneOf"))
                keywordPath.append(.index(position))
                let ok = evaluate(child, instance, track: tracking, &branchAnnotations)
                keywordPath.removeLast(2)
                if ok {
                    matches.append(position)
                    if matches.count > 1 { break }
                }
            }
            collect = saved
            if matches.count == 1 {
                if tracking { local.merge(branchAnnotations) }
                return true
            }
            if collect {
                if matches.isEmpty {
                    reportBranches("oneOf", children, instance)
                    fail(node, "oneOf", "value does not match any of the \(children.count) alternatives")
                } else {
                    fail(node, "oneOf", "value matches more than one alternative (\(matches[0]) and \(matches[1]))")
                }
            }
            return false

        case .not(let child):
            let saved = collect
            collect = false
            keywordPath.append(.keyword("not"))
            var ignored = Annotations()
            let matched = evaluate(child, instance, track: false, &ignored)
            keywordPath.removeLast()
            collect = saved
            if !matched { return true }
            fail(node, "not", "value must not match the schema in \"not\"")
            return false

        case .conditional(let ifNode, let thenNode, let elseNode):
            let saved = collect
            collect = false
            keywordPath.append(.keyword("if"))
            let condition = evaluate(ifNode, instance, track: tracking, &local)
            keywordPath.removeLast()
            collect = saved
            guard let branch = condition ? thenNode : elseNode else { return true }
            keywordPath.append(.keyword(condition ? "then" : "else"))
            defer { keywordPath.removeLast() }
            return evaluate(branch, instance, track: tracking, &local)

        case .dependentSchemas(let entries):
            guard case .object(let object) = instance else { return true }
            var valid = true
            for entry in entries where object.position(of: entry.property) != nil {
                keywordPath.append(.keyword("dependentSchemas"))
                keywordPath.append(.key(entry.property))
                let ok = evaluate(entry.node, instance, track: tracking, &local)
                keywordPath.removeLast(2)
                if !ok {
                    valid = false
                    if !collect { return false }
                }
            }
            return valid

        case .items(let prefix, let rest):
            guard case .array(let elements) = instance else { return true }
            var valid = true
            var ignored = Annotations()
            let prefixCount = min(prefix.count, elements.count)
            for position in 0..<prefixCount {
                keywordPath.append(.keyword("prefixItems"))
                keywordPath.append(.index(position))
                instancePath.append(.index(position))
                let ok = evaluate(prefix[position], elements[position], track: false, &ignored)
                instancePath.removeLast()
                keywordPath.removeLast(2)
                if !ok {
                    valid = false
                    if !collect { return false }
                }
            }
            if tracking { local.itemsUpTo = max(local.itemsUpTo, prefixCount) }
            if let rest, elements.count > prefix.count {
                keywordPath.append(.keyword("items"))
                for position in prefix.count..<elements.count {
                    instancePath.append(.index(position))
                    let ok = evaluate(rest, elements[position], track: false, &ignored)
                    instancePath.removeLast()
                    if !ok {
                        valid = false
                        if !collect { break }
                    }
                }
                keywordPath.removeLast()
                if tracking { local.allItems = true }
            }
            return valid

        case .contains(let child, let minimum, let maximum):
            guard case .array(let elements) = instance else { return true }
            let saved = collect
            collect = false
            var count = 0
            var ignored = Annotations()
            keywordPath.append(.keyword("contains"))
            for (position, element) in elements.enumerated() {
                instancePath.append(.index(position))
                let ok = evaluate(child, element, track: false, &ignored)
                instancePath.removeLast()
                if ok {
                    count += 1
                    if tracking { local.containsIndices.insert(position) }
                    if !tracking && maximum == nil && count >= minimum { break }
                }
            }
            keywordPath.removeLast()
            collect = saved
            if count < minimum {
                fail(node, minimum == 1 ? "contains" : "minContains",
                     "array contains \(count) matching item\(count == 1 ? "" : "s"), at least \(minimum) required")
                return false
            }
            if let maximum, count > maximum {
                fail(node, "maxContains", "array contains \(count) matching items, at most \(maximum) allowed")
                return false
            }
            return true

        case .properties(let applicator):
            guard case .object(let object) = instance else { return true }
            return applyProperties(applicator, object, node, tracking, &local)

        case .propertyNames(let child):
            guard case .object(let object) = instance else { return true }
            var valid = true
            var ignored = Annotations()
            keywordPath.append(.keyword("propertyNames"))
            defer { keywordPath.removeLast() }
            for key in object.keys {
                let saved = collect
                collect = false
                let ok = evaluate(child, .string(key), track: false, &ignored)
                collect = saved
                if !ok {
                    valid = false
                    if !collect { return false }
                    let location = PathSegment.pointer(keywordPath)
                    errors.append(ValidationError(instanceLocation: PathSegment.pointer(instancePath), keywordLocation: location,
                                                  absoluteKeywordLocation: node.absoluteLocation + "/propertyNames",
                                                  keyword: "propertyNames", message: "property name \"\(key)\" is not valid"))
                }
            }
            return valid

        case .unevaluatedItems(let child):
            guard case .array(let elements) = instance else { return true }
            var valid = true
            var ignored = Annotations()
            keywordPath.append(.keyword("unevaluatedItems"))
            for position in elements.indices where !local.isEvaluated(item: position) {
                instancePath.append(.index(position))
                let ok = evaluate(child, elements[position], track: false, &ignored)
                instancePath.removeLast()
                if !ok {
                    valid = false
                    if !collect { break }
                }
            }
            keywordPath.removeLast()
            if tracking { local.allItems = true }
            return valid

        case .unevaluatedProperties(let child):
            guard case .object(let object) = instance else { return true }
            var valid = true
            var ignored = Annotations()
            keywordPath.append(.keyword("unevaluatedProperties"))
            for (key, value) in object where !local.isEvaluated(property: key) {
                instancePath.append(.key(key))
                let ok = evaluate(child, value, track: false, &ignored)
                instancePath.removeLast()
                if !ok {
                    valid = false
                    if !collect { break }
                }
            }
            keywordPath.removeLast()
            if tracking { local.allProperties = true }
            return valid
        }
    }

    private func applyProperties(_ applicator: PropertyApplicator, _ object: JSONObject, _ node: SchemaNode,
                                 _ tracking: Bool, _ local: inout Annotations) -> Bool {
        var valid = true
        var ignored = Annotations()
        for (key, value) in object {
            var matched = false
            if let child = applicator.properties[key] {
                matched = true
                keywordPath.append(.keyword("properties"))
                keywordPath.append(.key(key))
                instancePath.append(.key(key))
                let ok = evaluate(child, value, track: false, &ignored)
                instancePath.removeLast()
                keywordPath.removeLast(2)
                if !ok {
                    valid = false
                    if !collect { return false }
                }
            }
            for (pattern, child) in applicator.patterns {
                instancePath.append(.key(key))
                let saved = collect
                collect = false
                let applies = checkPattern(pattern, key, node, keyword: "patternProperties") { "" }
                collect = saved
                if limit != nil {
                    instancePath.removeLast()
                    return false
                }
                if applies {
                    matched = true
                    keywordPath.append(.keyword("patternProperties"))
                    keywordPath.append(.key(pattern.source))
                    let ok = evaluate(child, value, track: false, &ignored)
                    keywordPath.removeLast(2)
                    if !ok {
                        valid = false
                        if !collect {
                            instancePath.removeLast()
                            return false
                        }
                    }
                }
                instancePath.removeLast()
            }
            if !matched, let additional = applicator.additional {
                keywordPath.append(.keyword("additionalProperties"))
                instancePath.append(.key(key))
                let ok = evaluate(additional, value, track: false, &ignored)
                instancePath.removeLast()
                keywordPath.removeLast()
                if !ok {
                    valid = false
                    if !collect { return false }
                }
            }
            if tracking && matched { local.properties.insert(key) }
        }
        if tracking && applicator.additional != nil { local.allProperties = true }
        return valid
    }

    /// Runs a guarded regex search; limit violations poison the whole validation (fail closed).
    private func checkPattern(_ pattern: CompiledPattern, _ string: String, _ node: SchemaNode, keyword: String,
                              message: () -> String) -> Bool {
        switch pattern.search(string, maxInputLength: options.maxPatternInputLength, timeBudget: options.patternTimeBudget) {
        case .match:
            return true
        case .noMatch:
            fail(node, keyword, message())
            return false
        case .inputTooLong:
            hitLimit(.patternInputLength, node, keyword: keyword,
                     message: "string of \(string.utf16.count) UTF-16 units exceeds the \(options.maxPatternInputLength) limit for regex \(pattern.source)")
            return false
        case .timedOut:
            hitLimit(.patternTimeBudget, node, keyword: keyword,
                     message: "regex \(pattern.source) exceeded its time budget of \(options.patternTimeBudget)s")
            return false
        }
    }

    /// Re-evaluates failed alternatives with error collection so their errors are reported.
    private func reportBranches(_ keyword: String, _ children: [Int], _ instance: JSONValue) {
        var ignored = Annotations()
        for (position, child) in children.enumerated() {
            keywordPath.append(.keyword(keyword))
            keywordPath.append(.index(position))
            _ = evaluate(child, instance, track: false, &ignored)
            keywordPath.removeLast(2)
        }
    }

    // MARK: Errors

    private func fail(_ node: SchemaNode, _ keyword: String, _ message: @autoclosure () -> String) {
        guard collect else { return }
        errors.append(ValidationError(
            instanceLocation: PathSegment.pointer(instancePath),
            keywordLocation: PathSegment.pointer(keywordPath) + "/" + keyword,
            absoluteKeywordLocation: node.absoluteLocation + "/" + keyword,
            keyword: keyword, message: message()))
    }

    private func reportFalseSchema(_ node: SchemaNode, _ instance: JSONValue) {
        var keyword = "false"
        if case .keyword(let parent)? = keywordPath.last { keyword = parent }
        let message: String
        switch (keyword, instancePath.last) {
        case ("additionalProperties", .key(let key)?): message = "additional property \"\(key)\" is not allowed"
        case ("unevaluatedProperties", .key(let key)?): message = "unevaluated property \"\(key)\" is not allowed"
        case ("items", .index(let index)?), ("unevaluatedItems", .index(let index)?): message = "no item is allowed at index \(index)"
        default: message = "no value is allowed here (the schema is false)"
        }
        errors.append(ValidationError(instanceLocation: PathSegment.pointer(instancePath), keywordLocation: PathSegment.pointer(keywordPath),
                                      absoluteKeywordLocation: node.absoluteLocation, keyword: keyword, message: message))
    }

    private func hitLimit(_ kind: ValidationLimit, _ node: SchemaNode, keyword: String, message: String) {
        guard limit == nil else { return }
        limit = kind
        limitErrors.append(ValidationError(
            instanceLocation: PathSegment.pointer(instancePath),
            keywordLocation: PathSegment.pointer(keywordPath) + "/" + keyword,
            absoluteKeywordLocation: node.absoluteLocation + "/" + keyword,
            keyword: keyword, message: message))
    }

    // MARK: Helpers

    @inline(__always)
    static func matches(_ mask: TypeMask, _ value: JSONValue) -> Bool {
        switch value {
        case .null: return mask.contains(.null)
        case .bool: return mask.contains(.boolean)
        case .number(let number): return mask.contains(.number) || (mask.contains(.integer) && number.isInteger)
        case .string: return mask.contains(.string)
        case .array: return mask.contains(.array)
        case .object: return mask.contains(.object)
        }
    }

    static func describe(_ mask: TypeMask) -> String {
        let names = ["null", "boolean", "integer", "number", "string", "array", "object"]
            .filter { mask.contains(TypeMask.byName[$0]!) }
        return names.count == 1 ? names[0] : "one of " + names.joined(separator: ", ")
    }

    static func describeType(_ value: JSONValue) -> String {
        if case .number(let number) = value { return number.isInteger ? "integer" : "number" }
        return value.typeName
    }

    static func preview(_ values: [JSONValue]) -> String {
        var text = values.map { $0.jsonText() }.joined(separator: ", ")
        if text.count > 200 { text = String(text.prefix(200)) + "…" }
        return text
    }

    /// Indices of the first two equal items, if any.
    static func duplicate(in elements: [JSONValue]) -> (Int, Int)? {
        if elements.count < 2 { return nil }
        if elements.count <= 16 {
            for i in 0..<elements.count {
                for j in (i + 1)..<elements.count where elements[i] == elements[j] { return (i, j) }
            }
            return nil
        }
        var seen = [JSONValue: Int](minimumCapacity: elements.count)
        for (position, element) in elements.enumerated() {
            if let earlier = seen.updateValue(position, forKey: element) { return (earlier, position) }
        }
        return nil
    }
}
