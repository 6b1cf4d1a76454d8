import Foundation

/// One CounterFact edit case, in a layout-independent form.
///
/// Both on-disk layouts (see `CounterFactLayout`) load into this type. The rewrite prompt is kept as
/// a template with `"{}"` exactly once where the subject goes, as in ROME's `requested_rewrite.prompt`.
public struct CounterFactRecord: Codable, Sendable, Equatable {
    public var caseId: Int
    public var subject: String
    /// The rewrite prompt with "{}" exactly once where the subject goes, e.g. "{} debuted on".
    public var prompt: String
    /// The counterfactual object the edit installs (`target_new.str`, MEND `target_new`).
    public var targetNew: String
    /// The true object before the edit (`target_true.str`, MEND `ground_truth`).
    public var targetTrue: String
    /// Paraphrases of the rewrite prompt with the subject already in place (MEND: the single `rephrase_prompt`).
    public var paraphrasePrompts: [String]
    /// Prompts about other subjects whose true object is `targetTrue` (MEND: the single `locality_prompt`).
    public var neighborhoodPrompts: [String]
    /// Prompts about subjects whose true object is `targetNew` (ROME layout only; empty for MEND).
    public var attributePrompts: [String]
    /// Open-ended generation prompts about the subject (ROME layout only; empty for MEND).
    public var generationPrompts: [String]
    /// MEND's `locality_ground_truth`, the expected answer to the neighborhood prompt; `nil` for the
    /// ROME layout. Neighborhood success does not use it: as in ROME, NS compares `targetTrue` with
    /// `targetNew` on every neighborhood prompt. In the MEND CounterFact files it always equals
    /// `ground_truth`, so the two readings agree there.
    public var neighborhoodTarget: String?

    public init(
        caseId: Int, subject: String, prompt: String, targetNew: String, targetTrue: String,
        paraphrasePrompts: [String], neighborhoodPrompts: [String],
        attributePrompts: [String] = [], generationPrompts: [String] = [], neighborhoodTarget: String? = nil
    ) {
        self.caseId = caseId
        self.subject = subject
        self.prompt = prompt
        self.targetNew = targetNew
        self.targetTrue = targetTrue
        self.paraphrasePrompts = paraphrasePrompts
        self.neighborhoodPrompts = neighborhoodPrompts
        self.attributePrompts = attributePrompts
        self.generationPrompts = generationPrompts
        self.neighborhoodTarget = neighborhoodTarget
    }

    /// `prompt` with the subject filled in (ROME's `prompt.format(subject)`); the first `"{}"` is replaced.
    public var rewritePrompt: String {
        guard let slot = prompt.firstRange(of: "{}") else { return prompt }
        return prompt.replacingCharacters(in: slot, with: subject)
    }
}

/// The two on-disk CounterFact layouts.
public enum CounterFactLayout: String, Sendable {
    /// The original ROME/MEMIT layout (`counterfact.json`, `multi_counterfact.json`): `case_id`,
    /// `requested_rewrite{prompt, subject, target_new{str}, target_true{str}}`, `paraphrase_prompts`,
    /// `neighborhood_prompts`, `attribute_prompts`, `generation_prompts`. Other keys are ignored.
    case rome
    /// The MEND/EasyEdit layout: `case_id, prompt, subject, target_new, ground_truth, rephrase_prompt,
    /// locality_prompt, locality_ground_truth`, with the subject written into `prompt`.
    case mend
}

