import CKernels
import Foundation
import Tensor
import Testing

@Suite struct SHA256Tests {
    @Test func knownVectors() {
        #expect(SHA256.hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // 10,496 bytes fed in uneven pieces (exercises buffering across blocks); value from Python's hashlib.
        let bytes = Array((0..<41).flatMap { _ in (0..<256).map { UInt8($0) } })
        var h = SHA256()
        var i = 0
        for step in [1, 63, 64, 65, 1000, 7] .cycled(until: bytes.count) {
            let end = min(bytes.count, i + step)
            h.update(bytes[i..<end]); i = end
            if i == bytes.count { break }
        }
        #expect(SHA256.hex(h.finalize()) == "ab6b9b1d71dcfec981b828ca8b9d280b6cf90fb42d788542331933d444aed8cf")
    }

    /// A megabyte in one call: the bulk path (SHA extensions where the CPU has them), against hashlib.
    @Test func bulkMatchesHashlib() {
        let bytes = (0..<1_000_003).map { i in UInt8(truncatingIfNeeded: (i * i * 7 + i * 3 + 1) >> 3) }
        #expect(SHA256.hex(SHA256.hash(bytes)) == "34c01bd9d18ba207d623514aa6eafff163724ff6ca08662ea112276087c05eef")
    }
}

private extension Array where Element == Int {
    func cycled(until total: Int) -> [Int] {
        var out: [Int] = [], s = 0, k = 0
        while s < total { out.append(self[k % count]); s += self[k % count]; k += 1 }
        return out
    }
}

