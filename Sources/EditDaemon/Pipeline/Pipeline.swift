import Contracts
import Editing
import Evaluation
import Foundation
import Logging
import Messaging
import ModelRuntime
import SparseAutoencoder
import Storage
import Tensor

/// decode → validate → dedupe → edit → evaluate → snapshot, for one consumed message. Publishing and
/// committing are the caller's (the daemon publishes `Outcome.records`, then commits offset+1).
///
/// Anything wrong with the event itself is a dead letter; `process` throws only for failures of the
/// daemon's own resources (the snapshot store), after which the event must not be committed.
public final class Pipeline: @unchecked Sendable {  // not thread-safe: its `var`s are set up before the daemon starts, then it is used from the one worker thread only
    public let host: ModelHost
    let catalog: SchemaCatalog
    let factSchema: CompiledSchema
    let controlSchema: CompiledSchema
    public let topics: Topics
    public let maxEventBytes: Int
    /// How much of a rejected record its dead letter carries.
    public var deadLetterLimits = DeadLetterDocument.Limits()
    /// Scores the canary set after every edit or batch; an edit that crosses its thresholds is undone
    /// and its events dead-lettered (`quality_gate`). Nil: no guard.
    public var qualityGuard: QualityGuard?
    let registry: EditorRegistry
    let hyperparameters: MethodHyperparameters
    let defaultEditor: FactEditor
    private var editors: [String: FactEditor] = [:]
    let scorer: CandidateScorer
    let logger: Logger

    /// `editor` is the default editor for `hyperparameters`; its method state (AlphaEdit's accumulated keys)
    /// is rebuilt here from the snapshots the weights hold.
    public init(host: ModelHost, catalog: SchemaCatalog, topics: Topics, maxEventBytes: Int, registry: EditorRegistry,
                hyperparameters: MethodHyperparameters, editor: FactEditor, logger: Logger) throws {
        self.host = host
        self.catalog = catalog
        factSchema = try catalog.schema("fact-update.schema.json")
        controlSchema = try catalog.schema("control-command.schema.json")
        self.topics = topics
        self.maxEventBytes = maxEventBytes
        self.registry = registry
        self.hyperparameters = hyperparameters
        defaultEditor = editor
        scorer = CounterFactScorer.make(host.model)
        self.logger = logger
        try rebuildEditState()
    }

    /// Brings the editor's method state to the weights' head: the state blocks of its lineage.
    func rebuildEditState() throws {
        guard hyperparameters.method.keepsState else { return }
        let method = hyperparameters.method
        let lineage = try host.store.lineage(to: host.head)
        try defaultEditor.rebuildState(lineage.map(\.state))
        if !lineage.isEmpty {
            logger.info("\(method.name): accumulated the keys of \(lineage.count) edit(s) up to snapshot \(host.head)",
                        metadata: ["edits": "\(lineage.count)", "snapshot": "\(host.head)"])
        }
    }

    // MARK: entry point

    public func process(_ m: KafkaMessage) throws -> Outcome {
        defer { settle() }
        do {
            if m.topic == topics.control { return try control(m) }
            return try factUpdate(m)
        } catch let r as Rejection {
            return deadLetter(m, r)
        }
    }

    /// After every message or batch: an edit that a failure left applied but neither recorded nor
    /// undone is undone, so that the weights are the head's and queries can read them again; and the
    /// edit's freed working memory goes back to the kernel (`ResidentMemory.release`).
    func settle() {
        do { try host.settle() } catch {
            logger.error("the weights could not be brought back to snapshot \(host.head)", metadata: ["error": "\(error)"])
        }
        ResidentMemory.release()
    }

    func validate(_ value: JSONValue, _ schema: CompiledSchema, name: String) throws {
        let result = schema.validate(value)
        guard result.valid else {
            let details = result.errors.prefix(20).map(\.description)
            let id = EventReader.eventId(value)
            throw Rejection(.schema, "the event does not conform to \(name) (\(result.errors.count) error(s)): \(details.first ?? "")",
                            details: Array(details), eventId: id)
        }
    }

    func checkModel(_ name: String, eventId: String) throws {
        let short = name.split(separator: "/").last.map(String.init) ?? name
        guard short.caseInsensitiveCompare(host.modelName) == .orderedSame else {
            throw Rejection(.unknownModel, "the event is for model \(name); this daemon serves \(host.modelName)", eventId: eventId)
        }
    }

    // MARK: editor cache (here, beside the private `editors`; EditorOverrides.swift builds the editors)

    func cachedEditor<H: Encodable>(_ h: H, eventId: String, make: () throws -> FactEditor) throws -> FactEditor {
        let key = String(decoding: try JSONCoding.encoder().encode(h), as: UTF8.self)
        if let cached = editors[key] { return cached }
        do {
            let ed = try make()
            if editors.count >= 8 { editors.removeAll() }
            editors[key] = ed
            return ed
        } catch let r as Rejection {
            throw r
        } catch {
            throw Rejection(.invalidHyperparameters, "the overrides need state this daemon does not have: \(error)", eventId: eventId, cause: error)
        }
    }
}
