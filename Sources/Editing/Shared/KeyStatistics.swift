import Foundation
import ModelRuntime
import Tensor

/// The Wikipedia sample as a list of articles: WikiExtractor output, where `<doc …>` and `</doc>`
/// lines wrap each article. The lines are stripped and the articles shuffled with a fixed seed
/// (the file is in page-id order). Articles are decoded only when read.
public struct Corpus: Sendable {
    public let path: String
    let data: Data
    /// Byte ranges of article bodies, in shuffled order.
    let articles: [Range<Int>]
    /// Each article's title (the `title="…"` of its `<doc>` line, entities unescaped; empty when it has
    /// none), in the same order.
    public let titles: [String]

    public init(path: String, seed: UInt64) throws {
        guard let d = FileManager.default.contents(atPath: path) else { throw EditError(.io, "cannot read the corpus \(path)") }
        self.path = path
        data = d
        var ranges: [(body: Range<Int>, title: String)] = []
        d.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let b = raw.bindMemory(to: UInt8.self)
            var lineStart = 0, bodyStart: Int? = nil, title = ""
            func lineIs(_ s: String, at i: Int, end: Int) -> Bool {
                let u = Array(s.utf8)
                guard end - i >= u.count else { return false }
                for k in 0..<u.count where b[i + k] != u[k] { return false }
                return true
            }
            for i in 0...b.count {
                guard i == b.count || b[i] == UInt8(ascii: "\n") else { continue }
                if lineIs("<doc", at: lineStart, end: i) {
                    bodyStart = i + 1
                    title = Self.title(ofDocLine: String(decoding: UnsafeBufferPointer(rebasing: b[lineStart..<i]), as: UTF8.self))
                } else if lineIs("</doc>", at: lineStart, end: i) {
                    if let s = bodyStart, lineStart > s { ranges.append((s..<lineStart, title)) }
                    bodyStart = nil
                }
                lineStart = i + 1
            }
        }
        guard !ranges.isEmpty else { throw EditError(.io, "the corpus \(path) has no <doc> articles") }
        var rng = Xoshiro256(seed: seed)
        ranges.shuffle(using: &rng)
        articles = ranges.map(\.body)
        titles = ranges.map(\.title)
    }

    /// The `title` attribute of a WikiExtractor `<doc id=… url=… title="…">` line, with the XML
    /// entities WikiExtractor writes unescaped ("" when there is none).
    static func title(ofDocLine line: String) -> String {
        guard let open = line.range(of: "title=\""), let close = line[open.upperBound...].firstIndex(of: "\"") else { return "" }
        var t = String(line[open.upperBound..<close])
        for (entity, c) in [("&quot;", "\""), ("&#39;", "'"), ("&apos;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")] {
            t = t.replacingOccurrences(of: entity, with: c)
        }
        return t.trimmingCharacters(in: .whitespaces)
    }

    public var count: Int { articles.count }

    /// The text of the i-th article in shuffled order.
    public func article(_ i: Int) -> String {
        String(decoding: data[articles[i]], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// What a key-statistics computation is keyed by.
public struct KeyStatisticsSpec: Codable, Sendable, Equatable {
    /// The weight hash of the model (the base model: statistics describe unedited keys).
    public var modelHash: String
    public var layer: Int
    /// Tokens to accumulate (N).
    public var tokens: Int
    /// Each article contributes its first `sequenceLength` tokens (one forward pass).
    public var sequenceLength: Int
    /// Article shuffle seed.
    public var seed: UInt64
    /// Which keys: nil for every token of the articles' text; `entities` for the keys of entity names
    /// (`EntityKeySettings`: the last token of each of N bare article titles, N = `tokens`).
    public var population: String?

    public init(modelHash: String, layer: Int, tokens: Int, sequenceLength: Int = 512, seed: UInt64 = 0, population: String? = nil) {
        self.modelHash = modelHash
        self.layer = layer
        self.tokens = tokens
        self.sequenceLength = sequenceLength
        self.seed = seed
        self.population = population
    }

    /// File name stem: model hash prefix, layer, N, sequence length, seed (and the population when it is
    /// not the text's tokens).
    public var key: String {
        "\(modelHash.prefix(16))-layer\(layer)-n\(tokens)-seq\(sequenceLength)-seed\(seed)" + (population.map { "-\($0)" } ?? "")
    }
}

/// C = E[k kᵀ] of the MLP keys (down-projection inputs) at one layer, uncentered, over N tokens of the
/// Wikipedia sample: the second moment ROME, MEMIT and AlphaEdit use.
public final class KeyStatistics: @unchecked Sendable {  // immutable after init except the lazily computed `factor`, which is guarded by `lock`
    public let spec: KeyStatisticsSpec
    /// Key width (d_ff).
    public let dim: Int
    /// Tokens actually accumulated.
    public let count: Int
    /// [dim, dim] row-major, symmetric.
    public let moment: [Float]
    private var factor: LAPACK.Cholesky?
    private let lock = NSLock()

    public init(spec: KeyStatisticsSpec, dim: Int, count: Int, moment: [Float]) {
        precondition(moment.count == dim * dim)
        self.spec = spec
        self.dim = dim
        self.count = count
        self.moment = moment
    }

    /// C + ridge·mean(diag C)·I in Double: the matrix `solve` factors ([dim, dim]).
    public func regularizedMoment(ridge: Double) -> [Double] {
        var a = moment.map(Double.init)
        var trace: Double = 0
        for i in 0..<dim { trace += a[i * dim + i] }
        let add = ridge * trace / Double(dim)
        for i in 0..<dim { a[i * dim + i] += add }
        return a
    }

    /// Solves (C + ridge·mean(diag C)·I) x = k in Double; the Cholesky factor is computed once.
    public func solve(_ k: [Float], ridge: Double) throws -> [Float] {
        precondition(k.count == dim)
        lock.lock()
        defer { lock.unlock() }
        if factor == nil {
            do { factor = try LAPACK.Cholesky(regularizedMoment(ridge: ridge), n: dim) } catch {
                throw EditError(.state, "the layer-\(spec.layer) key statistics are not positive definite (\(error)); increase mom2_ridge or the token count", cause: error)
            }
        }
        return try factor!.solve(k.map(Double.init)).map(Float.init)
    }

    // MARK: file format

    static let magic = Array("MESASTAT".utf8)
    static let checkpointMagic = Array("MESACKPT".utf8)

    struct Header: Codable {
        var spec: KeyStatisticsSpec
        var dim: Int
        var count: Int
        var dtype: String
        var sha256: String
        var corpus: String?
        var created: String?
    }

    /// Writes magic, a JSON header (with the SHA-256 of the payload), and the Float32 payload, atomically.
    public func write(to url: URL, corpus: String? = nil) throws {
        let payload = moment.withUnsafeBufferPointer { Data(buffer: $0) }
        var h = SHA256()
        payload.withUnsafeBytes { h.update($0) }
        let header = Header(spec: spec, dim: dim, count: count, dtype: "float32", sha256: SHA256.hex(h.finalize()),
                            corpus: corpus, created: ISO8601DateFormatter().string(from: Date()))
        try Self.writeFile(url, magic: Self.magic, header: try JSONEncoder().encode(header), payload: payload)
    }

    public static func read(from url: URL) throws -> KeyStatistics {
        let (headerData, payload) = try readFile(url, magic: magic)
        guard let header = try? JSONDecoder().decode(Header.self, from: headerData), header.dtype == "float32" else {
            throw EditError(.state, "\(url.path): malformed key-statistics header")
        }
        guard payload.count == header.dim * header.dim * 4 else {
            throw EditError(.state, "\(url.path): payload has \(payload.count) bytes, expected \(header.dim * header.dim * 4)")
        }
        var h = SHA256()
        payload.withUnsafeBytes { h.update($0) }
        guard SHA256.hex(h.finalize()) == header.sha256 else { throw EditError(.state, "\(url.path): checksum mismatch (the file is corrupt)") }
        let moment = payload.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return KeyStatistics(spec: header.spec, dim: header.dim, count: header.count, moment: moment)
    }

    static func writeFile(_ url: URL, magic: [UInt8], header: Data, payload: Data) throws {
        var out = Data(magic)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(header)
        out.append(payload)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let tmp = url.appendingPathExtension("tmp")
        do { try out.write(to: tmp) } catch { throw EditError(.io, "cannot write \(tmp.path): \(error)", cause: error) }
        // rename(2) replaces the target atomically: a reader sees the old file or the new one.
        guard rename(tmp.path, url.path) == 0 else { throw EditError(.io, "cannot rename \(tmp.path) to \(url.path): errno \(errno)") }
    }

    static func readFile(_ url: URL, magic: [UInt8]) throws -> (header: Data, payload: Data) {
        guard let d = FileManager.default.contents(atPath: url.path) else { throw EditError(.io, "cannot read \(url.path)") }
        guard d.count >= 16, Array(d.prefix(8)) == magic else { throw EditError(.state, "\(url.path): not a mesa statistics file") }
        let n = d.subdata(in: 8..<16).withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard n >= 0, 16 + n <= d.count else { throw EditError(.state, "\(url.path): truncated header") }
        return (d.subdata(in: 16..<(16 + n)), d.subdata(in: (16 + n)..<d.count))
    }
}

/// Accumulates Σ k kᵀ for one or more layers over the corpus, resumable from a checkpoint.
public struct KeyStatisticsBuilder {
    public struct Progress: Sendable {
        public var tokens: Int
        public var target: Int
        public var articles: Int
        public var seconds: Double
    }

    struct Checkpoint: Codable {
        var specs: [KeyStatisticsSpec]
        var articles: Int
        var tokens: Int
    }

    public let model: LanguageModel
    public let specs: [KeyStatisticsSpec]
    public let corpus: Corpus
    /// Where partial sums are saved; a later run with the same specs resumes from it.
    public let checkpoint: URL?
    public var checkpointInterval: Double = 30

    /// All specs must share N, sequence length and seed; their layers differ.
    public init(model: LanguageModel, specs: [KeyStatisticsSpec], corpus: Corpus, checkpoint: URL?) throws {
        guard let first = specs.first else { throw EditError(.hyperparameters, "no layers to compute statistics for") }
        for s in specs {
            guard s.tokens == first.tokens, s.sequenceLength == first.sequenceLength, s.seed == first.seed else {
                throw EditError(.hyperparameters, "statistics computed together must share tokens, sequence length and seed")
            }
            guard s.layer >= 0, s.layer < model.config.layers else { throw EditError(.hyperparameters, "no layer \(s.layer)") }
        }
        guard first.tokens > 0, first.sequenceLength > 1 else { throw EditError(.hyperparameters, "tokens and sequence length must be positive") }
        self.model = model
        self.specs = specs
        self.corpus = corpus
        self.checkpoint = checkpoint
    }

    /// Runs until N tokens are accumulated (or the corpus ends), calling `progress` after each article.
    /// `shouldStop` is polled between articles: when it returns true the partial sums are checkpointed
    /// and `nil` is returned.
    public func run(progress: ((Progress) -> Void)? = nil, shouldStop: (() -> Bool)? = nil) throws -> [KeyStatistics]? {
        let ff = model.config.intermediate
        let layers = specs.map(\.layer)
        let target = specs[0].tokens, seqLen = min(specs[0].sequenceLength, model.config.contextLength)
        var sums = [[Double]](repeating: [Double](repeating: 0, count: ff * ff), count: layers.count)
        var articles = 0, tokens = 0
        if let checkpoint, FileManager.default.fileExists(atPath: checkpoint.path) {
            let (h, payload) = try KeyStatistics.readFile(checkpoint, magic: KeyStatistics.checkpointMagic)
            if let c = try? JSONDecoder().decode(Checkpoint.self, from: h), c.specs == specs, payload.count == layers.count * ff * ff * 8 {
                payload.withUnsafeBytes { raw in
                    let all = raw.bindMemory(to: Double.self)
                    for i in 0..<layers.count { sums[i] = Array(all[(i * ff * ff)..<((i + 1) * ff * ff)]) }
                }
                (articles, tokens) = (c.articles, c.tokens)
            }
        }
        let tok = model.tokenizer
        let capture = Set(layers.map { Site(layer: $0, kind: .mlpKey) })
        let stopAfter = layers.max()!
        var partial = [Float](repeating: 0, count: ff * ff)
        let start = Date()
        var lastSave = Date()

        func save() throws {
            guard let checkpoint else { return }
            let header = try JSONEncoder().encode(Checkpoint(specs: specs, articles: articles, tokens: tokens))
            var payload = Data(capacity: layers.count * ff * ff * 8)
            for s in sums { s.withUnsafeBufferPointer { payload.append(Data(buffer: $0)) } }
            try KeyStatistics.writeFile(checkpoint, magic: KeyStatistics.checkpointMagic, header: header, payload: payload)
        }

        while tokens < target && articles < corpus.count {
            if shouldStop?() == true { try save(); return nil }
            let text = corpus.article(articles)
            articles += 1
            var ids = tok.encode(text, addSpecial: true, parseSpecial: false)
            ids = Array(ids.prefix(min(seqLen, target - tokens)))
            guard ids.count >= 2 else { continue }
            let r = try model.forward(ids, options: ForwardOptions(capture: capture, logits: .none, stopAfterLayer: stopAfter))
            for (i, l) in layers.enumerated() {
                let k = r.activations[Site(layer: l, kind: .mlpKey)]!
                // partial[ff, ff] = Kᵀ K over this article's T rows.
                k.data.withUnsafeBufferPointer { kp in
                    partial.withUnsafeMutableBufferPointer { pp in
                        BLAS.sgemm(transA: true, m: ff, n: ff, k: ids.count, a: kp.baseAddress!, lda: ff, b: kp.baseAddress!, ldb: ff,
                                   c: pp.baseAddress!, ldc: ff)
                    }
                }
                for j in 0..<(ff * ff) { sums[i][j] += Double(partial[j]) }
            }
            tokens += ids.count
            progress?(Progress(tokens: tokens, target: target, articles: articles, seconds: Date().timeIntervalSince(start)))
            if Date().timeIntervalSince(lastSave) > checkpointInterval {
                try save()
                lastSave = Date()
            }
        }
        guard tokens > 0 else { throw EditError(.state, "the corpus gave no tokens") }
        if let checkpoint { try? FileManager.default.removeItem(at: checkpoint) }
        return specs.enumerated().map { i, s in
            KeyStatistics(spec: s, dim: ff, count: tokens, moment: sums[i].map { Float($0 / Double(tokens)) })
        }
    }
}
