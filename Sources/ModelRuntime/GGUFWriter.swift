import Foundation

/// Writes GGUF v3 files with F32 or F16 tensors (tiny test models, saved edited models).
public struct GGUFWriter {
    public enum StoredType: Sendable { case f32, f16 }
    private var metadata: [(String, GGUFValue)] = []
    private var tensors: [(name: String, shape: [Int], data: [Float], type: StoredType)] = []
    public var alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }

    /// Adds a tensor with a row-major `shape` (outermost first), stored as `type`.
    public mutating func add(_ name: String, shape: [Int], data: [Float], type: StoredType = .f32) {
        precondition(shape.reduce(1, *) == data.count)
        tensors.append((name, shape, data, type))
    }

    /// A tensor with an arbitrary ggml type and raw bytes (for tests of unsupported types).
    public mutating func addRaw(_ name: String, shape: [Int], rawType: UInt32, bytes: [UInt8]) {
        rawTensors.append((name, shape, rawType, bytes))
    }
    private var rawTensors: [(name: String, shape: [Int], type: UInt32, bytes: [UInt8])] = []

    public func serialize() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        func typeCode(_ v: GGUFValue) -> UInt32 {
            switch v { case .uint: 10; case .int: 11; case .float: 12; case .bool: 7; case .string: 8; case .array: 9 }
        }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint(let x): u64(x)
            case .int(let x): u64(UInt64(bitPattern: x))
            case .float(let x): u64(x.bitPattern)
            case .bool(let b): out.append(b ? 1 : 0)
            case .string(let s): str(s)
            case .array(let a):
                u32(a.first.map(typeCode) ?? 8)
                u64(UInt64(a.count))
                a.forEach(value)
            }
        }
        u32(0x4655_4747); u32(3)
        u64(UInt64(tensors.count + rawTensors.count)); u64(UInt64(metadata.count))
        for (k, v) in metadata { str(k); u32(typeCode(v)); value(v) }
        var blobs: [[UInt8]] = []
        var offset = 0
        func info(_ name: String, _ shape: [Int], _ type: UInt32, _ bytes: [UInt8]) {
            str(name)
            u32(UInt32(shape.count))
            for d in shape.reversed() { u64(UInt64(d)) }
            u32(type)
            u64(UInt64(offset))
            blobs.append(bytes)
            offset += bytes.count
            let pad = (alignment - offset % alignment) % alignment
            if pad > 0 { blobs.append([UInt8](repeating: 0, count: pad)); offset += pad }
        }
        for t in tensors {
            switch t.type {
            case .f32: info(t.name, t.shape, GGMLType.f32.rawValue, t.data.withUnsafeBytes { Array($0) })
            case .f16:
                var b: [UInt8] = []
                b.reserveCapacity(t.data.count * 2)
                for f in t.data { withUnsafeBytes(of: Dequantize.halfBits(f).littleEndian) { b += $0 } }
                info(t.name, t.shape, GGMLType.f16.rawValue, b)
            }
        }
        for t in rawTensors { info(t.name, t.shape, t.type, t.bytes) }
        let pad = (alignment - out.count % alignment) % alignment
        out += [UInt8](repeating: 0, count: pad)
        for b in blobs { out += b }
        return out
    }

    public func write(to path: String) throws {
        try Data(serialize()).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
