import ArgumentParser
import CKernels
import Foundation
import ModelRuntime
import Tensor

/// x · Wᵀ for a few rows: OpenBLAS's sgemm (which packs W on every call) against mesa's in-place
/// kernel, at the model's projection shapes, and a short-prompt forward pass with each.
struct GemmRowsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm-rows",
        abstract: "Few-row projections: OpenBLAS sgemm against mesa's in-place kernel (the crossover behind BLAS.inPlaceRowLimit).")

    @Option(help: "Model path (default: the installed SmolLM2-135M-Instruct).") var model: String?
    @Option(help: "BLAS threads.") var threads = 1
    @Option(parsing: .upToNextOption, help: "Row counts.") var rows: [Int] = [1, 2, 4, 8, 12, 16, 24, 32]
    @Option(help: "Timed repetitions (median reported), after one warm-up.") var repeats = 7
    @Option(help: "Results file (JSON).") var out = "ops/bench/results/gemm-rows.json"

    func run() throws {
        BLAS.setThreads(threads)
        let m = try ModelLoader.load(path: try model ?? paths.defaultModel())
        let c = m.config
        // [out, in] of the attention and MLP projections and of the output embedding.
        let shapes = [(c.hidden, c.hidden), (c.kvHeads * c.headDim, c.hidden), (c.intermediate, c.hidden), (c.hidden, c.intermediate),
                      (c.vocabSize, c.hidden)]
        let saved = BLAS.inPlaceRowLimit
        defer { BLAS.inPlaceRowLimit = saved }
        var table: [[String: Any]] = []
        print("rows  out×in          OpenBLAS µs   in place µs   ratio")
        for (n, k) in shapes {
            var g = SystemRandomNumberGenerator()
            let w = (0..<(n * k)).map { _ in Float.random(in: -1...1, using: &g) }
            for r in rows {
                let x = (0..<(r * k)).map { _ in Float.random(in: -1...1, using: &g) }
                var ref = [Float](repeating: 0, count: r * n), mine = ref, narrow = ref
                func time(_ body: () -> Void) -> Double {
                    body()
                    return median((0..<repeats).map { _ in timed(body) })
                }
                let tBLAS = x.withUnsafeBufferPointer { px in w.withUnsafeBufferPointer { pw in ref.withUnsafeMutableBufferPointer { pc in
                    time { BLAS.sgemm(transB: true, m: r, n: n, k: k, a: px.baseAddress!, lda: k, b: pw.baseAddress!, ldb: k, c: pc.baseAddress!, ldc: n) }
                } } }
                BLAS.inPlaceRowLimit = Int.max
                let tMine = x.withUnsafeBufferPointer { px in w.withUnsafeBufferPointer { pw in mine.withUnsafeMutableBufferPointer { pc in
                    time { BLAS.sgemmNT(m: r, n: n, k: k, a: px.baseAddress!, lda: k, b: pw.baseAddress!, ldb: k, c: pc.baseAddress!, ldc: n) }
                } } }
                x.withUnsafeBufferPointer { px in w.withUnsafeBufferPointer { pw in narrow.withUnsafeMutableBufferPointer { pc in
                    mesa_gemm_nt(px.baseAddress!, k, pw.baseAddress!, k, pc.baseAddress!, n, r, n, k, 2)
                } } }
                let scale = ref.map(abs).max() ?? 1
                let err = zip(ref, mine).map { abs($0 - $1) }.max() ?? 0
                let avx2Agrees = mine == narrow
                print(String(format: "%4d  %6d×%-6d  %11.1f   %11.1f   %5.2f×%@", r, n, k, tBLAS * 1e6, tMine * 1e6, tBLAS / tMine,
                             avx2Agrees ? "" : "  (AVX2 path differs!)"))
                table.append(["rows": r, "out": n, "in": k, "openblas_us": tBLAS * 1e6, "in_place_us": tMine * 1e6, "speedup": tBLAS / tMine,
                              "max_abs_diff_relative": Double(err / max(scale, 1e-30)), "avx2_path_bitwise_equal": avx2Agrees])
            }
        }
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
        let blas = BLAS.configuration
        try writeResults(["benchmark": "gemm-rows", "threads": threads, "repeats": repeats, "in_place_row_limit": saved,
                          "avx512": mesa_gemm_nt_uses_avx512() == 1,
                          "blas": ["core": blas.coreName, "threads": blas.threads, "build": blas.build],
                          "products": table, "forward": forward, "date": ISO8601DateFormatter().string(from: Date())], to: out)
    }
}
