import Contracts
import Editing
import Foundation
import Messaging
import ModelRuntime

/// Where mesa finds and keeps its files. The executables (`mesa`, `mesa-bench`) resolve it from the
/// environment once, at start (`init(environment:)`), and pass it down; the library targets take the
/// URLs it holds and read no environment variables. The daemon's configuration (`state_dir`,
/// `data_dir`, `corpus`, `hparams_dir`, `model`) overrides these defaults (`DaemonConfiguration`).
public struct Paths: Sendable, Equatable {
    /// mesa's data directory: `MESA_HOME`, else `~/.local/share/mesa` (ops/install.sh puts the models,
    /// the broker and the libraries there; the edit state and the evaluation journals live there too).
    public var home: URL
    /// The model: `MESA_MODEL`; nil for the installed default (`defaultModel()`).
    public var model: String?
    /// The shared data directory (CounterFact, known facts, WikiText-2, the Wikipedia sample):
    /// `../shared/data` beside the working directory.
    public var data: URL
    /// The Wikipedia sample key statistics are computed over: `MESA_CORPUS`, else
    /// `<data>/corpus/enwiki-2015-sample.txt`.
    public var corpus: String
    /// The JSON Schemas: `MESA_SCHEMAS_DIR`, else the first root holding `Schemas/`; nil when none does.
    public var schemas: URL?
    /// Directories searched for `<method>/<model>.json`: `MESA_HPARAMS_DIR`, then each root's `deploy/hparams`.
    public var hparams: [URL]

    public init(home: URL, model: String? = nil, data: URL, corpus: String? = nil, schemas: URL? = nil, hparams: [URL] = []) {
        self.home = home
        self.model = model
        self.data = data
        self.corpus = corpus ?? data.appendingPathComponent("corpus/enwiki-2015-sample.txt").path
        self.schemas = schemas
        self.hparams = hparams
    }

    /// Resolves every path from `environment` (the process's, in the executables). The roots that may
    /// hold `Schemas` and `deploy/hparams` are `MESA_ROOT`, the working directory, the checkout of the
    /// running executable (`.build/<config>/mesa`) and /usr/share/mesa.
    public init(environment env: [String: String], workingDirectory: String = FileManager.default.currentDirectoryPath,
                executable: String = CommandLine.arguments[0]) {
        func value(_ key: String) -> String? { env[key].flatMap { $0.isEmpty ? nil : $0 } }
        let home = value("MESA_HOME").map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/share/mesa")
        var roots: [URL] = []
        if let d = value("MESA_ROOT") { roots.append(URL(fileURLWithPath: d)) }
        roots.append(URL(fileURLWithPath: workingDirectory))
        let exe = URL(fileURLWithPath: executable).resolvingSymlinksInPath().deletingLastPathComponent()
        roots.append(exe.appendingPathComponent("../../..").standardizedFileURL)
        roots.append(exe.appendingPathComponent("../..").standardizedFileURL)
        roots.append(URL(fileURLWithPath: "/usr/share/mesa"))
        let schemas = value("MESA_SCHEMAS_DIR").map { URL(fileURLWithPath: $0) } ?? roots.lazy.map { $0.appendingPathComponent("Schemas") }.first {
            FileManager.default.fileExists(atPath: $0.appendingPathComponent("fact-update.schema.json").path)
        }
        self.init(home: home, model: value("MESA_MODEL"), data: URL(fileURLWithPath: workingDirectory + "/../shared/data"),
                  corpus: value("MESA_CORPUS"), schemas: schemas,
                  hparams: (value("MESA_HPARAMS_DIR").map { [URL(fileURLWithPath: $0)] } ?? []) + roots.map { $0.appendingPathComponent("deploy/hparams") })
    }

    /// The state directory: `<home>/state`, one `<hash16>/` per base model (`EditState`).
    public var state: URL { home.appendingPathComponent("state") }

    /// The Tansu broker of local runs and tests: `<home>/bin/tansu`.
    public var broker: String { DevelopmentBroker.executable(home: home) }

    /// The model a command loads when it is given none: `model`, or the installed default model (an
    /// error when it is not installed).
    public func defaultModel() throws -> String { try model ?? ModelLocator.defaultModelPath(home: home) }

    /// The Schemas directory, or an error saying how to name one.
    public func schemasDirectory() throws -> URL {
        guard let schemas else { throw SetupError("cannot find the Schemas directory (set MESA_SCHEMAS_DIR)") }
        return schemas
    }

    /// Every schema of the Schemas directory (`schemasDirectory()`).
    public func schemaCatalog() throws -> SchemaCatalog { try SchemaCatalog(directory: try schemasDirectory()) }
}