/// Loading CounterFact files.
///
/// Validation is strict so that a bad file fails at load time with a precise message rather than
/// producing silently wrong metrics:
/// - the top level must be a non-empty JSON array of objects, all in the layout of the first one;
/// - `case_id` must be an integer, unique within the file;
/// - subject, targets and rewrite prompt must be non-blank strings, and the rewrite template must
///   contain `"{}"` exactly once (MEND: the subject must occur in `prompt`; its first occurrence
///   becomes `"{}"`);
/// - paraphrase and neighborhood prompts must be non-empty lists of non-blank strings (they are
///   what PS and NS average over); attribute and generation prompts, which the metrics do not
///   use, may be absent and then load as empty lists.
public enum CounterFact {
    /// Loads a JSON array of records in either layout (detected per file from the first record;
    /// mixed files are an error).
    public static func load(path: String) throws -> (layout: CounterFactLayout, records: [CounterFactRecord]) {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe)
        } catch {
            throw EvaluationError(.unreadable, "cannot read \(path): \(error.localizedDescription)", cause: error)
        }
        do {
            return try decode(data)
        } catch var failure as EvaluationError {
            failure.message += " (in \(path))"
            throw failure
        }
    }

    /// Decodes a JSON array of records in either layout; see `load(path:)`.
    public static func decode(_ data: Data) throws -> (layout: CounterFactLayout, records: [CounterFactRecord]) {
        let raw: [RawRecord]
        do {
            raw = try JSONDecoder().decode([RawRecord].self, from: data)
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw EvaluationError(.malformed, "the top level must be a JSON array of records")
        } catch {
            throw EvaluationError(.malformed, "not valid JSON: \(syntaxError(in: data) ?? "\(error)")", cause: error)
        }
        guard let first = raw.first else {
            throw EvaluationError(.empty, "the file contains no records")
        }
        let layout = try detectLayout(first, FieldCheck(index: 0, caseId: first.caseId.value))

        var records: [CounterFactRecord] = []
        records.reserveCapacity(raw.count)
        var seen: [Int: Int] = [:]
        seen.reserveCapacity(raw.count)
        for (index, item) in raw.enumerated() {
            let check = FieldCheck(index: index, caseId: item.caseId.value)
            let recordLayout = try detectLayout(item, check)
            guard recordLayout == layout else {
                throw check.error(.mixedLayouts, "is in the \(recordLayout.rawValue) layout but the file's first record is in the \(layout.rawValue) layout")
            }
            let record = try recordLayout == .rome ? romeRecord(item, check) : mendRecord(item, check)
            if let first = seen.updateValue(index, forKey: record.caseId) {
                throw check.error(.badRecord, "duplicate case_id (also record \(first))", field: "case_id")
            }
            records.append(record)
        }
        return (layout, records)
    }

    private static func detectLayout(_ item: RawRecord, _ check: FieldCheck) throws -> CounterFactLayout {
        guard item.isObject else { throw check.error(.badRecord, "must be a JSON object") }
        guard let layout = item.layout else {
            throw check.error(.unknownLayout, "has neither `requested_rewrite` (ROME layout) nor `prompt`/`ground_truth` (MEND layout)")
        }
        return layout
    }

    private static func romeRecord(_ item: RawRecord, _ check: FieldCheck) throws -> CounterFactRecord {
        let caseId = try check.value(item.caseId, "case_id", "an integer")
        let rewrite = try check.value(item.rewrite, "requested_rewrite", "an object")
        let prompt = try check.text(rewrite.prompt, "requested_rewrite.prompt")
        guard prompt.ranges(of: "{}").count == 1 else {
            throw check.error(.badRecord, "must contain \"{}\" exactly once, got \(quoted(prompt))", field: "requested_rewrite.prompt")
        }
        let targetNew = try check.value(rewrite.targetNew, "requested_rewrite.target_new", "an object")
        let targetTrue = try check.value(rewrite.targetTrue, "requested_rewrite.target_true", "an object")
        return CounterFactRecord(
            caseId: caseId,
            subject: try check.text(rewrite.subject, "requested_rewrite.subject"),
            prompt: prompt,
            targetNew: try check.text(targetNew.str, "requested_rewrite.target_new.str"),
            targetTrue: try check.text(targetTrue.str, "requested_rewrite.target_true.str"),
            paraphrasePrompts: try check.prompts(item.paraphrasePrompts, "paraphrase_prompts"),
            neighborhoodPrompts: try check.prompts(item.neighborhoodPrompts, "neighborhood_prompts"),
            attributePrompts: try check.optionalStrings(item.attributePrompts, "attribute_prompts"),
            generationPrompts: try check.optionalStrings(item.generationPrompts, "generation_prompts"))
    }

    private static func mendRecord(_ item: RawRecord, _ check: FieldCheck) throws -> CounterFactRecord {
        let caseId = try check.value(item.caseId, "case_id", "an integer")
        let subject = try check.text(item.subject, "subject")
        let filled = try check.text(item.prompt, "prompt")
        guard let slot = filled.firstRange(of: subject) else {
            throw check.error(.badRecord, "does not contain the subject \(quoted(subject)): \(quoted(filled))", field: "prompt")
        }
        let template = filled.replacingCharacters(in: slot, with: "{}")
        guard template.ranges(of: "{}").count == 1 else {
            throw check.error(.badRecord, "already contains \"{}\", so it cannot be turned into a template: \(quoted(filled))", field: "prompt")
        }
        return CounterFactRecord(
            caseId: caseId,
            subject: subject,
            prompt: template,
            targetNew: try check.text(item.targetNew, "target_new"),
            targetTrue: try check.text(item.groundTruth, "ground_truth"),
            paraphrasePrompts: [try check.text(item.rephrasePrompt, "rephrase_prompt")],
            neighborhoodPrompts: [try check.text(item.localityPrompt, "locality_prompt")],
            neighborhoodTarget: try check.optionalValue(item.localityGroundTruth, "locality_ground_truth", "a string"))
    }

    /// Where the JSON syntax error in `data` is, e.g. "Invalid value around character 10.", found by
    /// parsing again with `JSONSerialization` (on Linux `JSONDecoder` does not report the location).
    private static func syntaxError(in data: Data) -> String? {
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed)
        } catch let error as NSError {
            return error.userInfo[NSDebugDescriptionErrorKey] as? String ?? error.localizedDescription
        }
        return nil
    }

    static func quoted(_ text: String) -> String {
        let limit = 120
        let shown = text.count > limit ? String(text.prefix(limit)) + "…" : text
        return "\"\(shown)\""
    }
}

