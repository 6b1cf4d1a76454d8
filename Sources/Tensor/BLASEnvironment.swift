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

/// What /proc/cpuinfo says about the CPU the process runs on.
public struct CPUInfo: Sendable {
    /// The model name (e.g. "AMD EPYC 9B14").
    public var model: String
    /// Whether the CPU has AVX-512F (then OpenBLAS's AVX-512 kernels, SkylakeX or Cooperlake, are the fast ones).
    public var hasAVX512: Bool

    public init(model: String, hasAVX512: Bool) {
        self.model = model
        self.hasAVX512 = hasAVX512
    }

    /// The first processor's entry; "unknown" and false where /proc/cpuinfo cannot be read.
    public static let current: CPUInfo = {
        guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return CPUInfo(model: "unknown", hasAVX512: false) }
        var model = "unknown", avx512 = false
        for line in s.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "model name", model == "unknown" { model = parts[1] }
            if parts[0] == "flags" { avx512 = parts[1].split(separator: " ").contains("avx512f"); break }
        }
        return CPUInfo(model: model, hasAVX512: avx512)
    }()
}

extension BLAS {
    /// OpenBLAS kernel families built on AVX-512.
    static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]

    /// A warning when the active OpenBLAS kernels are slower than the CPU allows: an AVX-512 CPU running
    /// another family (a preset `OPENBLAS_CORETYPE` or `MESA_BLAS_CORETYPE` such as Haswell runs AVX2
    /// kernels at about half the rate). Nil when the kernels fit the CPU.
    public static func kernelWarning(cpu: CPUInfo = .current) -> String? {
        let core = configuration.coreName
        guard cpu.hasAVX512, !avx512Cores.contains(core.lowercased()) else { return nil }
        return "OpenBLAS runs \(core) kernels on an AVX-512 CPU (\(cpu.model)): matrix products run at about half the rate this machine allows; "
            + "unset OPENBLAS_CORETYPE and set MESA_BLAS_CORETYPE=auto (or a core such as Cooperlake)"
    }
}
