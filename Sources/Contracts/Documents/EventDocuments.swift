import Foundation

/// A fact update (Schemas/fact-update.schema.json), decoded after it validated.
public struct FactUpdate: Codable, Sendable, Equatable {
    public struct ModelRef: Codable, Sendable, Equatable {
        public var name: String
        public var revision: String
    }
    public struct Target: Codable, Sendable, Equatable {
        public var str: String
        public var id: String?
    }
    public struct Overrides: Codable, Sendable, Equatable {
        public var layers: [Int]?
        public var learningRate: Double?
        public var steps: Int?
        public var clampNormFactor: Double?
        public var klFactor: Double?
        public var mom2UpdateWeight: Double?
    }
    public struct Principal: Codable, Sendable, Equatable {
        public var principal: String
        public var email: String?
        public var ticket: String?
    }

    public var id: String
    public var model: ModelRef
    public var subject: String
    public var prompt: String
    public var relationId: String?
    public var targetNew: Target
    public var targetTrue: Target?
    public var method: String
    public var hyperparameters: Overrides?
    public var paraphrasePrompts: [String]?
    public var neighborhoodPrompts: [String]?
    public var issuedBy: Principal
    public var issuedAt: String
    public var dryRun: Bool?
}

/// A control command (Schemas/control-command.schema.json).
public struct ControlCommand: Codable, Sendable, Equatable {
    public enum Command: String, Codable, Sendable { case rollback, snapshot }
    public struct ModelRef: Codable, Sendable, Equatable { public var name: String }

    public var id: String
    public var command: Command
    public var to: UInt64?
    public var label: String?
    public var model: ModelRef
    public var reason: String?
    public var issuedBy: FactUpdate.Principal
    public var issuedAt: String
}

/// CloudEvents types of the topics (the `ce_type` header or the structured envelope's `type`).
public enum EventTypes {
    public static let factUpdate = "dev.mesa.fact-update.v1"
    public static let control = "dev.mesa.control.v1"
    public static let editResult = "dev.mesa.edit-result.v1"
    public static let deadLetter = "dev.mesa.dead-letter.v1"
    public static let source = "urn:mesa:daemon"
}

/// Why an event went to the dead-letter topic (the `reason` of Schemas/dead-letter.schema.json).
public enum DeadLetterReason: String, Codable, Sendable, CaseIterable {
    case tooLarge = "too_large"
    case malformedJSON = "malformed_json"
    case unknownType = "unknown_type"
    case schema
    case unknownModel = "unknown_model"
    case unsupportedMethod = "unsupported_method"
    case invalidHyperparameters = "invalid_hyperparameters"
    case invalidEdit = "invalid_edit"
    case editFailed = "edit_failed"
    case unknownSnapshot = "unknown_snapshot"
    case rollbackFailed = "rollback_failed"
    /// Processing failed for a reason other than the event (the snapshot store, a bug) on every
    /// attempt of the retry policy; the details carry the attempts and the last error.
    case processingFailed = "processing_failed"
    /// The edit crossed the quality guard's thresholds on the canary set and was undone; the details
    /// carry the figures.
    case qualityGate = "quality_gate"
}
