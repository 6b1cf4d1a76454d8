import Foundation
import ModelRuntime
import Testing

/// Bad model files end in a typed error with a clear message, never a crash.
@Suite struct BadInputTests {
    func code(_ body: () throws -> Any) -> ModelError.Code? {
        do { _ = try body(); return nil } catch let e as ModelError { return e.code } catch { return nil }
    }

    @Test func missingFile() {
        #expect(code { try ModelLoader.load(path: "/nonexistent/model.gguf") } == .fileNotFound)
    }

    @Test func aFileThatCannotBeOpenedKeepsTheSystemError() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = try #require(throws: ModelError.self) { try ModelLoader.loadGGUF(path: dir.appendingPathComponent("gone.gguf").path) }
        #expect(missing.code == .fileNotFound)
        #expect((missing.cause as? POSIXError)?.code == .ENOENT, "the open(2) failure is kept as the cause: \(String(describing: missing.cause))")
    }

    @Test func wrongMagicAndEmptyFile() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("bad.gguf").path
        try Data("this is not a model at all".utf8).write(to: URL(fileURLWithPath: p))
        #expect(code { try ModelLoader.load(path: p) } == .badMagic)
        try Data().write(to: URL(fileURLWithPath: p))
        #expect(code { try ModelLoader.load(path: p) } == .truncated)
    }

    @Test func truncatedAtEveryRegion() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = try TinyModel.write(to: dir)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        // Header, metadata, tensor directory and tensor data.
        for cut in [3, 10, 40, 300, bytes.count / 3, bytes.count - 7] {
            let p = dir.appendingPathComponent("cut-\(cut).gguf").path
            try bytes.prefix(cut).write(to: URL(fileURLWithPath: p))
            let c = code { try ModelLoader.load(path: p) }
            #expect(c == .truncated, "cut at \(cut): \(String(describing: c))")
        }
    }

    @Test func unsupportedTensorType() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Replace layer 0's down projection by a Q5_0 tensor (a ggml type mesa does not dequantize).
        let p = try TinyModel.write(to: dir) { w in
            w.addRaw("blk.0.ffn_down.weight.q5", shape: [32, 48], rawType: GGMLType.q5_0.rawValue,
                     bytes: [UInt8](repeating: 0, count: 32 * 48 / 32 * 22))
        }
        let g = try GGUFFile(path: p)
        #expect(throws: ModelError.self) { try g.floats("blk.0.ffn_down.weight.q5") }
        do { _ = try g.floats("blk.0.ffn_down.weight.q5") } catch let e as ModelError {
            #expect(e.code == .unsupportedTensorType)
            #expect(e.message.contains("Q5_0"))
        }
    }

    @Test func unsupportedArchitectureAndMissingTensor() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var spec = TinyModel.Spec()
        spec.architecture = "mamba"
        let p = try TinyModel.write(spec, to: dir)
        #expect(code { try ModelLoader.load(path: p) } == .unsupportedArchitecture)
    }

    @Test func notSafetensors() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("model.safetensors").path
        try Data([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2]).write(to: URL(fileURLWithPath: p))
        #expect(code { try SafetensorsFile(path: p) } == .badMagic)
    }
}
