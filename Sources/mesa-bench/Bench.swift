import ArgumentParser
import EditDaemon
import Editing
import Foundation
import Logging
import ModelRuntime
import Tensor

/// Where this process finds and keeps its files: resolved from the environment once, here, and
/// passed down to the libraries.
let paths = Paths(environment: ProcessInfo.processInfo.environment)

@main
struct MesaBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesa-bench",
        abstract: "mesa benchmarks: numbers printed and written to a results file, compared with a reference in the same run.",
        subcommands: [Forward.self, RomeBench.self, DaemonBench.self, RollbackBench.self, MesaCostBench.self, SAETrainBench.self, MemitBench.self, GuardBench.self, HarvestBench.self, FollowBench.self, QueryBench.self, ThroughputBench.self, GemmRowsBench.self])

    static func main() {
        BLAS.selectCoreType()
        if let warning = BLAS.kernelWarning() {
            FileHandle.standardError.write(Data("\n*** WARNING: \(warning). Numbers measured now are not this machine's. ***\n\n".utf8))
        }
        do {
            var command = try parseAsRoot()
            MesaLogging.bootstrap()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// Wall-clock seconds of `body`.
func timed(_ body: () throws -> Void) rethrows -> Double {
    let t0 = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Measured single-precision GEMM rate (GFLOP/s) at a size typical of the model's projections.
func sgemmRate(m: Int, n: Int, k: Int, repeats: Int = 5) -> Double {
    let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: n * k)
    var c = [Float](repeating: 0, count: m * n)
    var times: [Double] = []
    for _ in 0..<(repeats + 1) {
        times.append(timed {
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                BLAS.sgemm(transB: true, m: m, n: n, k: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: k, c: pc.baseAddress!, ldc: n)
            } } }
        })
    }
    return 2.0 * Double(m * n * k) / median(Array(times.dropFirst())) / 1e9
}

struct Forward: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prefill and decode throughput of the resident model, next to PyTorch eager on the same CPU and threads.")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "BLAS / torch threads.") var threads = 2
    @Option(help: "Prompt length for prefill.") var tokens = 64
    @Option(help: "Tokens to decode one at a time after the prompt.") var decode = 32
    @Option(help: "Timed repetitions (median reported), after one warm-up.") var repeats = 5
    @Option(help: "Python of the PyTorch reference environment ('none' to skip).")
    var reference = paths.home.appendingPathComponent("refenv/bin/python").path
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/forward.json"

    func run() throws {
        BLAS.setThreads(threads)
        let path = try model ?? paths.defaultModel()
        let m = try ModelLoader.load(path: path)
        let text = String(repeating: "The history of the city begins in the early Middle Ages, when a small settlement grew up around a river crossing. ", count: 8)
        let ids = Array(m.tokenizer.encode(text).prefix(tokens))
        guard ids.count == tokens else { throw ValidationError("could not build a \(tokens)-token prompt") }

        func prefill(_ logits: LogitSelection) throws -> Double {
            _ = try m.forward(ids, options: ForwardOptions(logits: logits))
            return median(try (0..<repeats).map { _ in try timed { _ = try m.forward(ids, options: ForwardOptions(logits: logits)) } })
        }
        let prefillAll = try prefill(.all)
        let prefillLast = try prefill(.last)
        var decodeTimes: [Double] = []
        for _ in 0..<(repeats + 1) {
            let cache = KVCache(config: m.config, capacity: tokens + decode)
            let first = try m.forward(ids, cache: cache).logitRow(0)
            var next = Int32(first.indices.max { first[$0] < first[$1] }!)
            decodeTimes.append(try timed {
                for _ in 0..<decode {
                    let row = try m.forward([next], cache: cache).logitRow(0)
                    next = Int32(row.indices.max { row[$0] < row[$1] }!)
                }
            })
        }
        let decodeSeconds = median(Array(decodeTimes.dropFirst()))
        let c = m.config
        // FLOPs of one prefill: 2·params-per-token matmuls + attention (QKᵀ and PV, causal half) + logits.
        let perToken = 2 * (c.layers * (c.hidden * (c.heads + 2 * c.kvHeads) * c.headDim + c.heads * c.headDim * c.hidden + 3 * c.hidden * c.intermediate))
        let attention = c.layers * c.heads * 2 * 2 * c.headDim * tokens * (tokens + 1) / 2
        let logitsAll = 2 * c.hidden * c.vocabSize * tokens
        let flopsAll = Double(perToken * tokens + attention + logitsAll)
        let gemm = sgemmRate(m: tokens, n: c.intermediate, k: c.hidden)
        let blas = BLAS.configuration

        var result: [String: Any] = [
            "benchmark": "forward", "model": (path as NSString).lastPathComponent, "threads": threads,
            "prompt_tokens": tokens, "decode_tokens": decode, "repeats": repeats,
            "blas": ["core": blas.coreName, "threads": blas.threads, "build": blas.build],
            "mesa": [
                "prefill_all_logits_ms": prefillAll * 1e3, "prefill_all_logits_tokens_per_s": Double(tokens) / prefillAll,
                "prefill_last_logits_ms": prefillLast * 1e3, "prefill_last_logits_tokens_per_s": Double(tokens) / prefillLast,
                "decode_ms_per_token": decodeSeconds * 1e3 / Double(decode), "decode_tokens_per_s": Double(decode) / decodeSeconds,
                "prefill_all_logits_gflop": flopsAll / 1e9, "prefill_all_logits_gflop_per_s": flopsAll / prefillAll / 1e9,
                "sgemm_gflop_per_s_\(tokens)x\(c.intermediate)x\(c.hidden)": gemm,
                "peak_rss_mib": Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576,
            ],
        ]
        print(String(format: "mesa   prefill %d tok: %.1f ms (%.0f tok/s, all logits; %.1f ms with last logits only)  decode: %.2f ms/tok (%.1f tok/s)",
                     tokens, prefillAll * 1e3, Double(tokens) / prefillAll, prefillLast * 1e3, decodeSeconds * 1e3 / Double(decode), Double(decode) / decodeSeconds))
        print(String(format: "       prefill %.2f GFLOP at %.0f GFLOP/s; sgemm %dx%dx%d at %.0f GFLOP/s; peak RSS %.0f MiB; %@",
                     flopsAll / 1e9, flopsAll / prefillAll / 1e9, tokens, c.intermediate, c.hidden, gemm, Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576, blas.description))

        if reference != "none" {
            if let ref = try runReference(ids: ids, modelPath: path) {
                result["pytorch"] = ref
                func num(_ k: String) -> Double { (ref[k] as? Double) ?? (ref[k] as? NSNumber)?.doubleValue ?? .nan }
                let tp = num("prefill_tokens_per_s"), tl = num("prefill_last_logits_tokens_per_s"), td = num("decode_tokens_per_s")
                let rp = Double(tokens) / prefillAll / tp, rl = Double(tokens) / prefillLast / tl, rd = Double(decode) / decodeSeconds / td
                result["ratio"] = ["prefill_all_logits": rp, "prefill_last_logits": rl, "decode": rd]
                print(String(format: "torch  prefill %d tok: %.1f ms (%.0f tok/s, all logits; %.1f ms with last logits only)  decode: %.2f ms/tok (%.1f tok/s)  [torch %@, %d threads]",
                             tokens, num("prefill_ms"), tp, num("prefill_last_logits_ms"), num("decode_ms_per_token"), td,
                             (ref["torch"] as? String) ?? "?", (ref["threads"] as? Int) ?? 0))
                print(String(format: "ratio  prefill %.2f× PyTorch eager (all logits), %.2f× (last logits only); decode %.2f×", rp, rl, rd))
            }
        }
        result["date"] = ISO8601DateFormatter().string(from: Date())
        try writeResults(result, to: out)
    }

    /// Runs ops/reference/bench_forward.py with the same token ids and threads; nil if the reference environment is absent.
    func runReference(ids: [Int32], modelPath: String) throws -> [String: Any]? {
        let idsFile = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-ids-\(getpid()).json")
        try JSONSerialization.data(withJSONObject: ids.map(Int.init)).write(to: idsFile)
        defer { try? FileManager.default.removeItem(at: idsFile) }
        return try runReferenceScript(python: reference, ["ops/reference/bench_forward.py", "--threads", "\(threads)", "--repeats", "\(repeats)",
                                                          "--decode-tokens", "\(decode)", "--ids-file", idsFile.path, "--model", modelPath])
    }
}

