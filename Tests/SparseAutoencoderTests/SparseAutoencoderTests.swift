import Foundation
import ModelRuntime
@testable import SparseAutoencoder
import Tensor
import TestSupport
import Testing

@Suite struct BatchTopKTests {
    struct Fixture: Decodable {
        struct Params: Decodable { var encoder: [Double]; var decoder_rows: [Double]; var b_enc: [Double]; var b_dec: [Double]; var threshold: Double? }
        struct Loss: Decodable { var l2: Double; var aux: Double; var dead: Int; var l0: Double }
        struct Inference: Decodable { var x: [Double]; var f: [Double]; var x_hat: [Double] }
        var D: Int, F: Int, B: Int, k: Int
        var lr: Double, aux_alpha: Double, aux_k: Int, dead_tokens: Int
        var x: [Double]
        var `init`: Params
        var loss: Loss
        var after: Params
        var inference: Inference
    }

    static func fixture() throws -> Fixture {
        try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: TestPaths.fixture("batchtopk-step.json")))
    }

    static func maxRelative(_ a: [Float], _ b: [Double]) -> Double {
        let scale = max(1e-6, b.map { abs($0) }.max() ?? 1)
        return zip(a, b).map { abs(Double($0) - $1) }.max()! / scale
    }

    /// One step against dictionary_learning's BatchTopK step in torch (float64), including the aux loss
    /// on dead latents, decoder-parallel gradient removal, clipping, Adam and renormalization.
    @Test func oneStepMatchesTheTorchReference() throws {
        let fx = try Self.fixture()
        var s = BatchTopKSettings(width: fx.F, k: fx.k, tokens: fx.B, batchSize: fx.B)
        s.lr = Float(fx.lr)
        s.warmupSteps = 0
        s.thresholdStartStep = 0
        s.deadTokens = fx.dead_tokens
        s.auxK = fx.aux_k
        s.auxAlpha = Float(fx.aux_alpha)
        s.normalizeActivations = false
        let meta = SAEMetadata(modelName: "test", modelHash: nil, site: Site(layer: 0, kind: .mlpOut), contextSize: 8, prependBos: false)
        let t = try BatchTopKTrainer(dIn: fx.D, settings: s, metadata: meta)
        t.enc = fx.`init`.encoder.map(Float.init)
        t.dec = fx.`init`.decoder_rows.map(Float.init)
        t.bEnc = fx.`init`.b_enc.map(Float.init)
        let stats = try t.step(fx.x.map(Float.init))
        // b_dec was initialized at the geometric median before the step; compare it through the result.
        #expect(abs(stats.mse - fx.loss.l2) < 1e-4 * fx.loss.l2)
        #expect(abs(stats.auxLoss - fx.loss.aux) < 1e-4 * max(1, fx.loss.aux))
        #expect(stats.dead == fx.loss.dead)
        #expect(stats.l0 == fx.loss.l0)
        #expect(Self.maxRelative(t.enc, fx.after.encoder) < 1e-4)
        #expect(Self.maxRelative(t.dec, fx.after.decoder_rows) < 1e-4)
        #expect(Self.maxRelative(t.bEnc, fx.after.b_enc) < 1e-4)
        #expect(Self.maxRelative(t.bDec, fx.after.b_dec) < 1e-4)
        #expect(abs(Double(t.theta) - fx.after.threshold!) < 1e-5)
        for j in 0..<fx.F {
            let n = (0..<fx.D).reduce(Float(0)) { $0 + t.dec[j * fx.D + $1] * t.dec[j * fx.D + $1] }
            #expect(abs(n - 1) < 1e-5, "decoder row \(j) has norm² \(n)")
        }
        // Inference form: JumpReLU with the global θ.
        let sae = try t.finish()
        let rows = fx.inference.x.count / fx.D
        let f = sae.encode(fx.inference.x.map(Float.init), rows: rows)
        #expect(Self.maxRelative(f, fx.inference.f) < 1e-4)
        #expect(Self.maxRelative(sae.decode(f, rows: rows), fx.inference.x_hat) < 1e-4)
    }

    @Test func kthLargestSelectsTheBatchCut() {
        var rng = Xoshiro256(seed: 3)
        for n in [1, 2, 17, 1000] {
            let a = (0..<n).map { _ in Float(rng.next() % 97) }
            for k in Set([1, n / 2 + 1, n]) {
                var b = a
                #expect(BatchTopKTrainer.kthLargest(&b, k) == a.sorted(by: >)[k - 1])
            }
        }
    }

    @Test func learningRateScheduleWarmsUpAndDecays() {
        var s = BatchTopKSettings(width: 64, k: 4, tokens: 100 * 10, batchSize: 10)
        s.lr = 1
        s.warmupSteps = 10
        #expect(abs(s.learningRate(step: 0) - 0.1) < 1e-6)
        #expect(s.learningRate(step: 50) == 1)
        #expect(abs(s.learningRate(step: 90) - 0.5) < 1e-6)
        #expect(s.learningRate(step: 99) > 0)
    }

    /// Training on data with a known sparse structure drives FVU far down and keeps L0 at k.
    @Test func trainingRecoversSparseStructure() throws {
        let D = 16, F = 32, k = 2, n = 4096
        var rng = Xoshiro256(seed: 11)
        var gauss = GaussianSource(seed: 5)
        var atoms = (0..<F).map { _ in (0..<D).map { _ in gauss.next() } }
        for j in 0..<F { let nn = atoms[j].reduce(0) { $0 + $1 * $1 }.squareRoot(); atoms[j] = atoms[j].map { $0 / nn } }
        var x = [Float](repeating: 0, count: n * D)
        for r in 0..<n {
            for _ in 0..<k {
                let j = Int(rng.next() % UInt64(F)), a = 1 + Float(rng.next() % 100) / 50
                for i in 0..<D { x[r * D + i] += a * atoms[j][i] }
            }
        }
        var s = BatchTopKSettings(width: F, k: k, tokens: 1000 * 256, batchSize: 256)
        s.lr = 1e-2
        let t = try BatchTopKTrainer(dIn: D, settings: s,
                                     metadata: SAEMetadata(modelName: "t", modelHash: nil, site: Site(layer: 0, kind: .residOut), contextSize: 1, prependBos: false))
        var first: Double?
        var last: SAEStepStats?
        for step in 0..<s.steps {
            let start = (step * 256) % n
            last = try t.step(Array(x[(start * D)..<((start + 256) * D)]))
            if first == nil { first = last!.fvu }
        }
        #expect(last!.fvu < 0.2 && last!.fvu < first! / 3, "FVU \(first!) → \(last!.fvu)")
        #expect(last!.l0 == Double(k))
        let sae = try t.finish()
        let q = sae.reconstructionQuality(Array(x.prefix(512 * D)), rows: 512)
        #expect(q.fvu < 0.3, "inference FVU \(q.fvu)")
        #expect(q.l0 > 0.5 * Double(k) && q.l0 < 3 * Double(k), "inference L0 \(q.l0)")
    }
}

