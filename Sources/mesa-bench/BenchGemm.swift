import ArgumentParser
import CKernels
import Editing
import Evaluation
import Foundation
import ModelRuntime
import Tensor

/// Few-row products at the model's shapes: OpenBLAS's sgemm (which packs W on every call) against mesa's
/// in-place kernels, x · Wᵀ (the forward projections) and ∂y · W (their input gradients, in v*'s
/// backward pass); then a short-prompt forward pass and one ROME edit with each.
struct GemmRowsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm-rows",
        abstract: "Few-row products: OpenBLAS sgemm against mesa's in-place kernels (the crossovers behind BLAS.inPlaceRowLimit and inPlaceGradientRowLimit).")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "BLAS threads.") var threads = 1
    @Option(parsing: .upToNextOption, help: "Row counts of x · Wᵀ.") var rows: [Int] = [1, 2, 4, 8, 12, 16, 24, 32]
    @Option(parsing: .upToNextOption, help: "Row counts of ∂y · W.") var gradientRows: [Int] = [4, 12, 24, 48, 64, 96, 128, 192]
    @Option(help: "ROME hyperparameters of the timed edit ('none' skips it; its key statistics must be cached).")
    var hparams = "deploy/hparams/rome/SmolLM2-135M-Instruct.json"
    @Option(help: "CounterFact file; the timed edit is its first record.") var data = "../shared/data/counterfact/counterfact-val.json"
    @Option(help: "Timed repetitions (median reported), after one warm-up.") var repeats = 7
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/gemm-rows.json"

    /// A product of r rows against a weight W [n, k] (n = out, k = in): (r, n, k, the small matrix, W, the result).
    typealias Product = (Int, Int, Int, UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void

    /// One table: for each weight shape and row count, the product through OpenBLAS and through mesa's
    /// kernel (timed, median of `repeats` after a warm-up), their largest difference relative to the
    /// largest output, and whether the kernel's AVX2 path gives the same bits.
    func compare(_ header: String, rows: [Int], shapes: [(Int, Int)], input: (Int, Int, Int) -> Int, output: (Int, Int, Int) -> Int,
                 openBLAS: @escaping Product, inPlace: @escaping Product, avx2: @escaping Product) -> [[String: Any]] {
        var table: [[String: Any]] = []
        print(header)
        for (n, k) in shapes {
            var g = SystemRandomNumberGenerator()
            let w = (0..<(n * k)).map { _ in Float.random(in: -1...1, using: &g) }
            for r in rows {
                let a = (0..<input(r, n, k)).map { _ in Float.random(in: -1...1, using: &g) }
                var results = [[Float]](repeating: [Float](repeating: 0, count: output(r, n, k)), count: 3)
                var seconds: [Double] = []
                for (i, product) in [openBLAS, inPlace, avx2].enumerated() {
                    a.withUnsafeBufferPointer { pa in w.withUnsafeBufferPointer { pw in results[i].withUnsafeMutableBufferPointer { pc in
                        let (x, y, z) = (pa.baseAddress!, pw.baseAddress!, pc.baseAddress!)
                        product(r, n, k, x, y, z)
                        if i < 2 { seconds.append(median((0..<repeats).map { _ in timed { product(r, n, k, x, y, z) } })) }
                    } } }
                }
                let scale = results[0].map(abs).max() ?? 1
                let err = zip(results[0], results[1]).map { abs($0 - $1) }.max() ?? 0
                let avx2Agrees = results[1] == results[2]
                print(String(format: "%4d  %6d×%-6d  %11.1f   %11.1f   %5.2f×%@", r, n, k, seconds[0] * 1e6, seconds[1] * 1e6, seconds[0] / seconds[1],
                             avx2Agrees ? "" : "  (AVX2 path differs!)"))
                table.append(["rows": r, "out": n, "in": k, "openblas_us": seconds[0] * 1e6, "in_place_us": seconds[1] * 1e6,
                              "speedup": seconds[0] / seconds[1], "max_abs_diff_relative": Double(err / max(scale, 1e-30)),
                              "avx2_path_bitwise_equal": avx2Agrees])
            }
        }
        return table
    }

    func run() throws {
        BLAS.setThreads(threads)
        let m = try ModelLoader.load(path: try model ?? paths.defaultModel())
        let c = m.config
        // [out, in] of the attention and MLP projections and of the output embedding.
        let shapes = [(c.hidden, c.hidden), (c.kvHeads * c.headDim, c.hidden), (c.intermediate, c.hidden), (c.hidden, c.intermediate),
                      (c.vocabSize, c.hidden)]
        let saved = BLAS.inPlaceRowLimit
        defer { BLAS.inPlaceRowLimit = saved }
        let savedGradient = BLAS.inPlaceGradientRowLimit
        defer { BLAS.inPlaceGradientRowLimit = savedGradient }
        // x[r, in] · W[out, in]ᵀ: the projections and the logits.
        let table = compare("rows  out×in          OpenBLAS µs   in place µs   ratio", rows: rows, shapes: shapes,
                            input: { r, n, k in r * k }, output: { r, n, k in r * n },
                            openBLAS: { r, n, k, x, w, c in BLAS.sgemm(transB: true, m: r, n: n, k: k, a: x, lda: k, b: w, ldb: k, c: c, ldc: n) },
                            inPlace: { r, n, k, x, w, c in
                                BLAS.inPlaceRowLimit = .max
                                BLAS.sgemmNT(m: r, n: n, k: k, a: x, lda: k, b: w, ldb: k, c: c, ldc: n)
                            },
                            avx2: { r, n, k, x, w, c in mesa_gemm_nt(x, k, w, k, c, n, r, n, k, 2) })
        // ∂y[r, out] · W[out, in]: the input gradients of the projections and of the logits (∂logits · E).
        let gradientTable = compare("rows  (∂y·W) out×in   OpenBLAS µs   in place µs   ratio", rows: gradientRows, shapes: shapes,
                                    input: { r, n, k in r * n }, output: { r, n, k in r * k },
                                    openBLAS: { r, n, k, dy, w, c in BLAS.sgemm(m: r, n: k, k: n, a: dy, lda: n, b: w, ldb: k, c: c, ldc: k) },
                                    inPlace: { r, n, k, dy, w, c in
                                        BLAS.inPlaceGradientRowLimit = .max
                                        BLAS.sgemmNN(m: r, n: k, k: n, a: dy, lda: n, b: w, ldb: k, c: c, ldc: k)
                                    },
                                    avx2: { r, n, k, dy, w, c in mesa_gemm_nn(dy, n, w, k, c, k, r, k, n, 0, 2) })
        BLAS.inPlaceRowLimit = saved
        BLAS.inPlaceGradientRowLimit = savedGradient

        // A scoring-shaped forward pass: a short prompt, logits at its last position.
        let ids = Array(m.tokenizer.encode("The mother tongue of Danielle Darrieux is French, and she was born in").prefix(12))
        // The two settings alternate, so that a change in the machine's load falls on both.
        var times: [[Double]] = [[], []]
        for rep in 0...(3 * repeats) {
            for (i, limit) in [0, saved].enumerated() {
                BLAS.inPlaceRowLimit = limit
                let t = try timed { _ = try m.forward(ids, options: ForwardOptions(logits: .last)) }
                if rep > 0 { times[i].append(t) }
            }
        }
        let a = median(times[0]) * 1e3, b = median(times[1]) * 1e3
        let forward: [String: Any] = ["prompt_tokens": ids.count, "repeats": times[0].count, "openblas_ms": a, "in_place_ms": b, "speedup": a / b]
        print(String(format: "forward, %d-token prompt, last logits: OpenBLAS %.2f ms, in place (rows <= %d) %.2f ms: %.2f×", ids.count, a, saved, b, a / b))
        BLAS.inPlaceRowLimit = saved

        // One ROME edit (k*, v*'s optimization at fixed steps, the closed form), the backward's products
        // through OpenBLAS and in place, alternating.
        var edit: [String: Any]?
        if hparams != "none" {
            let setup = try RomeBenchSetup(model: model, hparams: hparams, steps: nil)
            let editor = try RomeEditor(model: setup.model, hparams: setup.hparams, templates: setup.templates, statistics: setup.statistics)
            let rec = try CounterFact.load(path: data).records[0]
            let batch = try editor.batch(for: EditRequest(subject: rec.subject, prompt: rec.prompt, targetNew: rec.targetNew, targetTrue: rec.targetTrue))
            var total: [[Double]] = [[], []], vStar: [[Double]] = [[], []]
            var deltas: [[Float]] = [[], []]
            for rep in 0...repeats {
                for (i, limit) in [0, savedGradient].enumerated() {
                    BLAS.inPlaceGradientRowLimit = limit
                    var r: RomeResult?
                    let t = try timed { r = try editor.computeUpdate(batch: batch) }
                    if rep > 0 { total[i].append(t); vStar[i].append(r!.phases["v_star"] ?? .nan) }
                    deltas[i] = r!.update.r
                }
            }
            BLAS.inPlaceGradientRowLimit = savedGradient
            let a = median(total[0]), b = median(total[1]), va = median(vStar[0]), vb = median(vStar[1])
            let diff = zip(deltas[0], deltas[1]).map { abs($0 - $1) }.max() ?? 0, scale = deltas[0].map(abs).max() ?? 1
            print(String(format: "ROME edit, layer %d, %d fixed steps: OpenBLAS backward %.3f s (v* %.3f), in place (rows <= %d) %.3f s (v* %.3f): %.2f× (v* %.2f×); update differs by %.1e relative",
                         setup.hparams.layer, setup.hparams.vNumGradSteps, a, va, savedGradient, b, vb, a / b, va / vb, Double(diff / max(scale, 1e-30))))
            edit = ["layer": setup.hparams.layer, "steps": setup.hparams.vNumGradSteps, "case_id": rec.caseId, "repeats": repeats,
                    "openblas_s": a, "in_place_s": b, "speedup": a / b, "v_star_openblas_s": va, "v_star_in_place_s": vb, "v_star_speedup": va / vb,
                    "update_max_abs_diff_relative": Double(diff / max(scale, 1e-30))]
        }
        let blas = BLAS.configuration
        var results: [String: Any] = ["benchmark": "gemm-rows", "threads": threads, "repeats": repeats, "in_place_row_limit": saved,
                                      "in_place_gradient_row_limit": savedGradient, "avx512": mesa_gemm_nt_uses_avx512() == 1,
                                      "blas": ["core": blas.coreName, "threads": blas.threads, "build": blas.build],
                                      "products": table, "gradient_products": gradientTable, "forward": forward,
                                      "date": ISO8601DateFormatter().string(from: Date())]
        results["rome_edit"] = edit
        try writeResults(results, to: out)
    }
}
