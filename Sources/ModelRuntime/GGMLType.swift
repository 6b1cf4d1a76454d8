/// ggml tensor element types (the numeric values are the file format's).
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, bf16 = 30

    public var name: String {
        switch self {
        case .f32: "F32"; case .f16: "F16"; case .bf16: "BF16"; case .f64: "F64"
        case .q4_0: "Q4_0"; case .q4_1: "Q4_1"; case .q5_0: "Q5_0"; case .q5_1: "Q5_1"; case .q8_0: "Q8_0"; case .q8_1: "Q8_1"
        case .q2_K: "Q2_K"; case .q3_K: "Q3_K"; case .q4_K: "Q4_K"; case .q5_K: "Q5_K"; case .q6_K: "Q6_K"; case .q8_K: "Q8_K"
        case .i8: "I8"; case .i16: "I16"; case .i32: "I32"; case .i64: "I64"
        }
    }

    /// (elements per block, bytes per block).
    public var blockLayout: (elements: Int, bytes: Int) {
        switch self {
        case .f32: (1, 4); case .f16, .bf16: (1, 2); case .f64: (1, 8)
        case .i8: (1, 1); case .i16: (1, 2); case .i32: (1, 4); case .i64: (1, 8)
        case .q4_0: (32, 18); case .q4_1: (32, 20); case .q5_0: (32, 22); case .q5_1: (32, 24)
        case .q8_0: (32, 34); case .q8_1: (32, 36)
        case .q2_K: (256, 84); case .q3_K: (256, 110); case .q4_K: (256, 144); case .q5_K: (256, 176)
        case .q6_K: (256, 210); case .q8_K: (256, 292)
        }
    }

    /// Types mesa dequantizes to Float32.
    public var isSupported: Bool {
        switch self {
        case .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K: true
        default: false
        }
    }

    /// Bytes needed for `count` elements, or nil if `count` is not a whole number of blocks.
    public func byteCount(elements count: Int) -> Int? {
        let (e, b) = blockLayout
        guard count % e == 0 else { return nil }
        let (r, o) = (count / e).multipliedReportingOverflow(by: b)
        return o ? nil : r
    }
}

/// Dequantization of ggml blocks to Float32, following ggml's reference (`dequantize_row_*`).
public enum Dequantize {
    @inline(__always) public static func half(_ bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exp = UInt32(bits >> 10) & 0x1f
        let man = UInt32(bits & 0x3ff)
        if exp == 0 {
            if man == 0 { return Float(bitPattern: sign) }
            // Subnormal half: value = man · 2^-24.
            let v = Float(man) * (1.0 / 16_777_216.0)
            return sign != 0 ? -v : v
        }
        if exp == 31 { return Float(bitPattern: sign | 0x7f80_0000 | (man << 13)) }
        return Float(bitPattern: sign | ((exp + 112) << 23) | (man << 13))
    }