@Suite struct SAEFileTests {
    static func smallSAE(site: Site = Site(layer: 1, kind: .mlpOut), d: Int = 6, f: Int = 10) throws -> SparseAutoencoder {
        var g = GaussianSource(seed: 1)
        let sae = try SparseAutoencoder(dIn: d, width: f, encoder: (0..<(d * f)).map { _ in g.next() }, encoderBias: (0..<f).map { _ in g.next() * 0.1 },
                                        decoder: (0..<(d * f)).map { _ in g.next() }, decoderBias: (0..<d).map { _ in g.next() },
                                        threshold: [Float](repeating: 0.3, count: f), k: 3,
                                        metadata: SAEMetadata(modelName: "tiny", modelHash: "abc", site: site, contextSize: 64, prependBos: false))
        sae.training = ["fvu_held_out": .number(0.25), "trainer": .string("BatchTopK")]
        sae.logSparsity = (0..<f).map { -Float($0) / 3 }
        return sae
    }

    @Test func encodeIsJumpReLUOfTheCenteredInput() throws {
        let sae = try Self.smallSAE()
        let x: [Float] = [0.5, -1, 2, 0, 0.25, -0.75]
        let f = sae.encode(x, rows: 1)
        for j in 0..<sae.width {
            var pre = sae.encoderBias[j]
            for i in 0..<sae.dIn { pre += (x[i] - sae.decoderBias[i]) * sae.encoder[j * sae.dIn + i] }
            #expect(abs(f[j] - (pre > 0.3 ? pre : 0)) < 1e-5)
        }
        let xh = sae.decode(f, rows: 1)
        for i in 0..<sae.dIn {
            let want = sae.decoderBias[i] + (0..<sae.width).reduce(Float(0)) { $0 + f[$1] * sae.decoder[$1 * sae.dIn + i] }
            #expect(abs(xh[i] - want) < 1e-5)
        }
    }

