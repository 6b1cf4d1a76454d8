import ArgumentParser
import EditDaemon
import Foundation
import Tensor

@main
struct Mesa: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesa",
        abstract: "A streaming knowledge-edit daemon for resident language models.",
        subcommands: [Serve.self, Publish.self, Results.self, Rollback.self, Snapshots.self, Replay.self, Health.self,
                      Generate.self, Score.self, Inspect.self, Validate.self, Stats.self, Edit.self, Eval.self, Layers.self, Curves.self, SAE.self])

    static func main() {
        BLAS.selectCoreType()
        do {
            var command = try parseAsRoot()
            MesaLogging.bootstrap()
            if let c = command as? LoggingCommand { try c.logOptions.configure() }
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
