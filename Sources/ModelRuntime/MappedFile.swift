#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A read-only memory map of a whole file. The mapping lives as long as the object.
public final class MappedFile: @unchecked Sendable {  // immutable after init: a read-only (PROT_READ) mapping that lives as long as the object
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            let e = errno
            throw ModelError(e == ENOENT ? .fileNotFound : .ioError, "cannot open model file: \(String(cString: strerror(e)))", path: path,
                             cause: POSIXError(POSIXErrorCode(rawValue: e) ?? .EIO))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ModelError(.ioError, "cannot stat model file", path: path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ModelError(.ioError, "not a regular file", path: path) }
        let size = Int(st.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ModelError(.ioError, "cannot map model file: \(String(cString: strerror(errno)))", path: path)
        }
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

/// A bounds-checked little-endian reader over a byte buffer.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    var offset: Int
    let path: String

    init(_ bytes: UnsafeRawBufferPointer, path: String, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
        self.path = path
    }

    mutating func need(_ n: Int, _ what: String) throws {
        guard n >= 0, offset <= bytes.count - n else {
            throw ModelError(.truncated, "file ends while reading \(what) at byte \(offset) (needs \(n), file has \(bytes.count))", path: path)
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func readFloat(_ what: String) throws -> Float { Float(bitPattern: try read(UInt32.self, what)) }
    mutating func readDouble(_ what: String) throws -> Double { Double(bitPattern: try read(UInt64.self, what)) }

    mutating func readString(_ what: String, maxLength: Int = 1 << 24) throws -> String {
        let n = try read(UInt64.self, "\(what) length")
        guard n <= UInt64(maxLength) else { throw ModelError(.malformed, "\(what) length \(n) is implausible", path: path) }
        try need(Int(n), what)
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + Int(n))]), as: UTF8.self)
        offset += Int(n)
        return s
    }
}
