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

extension Pipeline {
    /// The editor for an event: the default one, or one with the event's bounded overrides.
    func editor(for e: FactUpdate) throws -> FactEditor {
        guard let o = e.hyperparameters else { return defaultEditor }
        switch hyperparameters {
        case .rome(let defaults):
            var h = defaults
            if let layers = o.layers {
                guard layers.count == 1 else { throw Rejection(.invalidHyperparameters, "ROME edits one layer; the event names \(layers)", eventId: e.id) }
                h.layer = layers[0]
            }
            Self.override(&h.optimization, with: o)
            if o.mom2UpdateWeight != nil {
                throw Rejection(.invalidHyperparameters, "mom2_update_weight is a MEMIT setting; ROME does not take it", eventId: e.id)
            }
            if h == defaults { return defaultEditor }
            do { try h.validate(layers: host.model.config.layers) } catch {
                throw Rejection(.invalidHyperparameters, "\(error)", eventId: e.id, cause: error)
            }
            return try cachedEditor(h, eventId: e.id) {
                try registry.editor(model: host.model, hparams: .rome(h), baseHash: host.baseHash, computeMissing: false)
            }
        case .memit(let defaults), .alphaEdit(let defaults), .encore(let defaults):
            let method = hyperparameters.method
            var h = defaults
            if let layers = o.layers {
                guard !method.keepsState || layers == defaults.layers else {
                    throw Rejection(.invalidHyperparameters, "\(method.name)'s accumulated state is per layer; its layers \(defaults.layers) are fixed", eventId: e.id)
                }
                h.layers = layers
            }
            Self.override(&h.optimization, with: o)
            if let w = o.mom2UpdateWeight {
                guard method != .alphaedit else { throw Rejection(.invalidHyperparameters, "mom2_update_weight is MEMIT's λ; AlphaEdit does not use it", eventId: e.id) }
                h.mom2UpdateWeight = w
            }
            if h == defaults { return defaultEditor }
            do { try h.validate(layers: host.model.config.layers) } catch {
                throw Rejection(.invalidHyperparameters, "\(error)", eventId: e.id, cause: error)
            }
            return try cachedEditor(h, eventId: e.id) {
                guard let base = defaultEditor as? MemitEditor else { throw SetupError("the default editor is not MEMIT") }
                if h.layers == defaults.layers {
                    // Same layers: share the statistics, templates, SAE and (AlphaEdit) the accumulated state.
                    let editor = try MemitEditor(model: host.model, hparams: h, templates: base.templates, statistics: base.statistics,
                                                 solver: base.solver, sae: base.mesaSetup.sae, fallbackReason: base.mesaSetup.fallbackReason)
                    editor.neighbourCandidates = base.neighbourCandidates
                    editor.neighbourBanks = base.neighbourBanks
                    editor.entityStatistics = base.entityStatistics
                    return editor
                }
                return try registry.editor(model: host.model, hparams: .memit(h), baseHash: host.baseHash, computeMissing: false)
            }
        }
    }

    /// The event's overrides of the optimization settings every method has.
    static func override(_ s: inout OptimizationSettings, with o: FactUpdate.Overrides) {
        if let lr = o.learningRate { s.vLr = Float(lr) }
        if let steps = o.steps { s.vNumGradSteps = steps }
        if let c = o.clampNormFactor { s.clampNormFactor = Float(c) }
        if let k = o.klFactor { s.klFactor = Float(k) }
    }
}
