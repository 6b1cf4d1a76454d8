import Editing
import Foundation
import ModelRuntime
import Tensor
import Testing

@Suite struct KeyStatisticsTests {
    static func corpus(in dir: URL) throws -> String {
        var text = ""
        let words = ["Paris is big", "Rome is old", "the river flows", "is Paris in France", "Rome Rome Rome"]
        for i in 0..<12 {
            text += "<doc id=\"\(i)\" url=\"x\" title=\"T\(i)\">\nTitle \(i)\n"
            for j in 0..<(3 + i % 4) { text += words[(i + j) % words.count] + " and more text number \(i * 10 + j).\n" }
            text += "</doc>\n"
        }
        let p = dir.appendingPathComponent("corpus.txt").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    @Test func corpusStripsDocLinesAndShufflesDeterministically() throws {
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.corpus(in: dir)
        let a = try Corpus(path: path, seed: 1), b = try Corpus(path: path, seed: 1), c = try Corpus(path: path, seed: 2)
        #expect(a.count == 12)
        let ta = (0..<a.count).map { a.article($0) }
        #expect(ta == (0..<b.count).map { b.article($0) })
        #expect(ta != (0..<c.count).map { c.article($0) })
        #expect(ta.allSatisfy { !$0.contains("<doc") && !$0.contains("</doc>") && $0.hasPrefix("Title") })
        // Each title travels with its article through the shuffle.
        #expect((0..<a.count).allSatisfy { ta[$0].hasPrefix("Title " + a.titles[$0].dropFirst()) && a.titles[$0].hasPrefix("T") })
    }

    /// Titles are read from the `<doc>` lines with WikiExtractor's entities unescaped; the entity names
    /// are the first N distinct non-empty ones in the seed's order, less the excluded, and too few is an error.
    @Test func entityNamesAreTheDistinctTitlesInArticleOrder() throws {
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let titles = ["AT&amp;T", "Guns N&#39; Roses", "AT&amp;T", "", "Mawson Glacier", "&quot;Q&quot;"]
        var text = ""
        for (i, t) in titles.enumerated() { text += "<doc id=\"\(i)\" url=\"x\" title=\"\(t)\">\nBody \(i)\n</doc>\n" }
        text += "<doc id=\"9\" url=\"x\">\nNo title\n</doc>\n"
        let p = dir.appendingPathComponent("corpus.txt").path
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        let corpus = try Corpus(path: p, seed: 5)
        #expect(Set(corpus.titles) == ["AT&T", "Guns N' Roses", "", "Mawson Glacier", "\"Q\""])
        let names = try EntityKeySettings(weight: 1, subjects: 3, seed: 5).names(from: corpus, excluding: ["Mawson Glacier"])
        #expect(names == corpus.titles.filter { !$0.isEmpty && $0 != "Mawson Glacier" }.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } })
        #expect(Set(names) == ["AT&T", "Guns N' Roses", "\"Q\""])
        #expect(throws: EditError.self) { try EntityKeySettings(weight: 1, subjects: 5).names(from: corpus) }

        // neighbours.bank corpus_titles: the titles in article order, past the names entity_keys holds.
        let bank = NeighbourSettings(count: 1, klFactor: 0, candidates: 2, bank: .corpusTitles)
        let entities = EntityKeySettings(weight: 1, subjects: 2, seed: 5)
        let held = try entities.names(from: corpus)
        let rest = try bank.titleCandidates(corpus: corpus, entityKeys: entities)
        #expect(rest == corpus.titles.filter { !$0.isEmpty && !held.contains($0) })
        #expect(Set(rest).count == 2 && Set(rest).isDisjoint(with: held))
        #expect(try bank.titleCandidates(corpus: corpus, entityKeys: nil) == corpus.titles.filter { !$0.isEmpty })
        var three = bank
        three.candidates = 3
        #expect(throws: EditError.self) { try three.titleCandidates(corpus: corpus, entityKeys: entities) }
    }

    @Test func momentMatchesDirectComputationAndResumes() throws {
        let m = try TinyEditModel.load()
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let corpus = try Corpus(path: try Self.corpus(in: dir), seed: 0)
        let specs = [1, 2].map { KeyStatisticsSpec(modelHash: m.weightHash, layer: $0, tokens: 400, sequenceLength: 32, seed: 0) }
        let full = try KeyStatisticsBuilder(model: m, specs: specs, corpus: corpus, checkpoint: nil).run()!

        // Direct: the same articles, truncated the same way, keys read from full forward passes.
        let ff = m.config.intermediate
        var sum = [Double](repeating: 0, count: ff * ff), n = 0, i = 0
        while n < 400 && i < corpus.count {
            var ids = m.tokenizer.encode(corpus.article(i), addSpecial: false, parseSpecial: false)
            i += 1
            ids = Array(ids.prefix(min(32, 400 - n)))
            guard ids.count >= 2 else { continue }
            let k = try m.forward(ids, options: ForwardOptions(capture: [Site(layer: 2, kind: .mlpKey)], logits: .none)).activations[Site(layer: 2, kind: .mlpKey)]!
            for t in 0..<ids.count { for a in 0..<ff { for b in 0..<ff { sum[a * ff + b] += Double(k.data[t * ff + a]) * Double(k.data[t * ff + b]) } } }
            n += ids.count
        }
        #expect(full[1].count == n)
        let direct = sum.map { Float($0 / Double(n)) }
        #expect(Vector.maxAbsDifference(direct, full[1].moment) < 1e-4 * max(1, direct.map(abs).max()!))

        // Interrupted after a few articles, then resumed from the checkpoint: same result.
        let ckpt = dir.appendingPathComponent("stats.ckpt")
        var b = try KeyStatisticsBuilder(model: m, specs: specs, corpus: corpus, checkpoint: ckpt)
        b.checkpointInterval = 0
        var calls = 0
        let stopped = try b.run(shouldStop: { calls += 1; return calls > 3 })
        #expect(stopped == nil)
        #expect(FileManager.default.fileExists(atPath: ckpt.path))
        let resumed = try b.run()!
        #expect(resumed[0].moment == full[0].moment && resumed[1].moment == full[1].moment)
        #expect(resumed[1].count == full[1].count)
        #expect(!FileManager.default.fileExists(atPath: ckpt.path), "the checkpoint is removed once complete")
    }

    /// One pass over every layer of a 30-layer model still names a checkpoint a file system accepts
    /// (at most 255 bytes), distinct per set of layers; a few layers keep the readable joined name.
    @Test func checkpointNamesFitAFileSystem() throws {
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hash = "0a8d0d8a6913af64"
        let state = EditState(directory: dir, baseHash: hash)
        func specs(_ layers: ClosedRange<Int>) -> [KeyStatisticsSpec] {
            layers.map { KeyStatisticsSpec(modelHash: hash, layer: $0, tokens: 300_000) }
        }
        let few = state.checkpointURL(specs(3...7)).lastPathComponent
        #expect(few == specs(3...7).map(\.key).joined(separator: "+") + ".ckpt")
        var names = Set<String>()
        for layers in [0...6, 0...29, 1...29, 0...28] {
            let url = state.checkpointURL(specs(layers))
            #expect(url.lastPathComponent.utf8.count + ".tmp".utf8.count <= 255, "\(url.lastPathComponent)")
            names.insert(url.lastPathComponent)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data([1]).write(to: url.appendingPathExtension("tmp"))
        }
        #expect(names.count == 4)
    }

    @Test func filesRoundTripAndCorruptionIsDetected() throws {
        let dir = try EditTestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = KeyStatisticsSpec(modelHash: String(repeating: "ab", count: 32), layer: 3, tokens: 10)
        let s = KeyStatistics(spec: spec, dim: 3, count: 10, moment: [2, 1, 0, 1, 2, 1, 0, 1, 2])
        let state = EditState(directory: dir, baseHash: spec.modelHash)
        let url = state.statisticsURL(spec)
        try s.write(to: url)
        let back = try #require(try state.cachedStatistics(spec))
        #expect(back.moment == s.moment && back.count == 10 && back.spec == spec)
        // C x = k solved through the cached factor.
        let x = try back.solve([1, 2, 3], ridge: 0)
        #expect(Vector.maxAbsDifference([2 * x[0] + x[1], x[0] + 2 * x[1] + x[2], x[1] + 2 * x[2]], [1, 2, 3]) < 1e-5)
        var bytes = try Data(contentsOf: url)
        bytes[bytes.count - 1] ^= 0x40
        try bytes.write(to: url)
        #expect { try KeyStatistics.read(from: url) } throws: { ($0 as? EditError)?.message.contains("checksum") == true }
        #expect(try state.cachedStatistics(KeyStatisticsSpec(modelHash: spec.modelHash, layer: 4, tokens: 10)) == nil)
    }
}
