import Contracts
import EditDaemon
import Foundation
import Logging
import Messaging
import TestSupport
import Testing

/// The pipeline without a broker: `buildPipeline` on the tiny model and a temporary LMDB, fed
/// hand-made Kafka messages.
@Suite struct PipelineTests {
    /// A state directory with the tiny model, its ROME hyperparameters and a configuration for them.
    struct Setup {
        let dir: URL
        let config: DaemonConfiguration
        let paths: Paths
        let catalog: SchemaCatalog

        /// `method`: ROME on the tiny model unless a test asks for another (the daemon's own default is ENCORE).
        init(label: String, method: String = "rome") throws {
            dir = try TestPaths.temporaryDirectory("pipeline-\(label)")
            let model = dir.appendingPathComponent("\(DaemonHarness.modelName).gguf").path
            try TinyModel.write(to: model)
            let rome = dir.appendingPathComponent("hparams/rome")
            try FileManager.default.createDirectory(at: rome, withIntermediateDirectories: true)
            try TinyModel.romeHyperparameters(model: DaemonHarness.modelName, steps: 8, earlyStop: 0)
                .write(to: rome.appendingPathComponent("\(DaemonHarness.modelName).json"))
            for name in ["memit", "alphaedit"] {
                let d = dir.appendingPathComponent("hparams/\(name)")
                try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
                try TinyModel.memitHyperparameters(model: DaemonHarness.modelName, method: name)
                    .write(to: d.appendingPathComponent("\(DaemonHarness.modelName).json"))
            }
            var c = DaemonConfiguration()
            c.method = method
            // MEMIT's key statistics (2,000 tokens) come from the shared Wikipedia sample.
            c.corpus = TestPaths.sharedData.appendingPathComponent("corpus/enwiki-2015-sample.txt").path
            c.stateDir = dir.appendingPathComponent("state").path
            c.hparamsDir = dir.appendingPathComponent("hparams").path
            c.model = model
            c.threads = 1
            c.qualityGuard = .init(enabled: false)
            config = c
            paths = Paths(home: dir, data: TestPaths.sharedData, schemas: TestPaths.repoRoot.appendingPathComponent("Schemas"))
            catalog = try paths.schemaCatalog()
        }

        func pipeline() throws -> Pipeline {
            try buildPipeline(config: config, paths: paths, catalog: catalog, logger: MesaLogging.discarding())
        }

        func message(_ payload: Data, topic: String? = nil, offset: Int64) -> KafkaMessage {
            KafkaMessage(topic: topic ?? config.topics.factUpdates, partition: 0, offset: offset, key: nil, payload: Array(payload))
        }

        func remove() { try? FileManager.default.removeItem(at: dir) }
    }

    @Test func editsDedupesDeadLettersAndRollsBackWithoutABroker() throws {
        let s = try Setup(label: "flow")
        defer { s.remove() }
        let p = try s.pipeline()
        let base = p.host.model.weightHash
        let id = UUID().uuidString.lowercased()
        let event = DaemonHarness.factUpdate(id: id)

        let applied = try p.process(s.message(event, offset: 0))
        #expect(applied.kind == .applied(method: "ROME") && applied.eventId == id, "\(applied.summary)")
        #expect(p.host.head == 1 && p.host.model.weightHash != base)
        #expect(applied.records.map(\.topic) == [s.config.topics.results, s.config.topics.weightDeltas])
        let edited = p.host.model.weightHash

        let again = try p.process(s.message(event, offset: 1))
        #expect(again.kind == .redelivery && p.host.head == 1 && p.host.model.weightHash == edited)

        let junk = try p.process(s.message(Data("{not json".utf8), offset: 2))
        #expect(junk.kind == .deadLetter(.malformedJSON) && junk.records.map(\.topic) == [s.config.topics.deadLetters])

        let other = try p.process(s.message(DaemonHarness.factUpdate(extra: ["method": "MEMIT"]), offset: 3))
        #expect(other.kind == .deadLetter(.unsupportedMethod), "\(other.summary)")

        let back = try p.process(s.message(DaemonHarness.rollback(to: 0), topic: s.config.topics.control, offset: 0))
        #expect(back.kind == .rolledBack && p.host.head == 0 && p.host.model.weightHash == base, "\(back.summary)")
    }

