import ArgumentParser
import Editing
import Foundation
import ModelRuntime
import SparseAutoencoder
import Tensor

/// Activation harvesting throughput: tokens per second for a set of sites filled in one pass, with
/// articles packed into each pass and with one article per pass (the earlier path), against the FLOP
/// floor of the layers run (up to the deepest site) at the sgemm rate measured at the pass's shape in
/// the same run.
struct HarvestBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harvest",
        abstract: "Activation harvest: tokens/s packed and one article per pass, and the ratio to the FLOP floor, same run.")

    @Option(help: "Model (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "BLAS threads.") var threads = 2
    @Option(parsing: .upToNextOption, help: "Sites as kind:layer (mlp_out, mlp_key, resid_out, resid_in).")
    var sites = ["mlp_out:7", "mlp_key:7", "resid_out:7"]
    @Option(help: "Tokens harvested per timed run.") var tokens = 16384
    @Option(help: "Tokens per article.") var sequenceLength = 256
    @Option(help: "Tokens packed into one pass.") var pack = ActivationCache.defaultPackTokens
    @Option(help: "Wikipedia sample (one article per line).") var corpus = "../shared/data/corpus/enwiki-2015-sample.txt"
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/harvest.json"

    func run() throws {
        BLAS.setThreads(threads)
        let path = try model ?? paths.defaultModel()
        let lm = try ModelLoader.load(path: path)
        let parsed: [Site] = try sites.map { s in
            let p = s.split(separator: ":")
            guard p.count == 2, let kind = SiteKind(rawValue: String(p[0])), let layer = Int(p[1]) else {
                throw ValidationError("site \(s) is not kind:layer")
            }
            return Site(layer: layer, kind: kind)
        }
        let text = try Corpus(path: corpus, seed: 0)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mesa-bench-harvest-\(getpid())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let specs = parsed.map { ActivationSpec(modelHash: lm.weightHash, site: $0, tokens: tokens, sequenceLength: sequenceLength, seed: 0) }

        func timedHarvest(_ packTokens: Int, _ name: String) throws -> (seconds: Double, articles: Int) {
            let urls = parsed.map { dir.appendingPathComponent("\(name)-\($0).f16") }
            var got: [ActivationCache]?
            let s = try timed {
                got = try ActivationCache.harvest(model: lm, specs: specs, articleCount: text.count, article: text.article, to: urls,
                                                  packTokens: packTokens)
            }
            for u in urls { try? FileManager.default.removeItem(at: u) }
            return (s, got?.first?.articles ?? 0)
        }
        _ = try timedHarvest(pack, "warmup")
        let packed = try timedHarvest(pack, "packed")
        let single = try timedHarvest(1, "single")

        // FLOPs per harvested token of layers 0...deepest: the projections (2 per multiply-add) and
        // causal attention over an article (mean context (n+1)/2 for n tokens per article).
        let c = lm.config
        let layers = parsed.map(\.layer).max()! + 1
        let meanArticle = Double(tokens) / Double(max(1, packed.articles))
        let projections = 2.0 * Double(c.hidden * (c.heads + 2 * c.kvHeads) * c.headDim + c.heads * c.headDim * c.hidden + 3 * c.hidden * c.intermediate)
        let attention = 2.0 * 2.0 * Double(c.heads * c.headDim) * (meanArticle + 1) / 2
        let flopsPerToken = Double(layers) * (projections + attention)
        let gemm = sgemmRate(m: pack, n: c.intermediate, k: c.hidden)
        let floorTokensPerSecond = gemm * 1e9 / flopsPerToken
        let packedRate = Double(tokens) / packed.seconds, singleRate = Double(tokens) / single.seconds
        let blas = BLAS.configuration
        let result: [String: Any] = [
            "benchmark": "harvest", "model": (path as NSString).lastPathComponent, "threads": threads,
            "sites": parsed.map(\.description), "tokens": tokens, "sequence_length": sequenceLength, "pack_tokens": pack,
            "layers_run": layers, "mean_article_tokens": meanArticle,
            "blas": ["core": blas.coreName, "threads": blas.threads, "build": blas.build],
            "gflop_per_token": flopsPerToken / 1e9,
            "sgemm_gflop_per_s_\(pack)x\(c.intermediate)x\(c.hidden)": gemm,
            "floor_tokens_per_s": floorTokensPerSecond,
            "packed": ["seconds": packed.seconds, "tokens_per_s": packedRate, "floor_ratio": packedRate / floorTokensPerSecond],
            "one_article_per_pass": ["seconds": single.seconds, "tokens_per_s": singleRate, "floor_ratio": singleRate / floorTokensPerSecond],
            "speedup_packed_over_one_article": packedRate / singleRate,
            "peak_rss_mib": Double(ResidentMemory.current()?.peak ?? 0) / 1_048_576,
            "date": ISO8601DateFormatter().string(from: Date()),
        ]
        print(String(format: "harvest %d tokens at %@ (layers 0–%d, %.0f-token articles, %@)", tokens, parsed.map(\.description).joined(separator: ", "),
                     layers - 1, meanArticle, blas.description))
        print(String(format: "  packed (%d tokens per pass): %.0f tokens/s, %.0f%% of the floor", pack, packedRate, 100 * packedRate / floorTokensPerSecond))
        print(String(format: "  one article per pass:       %.0f tokens/s, %.0f%% of the floor", singleRate, 100 * singleRate / floorTokensPerSecond))
        print(String(format: "  floor: %.3f GFLOP per token at the sgemm rate %.0f GFLOP/s (%dx%dx%d): %.0f tokens/s; packed/one-article %.2f×",
                     flopsPerToken / 1e9, gemm, pack, c.intermediate, c.hidden, floorTokensPerSecond, packedRate / singleRate))
        try writeResults(result, to: out)
    }
}