    @Test func saeLensRoundTripIsExact() throws {
        let dir = try TestPaths.temporaryDirectory("sae")
        defer { try? FileManager.default.removeItem(at: dir) }
        let sae = try Self.smallSAE()
        try sae.save(to: dir)
        let back = try SparseAutoencoder.load(from: dir)
        #expect(back.encoder == sae.encoder && back.decoder == sae.decoder && back.encoderBias == sae.encoderBias)
        #expect(back.decoderBias == sae.decoderBias && back.threshold == sae.threshold && back.k == 3)
        #expect(back.metadata == sae.metadata && back.logSparsity == sae.logSparsity)
        #expect(back.training["fvu_held_out"] == .number(0.25) && back.training["trainer"] == .string("BatchTopK"))
        // SAELens' layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in], per-latent threshold.
        let st = try SafetensorsFile(path: dir.appendingPathComponent("sae_weights.safetensors").path)
        #expect(st.entries["W_enc"]?.shape == [6, 10] && st.entries["W_dec"]?.shape == [10, 6] && st.entries["threshold"]?.shape == [10])
        let wEnc = try st.floats("W_enc")
        #expect(wEnc[2 * 10 + 7] == sae.encoder[7 * 6 + 2])
        let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("cfg.json"))) as! [String: Any]
        #expect(cfg["architecture"] as? String == "jumprelu" && cfg["d_in"] as? Int == 6 && cfg["d_sae"] as? Int == 10)
        #expect((cfg["metadata"] as? [String: Any])?["hook_name"] as? String == "blocks.1.hook_mlp_out")
    }

    @Test func dictionaryLearningConvertedWeightsLoad() throws {
        let dir = try TestPaths.temporaryDirectory("sae-dl")
        defer { try? FileManager.default.removeItem(at: dir) }
        let sae = try Self.smallSAE(site: Site(layer: 4, kind: .mlpOut))
        let (d, f) = (sae.dIn, sae.width)
        var decT = [Float](repeating: 0, count: d * f)  // decoder.weight [D, F]
        for j in 0..<f { for i in 0..<d { decT[i * f + j] = sae.decoder[j * d + i] } }
        try SafetensorsFile.write([("encoder.weight", [f, d], sae.encoder), ("encoder.bias", [f], sae.encoderBias), ("decoder.weight", [d, f], decT),
                                   ("b_dec", [d], sae.decoderBias), ("threshold", [], [0.3])], to: dir.appendingPathComponent("ae.safetensors").path)
        let cfg: [String: Any] = ["trainer": ["dict_class": "BatchTopKSAE", "activation_dim": d, "dict_size": f, "k": 3, "layer": 4,
                                              "lm_name": "tiny", "submodule_name": "mlp_out_layer_4"], "buffer": ["ctx_len": 128]]
        try JSONSerialization.data(withJSONObject: cfg).write(to: dir.appendingPathComponent("config.json"))
        let back = try SparseAutoencoder.load(from: dir)
        #expect(back.encoder == sae.encoder && back.decoder == sae.decoder && back.threshold == sae.threshold)
        #expect(back.metadata.site == Site(layer: 4, kind: .mlpOut) && back.k == 3)
        let x: [Float] = [0.1, 0.2, -0.3, 0.4, 0.5, -0.6]
        #expect(back.encode(x, rows: 1) == sae.encode(x, rows: 1))
    }

    @Test func badFilesGiveClearErrors() throws {
        let dir = try TestPaths.temporaryDirectory("sae-bad")
        defer { try? FileManager.default.removeItem(at: dir) }
        let sae = try Self.smallSAE()
        try sae.save(to: dir)
        func code(_ body: () throws -> Void) -> SAEError.Code? {
            do { try body(); return nil } catch let e as SAEError { return e.code } catch { return nil }
        }
        // Dimensions that do not fit the site.
        #expect(code { try SparseAutoencoder.load(from: dir).check(site: Site(layer: 1, kind: .mlpOut), width: 7) } == .shape)
        #expect(code { try SparseAutoencoder.load(from: dir).check(site: Site(layer: 2, kind: .mlpOut), width: 6) } == .shape)
        // A missing threshold for a JumpReLU SAE.
        let w = dir.appendingPathComponent("sae_weights.safetensors")
        let st = try SafetensorsFile(path: w.path)
        var tensors: [(name: String, shape: [Int], data: [Float])] = []
        for name in ["W_enc", "b_enc", "W_dec", "b_dec"] { tensors.append((name, st.entries[name]!.shape, try st.floats(name))) }
        try SafetensorsFile.write(tensors, to: w.path)
        do { _ = try SparseAutoencoder.load(from: dir); Issue.record("a JumpReLU SAE without threshold loaded") } catch let e as SAEError {
            #expect(e.code == .missing && e.message.contains("threshold"))
        }
        // A corrupt (truncated) weights file.
        try sae.save(to: dir)
        let bytes = try Data(contentsOf: w)
        try bytes.prefix(bytes.count / 2).write(to: w)
        #expect(code { _ = try SparseAutoencoder.load(from: dir) } == .corrupt)
        // Garbage config, a missing directory.
        try Data("{not json".utf8).write(to: dir.appendingPathComponent("cfg.json"))
        #expect(code { _ = try SparseAutoencoder.load(from: dir) } == .corrupt)
        #expect(code { _ = try SparseAutoencoder.load(from: dir.appendingPathComponent("nope")) } == .io)
    }

    @Test func coverageIsOneForChangesTheSAEReproduces() throws {
        let sae = try Self.smallSAE()
        let v: [Float] = [0.2, 0.1, -0.4, 0.3, 0.0, 0.5]
        #expect(sae.coverage(before: v, after: v).coverage == 1)
        // A change the SAE maps to its own reconstruction change: coverage 1 by construction.
        let f = sae.encode(v, rows: 1)
        var g = f
        if let j = f.firstIndex(where: { $0 > 0 }) { g[j] += 1 }
        let a = sae.decode(f, rows: 1), b = sae.decode(g, rows: 1)
        let after = zip(v, zip(b, a)).map { $0 + $1.0 - $1.1 }
        let c = sae.coverage(before: v, after: after)
        #expect(c.outside >= 0 && c.changeNorm > 0)
        // The subject's reconstruction error: 0 for a vector the SAE reproduces, by brute force otherwise.
        let rec = sae.decode(sae.encode(v, rows: 1), rows: 1)
        #expect(sae.reconstructionError(rec, reconstruction: rec) == 0)
        let num = zip(v, rec).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
        let den = zip(v, sae.decoderBias).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
        #expect(abs(sae.reconstructionError(v) - num / den) <= 1e-9 * max(1, num / den))
        #expect(abs((c.subjectError ?? -1) - num / den) <= 1e-9 * max(1, num / den))
    }
}

