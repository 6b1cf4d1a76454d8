import Foundation

/// A tokenizer failed to build or to process input.
public struct TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "tokenizer: \(message)" }
}

/// Byte-level BPE (GPT-2 style) with added special tokens.
///
/// Encoding: split the text on special tokens (matched literally, longest first), pre-tokenize each
/// remaining span, map each pre-token's UTF-8 bytes to the GPT-2 byte alphabet, and apply merges in
/// rank order. Token ids are `Int32`.
public final class BPETokenizer: @unchecked Sendable {  // immutable after init except `cache`, which is guarded by `cacheLock`
    public let vocab: [String]
    public let preTokenizer: PreTokenizer
    public let bosId: Int32?
    public let eosId: Int32?
    public let addBOS: Bool
    /// Special (control / user-defined) tokens, matched literally in input text.
    public let specialTokens: [String: Int32]

    private let tokenToId: [String: Int32]
    /// (left id << 32 | right id) → (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    /// Token id of each single byte (through the GPT-2 byte→unicode map), -1 where the vocabulary lacks it.
    private let byteIds: [Int32]
    /// Special tokens sorted longest first, as scalar arrays.
    private let specialsByLength: [(scalars: [Unicode.Scalar], id: Int32)]
    /// First scalars of the special tokens, to skip the match attempt at most positions.
    private let specialFirst: Set<Unicode.Scalar>
    private let isSpecial: [Bool]
    private var cache: [[UInt8]: [Int32]] = [:]
    private let cacheLock = NSLock()

    /// - Parameters:
    ///   - vocab: token strings indexed by id, in the byte-level alphabet.
    ///   - merges: merge rules "left right", in rank order.
    ///   - specialIds: ids of tokens to be matched literally (control and user-defined tokens).
    public init(vocab: [String], merges mergeRules: [String], specialIds: [Int32], preTokenizer: PreTokenizer,
                bosId: Int32? = nil, eosId: Int32? = nil, addBOS: Bool = false) throws {
        guard !vocab.isEmpty else { throw TokenizerError("empty vocabulary") }
        self.vocab = vocab
        self.preTokenizer = preTokenizer
        self.bosId = bosId
        self.eosId = eosId
        self.addBOS = addBOS
        var t2i = [String: Int32](minimumCapacity: vocab.count)
        for (i, t) in vocab.enumerated() where t2i[t] == nil { t2i[t] = Int32(i) }
        self.tokenToId = t2i

        var m = [UInt64: (rank: Int32, id: Int32)](minimumCapacity: mergeRules.count)
        for (rank, rule) in mergeRules.enumerated() {
            guard let sp = rule.firstIndex(of: " ") else { throw TokenizerError("malformed merge rule \(rank): \(rule.debugDescription)") }
            let l = String(rule[..<sp]), r = String(rule[rule.index(after: sp)...])
            guard let li = t2i[l], let ri = t2i[r], let mi = t2i[l + r] else {
                throw TokenizerError("merge rule \(rank) \(rule.debugDescription) refers to tokens not in the vocabulary")
            }
            let key = UInt64(UInt32(li)) << 32 | UInt64(UInt32(ri))
            if m[key] == nil { m[key] = (Int32(rank), mi) }
        }
        self.merges = m

        // Some vocabularies lack a few byte tokens (e.g. ASCII control bytes). Such bytes are dropped
        // when encoding, as Hugging Face `tokenizers` does for a BPE model without an unknown token.
        var bids = [Int32](repeating: -1, count: 256)
        for b in 0..<256 { bids[b] = t2i[String(ByteLevel.byteToScalar[b])] ?? -1 }
        guard bids.contains(where: { $0 >= 0 }) else { throw TokenizerError("vocabulary has no byte-level tokens") }
        self.byteIds = bids

        var specials = [String: Int32]()
        var flags = [Bool](repeating: false, count: vocab.count)
        for id in specialIds where id >= 0 && Int(id) < vocab.count {
            specials[vocab[Int(id)]] = id
            flags[Int(id)] = true
        }
        self.specialTokens = specials
        self.isSpecial = flags
        self.specialsByLength = specials.filter { !$0.key.isEmpty }
            .map { (Array($0.key.unicodeScalars), $0.value) }
            .sorted { $0.scalars.count != $1.scalars.count ? $0.scalars.count > $1.scalars.count : $0.id < $1.id }
        self.specialFirst = Set(specialsByLength.map { $0.scalars[0] })
    }

    public var vocabularySize: Int { vocab.count }

    public func id(of token: String) -> Int32? { tokenToId[token] }

