import Foundation
import ModelRuntime
import Tensor

/// What a harvest of activations is keyed by.
public struct ActivationSpec: Codable, Sendable, Equatable {
    /// The weight hash of the (unedited) model.
    public var modelHash: String
    public var site: Site
    /// Activation rows to collect (N).
    public var tokens: Int
    /// Each article contributes up to this many tokens (one forward pass).
    public var sequenceLength: Int
    /// Article shuffle seed of the corpus.
    public var seed: UInt64
    /// Positions dropped at the start of every sequence. Position 0 attends only to itself and carries
    /// activations orders of magnitude larger than the rest (an attention sink); SAEs are trained without it.
    public var skipFirst: Int

    public init(modelHash: String, site: Site, tokens: Int, sequenceLength: Int = 256, seed: UInt64 = 0, skipFirst: Int = 1) {
        self.modelHash = modelHash
        self.site = site
        self.tokens = tokens
        self.sequenceLength = sequenceLength
        self.seed = seed
        self.skipFirst = skipFirst
    }

    /// File name stem.
    public var key: String {
        "\(modelHash.prefix(16))-\(site.kind.rawValue)\(site.layer)-n\(tokens)-seq\(sequenceLength)-seed\(seed)-skip\(skipFirst)"
    }
}

/// Activations harvested at one site, stored on disk as IEEE half floats: "MESAACT1", a 4,088-byte
/// JSON header padded with spaces (spec, width, rows, articles read, SHA-256 of the payload), then the
/// payload [rows, dim] F16. The file is memory-mapped; rows are converted to Float32 when read.
public final class ActivationCache: @unchecked Sendable {
    static let magic = Array("MESAACT1".utf8)
    static let headerBytes = 4096

    struct Header: Codable {
        var spec: ActivationSpec
        var dim: Int
        var rows: Int
        /// Articles of the shuffled corpus consumed (held-out text starts after them).
        var articles: Int
        var sha256: String
        var created: String
    }

    public let url: URL
    public let spec: ActivationSpec
    public let dim: Int
    public let rows: Int
    public let articles: Int
    let file: MappedFile

    /// Opens a cache file, checking its header and (if `verify`) the payload checksum.
    public init(url: URL, verify: Bool = false) throws {
        do { file = try MappedFile(path: url.path) } catch { throw SAEError(.io, "cannot open \(url.path): \(error)") }
        let b = file.bytes
        guard b.count >= Self.headerBytes, Array(b.prefix(8)) == Self.magic else { throw SAEError(.corrupt, "\(url.path) is not an activation cache") }
        let json = Data(b[8..<Self.headerBytes])
        guard let h = try? JSONDecoder().decode(Header.self, from: json) else { throw SAEError(.corrupt, "\(url.path): malformed header") }
        guard h.dim > 0, h.rows >= 0, b.count == Self.headerBytes + h.rows * h.dim * 2 else {
            throw SAEError(.corrupt, "\(url.path): \(b.count) bytes do not hold \(h.rows) rows of \(h.dim) halves")
        }
        self.url = url
        spec = h.spec
        dim = h.dim
        rows = h.rows
        articles = h.articles
        if verify {
            var sha = SHA256()
            sha.update(UnsafeRawBufferPointer(rebasing: b[Self.headerBytes...]))
            guard SHA256.hex(sha.finalize()) == h.sha256 else { throw SAEError(.corrupt, "\(url.path): checksum mismatch") }
        }
    }

    /// Converts rows `indices` into `out` [indices.count, dim].
    public func read(rows indices: ArraySlice<Int>, into out: UnsafeMutablePointer<Float>) {
        let base = file.bytes.baseAddress! + Self.headerBytes
        for (r, i) in indices.enumerated() {
            let src = (base + i * dim * 2).assumingMemoryBound(to: UInt16.self)
            let dst = out + r * dim
            for j in 0..<dim { dst[j] = Dequantize.half(UInt16(littleEndian: src[j])) }
        }
    }