@Suite struct BLASTests {
    @Test func sgemmMatchesNaive() {
        let m = 7, n = 5, k = 9
        let a = (0..<(m * k)).map { Float(($0 * 7) % 11) - 5 }
        let b = (0..<(n * k)).map { Float(($0 * 3) % 13) - 6 }  // stored [n, k]: use transB
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
            BLAS.sgemm(transB: true, m: m, n: n, k: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: k, c: pc.baseAddress!, ldc: n)
        } } }
        for i in 0..<m { for j in 0..<n {
            var s: Float = 0
            for t in 0..<k { s += a[i * k + t] * b[j * k + t] }
            #expect(c[i * n + j] == s)  // small integers: exact
        } }
    }

    /// The in-place few-row product against a double-precision reference (relative to Σ|a·b| per
    /// output, 1e-5), with ragged shapes (k not a multiple of 16, odd column counts) and past the row
    /// limit (OpenBLAS then); bitwise the same on the AVX2 and the AVX-512 path and for any split of
    /// its columns between threads.
    @Test func inPlaceProductsMatchAReferenceOnEveryPathAndSplit() {
        var g = SplitMix(seed: 7)
        for (m, n, k) in [(1, 5, 9), (3, 7, 33), (4, 4, 16), (5, 130, 577), (8, 200, 1536), (BLAS.inPlaceRowLimit + 1, 20, 40)] {
            let a = (0..<(m * k)).map { _ in g.nextFloat() }, b = (0..<(n * k)).map { _ in g.nextFloat() }
            var c = [Float](repeating: .nan, count: m * n), narrow = c, wide = c, split = c
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
                let (pa, pb) = (pa.baseAddress!, pb.baseAddress!)
                c.withUnsafeMutableBufferPointer { BLAS.sgemmNT(m: m, n: n, k: k, a: pa, lda: k, b: pb, ldb: k, c: $0.baseAddress!, ldc: n) }
                narrow.withUnsafeMutableBufferPointer { mesa_gemm_nt(pa, k, pb, k, $0.baseAddress!, n, m, n, k, 2) }
                if mesa_gemm_nt_uses_avx512() == 1 {
                    wide.withUnsafeMutableBufferPointer { mesa_gemm_nt(pa, k, pb, k, $0.baseAddress!, n, m, n, k, 1) }
                } else {
                    wide = narrow
                }
                split.withUnsafeMutableBufferPointer { BLAS.sgemmInPlace(m: m, n: n, k: k, a: pa, lda: k, b: pb, ldb: k, c: $0.baseAddress!, ldc: n, parts: 3) }
            } }
            for i in 0..<m { for j in 0..<n {
                var s = 0.0, scale = 0.0
                for t in 0..<k { s += Double(a[i * k + t]) * Double(b[j * k + t]); scale += abs(Double(a[i * k + t]) * Double(b[j * k + t])) }
                #expect(abs(Double(c[i * n + j]) - s) <= 1e-5 * scale, "(\(m), \(n), \(k)) [\(i), \(j)]: \(c[i * n + j]) against \(s)")
            } }
            #expect(narrow == wide, "AVX2 and AVX-512 paths differ at (\(m), \(n), \(k))")
            #expect(split == narrow, "a split between threads changed the bits at (\(m), \(n), \(k))")
            if m <= BLAS.inPlaceRowLimit { #expect(c == narrow) }
        }
    }

    /// The input-gradient kernel (∂y · W, W read in place) against a double-precision reference, with
    /// and without accumulating into C, on ragged shapes (columns not a multiple of 16 or 32, rows not
    /// of the tile heights 6 or 12, k across several of its blocks and past the streaming size) and
    /// bit for bit between the AVX2 and AVX-512 paths, column splits, and the OpenBLAS fallback's row count.
    @Test func inPlaceGradientProductsMatchAReferenceOnEveryPathAndSplit() {
        var g = SplitMix(seed: 11)
        for (m, n, k, accumulate) in [(1, 5, 9, false), (3, 7, 33, true), (7, 40, 130, false), (13, 33, 577, true), (25, 130, 200, false),
                                      (12, 48, 90_000, false), (BLAS.inPlaceGradientRowLimit + 1, 20, 40, true)] {
            let a = (0..<(m * k)).map { _ in g.nextFloat() }, b = (0..<(k * n)).map { _ in g.nextFloat() }
            let start = (0..<(m * n)).map { _ in accumulate ? g.nextFloat() : .nan }
            var c = start, narrow = start, wide = start, split = start
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
                let (pa, pb) = (pa.baseAddress!, pb.baseAddress!)
                c.withUnsafeMutableBufferPointer { BLAS.sgemmNN(m: m, n: n, k: k, a: pa, lda: k, b: pb, ldb: n, accumulate: accumulate, c: $0.baseAddress!, ldc: n) }
                narrow.withUnsafeMutableBufferPointer { mesa_gemm_nn(pa, k, pb, n, $0.baseAddress!, n, m, n, k, accumulate ? 1 : 0, 2) }
                if mesa_gemm_nt_uses_avx512() == 1 {
                    wide.withUnsafeMutableBufferPointer { mesa_gemm_nn(pa, k, pb, n, $0.baseAddress!, n, m, n, k, accumulate ? 1 : 0, 1) }
                } else {
                    wide = narrow
                }
                split.withUnsafeMutableBufferPointer {
                    BLAS.sgemmNNInPlace(m: m, n: n, k: k, a: pa, lda: k, b: pb, ldb: n, accumulate: accumulate, c: $0.baseAddress!, ldc: n, parts: 3)
                }
            } }
            for i in 0..<m { for j in 0..<n {
                var s = accumulate ? Double(start[i * n + j]) : 0, scale = abs(s)
                for t in 0..<k { s += Double(a[i * k + t]) * Double(b[t * n + j]); scale += abs(Double(a[i * k + t]) * Double(b[t * n + j])) }
                // Each output is one fused chain of k terms: its rounding error grows with k (1e-5 of Σ|ab| up to a few hundred terms).
                let tolerance = max(1e-5, 2e-7 * Double(k).squareRoot()) * scale
                #expect(abs(Double(c[i * n + j]) - s) <= tolerance, "(\(m), \(n), \(k)) [\(i), \(j)]: \(c[i * n + j]) against \(s)")
            } }
            #expect(narrow == wide, "AVX2 and AVX-512 paths differ at (\(m), \(n), \(k))")
            #expect(split == narrow, "a split between threads changed the bits at (\(m), \(n), \(k))")
            if m <= BLAS.inPlaceGradientRowLimit { #expect(c == narrow) }
        }
    }

    /// An AVX-512 CPU running AVX2 kernels is called out; the fitting kernels and an AVX2 CPU are not.
    @Test func slowKernelsOnAnAVX512CPUAreCalledOut() {
        let core = BLAS.configuration.coreName
        let avx512 = CPUInfo(model: "test CPU", hasAVX512: true), avx2 = CPUInfo(model: "test CPU", hasAVX512: false)
        #expect(BLAS.kernelWarning(cpu: avx2) == nil)
        let warning = BLAS.kernelWarning(cpu: avx512)
        #expect((warning == nil) == ["SkylakeX", "Cooperlake", "SapphireRapids"].contains(core))
        if let warning { #expect(warning.contains(core) && warning.contains("test CPU")) }
    }

    /// Auto selection corrects OpenBLAS's fallback on CPUs it does not recognise: Prescott on an
    /// AVX-512 CPU becomes Cooperlake (with BF16) or SkylakeX, on an AVX2 CPU Haswell; a fitting family stays.
    @Test func autoSelectionNamesTheFamilyTheFlagsSupport() {
        let sapphire = CPUInfo(model: "Intel(R) Xeon(R) Processor", hasAVX512: true,
                               flags: ["avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "amx_tile"])
        let skylake = CPUInfo(model: "test", hasAVX512: true), avx2 = CPUInfo(model: "test", hasAVX512: false)
        let partial = CPUInfo(model: "test", hasAVX512: true, flags: ["avx2", "fma", "avx512f"])
        #expect(BLAS.preferredCore(cpu: sapphire, detected: "Prescott") == "Cooperlake")
        #expect(BLAS.preferredCore(cpu: sapphire, detected: "Haswell") == "Cooperlake")
        #expect(BLAS.preferredCore(cpu: sapphire, detected: "SapphireRapids") == nil)
        #expect(BLAS.preferredCore(cpu: skylake, detected: "Prescott") == "SkylakeX")
        #expect(BLAS.preferredCore(cpu: skylake, detected: "SkylakeX") == nil)
        #expect(BLAS.preferredCore(cpu: avx2, detected: "Prescott") == "Haswell")
        #expect(BLAS.preferredCore(cpu: avx2, detected: "Zen") == nil)
        #expect(BLAS.preferredCore(cpu: partial, detected: "Prescott") == "Haswell")
        #expect(BLAS.preferredCore(cpu: CPUInfo(model: "old", hasAVX512: false, flags: ["sse3"]), detected: "Prescott") == nil)
    }

    @Test func configurationIsReported() {
        BLAS.setThreads(1)
        let c = BLAS.configuration
        #expect(c.threads == 1)
        #expect(!c.coreName.isEmpty)
        #expect(c.build.contains("OpenBLAS"))
        BLAS.setThreads(0)
    }
}

@Suite struct LAPACKTests {
    @Test func solveGeneralSystem() throws {
        // A = [[4, 1, 2], [1, 3, 0], [2, 0, 5]] (row-major), X known, B = A·X.
        let a: [Double] = [4, 1, 2, 1, 3, 0, 2, 0, 5]
        let x: [Double] = [1, -2, 0.5, 3, 2, -1]  // [3, 2]
        var b = [Double](repeating: 0, count: 6)
        for i in 0..<3 { for j in 0..<2 { for t in 0..<3 { b[i * 2 + j] += a[i * 3 + t] * x[t * 2 + j] } } }
        let got = try LAPACK.solve(a, b, n: 3, nrhs: 2)
        for i in 0..<6 { #expect(abs(got[i] - x[i]) < 1e-12) }
        let spd = try LAPACK.solveSPD(a, b, n: 3, nrhs: 2)
        for i in 0..<6 { #expect(abs(spd[i] - x[i]) < 1e-12) }
    }

    @Test func singularAndNonFiniteAreTypedErrors() {
        #expect { try LAPACK.solve([1, 2, 2, 4], [1, 1], n: 2, nrhs: 1) } throws: { ($0 as? LinearAlgebraError)?.code == .singular }
        #expect { try LAPACK.solve([1, .nan, 0, 1], [1, 1], n: 2, nrhs: 1) } throws: { ($0 as? LinearAlgebraError)?.code == .nonFinite }
        #expect { try LAPACK.solveSPD([1, 2, 2, 1], [1, 1], n: 2, nrhs: 1) } throws: { ($0 as? LinearAlgebraError)?.code == .notPositiveDefinite }
    }

    @Test func symmetricEigenReconstructs() throws {
        let n = 4
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { a[i * n + j] = 1.0 / Double(i + j + 1) } }  // Hilbert matrix: SPD, ill-conditioned
        let (w, v) = try LAPACK.symmetricEigen(a, n: n)
        #expect(w == w.sorted())
        #expect(w.allSatisfy { $0 > 0 })
        // A = Σ_k w_k v_k v_kᵀ, with v_k the rows of `v`; and the rows are orthonormal.
        for i in 0..<n { for j in 0..<n {
            var s = 0.0, dot = 0.0
            for k in 0..<n { s += w[k] * v[k * n + i] * v[k * n + j]; dot += v[i * n + k] * v[j * n + k] }
            #expect(abs(s - a[i * n + j]) < 1e-12)
            #expect(abs(dot - (i == j ? 1 : 0)) < 1e-12)
        } }
    }
}

@Suite struct KernelTests {
    @Test func rmsNormMatchesDefinition() {
        let d = 37
        let x = (0..<(2 * d)).map { Float(sin(Double($0))) }
        let w = (0..<d).map { 1 + Float($0) / 100 }
        var out = [Float](repeating: 0, count: 2 * d)
        x.withUnsafeBufferPointer { px in w.withUnsafeBufferPointer { pw in out.withUnsafeMutableBufferPointer { po in
            Kernels.rmsNorm(px.baseAddress!, weight: pw.baseAddress!, eps: 1e-5, out: po.baseAddress!, rows: 2, dim: d)
        } } }
        for r in 0..<2 {
            let row = Array(x[(r * d)..<((r + 1) * d)])
            let ms = row.map { Double($0) * Double($0) }.reduce(0, +) / Double(d)
            for i in 0..<d { #expect(abs(Double(out[r * d + i]) - Double(row[i]) / (ms + 1e-5).squareRoot() * Double(w[i])) < 1e-5) }
        }
    }

    @Test func softmaxRespectsValidLength() {
        var x: [Float] = [1, 2, 3, 100, 0, 0, 0, 0]
        x.withUnsafeMutableBufferPointer { Kernels.softmaxRows($0.baseAddress!, rows: 2, cols: 4, valid: { $0 == 0 ? 3 : 1 }) }
        let e = [exp(1.0), exp(2.0), exp(3.0)], s = e.reduce(0, +)
        for i in 0..<3 { #expect(abs(Double(x[i]) - e[i] / s) < 1e-6) }
        #expect(x[3] == 0)
        #expect(x[4] == 1 && x[5] == 0)
    }

    @Test func ropeStylesAgreeUnderPermutation() {
        // Interleaved pairs (2i, 2i+1) and NeoX pairs (i, i+half) rotate the same 2-D planes.
        let hd = 8
        let x = (0..<hd).map { Float($0) - 3.5 }
        var inter = x
        // NeoX layout of the same vector: first halves of each pair, then second halves.
        var neox = (0..<(hd / 2)).map { x[2 * $0] } + (0..<(hd / 2)).map { x[2 * $0 + 1] }
        let r1 = RoPE(style: .interleaved, headDim: hd, base: 10000, maxPositions: 16)
        let r2 = RoPE(style: .neox, headDim: hd, base: 10000, maxPositions: 16)
        inter.withUnsafeMutableBufferPointer { r1.apply($0.baseAddress!, heads: 1, position: 5) }
        neox.withUnsafeMutableBufferPointer { r2.apply($0.baseAddress!, heads: 1, position: 5) }
        for i in 0..<(hd / 2) {
            #expect(abs(inter[2 * i] - neox[i]) < 1e-6)
            #expect(abs(inter[2 * i + 1] - neox[i + hd / 2]) < 1e-6)
        }
        // Position 0 is the identity; norms are preserved.
        var y = x
        y.withUnsafeMutableBufferPointer { r1.apply($0.baseAddress!, heads: 1, position: 0) }
        #expect(y == x)
        #expect(abs(Vector.norm(inter) - Vector.norm(x)) < 1e-5)
    }

    @Test func activations() {
        var g: [Float] = [-2, 0, 1.5]
        let up: [Float] = [1, 2, 3]
        var out = [Float](repeating: 0, count: 3)
        g.withUnsafeBufferPointer { pg in up.withUnsafeBufferPointer { pu in out.withUnsafeMutableBufferPointer { po in
            Kernels.siluGate(gate: pg.baseAddress!, up: pu.baseAddress!, out: po.baseAddress!, count: 3)
        } } }
        for i in 0..<3 { #expect(abs(out[i] - g[i] / (1 + exp(-g[i])) * up[i]) < 1e-6) }
        g.withUnsafeMutableBufferPointer { Kernels.geluTanh($0.baseAddress!, count: 3) }
        // PyTorch gelu(approximate="tanh") at -2, 0, 1.5.
        #expect(abs(g[0] - (-0.04540231)) < 1e-6)
        #expect(g[1] == 0)
        #expect(abs(g[2] - 1.39957158) < 1e-6)
    }
}

@Suite struct VectorExpTests {
    @Test func matchesLibmWithinTwoUlpAndHandlesRange() {
        var worst: Float = 0
        var x: Float = -87
        while x < 87.9 {
            worst = max(worst, abs(Kernels.exp(x) - expf(x)) / expf(x))
            x += 0.0173
        }
        #expect(worst < 3e-7, "max relative error \(worst)")
        #expect(Kernels.exp(-1000) == 0 && Kernels.exp(-88) == 0 && Kernels.exp(-.infinity) == 0)
        #expect(Kernels.exp(0) == 1)
        #expect(abs(Kernels.exp(1) - Float(M_E)) < 1e-6)
        #expect(Kernels.exp(100).isFinite)
    }
}

/// A small deterministic generator for test data: floats in [-1, 1).
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}

@Suite struct LowRankUpdateNormTests {
    /// The factored Frobenius norm equals the dense product's, to 1e-9 relative (Double sums of Floats).
    @Test func frobeniusNormEqualsTheDenseProducts() {
        var seed: UInt64 = 7
        func next() -> Float {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: seed >> 11) % 2001 - 1000) / 1000
        }
        for (rows, cols, rank) in [(5, 7, 1), (9, 4, 3), (6, 6, 6)] {
            let u = LowRankUpdate(parameter: "w", layer: 0, rows: rows, cols: cols, rank: rank,
                                  left: (0..<rows * rank).map { _ in next() }, right: (0..<rank * cols).map { _ in next() })
            var dense = 0.0
            for r in 0..<rows {
                for c in 0..<cols {
                    var v = 0.0
                    for i in 0..<rank { v += Double(u.left[r * rank + i]) * Double(u.right[i * cols + c]) }
                    dense += v * v
                }
            }
            #expect(abs(u.frobeniusNorm / dense.squareRoot() - 1) < 1e-9, "\(rows)×\(cols) rank \(rank)")
        }
        #expect(LowRankUpdate(parameter: "w", layer: 0, rows: 2, cols: 2, rank: 1, left: [0, 0], right: [1, 2]).frobeniusNorm == 0)
    }
}
