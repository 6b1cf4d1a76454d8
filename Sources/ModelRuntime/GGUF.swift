/// A GGUF metadata value.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint(UInt64), int(Int64), float(Double), bool(Bool), string(String), array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint(let v): v <= UInt64(Int.max) ? Int(v) : nil
        case .int(let v): Int(v)
        case .float(let v): v == v.rounded() ? Int(exactly: v) : nil
        default: nil
        }
    }
    public var double: Double? {
        switch self { case .float(let v): v; case .uint(let v): Double(v); case .int(let v): Double(v); default: nil }
    }
    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { a } else { nil } }
}

/// A tensor's entry in a GGUF file. `dims` are ggml's ne[]: innermost (contiguous) first.
public struct GGUFTensorInfo: Sendable {
    public var name: String
    public var dims: [Int]
    public var type: GGMLType
    /// Absolute byte offset of the data in the file.
    public var offset: Int
    public var elementCount: Int { dims.reduce(1, *) }
    /// Row-major shape, outermost first (the reverse of `dims`).
    public var shape: [Int] { dims.reversed() }
}

/// A parsed GGUF (v2/v3) file: metadata and tensor directory over a memory map.
public final class GGUFFile: Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let tensorIndex: [String: Int]
    let file: MappedFile

    public static let maxTensors = 1 << 20
    public static let maxMetadata = 1 << 20

    public init(path: String) throws {
        file = try MappedFile(path: path)
        self.path = path
        var c = ByteCursor(file.bytes, path: path)
        guard file.bytes.count >= 4 else { throw ModelError(.truncated, "file is too short to be GGUF (\(file.bytes.count) bytes)", path: path) }
        let magic = try c.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw ModelError(.badMagic, "not a GGUF file: magic is 0x\(String(magic, radix: 16)), expected 'GGUF'", path: path)
        }
        version = try c.read(UInt32.self, "version")
        guard version == 2 || version == 3 else {
            throw ModelError(.unsupportedVersion, "GGUF version \(version) is not supported (2 and 3 are)", path: path)
        }
        let nTensors = try c.read(UInt64.self, "tensor count")
        let nKV = try c.read(UInt64.self, "metadata count")
        guard nTensors <= UInt64(Self.maxTensors), nKV <= UInt64(Self.maxMetadata) else {
            throw ModelError(.malformed, "implausible counts: \(nTensors) tensors, \(nKV) metadata entries", path: path)
        }
        var meta: [String: GGUFValue] = [:]
        var keys: [String] = []
        for _ in 0..<Int(nKV) {
            let key = try c.readString("metadata key")
            let type = try c.read(UInt32.self, "metadata type of \(key)")
            meta[key] = try Self.readValue(&c, type: type, key: key, depth: 0)
            keys.append(key)
        }
        metadata = meta
        metadataKeys = keys

        var infos: [GGUFTensorInfo] = []
        var relOffsets: [UInt64] = []
        for i in 0..<Int(nTensors) {
            let name = try c.readString("tensor \(i) name")
            let nd = try c.read(UInt32.self, "dimension count of \(name)")
            guard nd >= 1 && nd <= 4 else { throw ModelError(.malformed, "tensor \(name) has \(nd) dimensions", path: path) }
            var dims: [Int] = []
            var count = 1
            for _ in 0..<nd {
                let d = try c.read(UInt64.self, "dimensions of \(name)")
                guard d > 0, d < (1 << 40) else { throw ModelError(.malformed, "tensor \(name) has dimension \(d)", path: path) }
                dims.append(Int(d))
                let (r, o) = count.multipliedReportingOverflow(by: Int(d))
                guard !o, r < (1 << 40) else { throw ModelError(.malformed, "tensor \(name) is implausibly large", path: path) }
                count = r
            }
            let rawType = try c.read(UInt32.self, "type of \(name)")
            guard let type = GGMLType(rawValue: rawType) else {
                throw ModelError(.unsupportedTensorType, "tensor \(name) has unknown ggml type \(rawType)", path: path)
            }
            let off = try c.read(UInt64.self, "offset of \(name)")
            infos.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: 0))
            relOffsets.append(off)
        }
        let alignment = meta["general.alignment"]?.int ?? 32
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw ModelError(.malformed, "general.alignment \(alignment) is not a power of two", path: path)
        }
        let dataStart = (c.offset + alignment - 1) / alignment * alignment
        var index: [String: Int] = [:]
        for i in 0..<infos.count {
            guard relOffsets[i] < UInt64(Int.max / 2) else { throw ModelError(.malformed, "tensor \(infos[i].name) offset overflows", path: path) }
            infos[i].offset = dataStart + Int(relOffsets[i])
            guard let bytes = infos[i].type.byteCount(elements: infos[i].elementCount) else {
                throw ModelError(.malformed, "tensor \(infos[i].name): \(infos[i].elementCount) elements is not a whole number of \(infos[i].type.name) blocks", path: path)
            }
            guard infos[i].offset <= file.bytes.count - bytes else {
                throw ModelError(.truncated, "tensor \(infos[i].name) (\(bytes) bytes at \(infos[i].offset)) extends past the end of the file (\(file.bytes.count) bytes)", path: path)
            }
            index[infos[i].name] = i
        }
        tensors = infos
        tensorIndex = index
    }

    private static func readValue(_ c: inout ByteCursor, type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint(UInt64(try c.read(UInt8.self, key)))
        case 1: return .int(Int64(try c.read(Int8.self, key)))
        case 2: return .uint(UInt64(try c.read(UInt16.self, key)))
        case 3: return .int(Int64(try c.read(Int16.self, key)))
        case 4: return .uint(UInt64(try c.read(UInt32.self, key)))
        case 5: return .int(Int64(try c.read(Int32.self, key)))
        case 6: return .float(Double(try c.readFloat(key)))
        case 7: return .bool(try c.read(UInt8.self, key) != 0)
        case 8: return .string(try c.readString(key))
        case 9:
            guard depth == 0 else { throw ModelError(.malformed, "nested arrays in metadata \(key)", path: c.path) }
            let et = try c.read(UInt32.self, "\(key) element type")
            let n = try c.read(UInt64.self, "\(key) element count")
            guard n <= UInt64(c.bytes.count - c.offset) else { throw ModelError(.truncated, "metadata array \(key) claims \(n) elements", path: c.path) }
            var out: [GGUFValue] = []
            out.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { out.append(try readValue(&c, type: et, key: key, depth: depth + 1)) }
            return .array(out)
        case 10: return .uint(try c.read(UInt64.self, key))
        case 11: return .int(try c.read(Int64.self, key))
        case 12: return .float(try c.readDouble(key))
        default: throw ModelError(.malformed, "metadata \(key) has unknown value type \(type)", path: c.path)
        }
    }

    public func info(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// Dequantizes a tensor to Float32 (row-major, shape = `info.shape`).
    public func floats(_ name: String) throws -> [Float] {
        guard let info = info(name) else { throw ModelError(.missingTensor, "tensor \(name) is missing", path: path) }
        return try floats(info)
    }

    public func floats(_ info: GGUFTensorInfo) throws -> [Float] {
        guard info.type.isSupported else {
            throw ModelError(.unsupportedTensorType, "tensor \(info.name) has type \(info.type.name), which mesa does not support (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)", path: path)
        }
        let n = info.elementCount
        var out = [Float](repeating: 0, count: n)
        try out.withUnsafeMutableBufferPointer { dst in
            try Dequantize.run(info.type, src: file.bytes.baseAddress! + info.offset, count: n, dst: dst.baseAddress!)
        }
        return out
    }

    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func double(_ key: String) -> Double? { metadata[key]?.double }
}

extension GGUFFile {
    /// The stored bytes of a tensor, in its own encoding.
    public func rawBytes(_ info: GGUFTensorInfo) throws -> [UInt8] {
        guard let n = info.type.byteCount(elements: info.elementCount), info.offset >= 0, info.offset + n <= file.bytes.count else {
            throw ModelError(.truncated, "tensor \(info.name) lies outside the file", path: path)
        }
        return Array(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(file.bytes)[info.offset..<(info.offset + n)]))
    }
}
