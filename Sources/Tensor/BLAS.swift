import CKernels
import COpenBLAS
import Foundation

/// The BLAS backend (OpenBLAS) and its configuration.
///
/// Results are bitwise reproducible only for a fixed triple (OpenBLAS version, core type, thread
/// count), so every place that reports performance or records a snapshot reads `BLAS.configuration`.
public enum BLAS {
    /// The active BLAS configuration.
    public struct Configuration: Codable, Equatable, Sendable, CustomStringConvertible {
        /// OpenBLAS build string, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64".
        public var build: String
        /// The kernel family OpenBLAS selected at load time (`openblas_get_corename`), e.g. "Zen", "Haswell", "SkylakeX".
        public var coreName: String
        /// Threads OpenBLAS uses for level-3 calls.
        public var threads: Int

        public var description: String { "OpenBLAS core=\(coreName) threads=\(threads) (\(build))" }
    }

    /// Sets the number of BLAS threads. `0` means one per available core.
    public static func setThreads(_ n: Int) {
        let count = n > 0 ? n : ProcessInfo.processInfo.activeProcessorCount
        openblas_set_num_threads(Int32(count))
    }

    public static var configuration: Configuration {
        Configuration(
            build: String(cString: openblas_get_config()).trimmingCharacters(in: .whitespaces),
            coreName: String(cString: openblas_get_corename()),
            threads: Int(openblas_get_num_threads()))
    }

    // MARK: Level 3 / level 2, row-major.

