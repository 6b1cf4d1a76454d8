import ArgumentParser
import EditDaemon
import EditEvaluation
import Editing
import Foundation
import Logging
import ModelRuntime

/// Where edit hyperparameters, the corpus and the edit state come from.
struct EditOptions: ParsableArguments {
    @Option(name: .long, help: "ROME hyperparameter file (default: deploy/hparams/rome/<model>.json, found via $MESA_HPARAMS_DIR, the working directory, or the executable's checkout).")
    var hparams: String?

    @Option(name: .long, help: "Edit this layer instead of the file's.")
    var layer: Int?

    @Option(name: .long, help: "Wikipedia sample for key statistics (default: $MESA_CORPUS or ../shared/data/corpus/enwiki-2015-sample.txt).")
    var corpus: String?

    @Option(name: .long, help: "Directory for edit state: templates and key statistics (default: $MESA_HOME).")
    var stateHome: String?

    @Option(name: .long, help: "MESA: refine v* through this SAE (a directory, or a name under <state>/<hash16>/sae/), overriding the file's \"mesa\" block.")
    var mesa: String?

    @Flag(name: .long, help: "Plain ROME even if the hyperparameter file has a \"mesa\" block.")
    var noMesa = false

    @Option(name: .long, help: "MESA: weight of the L1 penalty on the δ features (default: the file's, else 1e-4).")
    var mesaL1: Float?

    @Option(name: .long, help: "MESA: how the refined change is formed and written: neutral (one change, written as the method's own update; the default) or per_prompt (the slide's per-prompt changes, written exactly).")
    var mesaVariant: MesaVariant?

    static func modelName(_ path: String) -> String { Installation.modelName(path) }

    func hparamsURL(method: EditMethod, modelPath: String) throws -> URL {
        if let hparams { return URL(fileURLWithPath: hparams) }
        return try Installation.hparamsFile(method: method, modelName: Self.modelName(modelPath), directories: paths.hparams)
    }

    /// `method`'s hyperparameters with --layer (ROME) and the MESA options on top.
    func hyperparameters(_ method: EditMethod, modelPath: String) throws -> MethodHyperparameters {
        var h = try EditorRegistry.hyperparameters(method, at: try hparamsURL(method: method, modelPath: modelPath), catalog: try paths.schemaCatalog())
        if let layer, case .rome(var rome) = h {
            rome.layer = layer
            h = .rome(rome)
        }
        h.mesa = mesa(over: h.mesa)
        return h
    }

    func romeHyperparameters(modelPath: String) throws -> RomeHyperparameters {
        guard case .rome(let h) = try hyperparameters(.rome, modelPath: modelPath) else { throw fail("not ROME hyperparameters") }
        return h
    }

    /// The file's "mesa" block with --mesa / --mesa-l1 / --mesa-variant on top, or none with --no-mesa.
    func mesa(over file: MesaHyperparameters?) -> MesaHyperparameters? {
        noMesa ? nil : .overriding(file, sae: mesa, l1: mesaL1, fallback: nil, variant: mesaVariant)
    }

    var corpusPath: String { corpus ?? paths.corpus }

    /// The state directory: `paths.state`, under --state-home when given.
    var stateDirectory: URL {
        var p = paths
        if let stateHome { p.home = URL(fileURLWithPath: stateHome) }
        return p.state
    }

    /// The edit state of the model `baseHash`.
    func state(baseHash: String) -> EditState { EditState(directory: stateDirectory, baseHash: baseHash) }

    func registry(progress: ((Int, Int, Double) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) -> EditorRegistry {
        var r = EditorRegistry(stateDirectory: stateDirectory, corpusPath: corpusPath, logger: Logger(label: "mesa"),
                               progress: progress, shouldStop: shouldStop)
        r.anchorRecords = paths.data.appendingPathComponent("counterfact/counterfact-train.json")
        return r
    }
}

/// Loads (or computes, with a progress bar and a resumable checkpoint) the key statistics.
func keyStatistics(model: LanguageModel, options: EditOptions, specs: [KeyStatisticsSpec]) throws -> [KeyStatistics] {
    try withInteractiveSetup(options) { try $0.keyStatistics(model: model, specs: specs) }
}

/// Runs `body` with the edit setup of a terminal session: key statistics computed on the way show a
/// progress bar on stderr, and Ctrl-C checkpoints them.
func withInteractiveSetup<T>(_ options: EditOptions, _ body: (EditorRegistry) throws -> T) throws -> T {
    let bar = ProgressBar("stats")
    defer { bar.finish() }
    return try trappingInterrupt { stop in
        try body(options.registry(progress: { bar.update($0, $1, unit: "tok", seconds: $2) }, shouldStop: { stop.isRaised }))
    }
}

/// Runs `body` with Ctrl-C (SIGINT) raising `stop` instead of ending the process: long jobs poll it
/// between units of work, so they checkpoint and exit cleanly. A dispatch signal source raises it on
/// a queue (no code of ours runs in a signal handler); scopes may nest. As before, SIGINT stays
/// caught after the first scope (libdispatch keeps its handler), so outside one it does nothing.
func trappingInterrupt<T>(_ body: (StopFlag) throws -> T) rethrows -> T {
    let stop = StopFlag()
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    let registered = DispatchSemaphore(value: 0)
    source.setRegistrationHandler { registered.signal() }
    source.setEventHandler { stop.raise() }
    source.resume()
    registered.wait()  // from here on a Ctrl-C raises `stop`
    defer { source.cancel() }
    return try body(stop)
}

/// The editor of `method` for a loaded model: hyperparameters from deploy/hparams/<method>/<model>.json (or
/// --hparams, --layer, the MESA options), stored templates, key statistics (computed with a progress bar
/// when missing), AlphaEdit's projectors.
func makeEditor(_ method: EditMethod, model: LanguageModel, modelPath: String, options: EditOptions) throws -> FactEditor {
    let h = try options.hyperparameters(method, modelPath: modelPath)
    return try withInteractiveSetup(options) { try $0.editor(model: model, hparams: h) }
}
extension MesaVariant: ExpressibleByArgument {}