    @inline(__always) public static func bfloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Float → IEEE half bits, round to nearest even (for writing F16 files).
    public static func halfBits(_ f: Float) -> UInt16 {
        let x = f.bitPattern
        let sign = UInt16((x >> 16) & 0x8000)
        let exp = Int((x >> 23) & 0xff) - 127 + 15
        var man = x & 0x7f_ffff
        if (x & 0x7fff_ffff) > 0x7f80_0000 { return sign | 0x7e00 }
        if exp >= 31 { return sign | 0x7c00 }
        if exp <= 0 {
            if exp < -10 { return sign }
            man |= 0x80_0000
            let shift = UInt32(14 - exp)
            var h = man >> shift
            let rem = man & ((1 << shift) - 1), halfway = UInt32(1) << (shift - 1)
            if rem > halfway || (rem == halfway && (h & 1) == 1) { h += 1 }
            return sign | UInt16(h)
        }
        var h = UInt32(exp) << 10 | (man >> 13)
        let rem = man & 0x1fff
        if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) { h += 1 }
        return sign | UInt16(h)
    }

    /// Dequantizes `count` elements of `type` from `src` into `dst`. The caller has checked that
    /// `src` holds `type.byteCount(elements: count)` bytes.
    public static func run(_ type: GGMLType, src: UnsafeRawPointer, count: Int, dst: UnsafeMutablePointer<Float>) throws {
        @inline(__always) func u16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 { UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        @inline(__always) func u8(_ p: UnsafeRawPointer, _ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
        let (qk, bs) = type.blockLayout
        let blocks = count / qk
        switch type {
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .f16:
            for i in 0..<count { dst[i] = half(u16(src, 2 * i)) }
        case .bf16:
            for i in 0..<count { dst[i] = bfloat(u16(src, 2 * i)) }
        case .q8_0:
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 0))
                for j in 0..<32 { y[j] = Float(Int8(bitPattern: u8(p, 2 + j))) * d }
            }
        case .q4_0:
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 0))
                for j in 0..<16 {
                    let q = u8(p, 2 + j)
                    y[j] = Float(Int(q & 0x0f) - 8) * d
                    y[j + 16] = Float(Int(q >> 4) - 8) * d
                }
            }
        case .q4_1:
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 0)), m = half(u16(p, 2))
                for j in 0..<16 {
                    let q = u8(p, 4 + j)
                    y[j] = Float(q & 0x0f) * d + m
                    y[j + 16] = Float(q >> 4) * d + m
                }
            }
        case .q4_K:
            // block_q4_K: d f16, dmin f16, scales[12] (6-bit packed scales and mins), qs[128].
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 0)), dmin = half(u16(p, 2))
                let scales = p + 4, qs = p + 16
                for g in 0..<4 {
                    let (sc1, m1) = scaleMinK4(2 * g, scales), (sc2, m2) = scaleMinK4(2 * g + 1, scales)
                    let d1 = d * Float(sc1), mm1 = dmin * Float(m1), d2 = d * Float(sc2), mm2 = dmin * Float(m2)
                    let q = qs + 32 * g, out = y + 64 * g
                    for l in 0..<32 {
                        let v = q.load(fromByteOffset: l, as: UInt8.self)
                        out[l] = d1 * Float(v & 0x0f) - mm1
                        out[l + 32] = d2 * Float(v >> 4) - mm2
                    }
                }
            }
        case .q5_K:
            // block_q5_K: d f16, dmin f16, scales[12], qh[32], qs[128].
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 0)), dmin = half(u16(p, 2))
                let scales = p + 4, qh = p + 16, qs = p + 48
                for g in 0..<4 {
                    let (sc1, m1) = scaleMinK4(2 * g, scales), (sc2, m2) = scaleMinK4(2 * g + 1, scales)
                    let d1 = d * Float(sc1), mm1 = dmin * Float(m1), d2 = d * Float(sc2), mm2 = dmin * Float(m2)
                    let u1 = UInt8(1) << (2 * g), u2 = UInt8(2) << (2 * g)
                    let q = qs + 32 * g, out = y + 64 * g
                    for l in 0..<32 {
                        let v = q.load(fromByteOffset: l, as: UInt8.self), h = qh.load(fromByteOffset: l, as: UInt8.self)
                        out[l] = d1 * Float(Int(v & 0x0f) + (h & u1 != 0 ? 16 : 0)) - mm1
                        out[l + 32] = d2 * Float(Int(v >> 4) + (h & u2 != 0 ? 16 : 0)) - mm2
                    }
                }
            }
        case .q6_K:
            // block_q6_K: ql[128], qh[64], scales[16] (int8), d f16.
            for b in 0..<blocks {
                let p = src + b * bs, y = dst + b * qk
                let d = half(u16(p, 208))
                for half128 in 0..<2 {
                    let ql = p + 64 * half128, qh = p + 128 + 32 * half128, sc = p + 192 + 8 * half128
                    let out = y + 128 * half128
                    for l in 0..<32 {
                        let isc = l / 16
                        let a = ql.load(fromByteOffset: l, as: UInt8.self), a2 = ql.load(fromByteOffset: l + 32, as: UInt8.self)
                        let h = qh.load(fromByteOffset: l, as: UInt8.self)
                        let q1 = Int((a & 0x0f) | ((h >> 0) & 3) << 4) - 32
                        let q2 = Int((a2 & 0x0f) | ((h >> 2) & 3) << 4) - 32
                        let q3 = Int((a >> 4) | ((h >> 4) & 3) << 4) - 32
                        let q4 = Int((a2 >> 4) | ((h >> 6) & 3) << 4) - 32
                        func s(_ k: Int) -> Float { Float(Int8(bitPattern: sc.load(fromByteOffset: k, as: UInt8.self))) }
                        out[l] = d * s(isc) * Float(q1)
                        out[l + 32] = d * s(isc + 2) * Float(q2)
                        out[l + 64] = d * s(isc + 4) * Float(q3)
                        out[l + 96] = d * s(isc + 6) * Float(q4)
                    }
                }
            }
        default:
            throw ModelError(.unsupportedTensorType, "tensor type \(type.name) is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)")
        }
    }

    /// ggml's get_scale_min_k4: the j-th 6-bit (scale, min) pair of a K-quant block.
    @inline(__always) static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (UInt8, UInt8) {
        @inline(__always) func b(_ i: Int) -> UInt8 { q.load(fromByteOffset: i, as: UInt8.self) }
        if j < 4 { return (b(j) & 63, b(j + 4) & 63) }
        return ((b(j + 4) & 0x0f) | ((b(j - 4) >> 6) << 4), (b(j + 4) >> 4) | ((b(j) >> 6) << 4))
    }
}
