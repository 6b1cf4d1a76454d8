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
    /// Every article is cut into consecutive windows of `sequenceLength` tokens (each starting with the
    /// tokenizer's BOS when it adds one) instead of contributing only its first window: the whole
    /// corpus at short-context cost. Absent in caches written before windows existed (false).
    public var windows: Bool?

    public init(modelHash: String, site: Site, tokens: Int, sequenceLength: Int = 256, seed: UInt64 = 0, skipFirst: Int = 1,
                windows: Bool = false) {
        self.modelHash = modelHash
        self.site = site
        self.tokens = tokens
        self.sequenceLength = sequenceLength
        self.seed = seed
        self.skipFirst = skipFirst
        self.windows = windows ? true : nil
    }

    public var windowed: Bool { windows ?? false }

    /// File name stem.
    public var key: String {
        "\(modelHash.prefix(16))-\(site.kind.rawValue)\(site.layer)-n\(tokens)-seq\(sequenceLength)-seed\(seed)-skip\(skipFirst)"
            + (windowed ? "-win" : "")
    }
}

/// Activations harvested at one site, stored on disk as IEEE half floats: "MESAACT1", a 4,088-byte
/// JSON header padded with spaces (spec, width, rows, articles read, SHA-256 of the payload), then the
/// payload [rows, dim] F16. The file is memory-mapped; rows are converted to Float32 when read.
public final class ActivationCache: Sendable {
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
        do { file = try MappedFile(path: url.path) } catch { throw SAEError(.io, "cannot open \(url.path): \(error)", cause: error) }
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
            guard Self.payloadChecksum(b) == h.sha256 else { throw SAEError(.corrupt, "\(url.path): checksum mismatch") }
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
    /// each pass; `shouldStop` is polled between passes (nil is returned; the rows so far are kept and
    /// the next call resumes after them).
    public static func harvest(model: LanguageModel, spec: ActivationSpec, articleCount: Int, article: (Int) -> String, to url: URL,
                               packTokens: Int = defaultPackTokens,
                               progress: ((Int, Int) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> ActivationCache? {
        try harvest(model: model, specs: [spec], articleCount: articleCount, article: article, to: [url], packTokens: packTokens,
                    progress: progress, shouldStop: shouldStop)?.first
    }

    /// Tokens packed into one forward pass: several articles as independent sequences, so the
    /// projections run as [packTokens, d] × [d, ff] products (near the sgemm rate) instead of one
    /// short article at a time.
    public static let defaultPackTokens = 2048

    /// Where an unfinished harvest records how far it got: rows written and articles read, after the
    /// payload of those rows was synced to the `.tmp` file.
    struct Progress: Codable, Equatable {
        var key: String
        var rows: Int
        /// Articles read to their end.
        var articles: Int
        /// Windowed harvests: body tokens of the next article already taken (absent: 0).
        var offset: Int?
    }

    /// One pass over the corpus for several sites at once; the specs must agree on everything but the
    /// site. Each pass packs sequences (the first `sequenceLength` tokens of each article, position 0
    /// onward, or with `windows` every consecutive window of the article) up to `packTokens` tokens and
    /// runs the layers up to the deepest site only.
    ///
    /// Resumable: the payload goes to `<url>.tmp` and, after every pass, `<url>.progress` records the
    /// rows and articles behind it (written after the payload is synced). A later call with the same
    /// specs cuts each `.tmp` back to the recorded rows and continues from the next article, so an
    /// interrupted or killed harvest loses at most one pass. The payload checksum is computed from the
    /// finished file.
    public static func harvest(model: LanguageModel, specs: [ActivationSpec], articleCount: Int, article: (Int) -> String, to urls: [URL],
                               packTokens: Int = defaultPackTokens,
                               progress: ((Int, Int) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> [ActivationCache]? {
        let c = model.config
        guard let spec = specs.first, specs.count == urls.count else { throw SAEError(.settings, "one cache file per site is needed") }
        for s in specs {
            guard s.site.layer >= 0, s.site.layer < c.layers else { throw SAEError(.settings, "no layer \(s.site.layer)") }
            guard s.tokens == spec.tokens, s.sequenceLength == spec.sequenceLength, s.seed == spec.seed, s.skipFirst == spec.skipFirst,
                  s.modelHash == spec.modelHash, s.windowed == spec.windowed else { throw SAEError(.settings, "sites harvested together must share every other setting") }
        }
        guard Set(specs.map(\.site)).count == specs.count else { throw SAEError(.settings, "a site is listed twice") }
        guard spec.tokens > 0, spec.sequenceLength > spec.skipFirst, spec.skipFirst >= 0 else {
            throw SAEError(.settings, "tokens must be positive and the sequence longer than the skipped prefix")
        }
        let fm = FileManager.default
        let dims = specs.map { model.width(of: $0.site.kind) }
        let tmps = urls.map { $0.appendingPathExtension("tmp") }
        let progressURL = urls[0].appendingPathExtension("progress")
        let key = specs.map(\.key).joined(separator: ",")
        var rows = 0, articles = 0, offset = 0
        if let data = fm.contents(atPath: progressURL.path), let p = try? JSONDecoder().decode(Progress.self, from: data), p.key == key,
           zip(tmps, dims).allSatisfy({ t, dim in
               ((try? fm.attributesOfItem(atPath: t.path)[.size]) as? Int).map { $0 >= headerBytes + p.rows * dim * 2 } ?? false
           }) {
            rows = p.rows
            articles = p.articles
            offset = p.offset ?? 0
        }
        var outs: [FileHandle] = []
        defer { for o in outs { try? o.close() } }
        for (i, url) in urls.enumerated() {
            try? fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            if rows == 0, !fm.createFile(atPath: tmps[i].path, contents: Data(count: headerBytes)) {
                throw SAEError(.io, "cannot create \(tmps[i].path)")
            }
            guard let out = FileHandle(forWritingAtPath: tmps[i].path) else { throw SAEError(.io, "cannot open \(tmps[i].path)") }
            // Rows past the recorded progress (a pass cut short) are dropped.
            try out.truncate(atOffset: UInt64(headerBytes + rows * dims[i] * 2))
            try out.seekToEnd()
            outs.append(out)
        }
        func record() throws {
            for o in outs { try o.synchronize() }
            try JSONEncoder().encode(Progress(key: key, rows: rows, articles: articles, offset: spec.windowed ? offset : nil))
                .write(to: progressURL, options: .atomic)
        }
        let tok = model.tokenizer
        let seqLen = min(spec.sequenceLength, c.contextLength)
        let capture = Set(specs.map(\.site))
        let deepest = specs.map(\.site.layer).max()!
        var halves = [UInt16]()
        // Windows: the article being cut (its leading BOS, if the tokenizer adds one, and its body).
        var current: (lead: [Int32], body: [Int32])?
        /// The next sequence, at most `limit` tokens, advancing the cursor; nil at the corpus's end.
        func nextSequence(limit: Int) -> [Int32]? {
            guard spec.windowed else {
                guard articles < articleCount else { return nil }
                let ids = tok.encode(article(articles), addSpecial: true, parseSpecial: false)
                articles += 1
                return Array(ids.prefix(min(seqLen, limit)))
            }
            while articles < articleCount {
                if current == nil {
                    let ids = tok.encode(article(articles), addSpecial: true, parseSpecial: false)
                    let lead = tok.addBOS ? Array(ids.prefix(1)) : []
                    current = (lead, Array(ids.dropFirst(lead.count)))
                }
                let (lead, body) = current!
                let take = min(seqLen - lead.count, body.count - offset)
                if take <= 0 || seqLen <= lead.count {
                    articles += 1
                    offset = 0
                    current = nil
                    continue
                }
                let window = lead + body[offset..<(offset + take)]
                offset += take
                return Array(window.prefix(limit))
            }
            return nil
        }
        while rows < spec.tokens && articles < articleCount {
            if shouldStop?() == true { try record(); return nil }
            // Sequences packed into this pass, each cut to what is still wanted.
            var packed: [Int32] = [], segments: [Int] = [], wanted = rows
            while wanted < spec.tokens, packed.count < max(1, packTokens - seqLen) || segments.isEmpty,
                  let ids = nextSequence(limit: spec.skipFirst + spec.tokens - wanted) {
                guard ids.count > spec.skipFirst else { continue }
                packed += ids
                segments.append(ids.count)
                wanted += ids.count - spec.skipFirst
            }
            guard !packed.isEmpty else { break }
            let r = try model.forward(packed, options: ForwardOptions(capture: capture, logits: .none, stopAfterLayer: deepest, segments: segments))
            for (i, s) in specs.enumerated() {
                let dim = dims[i]
                let act = r.activations[s.site]!.data  // [packed.count, dim]
                halves.removeAll(keepingCapacity: true)
                halves.reserveCapacity((wanted - rows) * dim)
                var start = 0
                for n in segments {
                    for v in act[((start + spec.skipFirst) * dim)..<((start + n) * dim)] { halves.append(Dequantize.halfBits(v).littleEndian) }
                    start += n
                }
                halves.withUnsafeBytes { outs[i].write(Data($0)) }
            }
            rows = wanted
            try record()
            progress?(rows, articles)
        }
        guard rows > 0 else {
            for t in tmps { try? fm.removeItem(at: t) }
            try? fm.removeItem(at: progressURL)
            throw SAEError(.settings, "the corpus gave no tokens")
        }
        var caches: [ActivationCache] = []
        for (i, s) in specs.enumerated() {
            try outs[i].synchronize()
            let sha = try payloadChecksum(tmps[i])
            let header = Header(spec: s, dim: dims[i], rows: rows, articles: articles + (offset > 0 ? 1 : 0), sha256: sha,
                                created: ISO8601DateFormatter().string(from: Date()))
            var json = try JSONEncoder().encode(header)
            guard json.count <= headerBytes - 8 else { throw SAEError(.settings, "activation cache header too long") }
            json.append(Data(repeating: 0x20, count: headerBytes - 8 - json.count))
            try outs[i].seek(toOffset: 0)
            outs[i].write(Data(magic) + json)
            try outs[i].synchronize()
            guard rename(tmps[i].path, urls[i].path) == 0 else { throw SAEError(.io, "cannot rename \(tmps[i].path) to \(urls[i].path): errno \(errno)") }
            caches.append(try ActivationCache(url: urls[i]))
        }
        try? fm.removeItem(at: progressURL)
        return caches
    }

    /// SHA-256 of everything after the header of the file at `url`.
    static func payloadChecksum(_ url: URL) throws -> String {
        let file: MappedFile
        do { file = try MappedFile(path: url.path) } catch { throw SAEError(.io, "cannot open \(url.path): \(error)", cause: error) }
        return payloadChecksum(file.bytes)
    }

    /// SHA-256 of everything after the header in a cache file's bytes.
    static func payloadChecksum(_ bytes: UnsafeRawBufferPointer) -> String {
        var sha = SHA256()
        sha.update(UnsafeRawBufferPointer(rebasing: bytes[headerBytes...]))
        return SHA256.hex(sha.finalize())
    }
}
