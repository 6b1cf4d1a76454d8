import Foundation
import TestSupport
import Testing

/// `mesa eval --sequential --resume DIR`: a run stopped after some edits continues where it stopped,
/// and the result equals an uninterrupted run's (AlphaEdit, whose state must be rebuilt, on the tiny model).
@Suite struct ResumableEvalTests {
    @Test func aResumedSequentialRunEqualsAnUninterruptedOne() throws {
        let h = try DaemonHarness(bootstrap: "127.0.0.1:1", label: "resume")
        defer { h.cleanup() }
        let records: [[String: Any]] = [
            ["case_id": 1, "prompt": "Paris is in", "subject": "Paris", "target_new": "Rome", "ground_truth": "France",
             "rephrase_prompt": "The city of Paris is in", "locality_prompt": "Rome is in", "locality_ground_truth": "Italy"],
            ["case_id": 2, "prompt": "Rome is the capital of", "subject": "Rome", "target_new": "France", "ground_truth": "Italy",
             "rephrase_prompt": "Rome, the capital of", "locality_prompt": "Paris is the capital of", "locality_ground_truth": "France"],
            ["case_id": 3, "prompt": "The city of Paris lies in", "subject": "Paris", "target_new": "Italy", "ground_truth": "France",
             "rephrase_prompt": "Paris lies in", "locality_prompt": "The city of Rome lies in", "locality_ground_truth": "Italy"],
            ["case_id": 4, "prompt": "Rome is a", "subject": "Rome", "target_new": "river", "ground_truth": "city",
             "rephrase_prompt": "Rome is known as a", "locality_prompt": "Paris is a", "locality_ground_truth": "city"],
        ]
        let data = h.dir.appendingPathComponent("cf.json")
        try JSONSerialization.data(withJSONObject: records).write(to: data)
        let hp = h.dir.appendingPathComponent("hparams/alphaedit/\(DaemonHarness.modelName).json").path
        func eval(limit: Int, resume: String?, out: String) throws -> (Int32, String) {
            var args = ["eval", "--model", h.modelPath, "--method", "alphaedit", "--hparams", hp, "--data", data.path, "--limit", "\(limit)",
                        "--sequential", "--checkpoints", "2", "4", "--out", h.dir.appendingPathComponent(out).path, "--threads", "1"]
            if let resume { args += ["--resume", h.dir.appendingPathComponent(resume).path] }
            return try h.mesa(args)
        }
        let (s1, o1) = try eval(limit: 2, resume: "journal", out: "first")
        #expect(s1 == 0, "\(o1)")
        let (s2, o2) = try eval(limit: 4, resume: "journal", out: "resumed")
        #expect(s2 == 0 && o2.contains("resuming after 2 edit(s)"), "\(o2)")
        let (s3, o3) = try eval(limit: 4, resume: nil, out: "straight")
        #expect(s3 == 0, "\(o3)")
        func report(_ out: String) throws -> [String: Any] {
            let dir = h.dir.appendingPathComponent(out)
            let name = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix("-seq.json") })
            return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(name))) as? [String: Any])
        }
        func posts(_ r: [String: Any]) -> [String] {
            ((r["cases"] as? [[String: Any]]) ?? []).map { c in
                String(decoding: (try? JSONSerialization.data(withJSONObject: c["post"] ?? NSNull(), options: [.sortedKeys, .fragmentsAllowed])) ?? Data(), as: UTF8.self)
            }
        }
        let resumed = try report("resumed"), straight = try report("straight")
        #expect(posts(resumed).count == 4 && posts(resumed) == posts(straight), "the resumed run scored differently")
        // The curves of both runs side by side.
        let svg = h.dir.appendingPathComponent("curves.svg").path
        let (s5, o5) = try h.mesa(["curves", h.dir.appendingPathComponent("journal/curve.json").path,
                                   h.dir.appendingPathComponent("straight/alphaedit-cf-0-4-seq-curve.json").path, "--out", svg])
        #expect(s5 == 0 && o5.contains("journal: 2 → S") && o5.contains("alphaedit: 2 → S"), "\(o5)")
        #expect((try? String(contentsOfFile: svg, encoding: .utf8))?.contains("<svg") == true)
        // A journal belongs to one run: another method's run is refused.
        let (s4, o4) = try h.mesa(["eval", "--model", h.modelPath, "--method", "memit", "--hparams",
                                   h.dir.appendingPathComponent("hparams/memit/\(DaemonHarness.modelName).json").path, "--data", data.path,
                                   "--limit", "4", "--sequential", "--resume", h.dir.appendingPathComponent("journal").path,
                                   "--out", h.dir.appendingPathComponent("other").path, "--threads", "1"])
        #expect(s4 != 0 && o4.contains("holds another run"), "\(o4)")
    }
}
