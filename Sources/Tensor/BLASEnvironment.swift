#if canImport(Glibc)
import Glibc
#endif
import Foundation

extension BLAS {
    /// Chooses OpenBLAS's kernel family for this process. Call first thing in `main`.
    ///
    /// OpenBLAS reads `OPENBLAS_CORETYPE` once, when it is loaded — before `main` runs. Some machines
    /// preset it (e.g. `Haswell`), which forces AVX2 kernels at half the AVX-512 speed. mesa's own
    /// setting is `MESA_BLAS_CORETYPE`: `auto` (default) lets OpenBLAS detect the CPU; a core name
    /// (`Haswell`, `SkylakeX`, `Cooperlake`, `Zen`, …) forces it. When the inherited environment
    /// disagrees, the process re-executes itself once with the corrected variable. The active core
    /// is reported by `mesa inspect` and the benchmarks, and recorded with snapshots, because
    /// results are bitwise reproducible only for a fixed core type and thread count.
    ///
    /// The one place a library target reads the environment: the variable has to be right before
    /// OpenBLAS loads, so it can only be set in the environment of a fresh image (the re-exec), not
    /// passed in as a value like the paths (`Paths` in the daemon's composition layer).
    public static func selectCoreType() {
        let env = ProcessInfo.processInfo.environment
        guard env["MESA_BLAS_REEXEC"] == nil else { return }
        let wanted = env["MESA_BLAS_CORETYPE"] ?? "auto"
        let current = env["OPENBLAS_CORETYPE"]
        let isAuto = wanted.lowercased() == "auto"
        guard isAuto ? current != nil : current != wanted else { return }
        if isAuto { unsetenv("OPENBLAS_CORETYPE") } else { setenv("OPENBLAS_CORETYPE", wanted, 1) }
        setenv("MESA_BLAS_REEXEC", "1", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv returns only on failure: continue with the inherited kernels, and say so.
        FileHandle.standardError.write(Data("warning: could not re-exec to set OPENBLAS_CORETYPE (\(String(cString: strerror(errno)))); continuing with \(current ?? "auto")\n".utf8))
    }
}
