import Contracts
import Editing
import Foundation
import Testing

/// Every hyperparameter file under deploy/hparams/rome conforms to its schema and decodes.
@Suite struct HyperparameterFileTests {
    static let schemaPath = EditTestPaths.repoRoot.appendingPathComponent("Schemas/rome-hparams.schema.json").path
    static let directory = EditTestPaths.repoRoot.appendingPathComponent("deploy/hparams/rome")

    static func schema() throws -> CompiledSchema {
        var registry = SchemaRegistry()
        let uri = try registry.registerFile(at: schemaPath)
        return try registry.compile(uri)
    }

    @Test func aMalformedFileKeepsTheDecodingError() throws {
        let error = try #require(throws: EditError.self) { _ = try RomeHyperparameters.decode(Data(#"{"layer": "five"}"#.utf8)) }
        #expect(error.code == .hyperparameters && error.message.hasPrefix("malformed ROME hyperparameters: "))
        #expect(error.cause is DecodingError, "the decoder's error is kept as the cause: \(String(describing: error.cause))")
    }

    @Test func filesConformToTheSchemaAndDecode() throws {
        let schema = try Self.schema()
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.directory.path).filter { $0.hasSuffix(".json") }
        #expect(files.contains("SmolLM2-135M-Instruct.json"))
        for f in files {
            let data = try Data(contentsOf: Self.directory.appendingPathComponent(f))
            let result = schema.validate(try JSONValue.parse(data))
            #expect(result.valid, "\(f) does not conform to rome-hparams.schema.json")
            let h = try RomeHyperparameters.decode(data)
            try h.validate(layers: 30)
        }
    }

    /// The ROME experiment files (ops/experiments/rome/) conform and decode, their neighbour blocks included.
    @Test func experimentFilesConformAndKeepTheirNeighbourBlocks() throws {
        let schema = try Self.schema()
        let dir = EditTestPaths.repoRoot.appendingPathComponent("ops/experiments/rome")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".json") }
        #expect(files.contains("neighbours-kl8.json") && files.contains("neighbours-keys8.json"))
        for f in files {
            let data = try Data(contentsOf: dir.appendingPathComponent(f))
            #expect(schema.validate(try JSONValue.parse(data)).valid, "\(f) does not conform to rome-hparams.schema.json")
            let h = try RomeHyperparameters.decode(data)
            try h.validate(layers: 30)
            if f.hasPrefix("neighbours") { #expect(h.neighbours != nil, "\(f) lost its neighbours block") }
        }
        let keys = try RomeHyperparameters.decode(Data(contentsOf: dir.appendingPathComponent("neighbours-keys8.json")))
        #expect(keys.neighbours == NeighbourSettings(count: 8, klFactor: 0, keyWeight: 10))
        // The block survives the snapshot's encoding.
        let again = try RomeHyperparameters.decode(try JSONEncoder().encode(keys))
        #expect(again.neighbours == keys.neighbours)
    }

    @Test func schemaRejectsOutOfRangeValues() throws {
        let schema = try Self.schema()
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.directory.appendingPathComponent("SmolLM2-135M-Instruct.json"))) as! [String: Any]
        for (key, value) in [("v_lr", -1 as Any), ("layer", "seven"), ("v_num_grad_steps", 0), ("unknown_key", 1), ("mom2_adjustment", "yes")] {
            var o = base
            o[key] = value
            let data = try JSONSerialization.data(withJSONObject: o)
            #expect(!schema.validate(try JSONValue.parse(data)).valid, "\(key) = \(value) must be rejected")
        }
    }

    /// deploy/hparams/{memit,alphaedit,encore} conform to memit-hparams.schema.json and decode;
    /// AlphaEdit files must carry its two settings, ENCORE files its μ.
    @Test(arguments: ["memit", "alphaedit", "encore"])
    func memitAndAlphaEditFilesConform(_ method: String) throws {
        var registry = SchemaRegistry()
        let uri = try registry.registerFile(at: EditTestPaths.repoRoot.appendingPathComponent("Schemas/memit-hparams.schema.json").path)
        let schema = try registry.compile(uri)
        let dir = EditTestPaths.repoRoot.appendingPathComponent("deploy/hparams/\(method)")
        let data = try Data(contentsOf: dir.appendingPathComponent("SmolLM2-135M-Instruct.json"))
        #expect(schema.validate(try JSONValue.parse(data)).valid)
        let h = try MemitHyperparameters.decode(data)
        try h.validate(layers: 30)
        #expect((h.nullspaceEnergy != nil) == (method == "alphaedit"))
        #expect((h.updateNormLambda != nil) == (method == "encore"))
        let required = ["alphaedit": "l2", "encore": "update_norm_lambda"]
        if let key = required[method] {
            var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            o[key] = nil
            #expect(!schema.validate(try JSONValue.parse(try JSONSerialization.data(withJSONObject: o))).valid)
        }
        // entity_keys: a positive weight, and not in AlphaEdit's files (its projected solve has no C).
        for (block, valid) in [(["weight": 1, "subjects": 2000] as [String: Any], method != "alphaedit"), (["weight": 0], false), (["subjects": 100], false)] {
            var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            o["entity_keys"] = block
            #expect(schema.validate(try JSONValue.parse(try JSONSerialization.data(withJSONObject: o))).valid == valid, "\(method) entity_keys \(block)")
        }
        // neighbours.bank: the CounterFact records or the corpus's titles, nothing else.
        for (bank, valid) in [("counterfact", true), ("corpus_titles", true), ("wikipedia", false)] {
            var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            o["neighbours"] = ["count": 16, "kl_factor": 0, "key_weight": 1, "bank": bank] as [String: Any]
            let file = try JSONSerialization.data(withJSONObject: o)
            #expect(schema.validate(try JSONValue.parse(file)).valid == valid, "\(method) neighbours.bank \(bank)")
            if valid { #expect(try MemitHyperparameters.decode(file).neighbours?.candidateBank.rawValue == bank) }
        }
        // second_solve_check: bare or contexts, and only beside second_solve.
        for (extra, valid) in [(["second_solve": true, "second_solve_check": "contexts"] as [String: Any], true),
                               (["second_solve": true, "second_solve_check": "bare"], true),
                               (["second_solve": true, "second_solve_check": "paraphrases"], false),
                               (["second_solve_check": "contexts"], false)] {
            var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            o["second_solve"] = nil
            o.merge(extra) { $1 }
            let file = try JSONSerialization.data(withJSONObject: o)
            #expect(schema.validate(try JSONValue.parse(file)).valid == valid, "\(method) \(extra)")
            if valid { #expect(try MemitHyperparameters.decode(file).secondSolveCheck?.rawValue == extra["second_solve_check"] as? String) }
            if extra["second_solve"] == nil { #expect(throws: EditError.self) { try MemitHyperparameters.decode(file).validate(layers: 30) } }
        }
        // landing_slack: a number in 0...1, for MEMIT and ENCORE (AlphaEdit's validation refuses it).
        for (slack, valid) in [(0.0, true), (0.05, true), (1.0, true), (-0.1, false), (1.5, false)] {
            var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            o["landing_slack"] = slack
            let file = try JSONSerialization.data(withJSONObject: o)
            #expect(schema.validate(try JSONValue.parse(file)).valid == valid, "\(method) landing_slack \(slack)")
            let h = try MemitHyperparameters.decode(file)
            #expect(h.landingSlack == slack)
            if valid && method != "alphaedit" { try h.validate(layers: 30) } else { #expect(throws: EditError.self) { try h.validate(layers: 30) } }
        }
        // The experiment files of the method (ops/experiments/<method>/) conform and decode too.
        let experiments = EditTestPaths.repoRoot.appendingPathComponent("ops/experiments/\(method)")
        for name in (try? FileManager.default.contentsOfDirectory(atPath: experiments.path))?.filter({ $0.hasSuffix(".json") }) ?? [] {
            let file = try Data(contentsOf: experiments.appendingPathComponent(name))
            #expect(schema.validate(try JSONValue.parse(file)).valid, "\(method)/\(name)")
            try MemitHyperparameters.decode(file).validate(layers: 30)
        }
    }
}