/// A decoded field: its value, or why there is none. Decoding a `Field` never fails, so one bad
/// field does not abort decoding the file and the loader can say exactly which field is wrong.
private enum Field<T: Decodable>: Decodable {
    /// Absent or `null`.
    case missing
    /// Present with another JSON type.
    case mistyped
    case value(T)

    init(from decoder: Decoder) throws {
        guard let container = try? decoder.singleValueContainer(), !container.decodeNil() else {
            self = .missing
            return
        }
        self = (try? container.decode(T.self)).map { .value($0) } ?? .mistyped
    }

    var value: T? {
        if case .value(let value) = self { return value }
        return nil
    }
}

/// A JSON array of strings. When an element is not a string, the array still decodes and
/// `firstNonString` says where, so the error can name the element.
private struct StringList: Decodable {
    var strings: [String] = []
    var firstNonString: Int?

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let strings = try? container.decode([String].self) {
            self.strings = strings
            return
        }
        let elements = try container.decode([Field<String>].self)
        firstNonString = elements.firstIndex { $0.value == nil } ?? 0
    }
}

private extension KeyedDecodingContainer {
    func field<T>(_ key: Key) -> Field<T> {
        (try? decodeIfPresent(Field<T>.self, forKey: key)) ?? .missing
    }
}

/// One element of the top-level array with the fields of whichever layout it has. Decoding it
/// never fails; `CounterFact.decode` validates it.
private struct RawRecord: Decodable {
    private enum Key: String, CodingKey {
        case case_id, requested_rewrite, paraphrase_prompts, neighborhood_prompts, attribute_prompts, generation_prompts
        case prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth
    }

    var isObject = true
    /// `nil` when the object has the keys of neither layout.
    var layout: CounterFactLayout?
    var caseId: Field<Int> = .missing
    var rewrite: Field<RawRewrite> = .missing
    var paraphrasePrompts: Field<StringList> = .missing
    var neighborhoodPrompts: Field<StringList> = .missing
    var attributePrompts: Field<StringList> = .missing
    var generationPrompts: Field<StringList> = .missing
    var prompt: Field<String> = .missing
    var subject: Field<String> = .missing
    var targetNew: Field<String> = .missing
    var groundTruth: Field<String> = .missing
    var rephrasePrompt: Field<String> = .missing
    var localityPrompt: Field<String> = .missing
    var localityGroundTruth: Field<String> = .missing

