import ArgumentParser
import EditDaemon
import Foundation
import Tensor

/// Where this process finds and keeps its files: resolved from the environment once, here, and
/// passed down to the libraries.
let paths = Paths(environment: ProcessInfo.processInfo.environment)

@main
struct Mesa: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesa",
        abstract: "A streaming knowledge-edit daemon for resident language models.",
        subcommands: [Serve.self, Follow.self, Publish.self, Results.self, Rollback.self, Snapshots.self, Replay.self, Export.self, Health.self,
                      Generate.self, Score.self, Inspect.self, Validate.self, Stats.self, Edit.self, Eval.self, Layers.self, Curves.self, SAE.self])

    static func main() async {
        BLAS.selectCoreType()
        // A parent may have spawned this process with SIGTERM / SIGINT blocked (e.g. from a libdispatch
        // worker thread); unblocked here, on the main thread before others start, so they inherit it.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        do {
            var command = try parseAsRoot()
            MesaLogging.bootstrap()
            if let c = command as? LoggingCommand { try c.logOptions.configure() }
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