    /// A pipeline built again over the same state directory (a restart) holds the head's weights.
    @Test func aRebuiltPipelineResumesAtTheHead() throws {
        let s = try Setup(label: "restart")
        defer { s.remove() }
        // The first pipeline (and its LMDB environment, which a process opens once) is gone before the second.
        let hash: String = try {
            let first = try s.pipeline()
            for (i, subject) in ["Paris", "Lyon"].enumerated() {
                let o = try first.process(s.message(DaemonHarness.factUpdate(subject: subject), offset: Int64(i)))
                #expect(o.kind == .applied(method: "ROME"), "\(o.summary)")
            }
            return first.host.model.weightHash
        }()
        let second = try s.pipeline()
        #expect(second.host.head == 2 && second.host.model.weightHash == hash)
    }

    /// A batch of consecutive fact updates (AlphaEdit) is one snapshot indexing both events, each with
    /// its own result.
    @Test func aBatchIsOneSnapshotWithAResultPerEvent() throws {
        let s = try Setup(label: "batch", method: "alphaedit")
        defer { s.remove() }
        let p = try s.pipeline()
        let ids = [UUID().uuidString.lowercased(), UUID().uuidString.lowercased()]
        let batch = zip(ids, ["Paris", "Lyon"]).enumerated().map { i, e in
            s.message(DaemonHarness.factUpdate(id: e.0, subject: e.1, extra: ["method": "AlphaEdit"]), offset: Int64(i))
        }
        let outcomes = try p.process(batch: batch)
        #expect(outcomes.map(\.kind) == [.applied(method: "AlphaEdit"), .applied(method: "AlphaEdit")], "\(outcomes.map(\.summary))")
        #expect(outcomes.map(\.eventId) == ids && p.host.head == 1)
        let record = try p.host.store.record(1)
        #expect(record.eventIds == ids, "\(record.eventIds)")
    }

    /// A batch that crosses the quality guard is not refused whole: its halves are edited apart, down
    /// to single events. With limits no edit meets, every event ends refused on its own (each its own
    /// quality_gate dead letter, the weights untouched); with limits every edit meets, the batch is
    /// one snapshot.
    @Test func aBatchOverTheGuardIsEditedInHalvesDownToTheEventsThatDoTheDamage() throws {
        let data = TestPaths.sharedData
        let ids = (0..<4).map { _ in UUID().uuidString.lowercased() }
        for (rise, applied) in [(-1.0, false), (1e6, true)] {
            let s = try Setup(label: "batch-guard", method: "alphaedit")
            defer { s.remove() }
            let batch = zip(ids, ["Paris", "Lyon", "Rome", "Berlin"]).enumerated().map { i, e in
                s.message(DaemonHarness.factUpdate(id: e.0, subject: e.1, extra: ["method": "AlphaEdit"]), offset: Int64(i))
            }
            let p = try s.pipeline()
            let canary = try CanarySet.build(model: p.host.model, knownFacts: data.appendingPathComponent("counterfact/known_1000.json"),
                                             wikitext: data.appendingPathComponent("corpus/wikitext-2/tokens.valid.txt"), count: 8, tokens: 16, seed: 0)
            p.qualityGuard = try QualityGuard(model: p.host.model, canary: canary, perplexityTokens: 16, maxAccuracyDrop: 1e6, maxPerplexityRise: rise)
            let base = p.host.model.weightHash, head = p.host.head
            let outcomes = try p.process(batch: batch)
            #expect(outcomes.map(\.eventId) == ids)
            if applied {
                #expect(outcomes.allSatisfy { $0.kind == .applied(method: "AlphaEdit") } && p.host.head == head + 1, "\(outcomes.map(\.summary))")
            } else {
                #expect(outcomes.allSatisfy { $0.kind == .deadLetter(.qualityGate) }, "\(outcomes.map(\.summary))")
                #expect(outcomes.map { $0.summary.contains("the batch") } == [false, false, false, false], "each event is refused alone")
                #expect(p.host.head == head && p.host.model.weightHash == base)
            }
        }
    }
}