/// Runs a script of the PyTorch reference environment, whose stdout is one JSON object. Returns nil,
/// saying why, when the environment is absent or the script fails.
func runReferenceScript(python: String, _ arguments: [String]) throws -> [String: Any]? {
    guard FileManager.default.isExecutableFile(atPath: python) else {
        print("reference: \(python) not found; build it with ops/reference/setup.sh (skipping the comparison)")
        return nil
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = arguments
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0, let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        print("reference: \(arguments.first ?? python) failed (exit \(p.terminationStatus))")
        return nil
    }
    return obj
}

/// What the ROME benchmarks share: the model, its ROME hyperparameters (with `steps` and early stopping
/// off, so every run does the same work), the stored templates and the cached key statistics.
struct RomeBenchSetup {
    let path: String
    let model: LanguageModel
    /// The file's settings with the early stops off (fixed steps, as the PyTorch reference runs).
    var hparams: RomeHyperparameters
    /// The file's settings as they are (its stop rule), MESA off.
    let file: RomeHyperparameters
    let state: EditState
    let templates: ContextTemplates
    let statistics: KeyStatistics?

    init(model: String?, hparams file: String, steps: Int?) throws {
        path = try model ?? paths.defaultModel()
        self.model = try ModelLoader.load(path: path)
        guard let hd = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
        var h = try RomeHyperparameters.decode(hd)
        if let steps { h.vNumGradSteps = steps }
        h.mesa = nil
        self.file = h
        h.earlyStopLoss = 0
        h.earlyStopTop = false
        hparams = h
        state = EditState(directory: paths.state, baseHash: self.model.weightHash)
        templates = try state.templates(model: self.model, groups: h.contextTemplates, seed: h.templateSeed, logger: Logger(label: "mesa-bench"))
        if h.mom2Adjustment {
            guard let s = try state.cachedStatistics(h.statisticsSpec(modelHash: state.baseHash)) else {
                throw ValidationError("no key statistics for layer \(h.layer) with \(h.mom2Tokens) tokens: run `mesa stats --layer \(h.layer) --tokens \(h.mom2Tokens)` first")
            }
            statistics = s
        } else {
            statistics = nil
        }
    }
}
