import Foundation

/// A parsed safetensors file over a memory map. Supported dtypes: F32, F16, BF16.
public final class SafetensorsFile: Sendable {
    public struct Entry: Sendable {
        public var name: String
        public var dtype: String
        /// Row-major shape as stored.
        public var shape: [Int]
        /// Absolute byte range in the file.
        public var range: Range<Int>
    }

    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    let file: MappedFile

    public static let maxHeader = 100 << 20

    public init(path: String) throws {
        file = try MappedFile(path: path)
        self.path = path
        var c = ByteCursor(file.bytes, path: path)
        let n = try c.read(UInt64.self, "safetensors header length")
        guard n >= 2, n <= UInt64(Self.maxHeader) else { throw ModelError(.badMagic, "not a safetensors file: header length \(n)", path: path) }
        try c.need(Int(n), "safetensors header")
        let headerBytes = Data(UnsafeRawBufferPointer(rebasing: file.bytes[8..<(8 + Int(n))]))
        guard let header = try? JSONSerialization.jsonObject(with: headerBytes) as? [String: Any] else {
            throw ModelError(.badMagic, "not a safetensors file: header is not a JSON object", path: path)
        }
        let base = 8 + Int(n)
        var entries: [String: Entry] = [:]
        var meta: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { meta[k] = v as? String ?? "\(v)" }
                continue
            }
            guard let d = value as? [String: Any], let dtype = d["dtype"] as? String,
                  let shape = (d["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  let offs = (d["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }), offs.count == 2 else {
                throw ModelError(.malformed, "tensor \(name): malformed header entry", path: path)
            }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw ModelError(.malformed, "tensor \(name): negative dimension", path: path) }
            // Integer tensors (e.g. a saved `k`) are indexed; only `floats` refuses them.
            let width: Int
            switch dtype {
            case "F32", "I32": width = 4
            case "F16", "BF16": width = 2
            case "I64": width = 8
            default: throw ModelError(.unsupportedTensorType, "tensor \(name) has dtype \(dtype), which mesa does not support (F32, F16, BF16, I32, I64)", path: path)
            }
            let count = shape.reduce(1, *)
            guard offs[0] >= 0, offs[1] - offs[0] == count * width else {
                throw ModelError(.malformed, "tensor \(name): data_offsets \(offs) do not match shape \(shape) × \(width) bytes", path: path)
            }
            guard base + offs[1] <= file.bytes.count else {
                throw ModelError(.truncated, "tensor \(name) extends past the end of the file", path: path)
            }
            entries[name] = Entry(name: name, dtype: dtype, shape: shape, range: (base + offs[0])..<(base + offs[1]))
        }
        self.entries = entries
        self.metadata = meta
    }

    /// Converts a tensor to Float32.
    public func floats(_ name: String) throws -> [Float] {
        guard let e = entries[name] else { throw ModelError(.missingTensor, "tensor \(name) is missing", path: path) }
        let count = e.shape.reduce(1, *)
        let src = file.bytes.baseAddress! + e.range.lowerBound
        switch e.dtype {
        case "I32": return (0..<count).map { Float(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        case "I64": return (0..<count).map { Float(Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
        default: break
        }
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { dst in
            switch e.dtype {
            case "F32": try Dequantize.run(.f32, src: src, count: count, dst: dst.baseAddress!)
            case "F16": try Dequantize.run(.f16, src: src, count: count, dst: dst.baseAddress!)
            default: try Dequantize.run(.bf16, src: src, count: count, dst: dst.baseAddress!)
            }
        }
        return out
    }

    /// How `write` stores values: F32, or F16 / BF16 rounded to nearest even.
    public enum StoredType: String, Sendable { case f32 = "F32", f16 = "F16", bf16 = "BF16" }

    /// Writes tensors as a safetensors file (names sorted; 8-byte aligned header), all stored as `dtype`.
    public static func write(_ tensors: [(name: String, shape: [Int], data: [Float])], dtype: StoredType = .f32,
                             metadata: [String: String] = [:], to path: String) throws {
        let width = dtype == .f32 ? 4 : 2
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let sorted = tensors.sorted { $0.name < $1.name }
        for t in sorted {
            header[t.name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.data.count * width]]
            offset += t.data.count * width
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var out = Data()
        var n = UInt64(json.count).littleEndian
        out.append(Data(bytes: &n, count: 8))
        out.append(json)
        for t in sorted {
            switch dtype {
            case .f32: t.data.withUnsafeBytes { out.append(contentsOf: $0) }
            case .f16: for f in t.data { withUnsafeBytes(of: Dequantize.halfBits(f).littleEndian) { out.append(contentsOf: $0) } }
            case .bf16:
                for f in t.data {
                    let b = f.bitPattern
                    let rounded = UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
                    withUnsafeBytes(of: rounded.littleEndian) { out.append(contentsOf: $0) }
                }
            }
        }
        try out.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
