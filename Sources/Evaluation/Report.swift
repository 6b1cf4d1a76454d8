import Foundation

/// One case of an evaluation run: its scores before and after the edit.
public struct EvalCase: Codable, Sendable {
    public var caseId: Int
    public var subject: String
    public var targetNew: String
    public var targetTrue: String
    /// Scores of the unedited model.
    public var pre: CaseScores
    /// Scores after the edit; `nil` when the edit or the post-edit scoring failed (see `error`).
    public var post: CaseScores?
    /// Wall time of the edit itself, in seconds.
    public var editSeconds: Double?
    /// Wall time of the edit's phases (e.g. "covariance", "solve"), in seconds.
    public var phases: [String: Double]?
    /// Why the case has no post-edit scores.
    public var error: String?
    /// The part of the written change the method's SAE represents (MESA), when it has one.
    public var saeCoverage: Double?
    /// The SAE's per-edit uncertainty signals, when the method has one: "outside" (the share of the
    /// written change it does not represent), "subject_error" (its reconstruction error of the subject's
    /// activation), "crowding" (the mined neighbours' mean latent overlap with the subject); and the
    /// method's own: "neighbour_shift", "neighbour_shift_max" (ROME with mined neighbours: how far the
    /// update moves their prompts toward the new object).
    public var uncertainty: [String: Double]?
    /// Sequential runs: the scores right after this case's own edit (`post` holds the scores after
    /// the whole run, or at the checkpoint that ended it).
    public var immediate: CaseScores?
    /// Sequential runs: ‖W − W₀‖_F of every tensor edited so far, after this case's edit.
    public var updateNorms: [String: Double]?
    /// Sequential AlphaEdit runs: per layer, how full the null space is after this case's edit
    /// (`AlphaEditState.fill`).
    public var nullspaceFill: [String: Double]?

    public init(
        caseId: Int, subject: String, targetNew: String, targetTrue: String, pre: CaseScores,
        post: CaseScores? = nil, editSeconds: Double? = nil, phases: [String: Double]? = nil, error: String? = nil
    ) {
        self.caseId = caseId
        self.subject = subject
        self.targetNew = targetNew
        self.targetTrue = targetTrue
        self.pre = pre
        self.post = post
        self.editSeconds = editSeconds
        self.phases = phases
        self.error = error
    }

    /// A case for `record` with its pre-edit scores.
    public init(record: CounterFactRecord, pre: CaseScores) {
        self.init(caseId: record.caseId, subject: record.subject, targetNew: record.targetNew, targetTrue: record.targetTrue, pre: pre)
    }
}

/// The result of `mesa eval`: run metadata, aggregate metrics and every case.
public struct EvalReport: Codable, Sendable {
    public var method: String
    public var model: String
    public var modelHash: String
    /// The data file the cases came from.
    public var data: String
    /// Index of the first record evaluated and the number of records requested.
    public var start: Int
    public var limit: Int
    /// `true` when edits accumulated (no weight restore between cases), `false` for single-edit runs.
    public var sequential: Bool
    /// Free-form metadata: hyperparameters, BLAS configuration, versions.
    public var settings: [String: String]
    public var pre: Metrics
    public var post: Metrics?
    /// Sequential runs: every case scored right after its own edit.
    public var immediate: Metrics?
    public var cases: [EvalCase]
    /// Run-level timings in seconds, e.g. "editMean", "total".
    public var timing: [String: Double]
    /// ISO-8601 creation time (see `EvalReport.timestamp`).
    public var createdAt: String

    public init(
        method: String, model: String, modelHash: String, data: String, start: Int, limit: Int, sequential: Bool,
        settings: [String: String], pre: Metrics, post: Metrics?, cases: [EvalCase], timing: [String: Double], createdAt: String
    ) {
        self.method = method
        self.model = model
        self.modelHash = modelHash
        self.data = data
        self.start = start
        self.limit = limit
        self.sequential = sequential
        self.settings = settings
        self.pre = pre
        self.post = post
        self.cases = cases
        self.timing = timing
        self.createdAt = createdAt
    }

    /// A report whose `pre` and `post` metrics are aggregated from `cases` (see `metrics(of:)`).
    public init(
        method: String, model: String, modelHash: String, data: String, start: Int, limit: Int, sequential: Bool,
        settings: [String: String], cases: [EvalCase], timing: [String: Double], createdAt: String = EvalReport.timestamp()
    ) {
        let (pre, post) = Self.metrics(of: cases)
        self.init(
            method: method, model: model, modelHash: modelHash, data: data, start: start, limit: limit, sequential: sequential,
            settings: settings, pre: pre, post: post, cases: cases, timing: timing, createdAt: createdAt)
        let immediate = cases.compactMap(\.immediate)
        if !immediate.isEmpty { self.immediate = Metrics.aggregate(immediate) }
    }

    /// Pre-edit metrics over all cases and post-edit metrics over the cases that have post-edit
    /// scores (`nil` if none has). Failed cases therefore count in `pre` only; the report lists them.
    public static func metrics(of cases: [EvalCase]) -> (pre: Metrics, post: Metrics?) {
        let post = cases.compactMap(\.post)
        return (Metrics.aggregate(cases.map(\.pre)), post.isEmpty ? nil : Metrics.aggregate(post))
    }

    /// `date` in ISO-8601 (UTC, seconds precision), e.g. "2025-01-31T12:00:00Z".
    public static func timestamp(_ date: Date = Date()) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    /// The cases that recorded an error.
    public var failedCases: [EvalCase] {
        cases.filter { $0.error != nil }
    }
}

/// One layer of a layer sweep: the metrics after editing at `layer`.
public struct LayerSweepRow: Codable, Sendable {
    public var layer: Int
    /// Post-edit metrics with edits at this layer.
    public var metrics: Metrics
    /// Pre-edit metrics of the same cases.
    public var pre: Metrics
    /// Wall time spent on this layer, in seconds.
    public var seconds: Double

    public init(layer: Int, metrics: Metrics, pre: Metrics, seconds: Double) {
        self.layer = layer
        self.metrics = metrics
        self.pre = pre
        self.seconds = seconds
    }
}
