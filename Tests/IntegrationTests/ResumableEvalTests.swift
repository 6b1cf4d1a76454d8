import Foundation
import Storage
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

    /// A run that is not sequential journals its scored cases: stopped after two (and with half a line
    /// written after them, as a kill in the middle of an append leaves it), the same command scores
    /// the other two, and the report equals an uninterrupted run's.
    @Test func anIndependentRunResumesAfterTheCasesItJournaled() throws {
        let h = try DaemonHarness(bootstrap: "127.0.0.1:1", label: "resume-cases")
        defer { h.cleanup() }
        let records: [[String: Any]] = (1...4).map { i in
            ["case_id": i, "prompt": i % 2 == 0 ? "Rome is the capital of" : "Paris is in", "subject": i % 2 == 0 ? "Rome" : "Paris",
             "target_new": i % 2 == 0 ? "France" : "Rome", "ground_truth": i % 2 == 0 ? "Italy" : "France",
             "rephrase_prompt": "The city is in", "locality_prompt": "Berlin is in", "locality_ground_truth": "Germany"]
        }
        let data = h.dir.appendingPathComponent("cf.json")
        try JSONSerialization.data(withJSONObject: records).write(to: data)
        let hp = h.dir.appendingPathComponent("hparams/alphaedit/\(DaemonHarness.modelName).json").path
        func eval(limit: Int, resume: String?, out: String) throws -> (Int32, String) {
            var args = ["eval", "--model", h.modelPath, "--method", "alphaedit", "--hparams", hp, "--data", data.path, "--limit", "\(limit)",
                        "--out", h.dir.appendingPathComponent(out).path, "--threads", "1"]
            if let resume { args += ["--resume", h.dir.appendingPathComponent(resume).path] }
            return try h.mesa(args)
        }
        let journal = h.dir.appendingPathComponent("cases")
        let (s1, o1) = try eval(limit: 4, resume: "cases", out: "first")
        #expect(s1 == 0, "\(o1)")
        let lines = try String(contentsOf: journal.appendingPathComponent("cases.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 4)
        // Keep two cases and half of the third line.
        let cut = lines[0] + "\n" + lines[1] + "\n" + lines[2].prefix(lines[2].count / 2)
        try Data(cut.utf8).write(to: journal.appendingPathComponent("cases.jsonl"))
        let (s2, o2) = try eval(limit: 4, resume: "cases", out: "resumed")
        #expect(s2 == 0 && o2.contains("resuming after 2 case(s)"), "\(o2)")
        let (s3, o3) = try eval(limit: 4, resume: nil, out: "straight")
        #expect(s3 == 0, "\(o3)")
        func posts(_ out: String) throws -> [String] {
            let dir = h.dir.appendingPathComponent(out)
            let name = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix("-0-4.json") })
            let r = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(name))) as? [String: Any])
            return ((r["cases"] as? [[String: Any]]) ?? []).map { c in
                String(decoding: (try? JSONSerialization.data(withJSONObject: c["post"] ?? NSNull(), options: [.sortedKeys, .fragmentsAllowed])) ?? Data(), as: UTF8.self)
            }
        }
        let resumed = try posts("resumed"), straight = try posts("straight")
        #expect(resumed.count == 4 && resumed == straight, "the resumed run scored differently")
        #expect(try String(contentsOf: journal.appendingPathComponent("cases.jsonl"), encoding: .utf8).split(separator: "\n").count == 4)
        // The journal belongs to one run: a sequential run with it is refused.
        let (s4, o4) = try h.mesa(["eval", "--model", h.modelPath, "--method", "alphaedit", "--hparams", hp, "--data", data.path, "--limit", "4",
                                   "--sequential", "--resume", journal.path, "--out", h.dir.appendingPathComponent("other").path, "--threads", "1"])
        #expect(s4 != 0 && o4.contains("holds another run"), "\(o4)")
    }

    /// Ctrl-C (SIGINT) stops a journaled run after the edit in flight, and the same command resumes it.
    @Test func ctrlCStopsAJournaledRunResumably() throws {
        let h = try DaemonHarness(bootstrap: "127.0.0.1:1", label: "sigint-eval")
        defer { h.cleanup() }
        let records: [[String: Any]] = (0..<200).map { i in
            let (s, t, g) = [("Paris", "Rome", "France"), ("Rome", "France", "Italy")][i % 2]
            return ["case_id": i + 1, "prompt": "\(s) is in", "subject": s, "target_new": t, "ground_truth": g,
                    "rephrase_prompt": "The city of \(s) is in", "locality_prompt": "Berlin is in", "locality_ground_truth": "Germany"]
        }
        let data = h.dir.appendingPathComponent("cf.json")
        try JSONSerialization.data(withJSONObject: records).write(to: data)
        func arguments(limit: Int) -> [String] {
            ["eval", "--model", h.modelPath, "--method", "alphaedit", "--hparams", h.dir.appendingPathComponent("hparams/alphaedit/\(DaemonHarness.modelName).json").path,
             "--data", data.path, "--limit", "\(limit)", "--sequential", "--threads", "1", "--out", h.dir.appendingPathComponent("out").path,
             "--resume", h.dir.appendingPathComponent("journal").path]
        }
        let log = h.dir.appendingPathComponent("eval.log")
        func text() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        let p = try DaemonHarness.launch(arguments(limit: 200), home: h.dir, log: log, launch: 1)
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        // The progress bar (a line per redraw, stderr not being a terminal) shows the edits have begun.
        let end = Date().addingTimeInterval(180)
        while p.isRunning && Date() < end && !text().contains("/200 cases") { Thread.sleep(forTimeInterval: 0.05) }
        try #require(p.isRunning && text().contains("/200 cases"), "the run did not start editing:\n\(text())")
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        let out = text()
        #expect(p.terminationReason == .exit && p.terminationStatus == 1, "Ctrl-C must end the run with an error, not kill it:\n\(out)")
        let match = try #require(out.firstMatch(of: /interrupted after (\d+) edits; run the same command again to resume/), "\(out)")
        let done = try #require(Int(match.1))
        #expect(done > 0 && done < 200, "\(out)")
        let (status, resumed) = try h.mesa(arguments(limit: done + 1))
        #expect(status == 0 && resumed.contains("resuming after \(done) edit(s)"), "\(resumed)")
    }

    /// The AlphaEdit paper's protocol: records edited in batches (one computation and one journal
    /// snapshot per batch), resumable; "pre" is the base model's score also in the resumed process,
    /// whose weights held the first batch's edits when it started.
    @Test func aBatchedRunResumesAndScoresPreOnTheBaseModel() throws {
        let h = try DaemonHarness(bootstrap: "127.0.0.1:1", label: "batch-eval")
        defer { h.cleanup() }
        let records: [[String: Any]] = (0..<4).map { i in
            let (s, t, g) = [("Paris", "Rome", "France"), ("Rome", "France", "Italy"), ("Lyon", "Italy", "France"), ("Rome", "river", "city")][i]
            return ["case_id": i + 1, "prompt": "\(s) is in", "subject": s, "target_new": t, "ground_truth": g,
                    "rephrase_prompt": "The city of \(s) is in", "locality_prompt": "Berlin is in", "locality_ground_truth": "Germany"]
        }
        let data = h.dir.appendingPathComponent("cf.json")
        try JSONSerialization.data(withJSONObject: records).write(to: data)
        let hp = h.dir.appendingPathComponent("hparams/alphaedit/\(DaemonHarness.modelName).json").path
        // A canary set of the operator's: scored on the base model and after every batch.
        let canary = h.dir.appendingPathComponent("canary.json")
        try JSONSerialization.data(withJSONObject: ["facts": [["prompt": "Berlin is in", "answer": "Germany"]],
                                                    "text": "Paris is the capital of France. Rome is the capital of Italy. Berlin is in Germany."])
            .write(to: canary)
        func eval(_ extra: [String], out: String) throws -> [String: Any] {
            let (status, output) = try h.mesa(["eval", "--model", h.modelPath, "--method", "alphaedit", "--hparams", hp, "--data", data.path,
                                               "--sequential", "--batch", "2", "--checkpoints", "2", "4", "--threads", "1",
                                               "--canary-file", canary.path, "--canary-tokens", "16",
                                               "--out", h.dir.appendingPathComponent(out).path] + extra)
            #expect(status == 0, "\(output)")
            let dir = h.dir.appendingPathComponent(out)
            let name = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix("-seq-b2.json") }, "\(output)")
            return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(name))) as? [String: Any])
        }
        let journal = h.dir.appendingPathComponent("journal").path
        _ = try eval(["--limit", "2", "--resume", journal], out: "first")
        // The base scores are journalled; a line cut by a crash is dropped and its record scored again.
        let pre = URL(fileURLWithPath: journal + "/pre.jsonl")
        func preLines() throws -> [String] { try String(contentsOf: pre, encoding: .utf8).split(separator: "\n").map(String.init) }
        #expect(try preLines().count == 2)
        let cut = try FileHandle(forWritingTo: pre)
        try cut.seekToEnd()
        try cut.write(contentsOf: Data(#"{"index":2,"pre":{"caseId""#.utf8))
        try cut.close()
        // A stop after the second batch's checkpoint and canary were saved, before the batch was
        // committed: the resumed run redoes the batch and measures both again.
        func points(_ name: String) throws -> [[String: Any]] {
            try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: journal + "/" + name))) as? [[String: Any]])
        }
        func rewrite(_ name: String, _ change: ([[String: Any]]) -> [[String: Any]]) throws {
            try JSONSerialization.data(withJSONObject: change(try points(name))).write(to: URL(fileURLWithPath: journal + "/" + name))
        }
        try rewrite("curve.json") { p in
            var stale = p.last ?? [:]
            stale["edits"] = 4
            return p + [stale]
        }
        try rewrite("canary.json") { p in p + [["edits": 4, "accuracy": 0, "perplexity": 999]] }
        let resumed = try eval(["--limit", "4", "--resume", journal], out: "resumed")
        #expect(try preLines().count == 4 && preLines().allSatisfy { $0.hasSuffix("}") })
        let straight = try eval(["--limit", "4"], out: "straight")
        func field(_ r: [String: Any], _ key: String) -> [String] {
            ((r["cases"] as? [[String: Any]]) ?? []).map { c in
                String(decoding: (try? JSONSerialization.data(withJSONObject: c[key] ?? NSNull(), options: [.sortedKeys, .fragmentsAllowed])) ?? Data(), as: UTF8.self)
            }
        }
        #expect(field(resumed, "post").count == 4 && field(resumed, "post") == field(straight, "post"))
        #expect(field(resumed, "pre") == field(straight, "pre"), "pre was not scored on the base model after resuming")
        #expect(field(resumed, "immediate") == field(straight, "immediate"))
        let cases = try #require(straight["cases"] as? [[String: Any]])
        #expect(cases.allSatisfy { ($0["updateNorms"] as? [String: Any])?.isEmpty == false && $0["nullspaceFill"] != nil && $0["immediate"] != nil })
        #expect(straight["immediate"] != nil)
        // The canary curve: the base model, then after each batch; a resumed run continues the journal's.
        func canaryPoints(_ out: String) throws -> [[String: Double]] {
            let url = h.dir.appendingPathComponent(out).appendingPathComponent("alphaedit-cf-0-4-seq-b2-canary.json")
            let doc = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
            #expect(doc["perplexity_tokens"] as? Int == 16)
            return try #require(doc["points"] as? [[String: Double]])
        }
        let straightCanary = try canaryPoints("straight"), resumedCanary = try canaryPoints("resumed")
        #expect(straightCanary.map { $0["edits"] } == [0, 2, 4], "\(straightCanary)")
        #expect(resumedCanary == straightCanary, "the resumed run's canary differs: \(resumedCanary) against \(straightCanary)")
        #expect(straightCanary.allSatisfy { ($0["perplexity"] ?? 0) > 1 && ($0["perplexity"] ?? .infinity).isFinite })
        #expect(straightCanary[0]["perplexity"] != straightCanary[2]["perplexity"], "the edits did not move the canary's perplexity")
        #expect(FileManager.default.fileExists(atPath: journal + "/canary.json"))
        // The checkpoint curve of the resumed run is the uninterrupted one's.
        func curve(_ out: String) throws -> [String] {
            let url = h.dir.appendingPathComponent(out).appendingPathComponent("alphaedit-cf-0-4-seq-b2-curve.json")
            let doc = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [[String: Any]])
            return doc.map { String(decoding: (try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys])) ?? Data(), as: UTF8.self) }
        }
        let straightCurve = try curve("straight")
        #expect(straightCurve.count == 2 && straightCurve.first?.contains(#""edits":2"#) == true, "\(straightCurve)")
        #expect(try curve("resumed") == straightCurve)
        // A journal that holds the last batch without its checkpoint and canary point (a stop between
        // them, by a build that committed first) gets both from the end's scores.
        try rewrite("curve.json") { Array($0.dropLast()) }
        try rewrite("canary.json") { Array($0.dropLast()) }
        _ = try eval(["--limit", "4", "--resume", journal], out: "again")
        #expect(try curve("again") == straightCurve)
        #expect(try canaryPoints("again") == straightCanary)
        // One snapshot per batch, indexing both of its cases.
        let store = try SnapshotStore(path: journal + "/lmdb")
        #expect(try store.head() == 2 && store.record(1).eventIds.count == 2 && store.record(2).eventIds.count == 2)
    }
}