/// EleutherAI's sparsify layout (the public SmolLM2-135M SAEs), against the fixture written by
/// ops/sae/make_sparsify_fixture.py (expected values computed there in float64).
@Suite struct SparsifyLayoutTests {
    static let fixture = TestPaths.fixture("sparsify-topk")

    @Test func topKSAEReproducesTheFixturesLatentsAndReconstructions() throws {
        let sae = try SparseAutoencoder.load(from: Self.fixture.appendingPathComponent("layers.1.mlp"))
        let data = try Data(contentsOf: Self.fixture.appendingPathComponent("expected.json"))
        let expected = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let cases = try #require(expected["cases"] as? [[String: [Double]]])
        #expect(sae.dIn == 8 && sae.width == 24 && sae.topK == 3 && sae.k == 3)
        #expect(sae.metadata.site == Site(layer: 1, kind: .mlpOut))
        for c in cases {
            let x = c["x"]!.map(Float.init)
            let f = sae.encode(x, rows: 1)
            #expect(f.filter { $0 != 0 }.count <= 3)
            for (got, want) in zip(f, c["latents"]!) { #expect(abs(Double(got) - want) <= 1e-5 * max(1, abs(want))) }
            let xHat = sae.decode(f, rows: 1)
            for (got, want) in zip(xHat, c["reconstruction"]!) { #expect(abs(Double(got) - want) <= 1e-5 * max(1, abs(want))) }
        }
        // Read in place, not rewritten as JumpReLU (which would lose the per-token top k).
        let dir = try TestPaths.temporaryDirectory("sparsify-save")
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: SAEError.self) { try sae.save(to: dir) }
    }

    /// Copies the fixture's SAE into a directory named `name`, with `edit` applied to its cfg.json.
    static func copy(named name: String, in dir: URL, edit: (inout [String: Any]) -> Void = { _ in }) throws -> URL {
        let target = dir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        let source = fixture.appendingPathComponent("layers.1.mlp")
        try FileManager.default.copyItem(at: source.appendingPathComponent("sae.safetensors"), to: target.appendingPathComponent("sae.safetensors"))
        var cfg = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: source.appendingPathComponent("cfg.json"))) as? [String: Any])
        edit(&cfg)
        try JSONSerialization.data(withJSONObject: cfg).write(to: target.appendingPathComponent("cfg.json"))
        return target
    }

    @Test func hookpointsNameTheSiteAndBadFilesGetClearErrors() throws {
        let dir = try TestPaths.temporaryDirectory("sparsify-bad")
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try SparseAutoencoder.load(from: Self.copy(named: "layers.4", in: dir)).metadata.site == Site(layer: 4, kind: .residOut))
        #expect(try SparseAutoencoder.load(from: Self.copy(named: "model.layers.2.mlp", in: dir)).metadata.site == Site(layer: 2, kind: .mlpOut))
        // A directory that names no hookpoint needs the site from the caller.
        let anonymous = try Self.copy(named: "my-sae", in: dir)
        #expect(throws: SAEError.self) { _ = try SparseAutoencoder.load(from: anonymous) }
        #expect(try SparseAutoencoder.load(from: anonymous, site: Site(layer: 3, kind: .mlpOut)).metadata.site.layer == 3)
        let bad: [(String, (inout [String: Any]) -> Void)] = [
            ("no-k", { $0["k"] = nil }),
            ("k-too-large", { $0["k"] = 1000 }),
            ("skip", { $0["skip_connection"] = true }),
            ("transcoder", { $0["transcode"] = true }),
            ("wrong-width", { $0["num_latents"] = 30 }),
            ("no-d-in", { $0["d_in"] = nil }),
        ]
        for (name, edit) in bad {
            let d = dir.appendingPathComponent(name)
            let sae = try Self.copy(named: "layers.1.mlp", in: d, edit: edit)
            #expect(throws: SAEError.self, "\(name)") { _ = try SparseAutoencoder.load(from: sae) }
        }
        // A weights file cut short.
        let cut = try Self.copy(named: "layers.1.mlp", in: dir.appendingPathComponent("cut"))
        let weights = cut.appendingPathComponent("sae.safetensors")
        try Data(try Data(contentsOf: weights).prefix(200)).write(to: weights)
        #expect(throws: SAEError.self) { _ = try SparseAutoencoder.load(from: cut) }
    }
}

