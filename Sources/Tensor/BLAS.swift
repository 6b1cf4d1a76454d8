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