    init(from decoder: Decoder) throws {
        guard let container = try? decoder.container(keyedBy: Key.self) else {
            isObject = false
            return
        }
        caseId = container.field(.case_id)
        if container.contains(.requested_rewrite) {
            layout = .rome
            rewrite = container.field(.requested_rewrite)
            paraphrasePrompts = container.field(.paraphrase_prompts)
            neighborhoodPrompts = container.field(.neighborhood_prompts)
            attributePrompts = container.field(.attribute_prompts)
            generationPrompts = container.field(.generation_prompts)
        } else if container.contains(.prompt) || container.contains(.ground_truth) {
            layout = .mend
            prompt = container.field(.prompt)
            subject = container.field(.subject)
            targetNew = container.field(.target_new)
            groundTruth = container.field(.ground_truth)
            rephrasePrompt = container.field(.rephrase_prompt)
            localityPrompt = container.field(.locality_prompt)
            localityGroundTruth = container.field(.locality_ground_truth)
        }
    }
}

/// ROME's `requested_rewrite` object; decoding fails only if it is not an object.
private struct RawRewrite: Decodable {
    private enum Key: String, CodingKey { case prompt, subject, target_new, target_true }

    var prompt: Field<String>
    var subject: Field<String>
    var targetNew: Field<RawTarget>
    var targetTrue: Field<RawTarget>

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        prompt = container.field(.prompt)
        subject = container.field(.subject)
        targetNew = container.field(.target_new)
        targetTrue = container.field(.target_true)
    }
}

/// ROME's `target_new` / `target_true` object (`{"str": …, "id": …}`); only `str` is used.
private struct RawTarget: Decodable {
    private enum Key: String, CodingKey { case str }

    var str: Field<String>

    init(from decoder: Decoder) throws {
        str = try decoder.container(keyedBy: Key.self).field(.str)
    }
}

/// Turns `Field`s into values, or into errors that name the record and the field path.
private struct FieldCheck {
    let index: Int
    let caseId: Int?

    func error(_ code: EvaluationError.Code, _ message: String, field: String? = nil) -> EvaluationError {
        EvaluationError(code, message, recordIndex: index, caseId: caseId, field: field)
    }

    func value<T>(_ field: Field<T>, _ name: String, _ kind: String) throws -> T {
        switch field {
        case .value(let value): return value
        case .missing: throw error(.badRecord, "is missing", field: name)
        case .mistyped: throw error(.badRecord, "must be \(kind)", field: name)
        }
    }

    func optionalValue<T>(_ field: Field<T>, _ name: String, _ kind: String) throws -> T? {
        if case .missing = field { return nil }
        return try value(field, name, kind)
    }

    /// A string that is not empty or whitespace only.
    func text(_ field: Field<String>, _ name: String) throws -> String {
        let string = try value(field, name, "a string")
        guard !isBlank(string) else { throw error(.badRecord, "must not be empty", field: name) }
        return string
    }

    /// A non-empty list of non-blank strings.
    func prompts(_ field: Field<StringList>, _ name: String) throws -> [String] {
        let list = try strings(try value(field, name, "a list of strings"), name)
        guard !list.isEmpty else { throw error(.badRecord, "must not be an empty list", field: name) }
        if let blank = list.firstIndex(where: isBlank) {
            throw error(.badRecord, "must not be empty", field: "\(name)[\(blank)]")
        }
        return list
    }

    /// A list of strings, or an empty list when the key is absent or null.
    func optionalStrings(_ field: Field<StringList>, _ name: String) throws -> [String] {
        try optionalValue(field, name, "a list of strings").map { try strings($0, name) } ?? []
    }

    private func strings(_ list: StringList, _ name: String) throws -> [String] {
        if let position = list.firstNonString { throw error(.badRecord, "must be a string", field: "\(name)[\(position)]") }
        return list.strings
    }

    private func isBlank(_ string: String) -> Bool {
        string.allSatisfy { $0.isWhitespace }
    }
}
