import Foundation
import Tensor

/// Float32 memory owned by one or more parameters (several when projections are fused).
public final class ParameterStorage: @unchecked Sendable {  // the pointer and count are immutable; the memory is written only through `Parameter.mutate`
    public let base: UnsafeMutablePointer<Float>
    public let count: Int
    public init(count: Int) {
        self.count = count
        base = .allocate(capacity: max(1, count))
        base.initialize(repeating: 0, count: max(1, count))
    }
    deinit { base.deallocate() }
}

/// One named weight tensor, resident as Float32 at a stable address (kernels take its pointer
/// directly). It may be a view into storage shared with other tensors: Wq/Wk/Wv and gate/up are
/// laid out contiguously so each pair or triple is one GEMM. Mutable in place (edits write here)
/// through `mutate`, which invalidates the cached digest.
public final class Parameter: @unchecked Sendable {  // `cachedDigest` is guarded by `lock`; values are written only through `mutate`, by the one editing thread, never beside a forward pass
    /// Canonical (GGUF-style) name, e.g. "blk.7.ffn_down.weight".
    public let name: String
    /// Row-major shape; linear weights are [out, in].
    public let shape: [Int]
    public let count: Int
    /// The values. Read-only use; write through `mutate`.
    public let pointer: UnsafeMutablePointer<Float>
    public let storage: ParameterStorage
    private var cachedDigest: [UInt8]?
    private let lock = NSLock()

    public init(name: String, shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "\(name): \(data.count) values for shape \(shape)")
        self.name = name
        self.shape = shape
        self.count = data.count
        storage = ParameterStorage(count: data.count)
        pointer = storage.base
        data.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: data.count) }
    }

    /// A view of `shape.reduce(1, *)` values at `offset` in `storage`.
    public init(name: String, shape: [Int], storage: ParameterStorage, offset: Int) {
        let n = shape.reduce(1, *)
        precondition(offset >= 0 && offset + n <= storage.count, "\(name): view outside its storage")
        self.name = name
        self.shape = shape
        self.count = n
        self.storage = storage
        pointer = storage.base + offset
    }

    /// Copies these parameters into one contiguous storage, in order, and returns views of it.
    public static func fused(_ parts: [Parameter]) -> [Parameter] {
        let storage = ParameterStorage(count: parts.reduce(0) { $0 + $1.count })
        var offset = 0
        return parts.map { p in
            (storage.base + offset).update(from: p.pointer, count: p.count)
            defer { offset += p.count }
            return Parameter(name: p.name, shape: p.shape, storage: storage, offset: offset)
        }
    }

    /// True when `next` starts right after this parameter in the same storage.
    public func isFollowed(by next: Parameter) -> Bool { storage === next.storage && pointer + count == next.pointer }

    /// A copy of the values.
    public var data: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// Mutates the values; the digest is recomputed on next use.
    public func mutate<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        lock.lock(); defer { lock.unlock() }
        cachedDigest = nil
        return try body(UnsafeMutableBufferPointer(start: pointer, count: count))
    }

    /// SHA-256 of the Float32 little-endian bytes.
    public var digest: [UInt8] {
        lock.lock(); defer { lock.unlock() }
        if let d = cachedDigest { return d }
        var h = SHA256()
        h.update(UnsafeRawBufferPointer(start: pointer, count: count * 4))
        let d = h.finalize()
        cachedDigest = d
        return d
    }
}

/// Weights of one decoder layer. Linear weights are [out, in] row-major.
public struct LayerWeights: Sendable {
    public var attnNorm: Parameter                 // [d]
    public var attnNormBias: Parameter?            // [d] (LayerNorm)
    public var wq: Parameter                       // [heads·headDim, d]
    public var wk: Parameter                       // [kvHeads·headDim, d]
    public var wv: Parameter                       // [kvHeads·headDim, d]
    public var bq: Parameter?, bk: Parameter?, bv: Parameter?
    public var wo: Parameter                       // [d, heads·headDim]
    public var bo: Parameter?                      // [d]
    public var mlpNorm: Parameter                  // [d]
    public var mlpNormBias: Parameter?             // [d]
    public var wGate: Parameter?                   // [ff, d] (gated MLPs)
    public var wUp: Parameter                      // [ff, d]
    public var bUp: Parameter?                     // [ff]
    public var wDown: Parameter                    // [d, ff]
    public var bDown: Parameter?                   // [d]

    /// Lays Wq|Wk|Wv (and their biases) and Wgate|Wup out contiguously, so each group is one GEMM.
    public mutating func fuseProjections() {
        let qkv = Parameter.fused([wq, wk, wv])
        (wq, wk, wv) = (qkv[0], qkv[1], qkv[2])
        if let bq, let bk, let bv {
            let b = Parameter.fused([bq, bk, bv])
            (self.bq, self.bk, self.bv) = (b[0], b[1], b[2])
        }
        if let wGate {
            let gu = Parameter.fused([wGate, wUp])
            (self.wGate, wUp) = (gu[0], gu[1])
        }
    }

    /// Wq, Wk, Wv are one [q + 2·kv, d] matrix.
    public var qkvFused: Bool { wq.isFollowed(by: wk) && wk.isFollowed(by: wv) }
    /// Their biases are one [q + 2·kv] vector.
    public var qkvBiasFused: Bool { bq != nil && bk != nil && bv != nil && bq!.isFollowed(by: bk!) && bk!.isFollowed(by: bv!) }
    /// Wgate, Wup are one [2·ff, d] matrix.
    public var gateUpFused: Bool { wGate.map { $0.isFollowed(by: wUp) } ?? false }

    public var all: [Parameter] {
        [attnNorm, attnNormBias, wq, wk, wv, bq, bk, bv, wo, bo, mlpNorm, mlpNormBias, wGate, wUp, bUp, wDown, bDown].compactMap { $0 }
    }
}

/// All weights of a model.
public struct ModelWeights: Sendable {
    public var tokenEmbedding: Parameter           // [vocab, d]
    public var positionEmbedding: Parameter?       // [context, d] (GPT-2)
    public var layers: [LayerWeights]
    public var outputNorm: Parameter               // [d]
    public var outputNormBias: Parameter?          // [d]
    /// [vocab, d]; the same object as `tokenEmbedding` when embeddings are tied.
    public var output: Parameter

    /// Every distinct parameter, in a stable order (sorted by name).
    public var all: [Parameter] {
        var list = [tokenEmbedding, outputNorm] + [positionEmbedding, outputNormBias].compactMap { $0 }
        if output !== tokenEmbedding { list.append(output) }
        for l in layers { list += l.all }
        return list.sorted { $0.name < $1.name }
    }

    /// The weight hash: SHA-256 over (name, shape, SHA-256 of the Float32 data) of every tensor in
    /// name order. A per-tensor digest means an edit rehashes only the tensors it touched.
    public var hash: String {
        let params = all
        // Digest the tensors in parallel; each caches its own.
        DispatchQueue.concurrentPerform(iterations: params.count) { _ = params[$0].digest }
        var h = SHA256()
        for p in params {
            h.update(Array(p.name.utf8) + [0])
            for d in p.shape { h.update(withUnsafeBytes(of: UInt64(d).littleEndian) { Array($0) }) }
            h.update(p.digest)
        }
        return SHA256.hex(h.finalize())
    }
}
