import Foundation
import ModelRuntime
import Tensor

/// SAE files: SAELens' native layout (`cfg.json` + `sae_weights.safetensors` [+ `sparsity.safetensors`]),
/// which mesa writes and reads, and dictionary_learning's state dict converted to safetensors
/// (`config.json` + `ae.safetensors`), which it reads (METHODS §4.7).
extension SparseAutoencoder {
    public static let weightsFile = "sae_weights.safetensors"
    public static let configFile = "cfg.json"
    public static let sparsityFile = "sparsity.safetensors"

    /// Writes the SAELens layout into `directory` (created if needed). BatchTopK is saved as a JumpReLU
    /// SAE with the global θ as per-latent `threshold`, as SAELens does. Files are written under
    /// temporary names and renamed, the config last, so a reader never sees a half-written SAE.
    public func save(to directory: URL) throws {
        guard topK == nil else { throw SAEError(.settings, "a per-token TopK SAE (sparsify) has no JumpReLU form to save; it is read in place") }
        let fm = FileManager.default
        do { try fm.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw SAEError(.io, "cannot create \(directory.path): \(error)", cause: error)
        }
        let D = dIn, F = width
        // SAELens: W_enc [d_in, d_sae] = encoderᵀ; W_dec [d_sae, d_in] = decoder.
        var wEnc = [Float](repeating: 0, count: D * F)
        for j in 0..<F { for i in 0..<D { wEnc[i * F + j] = encoder[j * D + i] } }
        let weights = directory.appendingPathComponent(Self.weightsFile)
        let tmpWeights = directory.appendingPathComponent(Self.weightsFile + ".tmp")
        do {
            try SafetensorsFile.write([("W_enc", [D, F], wEnc), ("b_enc", [F], encoderBias), ("W_dec", [F, D], decoder),
                                       ("b_dec", [D], decoderBias), ("threshold", [F], threshold)],
                                      metadata: ["format": "pt"], to: tmpWeights.path)
            if let s = logSparsity {
                try SafetensorsFile.write([("sparsity", [F], s)], metadata: ["format": "pt"],
                                          to: directory.appendingPathComponent(Self.sparsityFile).path)
            }
        } catch let e as SAEError { throw e } catch { throw SAEError(.io, "cannot write \(tmpWeights.path): \(error)", cause: error) }
        var cfg: [String: Any] = [
            "architecture": "jumprelu",
            "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": true,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": [
                "model_name": metadata.modelName, "hook_name": metadata.hookName, "hook_head_index": NSNull(),
                "context_size": metadata.contextSize, "prepend_bos": metadata.prependBos,
                "dataset_path": "enwiki-2015-sample", "sae_lens_training_version": NSNull(),
            ] as [String: Any],
            // Pre-6.0 SAELens reads these at the top level.
            "model_name": metadata.modelName, "hook_name": metadata.hookName, "hook_layer": metadata.site.layer,
            "context_size": metadata.contextSize, "prepend_bos": metadata.prependBos,
        ]
        var mesa: [String: Any] = ["site": metadata.site.description, "trained_architecture": "batchtopk"]
        if let h = metadata.modelHash { mesa["model_hash"] = h }
        if let k { mesa["k"] = k }
        for (key, v) in training {
            switch v {
            case .number(let d): mesa[key] = d
            case .string(let s): mesa[key] = s
            case .bool(let b): mesa[key] = b
            }
        }
        cfg["mesa"] = mesa
        let cfgURL = directory.appendingPathComponent(Self.configFile)
        do {
            let data = try JSONSerialization.data(withJSONObject: cfg, options: [.prettyPrinted, .sortedKeys])
            try fm.removeItemIfPresent(weights)
            guard rename(tmpWeights.path, weights.path) == 0 else { throw SAEError(.io, "cannot rename \(tmpWeights.path): errno \(errno)") }
            try data.write(to: cfgURL, options: .atomic)
        } catch let e as SAEError { throw e } catch { throw SAEError(.io, "cannot write \(cfgURL.path): \(error)", cause: error) }
    }

    /// Loads an SAE directory in any of three layouts: EleutherAI's sparsify if it has `sae.safetensors`
    /// (with `cfg.json`), SAELens if it has `cfg.json`, dictionary_learning if it has `config.json` and
    /// `ae.safetensors`. `site` is needed only when the files do not say which site the SAE reads
    /// (a dictionary_learning config without it; a sparsify directory not named after its hookpoint).
    public static func load(from directory: URL, site: Site? = nil) throws -> SparseAutoencoder {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory.path, isDirectory: &isDir), isDir.boolValue else {
            throw SAEError(.io, "no SAE directory at \(directory.path)")
        }
        if fm.fileExists(atPath: directory.appendingPathComponent(sparsifyWeightsFile).path) { return try loadSparsify(directory, site: site) }
        if fm.fileExists(atPath: directory.appendingPathComponent(configFile).path) { return try loadSAELens(directory) }
        if fm.fileExists(atPath: directory.appendingPathComponent("config.json").path) { return try loadDictionaryLearning(directory, site: site) }
        throw SAEError(.missing, "\(directory.path) has neither cfg.json (SAELens) nor config.json (dictionary_learning)")
    }

    static func readJSON(_ url: URL) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw SAEError(.io, "cannot read \(url.path)") }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw SAEError(.corrupt, "\(url.path) is not a JSON object")
        }
        return obj
    }

    static func openTensors(_ url: URL) throws -> SafetensorsFile {
        guard FileManager.default.fileExists(atPath: url.path) else { throw SAEError(.missing, "\(url.path) is missing") }
        do { return try SafetensorsFile(path: url.path) } catch { throw SAEError(.corrupt, "\(url.path): \(error)", cause: error) }
    }

    static func tensor(_ file: SafetensorsFile, _ name: String, shape: [Int]) throws -> [Float] {
        guard let e = file.entries[name] else { throw SAEError(.missing, "\(file.path) has no tensor \(name)") }
        guard e.shape == shape || (e.shape.reduce(1, *) == shape.reduce(1, *) && shape.count <= 1 && e.shape.count <= 1) else {
            throw SAEError(.shape, "\(name) has shape \(e.shape), expected \(shape)")
        }
        do { return try file.floats(name) } catch { throw SAEError(.corrupt, "\(file.path): \(error)", cause: error) }
    }

    static func intValue(_ v: Any?) -> Int? { (v as? NSNumber)?.intValue }

    static func loadSAELens(_ directory: URL) throws -> SparseAutoencoder {
        let cfgURL = directory.appendingPathComponent(configFile)
        let cfg = try readJSON(cfgURL)
        let meta = cfg["metadata"] as? [String: Any] ?? [:]
        guard let D = intValue(cfg["d_in"]), let F = intValue(cfg["d_sae"]), D > 0, F > 0 else {
            throw SAEError(.missing, "\(cfgURL.path) lacks positive d_in and d_sae")
        }
        let arch = (cfg["architecture"] as? String) ?? "standard"
        guard ["jumprelu", "batchtopk", "standard", "relu"].contains(arch) else {
            throw SAEError(.settings, "SAE architecture \(arch) is not supported (jumprelu, batchtopk, standard)")
        }
        let norm = (cfg["normalize_activations"] as? String) ?? "none"
        guard norm == "none" else {
            throw SAEError(.settings, "normalize_activations \"\(norm)\" is not supported: fold the scaling into the weights and save with \"none\"")
        }
        guard let hook = (meta["hook_name"] as? String) ?? (cfg["hook_name"] as? String) ?? (cfg["hook_point"] as? String) else {
            throw SAEError(.missing, "\(cfgURL.path) names no hook (metadata.hook_name, hook_name or hook_point)")
        }
        guard let site = SAEMetadata.site(hookName: hook) else { throw SAEError(.settings, "hook \(hook) is not a site mesa knows") }
        let file = try openTensors(directory.appendingPathComponent(weightsFile))
        let wEnc = try tensor(file, "W_enc", shape: [D, F])
        var bEnc = try tensor(file, "b_enc", shape: [F])
        let wDec = try tensor(file, "W_dec", shape: [F, D])
        let bDec = try tensor(file, "b_dec", shape: [D])
        let threshold: [Float]
        if arch == "jumprelu" || arch == "batchtopk" {
            guard file.entries["threshold"] != nil else {
                throw SAEError(.missing, "a \(arch) SAE needs a threshold tensor [\(F)]; \(file.path) has none")
            }
            threshold = try tensor(file, "threshold", shape: [F])
        } else {
            threshold = [Float](repeating: 0, count: F)
        }
        var encoder = [Float](repeating: 0, count: F * D)
        for i in 0..<D { for j in 0..<F { encoder[j * D + i] = wEnc[i * F + j] } }
        if let apply = cfg["apply_b_dec_to_input"] as? Bool, !apply {
            // x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc).
            for j in 0..<F {
                var s: Float = 0
                for i in 0..<D { s += bDec[i] * encoder[j * D + i] }
                bEnc[j] += s
            }
        }
        let mesa = cfg["mesa"] as? [String: Any] ?? [:]
        let metadata = SAEMetadata(modelName: (meta["model_name"] as? String) ?? (cfg["model_name"] as? String) ?? "",
                                   modelHash: mesa["model_hash"] as? String, site: site,
                                   contextSize: intValue(meta["context_size"] ?? cfg["context_size"]) ?? 0,
                                   prependBos: (meta["prepend_bos"] ?? cfg["prepend_bos"]) as? Bool ?? false)
        let sae = try SparseAutoencoder(dIn: D, width: F, encoder: encoder, encoderBias: bEnc, decoder: wDec, decoderBias: bDec,
                                        threshold: threshold, k: intValue(mesa["k"]), metadata: metadata)
        for (key, v) in mesa where !["site", "model_hash", "k"].contains(key) {
            if let b = v as? Bool, type(of: v) == Bool.self { sae.training[key] = .bool(b) }
            else if let n = v as? NSNumber { sae.training[key] = .number(n.doubleValue) }
            else if let s = v as? String { sae.training[key] = .string(s) }
        }
        let sparsity = directory.appendingPathComponent(sparsityFile)
        if FileManager.default.fileExists(atPath: sparsity.path) {
            sae.logSparsity = try tensor(try openTensors(sparsity), "sparsity", shape: [F])
        }
        return sae
    }

    /// The weights file of EleutherAI's sparsify layout.
    static let sparsifyWeightsFile = "sae.safetensors"

    /// The site a sparsify hookpoint names (the SAE's directory name): `layers.N` is the residual stream
    /// after block N, `layers.N.mlp` the MLP's output; an optional `model.` or `gpt_neox.` prefix.
    static func site(sparsifyHookpoint name: String) -> Site? {
        var parts = name.split(separator: ".").map(String.init)
        if parts.first == "model" || parts.first == "gpt_neox" || parts.first == "transformer" { parts.removeFirst() }
        guard parts.count >= 2, parts[0] == "layers" || parts[0] == "h", let layer = Int(parts[1]) else { return nil }
        switch parts.dropFirst(2).joined(separator: ".") {
        case "": return Site(layer: layer, kind: .residOut)
        case "mlp": return Site(layer: layer, kind: .mlpOut)
        default: return nil
        }
    }

    /// EleutherAI's sparsify TopK SAE: `cfg.json` (`d_in`, `num_latents` or `expansion_factor`, `k`)
    /// and `sae.safetensors` with encoder.weight [F, D], encoder.bias [F], W_dec [F, D], b_dec [D].
    /// Its encoder sees x − b_dec, as SAELens' does; a skip connection or a transcoder is not an SAE of
    /// one site and is refused.
    static func loadSparsify(_ directory: URL, site given: Site?) throws -> SparseAutoencoder {
        let cfgURL = directory.appendingPathComponent(configFile)
        let cfg = try readJSON(cfgURL)
        guard let D = intValue(cfg["d_in"]), D > 0 else { throw SAEError(.missing, "\(cfgURL.path) lacks a positive d_in") }
        let latents = intValue(cfg["num_latents"]) ?? 0
        let F = latents > 0 ? latents : D * (intValue(cfg["expansion_factor"]) ?? 0)
        guard F > 0 else { throw SAEError(.missing, "\(cfgURL.path) gives neither num_latents nor expansion_factor") }
        guard let k = intValue(cfg["k"]), k > 0, k <= F else { throw SAEError(.missing, "\(cfgURL.path) lacks k in 1...\(F)") }
        if cfg["skip_connection"] as? Bool == true { throw SAEError(.settings, "\(directory.path): an SAE with a skip connection is not supported") }
        if cfg["transcode"] as? Bool == true { throw SAEError(.settings, "\(directory.path) is a transcoder, not an SAE of one site") }
        if let activation = cfg["activation"] as? String, activation != "topk" {
            throw SAEError(.settings, "\(directory.path): activation \(activation) is not supported (topk)")
        }
        guard let site = given ?? Self.site(sparsifyHookpoint: directory.lastPathComponent) else {
            throw SAEError(.missing, "\(directory.path): the directory name is not a hookpoint mesa knows (layers.N, layers.N.mlp); pass the site explicitly")
        }
        let file = try openTensors(directory.appendingPathComponent(sparsifyWeightsFile))
        let encoder = try tensor(file, "encoder.weight", shape: [F, D])
        let bEnc = try tensor(file, "encoder.bias", shape: [F])
        let decoder = try tensor(file, "W_dec", shape: [F, D])
        let bDec = try tensor(file, "b_dec", shape: [D])
        let metadata = SAEMetadata(modelName: "", modelHash: nil, site: site, contextSize: 0, prependBos: false)
        let sae = try SparseAutoencoder(dIn: D, width: F, encoder: encoder, encoderBias: bEnc, decoder: decoder, decoderBias: bDec,
                                        threshold: [Float](repeating: 0, count: F), k: k, metadata: metadata, topK: k)
        sae.training["source"] = .string("sparsify")
        return sae
    }

    /// dictionary_learning BatchTopKSAE, its `ae.pt` state dict saved as `ae.safetensors`
    /// (`ops/sae/convert_dictionary_learning.py`): encoder.weight [F, D], encoder.bias [F],
    /// decoder.weight [D, F], b_dec [D], threshold (scalar θ), k.
    static func loadDictionaryLearning(_ directory: URL, site given: Site?) throws -> SparseAutoencoder {
        let cfgURL = directory.appendingPathComponent("config.json")
        let cfg = try readJSON(cfgURL)
        guard let trainer = cfg["trainer"] as? [String: Any] else { throw SAEError(.missing, "\(cfgURL.path) has no \"trainer\" object") }
        guard let D = intValue(trainer["activation_dim"]), let F = intValue(trainer["dict_size"]), D > 0, F > 0 else {
            throw SAEError(.missing, "\(cfgURL.path) lacks positive trainer.activation_dim and trainer.dict_size")
        }
        var site = given
        if site == nil, let layer = intValue(trainer["layer"]) {
            let sub = (trainer["submodule_name"] as? String ?? "").lowercased()
            if sub.contains("mlp") { site = Site(layer: layer, kind: .mlpOut) }
            else if sub.contains("resid") || sub.contains("layer") { site = Site(layer: layer, kind: .residOut) }
        }
        guard let site else { throw SAEError(.missing, "\(cfgURL.path) does not say which site the SAE reads; pass the site explicitly") }
        let file = try openTensors(directory.appendingPathComponent("ae.safetensors"))
        let encoder = try tensor(file, "encoder.weight", shape: [F, D])
        let bEnc = try tensor(file, "encoder.bias", shape: [F])
        let decT = try tensor(file, "decoder.weight", shape: [D, F])
        let bDec = try tensor(file, "b_dec", shape: [D])
        guard file.entries["threshold"] != nil else { throw SAEError(.missing, "\(file.path) has no threshold (the BatchTopK inference threshold θ)") }
        let theta = try tensor(file, "threshold", shape: [1])
        guard let t = theta.first, t >= 0 else {
            throw SAEError(.missing, "the threshold θ = \(theta.first ?? .nan) was never set (training stopped before threshold_start_step)")
        }
        var decoder = [Float](repeating: 0, count: F * D)
        for i in 0..<D { for j in 0..<F { decoder[j * D + i] = decT[i * F + j] } }
        let k = file.entries["k"] != nil ? try tensor(file, "k", shape: [1]).first.map { Int($0) } : intValue(trainer["k"])
        let metadata = SAEMetadata(modelName: trainer["lm_name"] as? String ?? "", modelHash: nil, site: site,
                                   contextSize: intValue((cfg["buffer"] as? [String: Any])?["ctx_len"]) ?? 0, prependBos: false)
        let sae = try SparseAutoencoder(dIn: D, width: F, encoder: encoder, encoderBias: bEnc, decoder: decoder, decoderBias: bDec,
                                        threshold: [Float](repeating: t, count: F), k: k, metadata: metadata)
        sae.training["source"] = .string("dictionary_learning")
        return sae
    }
}

extension FileManager {
    func removeItemIfPresent(_ url: URL) throws {
        if fileExists(atPath: url.path) { try removeItem(at: url) }
    }
}
