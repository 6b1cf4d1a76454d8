import ArgumentParser
import EditDaemon
import Foundation
import ModelRuntime
import Tensor

/// Options shared by the commands that load a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "Model: a .gguf file, a .safetensors file, or a directory (default: $MESA_MODEL or the installed SmolLM2-135M-Instruct).")
    var model: String?

    @Option(name: .long, help: "BLAS threads (0 = one per core).")
    var threads: Int = 0

    /// The model path: --model, $MESA_MODEL, or the installed default.
    var path: String { get throws { try model ?? paths.defaultModel() } }

    func load() throws -> LanguageModel { try load(path: try path) }

    func load(path: String) throws -> LanguageModel {
        BLAS.setThreads(threads)
        return try ModelLoader.load(path: path)
    }
}

/// Prints `error: …` to stderr and exits non-zero: bad input never crashes the CLI.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    return ExitCode(code)
}

/// Runs `body`, turning every library error (model, tokenizer, edit, evaluation, linear algebra)
/// into a clear message and exit code 1. Argument errors and explicit exit codes pass through.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch { throw reported(error) }
}

/// `reportingErrors` for an async body.
func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch { throw reported(error) }
}

/// Argument errors and explicit exit codes as they are; any other error as a clear message and exit 1.
private func reported(_ error: Error) -> Error {
    switch error {
    case is ExitCode, is CleanExit, is ValidationError: return error
    default: return fail(String(describing: error))
    }
}