@Suite struct ActivationCacheTests {
    @Test func aMissingCacheKeepsTheFileErrorsAsCauses() throws {
        let dir = try TestPaths.temporaryDirectory("acts")
        defer { try? FileManager.default.removeItem(at: dir) }
        let error = try #require(throws: SAEError.self) { _ = try ActivationCache(url: dir.appendingPathComponent("gone.f16")) }
        #expect(error.code == .io)
        let mapping = try #require(error.cause as? ModelError, "the mapping's error is kept: \(String(describing: error.cause))")
        #expect(mapping.code == .fileNotFound && (mapping.cause as? POSIXError)?.code == .ENOENT)
    }

    @Test func harvestStoresSiteActivationsWithoutTheFirstPosition() throws {
        let dir = try TestPaths.temporaryDirectory("acts")
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = try TinyModel.load()
        let texts = ["Paris is a city in France and a capital.", "Rome is the capital of Italy, on the Tiber."]
        let site = Site(layer: 1, kind: .mlpOut)
        let spec = ActivationSpec(modelHash: m.weightHash, site: site, tokens: 30, sequenceLength: 16, seed: 0)
        let url = dir.appendingPathComponent("a.f16")
        let cache = try #require(try ActivationCache.harvest(model: m, spec: spec, articleCount: 2, article: { texts[$0] }, to: url))
        #expect(cache.dim == m.config.hidden && cache.rows > 0 && cache.rows <= 30)
        let reopened = try ActivationCache(url: url, verify: true)
        #expect(reopened.rows == cache.rows && reopened.spec == spec)
        // Row 0 is position 1 of the first text.
        let ids = Array(m.tokenizer.encode(texts[0], addSpecial: false, parseSpecial: false).prefix(16))
        let direct = try m.forward(ids, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1)).activations[site]!.data
        var row = [Float](repeating: 0, count: cache.dim)
        row.withUnsafeMutableBufferPointer { reopened.read(rows: [0], into: $0.baseAddress!) }
        for i in 0..<cache.dim { #expect(abs(row[i] - direct[cache.dim + i]) <= 1e-3 * max(1, abs(direct[cache.dim + i]))) }
        // A flipped payload byte fails verification.
        var bytes = try Data(contentsOf: url)
        bytes[bytes.count - 3] ^= 0x40
        try bytes.write(to: url)
        #expect(throws: SAEError.self) { _ = try ActivationCache(url: url, verify: true) }
    }

