#if canImport(Glibc)
import Glibc
#endif
import Foundation

extension BLAS {
    /// Chooses OpenBLAS's kernel family for this process. Call first thing in `main`.
    ///
    /// OpenBLAS reads `OPENBLAS_CORETYPE` once, when it is loaded — before `main` runs. Some machines
    /// preset it (e.g. `Haswell`), which forces AVX2 kernels at half the AVX-512 speed. mesa's own
    /// setting is `MESA_BLAS_CORETYPE`: `auto` (default) lets OpenBLAS detect the CPU, and where OpenBLAS
    /// does not recognise it and falls back to Prescott's SSE3 kernels (virtual machines with a generic
    /// model name) names the family the CPU's flags support (`preferredCore`); a core name
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
        let phase = env["MESA_BLAS_REEXEC"]
        guard phase != "2" else { return }
        let wanted = env["MESA_BLAS_CORETYPE"] ?? "auto"
        let current = env["OPENBLAS_CORETYPE"]
        guard wanted.lowercased() == "auto" else {
            if phase == nil, current != wanted { reexec(coreType: wanted, phase: "2", current: current) }
            return
        }
        // Auto: first let OpenBLAS detect the CPU in a fresh image without a preset core.
        if current != nil {
            if phase == nil { reexec(coreType: nil, phase: "1", current: current) }
            return
        }
        // OpenBLAS falls back to Prescott's SSE3 kernels on CPUs it does not recognise (virtual machines
        // that report a generic model name), a third of the speed an AVX-512 CPU allows: name the family
        // the CPU's instruction set supports instead.
        if let better = preferredCore(cpu: .current, detected: configuration.coreName) {
            reexec(coreType: better, phase: "2", current: current)
        }
    }

    /// The OpenBLAS kernel family to use instead of `detected` on `cpu`, or nil when `detected` fits:
    /// an AVX-512 CPU (F, CD, BW, DQ, VL) wants Cooperlake (with AVX512-BF16) or SkylakeX; an AVX2 + FMA
    /// CPU wants at least Haswell.
    public static func preferredCore(cpu: CPUInfo, detected: String) -> String? {
        let core = detected.lowercased()
        if cpu.hasAVX512Kernels {
            guard !avx512Cores.contains(core) else { return nil }
            return cpu.flags.contains("avx512_bf16") ? "Cooperlake" : "SkylakeX"
        }
        if cpu.flags.isSuperset(of: ["avx2", "fma"]) {
            return avx2Cores.union(avx512Cores).contains(core) ? nil : "Haswell"
        }
        return nil
    }

    private static func reexec(coreType: String?, phase: String, current: String?) {
        if let coreType { setenv("OPENBLAS_CORETYPE", coreType, 1) } else { unsetenv("OPENBLAS_CORETYPE") }
        setenv("MESA_BLAS_REEXEC", phase, 1)
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
    /// The instruction-set flags (/proc/cpuinfo's `flags`).
    public var flags: Set<String>

    public init(model: String, hasAVX512: Bool, flags: Set<String>? = nil) {
        self.model = model
        self.hasAVX512 = hasAVX512
        self.flags = flags ?? (hasAVX512 ? ["avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"] : ["avx2", "fma"])
    }

    /// Whether the CPU has every AVX-512 subset OpenBLAS's SkylakeX kernels use.
    public var hasAVX512Kernels: Bool { flags.isSuperset(of: ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]) }

    /// The first processor's entry; "unknown" and false where /proc/cpuinfo cannot be read.
    public static let current: CPUInfo = {
        guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return CPUInfo(model: "unknown", hasAVX512: false) }
        var model = "unknown", flags = Set<String>()
        for line in s.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "model name", model == "unknown" { model = parts[1] }
            if parts[0] == "flags" { flags = Set(parts[1].split(separator: " ").map(String.init)); break }
        }
        return CPUInfo(model: model, hasAVX512: flags.contains("avx512f"), flags: flags)
    }()
}

extension BLAS {
    /// OpenBLAS kernel families built on AVX-512.
    static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    /// OpenBLAS kernel families built on AVX2 + FMA.
    static let avx2Cores: Set<String> = ["haswell", "zen"]

    /// A warning when the active OpenBLAS kernels are slower than the CPU allows: an AVX-512 CPU running
    /// another family (a preset `OPENBLAS_CORETYPE` or `MESA_BLAS_CORETYPE` such as Haswell runs AVX2
    /// kernels at about half the rate). Nil when the kernels fit the CPU.
    public static func kernelWarning(cpu: CPUInfo = .current) -> String? {
        let core = configuration.coreName
        guard cpu.hasAVX512, !avx512Cores.contains(core.lowercased()) else { return nil }
        return "OpenBLAS runs \(core) kernels on an AVX-512 CPU (\(cpu.model)): matrix products run at about half the rate this machine allows; "
            + "unset OPENBLAS_CORETYPE and set MESA_BLAS_CORETYPE=auto (mesa then names the fitting family when OpenBLAS does not recognise the CPU) or a core such as Cooperlake"
    }
}
