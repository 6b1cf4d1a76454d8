import Foundation

/// The settings of the δ optimization ROME (δ on the MLP output at the edited layer) and the MEMIT
/// family (δ on the residual after the last edited layer) share: the context templates every rewrite
/// prompt is optimized under, and Adam on δ with its weight decay, KL term, norm clamp and stops.
/// Declared once here; each method's hyperparameters hold one (`optimization`) and read its keys
/// flat, beside their own, from the same file (`v_lr`, `clamp_norm_factor`, …).
public struct OptimizationSettings: Codable, Sendable, Equatable {
    /// Random-prefix templates (the bare prompt is always added first).
    public var contextTemplates: [ContextTemplates.Group]
    public var templateSeed: UInt64
    /// Adam steps for δ (the last iteration only evaluates).
    public var vNumGradSteps: Int
    public var vLr: Float
    /// Coefficient of ‖δ‖/‖ref‖², ref the reference norm (‖v_init‖ for ROME, ‖h_L‖ for MEMIT).
    public var vWeightDecay: Float
    /// ‖δ‖ ≤ clamp_norm_factor · ‖ref‖.
    public var clampNormFactor: Float
    public var klFactor: Float
    /// Stop when the loss falls below this.
    public var earlyStopLoss: Float
    /// ENCORE's most-probable early stop: also stop once the new object is the top token in every
    /// rewrite context (`DeltaOptimization.stopWhenTop`).
    public var earlyStopTop: Bool?
    /// With `earlyStopTop`: stop the n-th time every target is on top (`DeltaOptimization.topChecks`).
    public var earlyStopTopChecks: Int?

    public init(contextTemplates: [ContextTemplates.Group], templateSeed: UInt64 = 0, vNumGradSteps: Int = 25, vLr: Float = 0.5,
                vWeightDecay: Float = 1e-3, clampNormFactor: Float, klFactor: Float = 0.0625, earlyStopLoss: Float = 0.05,
                earlyStopTop: Bool? = nil, earlyStopTopChecks: Int? = nil) {
        self.contextTemplates = contextTemplates
        self.templateSeed = templateSeed
        self.vNumGradSteps = vNumGradSteps
        self.vLr = vLr
        self.vWeightDecay = vWeightDecay
        self.clampNormFactor = clampNormFactor
        self.klFactor = klFactor
        self.earlyStopLoss = earlyStopLoss
        self.earlyStopTop = earlyStopTop
        self.earlyStopTopChecks = earlyStopTopChecks
    }

    /// The optimization of one δ whose reference norm is `referenceNorm`, with `klFactor` in place of
    /// the file's (MESA scales it).
    public func delta(klFactor: Float, referenceNorm: Float) -> DeltaOptimization {
        var o = DeltaOptimization(steps: vNumGradSteps, lr: vLr, weightDecay: vWeightDecay, klFactor: klFactor, earlyStopLoss: earlyStopLoss,
                                  maxNorm: clampNormFactor * referenceNorm, referenceNorm: referenceNorm)
        o.stopWhenTop = earlyStopTop ?? false
        o.topChecks = earlyStopTopChecks ?? 1
        return o
    }

    /// The settings as every report and run signature records them (`FactEditor.settings`), with
    /// `prompts` prompts per rewrite (the bare prompt and the templates). A resumed
    /// `mesa eval --resume` journal compares this text byte for byte: keys and formats stay as they are.
    public func description(prompts: Int) -> [String: String] {
        var s = [
            "v_num_grad_steps": "\(vNumGradSteps)", "v_lr": "\(vLr)", "v_weight_decay": "\(vWeightDecay)",
            "clamp_norm_factor": "\(clampNormFactor)", "kl_factor": "\(klFactor)", "early_stop_loss": "\(earlyStopLoss)",
            "context_templates": "\(prompts)", "template_seed": "\(templateSeed)",
        ]
        if earlyStopTop == true { s["early_stop_top"] = "true" }
        if let n = earlyStopTopChecks, n != 1 { s["early_stop_top_checks"] = "\(n)" }
        return s
    }
}

/// A method's hyperparameters holding the shared `OptimizationSettings`, whose properties read and
/// write through (`h.vLr` is `h.optimization.vLr`).
@dynamicMemberLookup
public protocol OptimizedHyperparameters {
    var optimization: OptimizationSettings { get set }
}

extension OptimizedHyperparameters {
    public subscript<T>(dynamicMember key: WritableKeyPath<OptimizationSettings, T>) -> T {
        get { optimization[keyPath: key] }
        set { optimization[keyPath: key] = newValue }
    }
}