    /// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C[m,n], all row-major.
    /// `lda`, `ldb`, `ldc` are the row strides of A, B, C as stored (before transposition).
    @inline(__always)
    public static func sgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }

    /// Up to this many rows of A, `sgemmNT` reads B in place with mesa's kernel instead of calling
    /// OpenBLAS (`mesa-bench gemm-rows` measures the crossover, `ops/bench/results/gemm-rows.json`).
    /// `MESA_GEMM_IN_PLACE_ROWS` overrides it; 0 leaves every product to OpenBLAS, as before the
    /// kernel (edits then reproduce the weights of snapshots written then, bit for bit).
    nonisolated(unsafe) public static var inPlaceRowLimit: Int = {
        ProcessInfo.processInfo.environment["MESA_GEMM_IN_PLACE_ROWS"].flatMap { Int($0) }.map { max(0, $0) } ?? 24
    }()

    /// C[m,n] = A[m,k] · B[n,k]ᵀ, row-major: a projection of m rows by a weight B stored [out, in].
    ///
    /// OpenBLAS copies the whole of B into panels on every call; with a few rows (scoring prompts, the
    /// canary set, a query's prompt) the copy costs more than the arithmetic. Up to `inPlaceRowLimit`
    /// rows `mesa_gemm_nt` reads B in place instead, its columns split between the BLAS threads. Its
    /// results do not depend on the thread count or on the CPU (AVX-512 or AVX2: the same bits).
    public static func sgemmNT(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                               c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        guard m <= inPlaceRowLimit else {
            sgemm(transB: true, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc)
            return
        }
        let threads = Int(openblas_get_num_threads())
        // Below about a million multiply-adds a second thread costs more to wake than it saves.
        sgemmInPlace(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc,
                     parts: threads > 1 && m * n * k >= 1 << 20 ? min(threads, n / 64) : 1)
    }

    /// `sgemmNT`'s in-place product, its columns split into `parts` blocks computed concurrently
    /// (the same bits for any `parts`).
    public static func sgemmInPlace(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                    c: UnsafeMutablePointer<Float>, ldc: Int, parts: Int) {
        guard parts > 1 else {
            mesa_gemm_nt(a, lda, b, ldb, c, ldc, m, n, k, 0)
            return
        }
        // Column blocks of a multiple of 16, so that every part but the last tiles alike.
        let block = ((n + parts - 1) / parts + 15) & ~15
        // Each part writes its own columns of C; the pointers outlive the call, which waits for every part.
        nonisolated(unsafe) let (a, b, c) = (a, b, c)
        DispatchQueue.concurrentPerform(iterations: (n + block - 1) / block) { p in
            let from = p * block, count = min(block, n - from)
            mesa_gemm_nt(a, lda, b + from * ldb, ldb, c + from, ldc, m, count, k, 0)
        }
    }

    /// Up to this many rows of A, `sgemmNN` reads B in place with mesa's kernel (`mesa-bench gemm-rows`
    /// measures the crossover). `MESA_GEMM_IN_PLACE_ROWS=0` leaves these products to OpenBLAS too.
    nonisolated(unsafe) public static var inPlaceGradientRowLimit: Int = {
        inPlaceRowLimit == 0 ? 0 : 64
    }()

    /// C[m,n] = A[m,k] · B[k,n], or C += A · B when `accumulate`, row-major: the input gradient of a
    /// projection (∂y[m, out] · W[out, in]) or of the logits (∂logits[m, V] · E[V, d]).
    ///
    /// Up to `inPlaceGradientRowLimit` rows `mesa_gemm_nn` reads B in place instead of OpenBLAS's
    /// packed copy, its columns split between the BLAS threads. Each output is one chain of fused
    /// multiply-adds in increasing k: the same bits for any thread count and on AVX-512 or AVX2.
    public static func sgemmNN(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                               accumulate: Bool = false, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        guard m <= inPlaceGradientRowLimit else {
            sgemm(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: accumulate ? 1 : 0, c: c, ldc: ldc)
            return
        }
        let threads = Int(openblas_get_num_threads())
        sgemmNNInPlace(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, accumulate: accumulate, c: c, ldc: ldc,
                       parts: threads > 1 && m * n * k >= 1 << 20 ? min(threads, n / 64) : 1)
    }

    /// `sgemmNN`'s in-place product, its columns split into `parts` blocks computed concurrently (the
    /// same bits for any `parts`).
    public static func sgemmNNInPlace(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                      accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int, parts: Int) {
        let acc: Int32 = accumulate ? 1 : 0
        guard parts > 1 else {
            mesa_gemm_nn(a, lda, b, ldb, c, ldc, m, n, k, acc, 0)
            return
        }
        // Column blocks of a multiple of 32, the AVX-512 tile's width.
        let block = ((n + parts - 1) / parts + 31) & ~31
        nonisolated(unsafe) let (a, b, c) = (a, b, c)
        DispatchQueue.concurrentPerform(iterations: (n + block - 1) / block) { p in
            let from = p * block, count = min(block, n - from)
            mesa_gemm_nn(a, lda, b + from, ldb, c + from, ldc, m, count, k, acc, 0)
        }
    }

    /// y[m] = alpha · op(A) · x + beta · y with A row-major [rows, cols]; op(A) is A or Aᵀ.
    @inline(__always)
    public static func sgemv(
        trans: Bool = false, rows: Int, cols: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, blasint(rows), blasint(cols), alpha, a,
                    blasint(lda), x, 1, beta, y, 1)
    }

    /// C[m,n] (Double) = alpha · op(A) · op(B) + beta · C, row-major.
    public static func dgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Double = 1, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
        beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }

    /// A[m,n] += alpha · x[m] · y[n]ᵀ (row-major rank-one update).
    public static func sger(m: Int, n: Int, alpha: Float = 1, x: UnsafePointer<Float>, y: UnsafePointer<Float>,
                            a: UnsafeMutablePointer<Float>, lda: Int) {
        cblas_sger(CblasRowMajor, blasint(m), blasint(n), alpha, x, 1, y, 1, a, blasint(lda))
    }

    /// Single-precision dot product.
    public static func sdot(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>) -> Float {
        cblas_sdot(blasint(n), x, 1, y, 1)
    }
}
