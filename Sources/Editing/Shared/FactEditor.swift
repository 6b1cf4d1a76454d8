import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// An editing method as the evaluation and the daemon drive it: compute the updates of one request
/// without changing the weights; the caller applies them (in order) and says whether it keeps them.
public protocol FactEditor: AnyObject {
    /// "ROME", "MEMIT", "AlphaEdit", "ENCORE" (with MESA refinement, "+MESA" labels).
    var method: String { get }
    /// Whether `computeUpdates(together:)` solves several requests in one computation (MEMIT, AlphaEdit).
    var editsTogether: Bool { get }
    /// The updates for the requests edited together (one batch edit), in the order they must be
    /// applied; seconds per phase; and per request the SAE coverage of its change when MESA is on.
    /// Methods without batch edits take one request only.
    func computeUpdates(together requests: [EditRequest]) throws -> (updates: [LowRankUpdate], phases: [String: Double], coverages: [SAECoverage])
    /// The updates last computed were applied and are kept (sequential editing): methods with state
    /// across edits (AlphaEdit's accumulated keys) record them.
    func keep()
    /// Settings recorded with every report.
    var settings: [String: String] { get }
    /// The SAE coverage of the update last computed, when the method has an SAE attached.
    var lastCoverage: SAECoverage? { get }
    /// Per-edit uncertainty signals of the update last computed for one request (ROME with mined
    /// neighbours: "neighbour_shift", "neighbour_shift_max"); empty when the method has none.
    var lastSignals: [String: Double] { get }
    /// Method state the last computed updates add once kept (AlphaEdit: their keys, in the Float32
    /// form `keep` accumulates), to be stored with the snapshot. Empty for stateless methods.
    func pendingState() -> [StateBlock]
    /// Rebuilds the method state from the state blocks of every edit the weights hold, oldest first
    /// (after a restart or a rollback).
    func rebuildState(_ edits: [[StateBlock]]) throws
    /// MESA: the SAE and the refinement in force, or why refinement is off.
    var mesaSetup: MesaAttachment { get }
    /// The context templates every rewrite prompt is optimized under (the bare prompt first).
    var templates: ContextTemplates { get }
}

extension FactEditor {
    public var lastSignals: [String: Double] { [:] }

    /// The updates for one request, in the order they must be applied, and seconds per phase.
    public func computeUpdates(for request: EditRequest) throws -> (updates: [LowRankUpdate], phases: [String: Double]) {
        let r = try computeUpdates(together: [request])
        return (r.updates, r.phases)
    }
}

extension RomeEditor: FactEditor {
    public var method: String { mesaSetup.label("ROME") }

    public func computeUpdates(together requests: [EditRequest]) throws -> (updates: [LowRankUpdate], phases: [String: Double], coverages: [SAECoverage]) {
        guard requests.count == 1 else {
            let r = try computeUpdates(jointly: requests)
            lastCoverage = nil
            lastSignals = [:]
            return (r.updates, r.phases, [])
        }
        let r = try computeUpdate(requests[0])
        lastCoverage = r.coverage
        // What the written update is: its size, and with `key_features` how many key latents u came from.
        lastSignals = ["neighbour_shift": r.neighbourShift, "neighbour_shift_max": r.neighbourShiftMax,
                       "update_norm": r.applied.frobeniusNorm, "key_latents": r.keyLatents.map { Double($0.count) },
                       "key_part_share": r.keyPartShare].compactMapValues { $0 }
        return ([r.applied], r.phases, r.coverage.map { [$0] } ?? [])
    }

    public func keep() {}
    public func pendingState() -> [StateBlock] { [] }
    public func rebuildState(_ edits: [[StateBlock]]) throws {}

    public var settings: [String: String] {
        let h = hparams
        var s = h.optimization.description(prompts: templates.prefixes.count)
        s["layer"] = "\(h.layer)"
        s["mom2_adjustment"] = "\(h.mom2Adjustment)"
        s["key_averaging"] = h.keyAveraging.rawValue
        if let st = statistics { s["mom2_tokens"] = "\(st.count)"; s["mom2_ridge"] = "\(h.mom2Ridge)" }
        if let nk = h.neighbourProtection {
            s["neighbours"] = nk.description
        }
        return s.merging(mesaSetup.report) { a, _ in a }
    }
}

extension MemitEditor: FactEditor {
    public var method: String { mesaSetup.label(solver.method.name) }

    public var editsTogether: Bool { true }

    public func computeUpdates(together requests: [EditRequest]) throws -> (updates: [LowRankUpdate], phases: [String: Double], coverages: [SAECoverage]) {
        let r = try computeUpdates(requests)
        lastKeysAfter = r.keysAfter
        return (r.updates, r.phases, r.coverages)
    }

    public func keep() {
        if let kept = solver.keptKeys, let keys = lastKeysAfter {
            // Exactly what a rebuild from the stored (Float32) blocks accumulates.
            kept.accumulate(keys.mapValues { $0.map { $0.map { Double(Float($0)) } } })
        }
        lastKeysAfter = nil
    }

    public func pendingState() -> [StateBlock] {
        guard let kept = solver.keptKeys, let keys = lastKeysAfter else { return [] }
        return kept.blocks(keys)
    }

    public func rebuildState(_ edits: [[StateBlock]]) throws {
        try solver.keptKeys?.rebuild(edits)
    }

    public var settings: [String: String] {
        let h = hparams
        var s = h.optimization.description(prompts: templates.prefixes.count)
        s["layers"] = h.layers.map(String.init).joined(separator: ",")
        s["mom2_update_weight"] = "\(h.mom2UpdateWeight)"
        if let nk = h.neighbours { s["neighbours"] = nk.description }
        if h.secondSolve == true { s["second_solve"] = h.secondSolveCheck == .contexts ? "contexts" : "true" }
        if let t = h.effectiveLandingSlack { s["landing_slack"] = "\(t)" }
        if let e = h.entityKeys { s["entity_keys"] = "weight=\(e.weight) subjects=\(e.count) seed=\(e.orderSeed)" }
        s["mom2_tokens"] = "\(h.mom2Tokens)"
        if case .alphaEdit(let st) = solver {
            s["nullspace_energy"] = "\(h.nullspaceEnergy ?? .nan)"
            s["l2"] = "\(h.l2 ?? .nan)"
            s["l2_relative"] = "\(h.l2Relative ?? false)"
            s["alpha"] = st.alpha.sorted { $0.key < $1.key }.map { "\($0.key):" + String(format: "%.4g", $0.value) }.joined(separator: " ")
            s["nullity"] = st.nullity.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")
        }
        if case .encore(let st) = solver { s["update_norm_lambda"] = "\(st.mu)" }
        if let n = h.normAnchorSamples, n > 0 { s["norm_anchor"] = String(format: "%.4g (%d samples)", normAnchor ?? .nan, n) }
        return s.merging(mesaSetup.report) { a, _ in a }
    }
}