    /// Encodes text to token ids. Special tokens in the text are recognized when `parseSpecial` is true.
    /// `addSpecial` prepends BOS when the tokenizer is configured to (`addBOS`).
    public func encode(_ text: String, addSpecial: Bool = false, parseSpecial: Bool = true) -> [Int32] {
        var ids: [Int32] = []
        if addSpecial, addBOS, let b = bosId { ids.append(b) }
        let scalars = Array(text.unicodeScalars)
        var start = 0
        var i = 0
        if parseSpecial && !specialsByLength.isEmpty {
            while i < scalars.count {
                if specialFirst.contains(scalars[i]), let (len, id) = matchSpecial(scalars, at: i) {
                    if start < i { encodeOrdinary(scalars, start..<i, into: &ids) }
                    ids.append(id)
                    i += len
                    start = i
                } else {
                    i += 1
                }
            }
        }
        if start < scalars.count { encodeOrdinary(scalars, start..<scalars.count, into: &ids) }
        return ids
    }

    private func matchSpecial(_ s: [Unicode.Scalar], at i: Int) -> (Int, Int32)? {
        for sp in specialsByLength where sp.scalars.count <= s.count - i {
            var ok = true
            for k in 0..<sp.scalars.count where s[i + k] != sp.scalars[k] { ok = false; break }
            if ok { return (sp.scalars.count, sp.id) }
        }
        return nil
    }

    private func encodeOrdinary(_ s: [Unicode.Scalar], _ range: Range<Int>, into ids: inout [Int32]) {
        let piece = Array(s[range])
        var bytes: [UInt8] = []
        for r in preTokenizer.split(piece) {
            // Keyed by UTF-8 bytes: String equality is canonical equivalence, which would conflate
            // NFC and NFD spellings that tokenize differently.
            bytes.removeAll(keepingCapacity: true)
            for c in piece[r] { UTF8.encode(c) { bytes.append($0) } }
            cacheLock.lock()
            let hit = cache[bytes]
            cacheLock.unlock()
            if let hit { ids.append(contentsOf: hit); continue }
            let out = bpe(bytes)
            cacheLock.lock()
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[bytes] = out
            cacheLock.unlock()
            ids.append(contentsOf: out)
        }
    }

    /// Applies merges to one pre-token's bytes, lowest rank first (ties: leftmost), as HF `tokenizers` does.
    func bpe(_ bytes: [UInt8]) -> [Int32] {
        var parts = bytes.compactMap { b -> Int32? in let id = byteIds[Int(b)]; return id >= 0 ? id : nil }
        while parts.count > 1 {
            var bestRank = Int32.max, bestIndex = -1, bestId: Int32 = 0
            for k in 0..<(parts.count - 1) {
                let key = UInt64(UInt32(parts[k])) << 32 | UInt64(UInt32(parts[k + 1]))
                if let m = merges[key], m.rank < bestRank { bestRank = m.rank; bestIndex = k; bestId = m.id }
            }
            if bestIndex < 0 { break }
            // Merge every non-overlapping occurrence of the best pair, left to right.
            let l = parts[bestIndex], r = parts[bestIndex + 1]
            var merged: [Int32] = []
            merged.reserveCapacity(parts.count)
            var k = 0
            while k < parts.count {
                if k < parts.count - 1 && parts[k] == l && parts[k + 1] == r { merged.append(bestId); k += 2 } else { merged.append(parts[k]); k += 1 }
            }
            parts = merged
        }
        return parts
    }

    /// The raw bytes of one token (special tokens give their literal text).
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0 && Int(id) < vocab.count else { return [] }
        let t = vocab[Int(id)]
        if isSpecial[Int(id)] { return Array(t.utf8) }
        var out: [UInt8] = []
        out.reserveCapacity(t.unicodeScalars.count)
        for c in t.unicodeScalars {
            if let b = ByteLevel.scalarToByte[c] { out.append(b) } else { out.append(contentsOf: Array(String(c).utf8)) }
        }
        return out
    }

    /// Decodes ids to text; invalid UTF-8 is replaced by U+FFFD.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            if skipSpecial, id >= 0, Int(id) < isSpecial.count, isSpecial[Int(id)] { continue }
            bytes += tokenBytes(id)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Streams decoded text token by token, holding back incomplete UTF-8 sequences.
public struct StreamingDecoder {
    private var pending: [UInt8] = []
    public init() {}

    /// Appends a token's bytes and returns the text that is now complete.
    public mutating func push(_ bytes: [UInt8]) -> String {
        pending += bytes
        var end = pending.count
        // Find the start of a trailing incomplete sequence, if any (at most 3 bytes back).
        var back = 0
        var i = pending.count - 1
        while i >= 0 && back < 4 {
            let b = pending[i]
            if b & 0xC0 == 0x80 { back += 1; i -= 1; continue }
            let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
            if need > back + 1 { end = i }
            break
        }
        let text = String(decoding: pending[..<end], as: UTF8.self)
        pending.removeFirst(end)
        return text
    }

    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }
}

/// GPT-2's reversible map between bytes and printable Unicode scalars.
public enum ByteLevel {
    public static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { table[b] = Unicode.Scalar(UInt32(b))! } else { table[b] = Unicode.Scalar(256 + n)!; n += 1 }
        }
        return table
    }()

    public static let scalarToByte: [Unicode.Scalar: UInt8] = {
        var m = [Unicode.Scalar: UInt8]()
        for (b, s) in byteToScalar.enumerated() { m[s] = UInt8(b) }
        return m
    }()
}