    /// Harvests activations at `spec.site` from articles `0..<articleCount` (in the order `article`
    /// returns them), writing the cache to `url` atomically. `progress(rows, articles)` is called after
    /// each article; `shouldStop` is polled between articles (nil is returned, nothing is written).
    public static func harvest(model: LanguageModel, spec: ActivationSpec, articleCount: Int, article: (Int) -> String, to url: URL,
                               progress: ((Int, Int) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> ActivationCache? {
        try harvest(model: model, specs: [spec], articleCount: articleCount, article: article, to: [url],
                    progress: progress, shouldStop: shouldStop)?.first
    }

    /// One pass over the corpus for several sites at once (one forward pass per article up to the
    /// deepest layer); the specs must agree on everything but the site.
    public static func harvest(model: LanguageModel, specs: [ActivationSpec], articleCount: Int, article: (Int) -> String, to urls: [URL],
                               progress: ((Int, Int) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> [ActivationCache]? {
        let c = model.config
        guard let spec = specs.first, specs.count == urls.count else { throw SAEError(.settings, "one cache file per site is needed") }
        for s in specs {
            guard s.site.layer >= 0, s.site.layer < c.layers else { throw SAEError(.settings, "no layer \(s.site.layer)") }
            guard s.site.kind != .mlpKey else { throw SAEError(.settings, "mlp_key activations are not harvested for SAEs") }
            guard s.tokens == spec.tokens, s.sequenceLength == spec.sequenceLength, s.seed == spec.seed, s.skipFirst == spec.skipFirst,
                  s.modelHash == spec.modelHash else { throw SAEError(.settings, "sites harvested together must share every other setting") }
        }
        guard Set(specs.map(\.site)).count == specs.count else { throw SAEError(.settings, "a site is listed twice") }
        guard spec.tokens > 0, spec.sequenceLength > spec.skipFirst, spec.skipFirst >= 0 else {
            throw SAEError(.settings, "tokens must be positive and the sequence longer than the skipped prefix")
        }
        let fm = FileManager.default
        var outs: [FileHandle] = []
        var tmps: [URL] = []
        defer { for o in outs { try? o.close() } }
        func abandon() { for t in tmps { try? fm.removeItem(at: t) } }
        for url in urls {
            try? fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let tmp = url.appendingPathExtension("tmp")
            guard fm.createFile(atPath: tmp.path, contents: Data(count: headerBytes)), let out = FileHandle(forWritingAtPath: tmp.path) else {
                abandon()
                throw SAEError(.io, "cannot create \(tmp.path)")
            }
            out.seekToEndOfFile()
            outs.append(out)
            tmps.append(tmp)
        }
        let tok = model.tokenizer
        let seqLen = min(spec.sequenceLength, c.contextLength)
        let capture = Set(specs.map(\.site))
        let deepest = specs.map(\.site.layer).max()!
        var rows = 0, articles = 0
        var shas = [SHA256](repeating: SHA256(), count: specs.count)
        var halves = [UInt16]()
        while rows < spec.tokens && articles < articleCount {
            if shouldStop?() == true { abandon(); return nil }
            let text = article(articles)
            articles += 1
            var ids = tok.encode(text, addSpecial: true, parseSpecial: false)
            ids = Array(ids.prefix(min(seqLen, spec.skipFirst + spec.tokens - rows)))
            guard ids.count > spec.skipFirst else { continue }
            let r = try model.forward(ids, options: ForwardOptions(capture: capture, logits: .none, stopAfterLayer: deepest))
            let kept = ids.count - spec.skipFirst
            for (i, s) in specs.enumerated() {
                let act = r.activations[s.site]!.data  // [T, dim]
                let dim = act.count / ids.count
                halves.removeAll(keepingCapacity: true)
                halves.reserveCapacity(kept * dim)
                for v in act[(spec.skipFirst * dim)...] { halves.append(Dequantize.halfBits(v).littleEndian) }
                let data = halves.withUnsafeBytes { Data($0) }
                data.withUnsafeBytes { shas[i].update($0) }
                outs[i].write(data)
            }
            rows += kept
            progress?(rows, articles)
        }
        guard rows > 0 else { abandon(); throw SAEError(.settings, "the corpus gave no tokens") }
        var caches: [ActivationCache] = []
        for (i, s) in specs.enumerated() {
            let header = Header(spec: s, dim: model.width(of: s.site.kind), rows: rows, articles: articles, sha256: SHA256.hex(shas[i].finalize()),
                                created: ISO8601DateFormatter().string(from: Date()))
            var json = try JSONEncoder().encode(header)
            guard json.count <= headerBytes - 8 else { abandon(); throw SAEError(.settings, "activation cache header too long") }
            json.append(Data(repeating: 0x20, count: headerBytes - 8 - json.count))
            outs[i].seek(toFileOffset: 0)
            outs[i].write(Data(magic) + json)
            try outs[i].synchronize()
            guard rename(tmps[i].path, urls[i].path) == 0 else { throw SAEError(.io, "cannot rename \(tmps[i].path) to \(urls[i].path): errno \(errno)") }
            caches.append(try ActivationCache(url: urls[i]))
        }
        return caches
    }
}
