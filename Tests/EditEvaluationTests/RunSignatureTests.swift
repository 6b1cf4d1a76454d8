import EditEvaluation
import Editing
import Foundation
import ModelRuntime
import Testing
import TestSupport

/// The run signature of every method and the hyperparameters every snapshot stores, pinned. A
/// resumable `mesa eval --resume` journal keeps its signature in run.json ("AlphaEdit alpha=…
/// clamp_norm_factor=0.75 context_templates=6 … data=… start=… model=…") and resumes only when the
/// signature of the new run is byte-identical, so the settings' keys and number formats must not change.
@Suite struct RunSignatureTests {
    static let data = "../shared/data/counterfact/counterfact-train.json"
    static let baseHash = "5e1f0c3a9b7d2e48"

    static func signature(_ e: FactEditor, batch: Int = 1) -> String {
        SequentialJournal.signature(editor: e, dataPath: data, start: 0, baseHash: baseHash, batch: batch)
    }

    /// The hyperparameters as a snapshot records them (the daemon's encoder: snake_case, sorted keys).
    static func stored<H: Encodable>(_ h: H) throws -> String {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(h), as: UTF8.self)
    }

    /// A positive-definite C for layer `layer` of the tiny model: diag(1 + i % 5) with 0.3 off the diagonal.
    static func statistics(_ m: LanguageModel, layer: Int) -> KeyStatistics {
        let ff = m.config.intermediate
        var c = [Float](repeating: 0, count: ff * ff)
        for i in 0..<ff { c[i * ff + i] = Float(1 + i % 5) }
        for i in 1..<ff { c[i * ff + i - 1] = 0.3; c[(i - 1) * ff + i] = 0.3 }
        return KeyStatistics(spec: KeyStatisticsSpec(modelHash: m.weightHash, layer: layer, tokens: 1), dim: ff, count: 1, moment: c)
    }

    /// deploy/hparams/rome's file, on the tiny model's layer 1.
    static let romeFile = """
        {"$schema": "https://mesa.dev/schemas/rome-hparams/v1.json", "clamp_norm_factor": 4,
         "context_templates": [{"count": 2, "length": 4}, {"count": 1, "length": 6}], "early_stop_loss": 0.05,
         "key_averaging": "each", "kl_factor": 0.0625, "layer": 1, "method": "rome", "model": "tiny",
         "mom2_adjustment": true, "mom2_ridge": 0.0001, "mom2_seed": 0, "mom2_sequence_length": 512, "mom2_tokens": 300000,
         "template_seed": 0, "v_lr": 0.5, "v_num_grad_steps": 25, "v_weight_decay": 0.001}
        """

    /// deploy/hparams/alphaedit's file (with NAS), on the tiny model's layers 0 and 1.
    static let alphaEditFile = """
        {"$schema": "https://mesa.dev/schemas/memit-hparams/v1.json", "clamp_norm_factor": 0.75,
         "context_templates": [{"count": 5, "length": 4}], "early_stop_loss": 0.05, "early_stop_top": true,
         "early_stop_top_checks": 3, "kl_factor": 0.0625, "l2": 0.3, "l2_relative": true, "layers": [0, 1],
         "method": "alphaedit", "model": "tiny", "mom2_ridge": 0.0001, "mom2_seed": 0, "mom2_sequence_length": 512,
         "mom2_tokens": 300000, "mom2_update_weight": 1500, "norm_anchor_samples": 4, "nullspace_energy": 0.3,
         "template_seed": 0, "v_lr": 0.5, "v_num_grad_steps": 25, "v_weight_decay": 0.001}
        """

    /// deploy/hparams/encore's file as it was before the third-check stop, on the tiny model's layers 0 and 1.
    static let encoreFile = """
        {"$schema": "https://mesa.dev/schemas/memit-hparams/v1.json", "clamp_norm_factor": 0.75,
         "context_templates": [{"count": 5, "length": 4}], "early_stop_loss": 0.05, "early_stop_top": true,
         "kl_factor": 0.0625, "layers": [0, 1], "method": "encore", "model": "tiny", "mom2_ridge": 0.0001, "mom2_seed": 0,
         "mom2_sequence_length": 512, "mom2_tokens": 300000, "mom2_update_weight": 1500, "template_seed": 0,
         "update_norm_lambda": 10, "v_lr": 0.5, "v_num_grad_steps": 25, "v_weight_decay": 0.001}
        """

    @Test func romeSettingsAndStoredHyperparametersAreUnchanged() throws {
        let m = try TinyModel.load()
        let h = try RomeHyperparameters.decode(Data(Self.romeFile.utf8))
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: h.templateSeed)
        let editor = try RomeEditor(model: m, hparams: h, templates: templates, statistics: Self.statistics(m, layer: 1))
        #expect(Self.signature(editor) == "ROME clamp_norm_factor=4.0 context_templates=4 early_stop_loss=0.05 key_averaging=each kl_factor=0.0625 layer=1 mom2_adjustment=true mom2_ridge=0.0001 mom2_tokens=1 template_seed=0 v_lr=0.5 v_num_grad_steps=25 v_weight_decay=0.001 data=../shared/data/counterfact/counterfact-train.json start=0 model=5e1f0c3a9b7d2e48")
        let stored = try Self.stored(h)
        #expect(stored == #"{"clamp_norm_factor":4,"context_templates":[{"count":2,"length":4},{"count":1,"length":6}],"early_stop_loss":0.05,"key_averaging":"each","kl_factor":0.0625,"layer":1,"mom2_adjustment":true,"mom2_ridge":0.0001,"mom2_seed":0,"mom2_sequence_length":512,"mom2_tokens":300000,"template_seed":0,"v_lr":0.5,"v_num_grad_steps":25,"v_weight_decay":0.001}"#)
    }

    @Test func alphaEditSettingsAndStoredHyperparametersAreUnchanged() throws {
        let m = try TinyModel.load()
        let h = try MemitHyperparameters.decode(Data(Self.alphaEditFile.utf8))
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: h.templateSeed)
        let stats = Dictionary(uniqueKeysWithValues: h.layers.map { ($0, Self.statistics(m, layer: $0)) })
        let state = try AlphaEditState(statistics: stats, nullspaceEnergy: h.nullspaceEnergy ?? 0.02, l2: h.l2 ?? 10, relative: h.l2Relative ?? false)
        let editor = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats, solver: .alphaEdit(state))
        editor.normAnchor = 12.5
        #expect(Self.signature(editor, batch: 100) == "AlphaEdit alpha=0:12.27 1:12.27 clamp_norm_factor=0.75 context_templates=6 early_stop_loss=0.05 early_stop_top=true early_stop_top_checks=3 kl_factor=0.0625 l2=0.3 l2_relative=true layers=0,1 mom2_tokens=300000 mom2_update_weight=1500.0 norm_anchor=12.5 (4 samples) nullspace_energy=0.3 template_seed=0 v_lr=0.5 v_num_grad_steps=25 v_weight_decay=0.001 data=../shared/data/counterfact/counterfact-train.json start=0 model=5e1f0c3a9b7d2e48 batch=100")
        let stored = try Self.stored(h)
        #expect(stored == #"{"clamp_norm_factor":0.75,"context_templates":[{"count":5,"length":4}],"early_stop_loss":0.05,"early_stop_top":true,"early_stop_top_checks":3,"kl_factor":0.0625,"l2":0.3,"l2_relative":true,"layers":[0,1],"mom2_ridge":0.0001,"mom2_seed":0,"mom2_sequence_length":512,"mom2_tokens":300000,"mom2_update_weight":1500,"norm_anchor_samples":4,"nullspace_energy":0.3,"template_seed":0,"v_lr":0.5,"v_num_grad_steps":25,"v_weight_decay":0.001}"#)
    }

    @Test func memitAndEncoreSettingsAreUnchanged() throws {
        let m = try TinyModel.load()
        var h = try MemitHyperparameters.decode(Data(Self.encoreFile.utf8))
        let templates = try ContextTemplates.generate(model: m, groups: h.contextTemplates, seed: h.templateSeed)
        let stats = Dictionary(uniqueKeysWithValues: h.layers.map { ($0, Self.statistics(m, layer: $0)) })
        let encore = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats,
                                     solver: .encore(try EncoreState(layers: h.layers, dim: m.config.intermediate, mu: h.updateNormLambda ?? 0)))
        #expect(Self.signature(encore) == "ENCORE clamp_norm_factor=0.75 context_templates=6 early_stop_loss=0.05 early_stop_top=true kl_factor=0.0625 layers=0,1 mom2_tokens=300000 mom2_update_weight=1500.0 template_seed=0 update_norm_lambda=10.0 v_lr=0.5 v_num_grad_steps=25 v_weight_decay=0.001 data=../shared/data/counterfact/counterfact-train.json start=0 model=5e1f0c3a9b7d2e48")
        let stored = try Self.stored(h)
        #expect(stored == #"{"clamp_norm_factor":0.75,"context_templates":[{"count":5,"length":4}],"early_stop_loss":0.05,"early_stop_top":true,"kl_factor":0.0625,"layers":[0,1],"mom2_ridge":0.0001,"mom2_seed":0,"mom2_sequence_length":512,"mom2_tokens":300000,"mom2_update_weight":1500,"template_seed":0,"update_norm_lambda":10,"v_lr":0.5,"v_num_grad_steps":25,"v_weight_decay":0.001}"#)
        h.earlyStopTop = nil
        h.updateNormLambda = nil
        let memit = try MemitEditor(model: m, hparams: h, templates: templates, statistics: stats)
        #expect(Self.signature(memit) == "MEMIT clamp_norm_factor=0.75 context_templates=6 early_stop_loss=0.05 kl_factor=0.0625 layers=0,1 mom2_tokens=300000 mom2_update_weight=1500.0 template_seed=0 v_lr=0.5 v_num_grad_steps=25 v_weight_decay=0.001 data=../shared/data/counterfact/counterfact-train.json start=0 model=5e1f0c3a9b7d2e48")
    }
}