    static let articles = ["Paris is a city in France and a capital.", "Rome is the capital of Italy, on the Tiber.",
                           "Berlin lies on the Spree in the east of Germany.", "Madrid is the largest city of Spain by population.",
                           "Vienna was the seat of the Habsburg monarchy for centuries."]

    @Test func packedPassesGiveTheRowsOfOneArticleAtATime() throws {
        let dir = try TestPaths.temporaryDirectory("acts-pack")
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = try TinyModel.load()
        let sites = [Site(layer: 1, kind: .mlpOut), Site(layer: 0, kind: .mlpKey)]
        let specs = sites.map { ActivationSpec(modelHash: m.weightHash, site: $0, tokens: 40, sequenceLength: 12, seed: 0) }
        let texts = Self.articles
        let packed = try #require(try ActivationCache.harvest(model: m, specs: specs, articleCount: texts.count, article: { texts[$0] },
                                                             to: sites.map { dir.appendingPathComponent("p-\($0).f16") }, packTokens: 64))
        let single = try #require(try ActivationCache.harvest(model: m, specs: specs, articleCount: texts.count, article: { texts[$0] },
                                                             to: sites.map { dir.appendingPathComponent("s-\($0).f16") }, packTokens: 1))
        #expect(packed[1].dim == m.config.intermediate && packed[0].dim == m.config.hidden)
        for (p, s) in zip(packed, single) {
            #expect(p.rows == s.rows && p.rows == 40 && p.articles == s.articles)
            var a = [Float](repeating: 0, count: p.rows * p.dim), b = a
            a.withUnsafeMutableBufferPointer { p.read(rows: Array(0..<p.rows)[...], into: $0.baseAddress!) }
            b.withUnsafeMutableBufferPointer { s.read(rows: Array(0..<s.rows)[...], into: $0.baseAddress!) }
            // Half floats of the same activations; the packed pass's products may round differently.
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 2e-3 * max(1, abs(b[i]))) }
        }
    }

    @Test func anInterruptedHarvestResumesWhereItStopped() throws {
        let dir = try TestPaths.temporaryDirectory("acts-resume")
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = try TinyModel.load()
        let spec = ActivationSpec(modelHash: m.weightHash, site: Site(layer: 1, kind: .residOut), tokens: 45, sequenceLength: 12, seed: 0)
        let texts = Self.articles
        let whole = try #require(try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count, article: { texts[$0] },
                                                            to: dir.appendingPathComponent("whole.f16"), packTokens: 24))
        let url = dir.appendingPathComponent("resumed.f16")
        var passes = 0
        let stopped = try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count, article: { texts[$0] }, to: url,
                                                  packTokens: 24, progress: { _, _ in passes += 1 }, shouldStop: { passes == 1 })
        #expect(stopped == nil && !FileManager.default.fileExists(atPath: url.path))
        // A pass that was cut short after the progress record (as by kill -9) leaves extra bytes: dropped on resume.
        let tmp = try FileHandle(forWritingTo: url.appendingPathExtension("tmp"))
        try tmp.seekToEnd()
        tmp.write(Data(repeating: 0x7f, count: 1000))
        try tmp.close()
        var read: [Int] = []
        let resumed = try #require(try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count,
                                                              article: { read.append($0); return texts[$0] }, to: url, packTokens: 24))
        #expect(read.first.map { $0 > 0 } == true)
        #expect(resumed.rows == whole.rows && resumed.articles == whole.articles)
        #expect(try Data(contentsOf: url).dropFirst(ActivationCache.headerBytes) == Data(contentsOf: whole.url).dropFirst(ActivationCache.headerBytes))
        _ = try ActivationCache(url: url, verify: true)
        #expect(!FileManager.default.fileExists(atPath: url.appendingPathExtension("progress").path))
    }

    @Test func windowsCoverWholeArticlesAndResumeInsideOne() throws {
        let dir = try TestPaths.temporaryDirectory("acts-windows")
        defer { try? FileManager.default.removeItem(at: dir) }
        let m = try TinyModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let texts = Self.articles
        let spec = ActivationSpec(modelHash: m.weightHash, site: site, tokens: 10_000, sequenceLength: 6, seed: 0, windows: true)
        #expect(spec.key.hasSuffix("-win") && ActivationSpec(modelHash: m.weightHash, site: site, tokens: 1).windows == nil)
        // Each article: its BOS (when the tokenizer adds one) before every window of 6 − lead body tokens.
        let tok = m.tokenizer
        var windows: [[Int32]] = []
        for t in texts {
            let ids = tok.encode(t, addSpecial: true, parseSpecial: false)
            let lead = tok.addBOS ? Array(ids.prefix(1)) : []
            let body = Array(ids.dropFirst(lead.count))
            for start in stride(from: 0, to: body.count, by: 6 - lead.count) {
                windows.append(lead + body[start..<min(body.count, start + 6 - lead.count)])
            }
        }
        let expectedRows = windows.map { $0.count - 1 }.reduce(0, +)
        #expect(windows.count > 2 * texts.count, "every article spans several windows")
        let whole = try #require(try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count, article: { texts[$0] },
                                                            to: dir.appendingPathComponent("whole.f16"), packTokens: 16))
        #expect(whole.rows == expectedRows && whole.articles == texts.count)
        // Row by row, the activations of each window run on its own (position 0 dropped).
        var rows = [Float](repeating: 0, count: whole.rows * whole.dim)
        rows.withUnsafeMutableBufferPointer { whole.read(rows: Array(0..<whole.rows)[...], into: $0.baseAddress!) }
        var at = 0
        for w in windows {
            let direct = try m.forward(w, options: ForwardOptions(capture: [site], logits: .none, stopAfterLayer: 1)).activations[site]!.data
            for i in whole.dim..<direct.count {
                #expect(abs(rows[at * whole.dim + i - whole.dim] - direct[i]) <= 2e-3 * max(1, abs(direct[i])))
            }
            at += w.count - 1
        }
        // Stopped after the first pass (inside the first article) and resumed: the same bytes.
        let url = dir.appendingPathComponent("resumed.f16")
        var passes = 0
        let stopped = try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count, article: { texts[$0] }, to: url,
                                                  packTokens: 16, progress: { _, _ in passes += 1 }, shouldStop: { passes == 1 })
        #expect(stopped == nil)
        let progress = try JSONSerialization.jsonObject(with: Data(contentsOf: url.appendingPathExtension("progress"))) as? [String: Any]
        #expect((progress?["articles"] as? Int) == 0 && ((progress?["offset"] as? Int) ?? 0) > 0, "stopped inside the first article")
        let resumed = try #require(try ActivationCache.harvest(model: m, spec: spec, articleCount: texts.count, article: { texts[$0] },
                                                              to: url, packTokens: 16))
        #expect(resumed.rows == whole.rows && resumed.articles == whole.articles)
        #expect(try Data(contentsOf: url).dropFirst(ActivationCache.headerBytes) == Data(contentsOf: whole.url).dropFirst(ActivationCache.headerBytes))
    }

    @Test func splicingAnExactReconstructionRecoversAllLoss() throws {
        let m = try TinyModel.load()
        let site = Site(layer: 1, kind: .mlpOut)
        let d = m.config.hidden
        // An SAE that reconstructs exactly: identity encoder/decoder pairs ±e_i, threshold 0.
        var enc = [Float](repeating: 0, count: 2 * d * d), dec = enc
        for i in 0..<d { enc[i * d + i] = 1; dec[i * d + i] = 1; enc[(d + i) * d + i] = -1; dec[(d + i) * d + i] = -1 }
        let sae = try SparseAutoencoder(dIn: d, width: 2 * d, encoder: enc, encoderBias: .init(repeating: 0, count: 2 * d), decoder: dec,
                                        decoderBias: .init(repeating: 0, count: d), threshold: .init(repeating: 0, count: 2 * d), k: nil,
                                        metadata: SAEMetadata(modelName: "tiny", modelHash: nil, site: site, contextSize: 16, prependBos: false))
        let seq = m.tokenizer.encode("Paris is a city in France and Rome is in Italy.", addSpecial: false, parseSpecial: false)
        let l = try sae.spliceLosses(model: m, sequences: [seq], skipFirst: 1)
        #expect(abs(l.spliced - l.clean) < 1e-4 && l.zero != l.clean)
    }
}
