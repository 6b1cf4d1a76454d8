import Foundation
import ModelRuntime
import Tensor
import Testing

/// The readers–writer gate over the weights, and what generation reports for the query API.
@Suite struct WeightGateTests {
    /// A reader waits while the writer holds the gate, gives up at its deadline, and enters once the
    /// writer has left; the writer enters again (nested) and reads while it writes.
    @Test func readersWaitForTheWriterUntilTheirDeadline() throws {
        let gate = WeightGate()
        gate.beginWriting()
        gate.beginWriting()
        #expect(gate.isWritingOnThisThread)
        #expect(try gate.reading { 1 } == 1, "the writer reads while it writes")
        let timedOut = LockedFlag()
        let started = Date()
        let reader = Thread {
            do { _ = try gate.reading(until: Date().addingTimeInterval(0.2)) { 0 } } catch is WeightGate.Timeout { timedOut.set() } catch {}
        }
        reader.start()
        while !timedOut.value, Date().timeIntervalSince(started) < 5 { Thread.sleep(forTimeInterval: 0.01) }
        #expect(timedOut.value && Date().timeIntervalSince(started) >= 0.2)

        let entered = LockedFlag()
        Thread { _ = try? gate.reading { entered.set() } }.start()
        Thread.sleep(forTimeInterval: 0.1)
        gate.endWriting()
        #expect(!entered.value, "one nested hold is still open")
        gate.endWriting()
        let deadline = Date().addingTimeInterval(5)
        while !entered.value, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(entered.value)
        #expect(!gate.isWritingOnThisThread)
    }

    /// The writer waits for the readers inside; once it waits, new readers wait behind it.
    @Test func theWriterWaitsForReadersAndNewReadersWaitForIt() throws {
        let gate = WeightGate()
        let release = DispatchSemaphore(value: 0), inside = DispatchSemaphore(value: 0)
        Thread { _ = try? gate.reading { inside.signal(); release.wait() } }.start()
        inside.wait()
        let wrote = LockedFlag()
        Thread { gate.writing { wrote.set() } }.start()
        Thread.sleep(forTimeInterval: 0.1)
        #expect(!wrote.value, "the writer entered while a reader was inside")
        // A reader that comes while the writer waits does not get in before it.
        #expect(throws: WeightGate.Timeout.self) { try gate.reading(until: Date().addingTimeInterval(0.1)) { 0 } }
        release.signal()
        let deadline = Date().addingTimeInterval(5)
        while !wrote.value, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(wrote.value)
        #expect(try gate.reading(until: Date().addingTimeInterval(1)) { 2 } == 2)
    }

    /// Log-probabilities are the log-softmax of the logits (so the first one matches `score`), the
    /// top list is sorted, sampling over the whole vocabulary is reproducible per seed, and
    /// `shouldStop` ends the generation after the token it saw.
    @Test func generationReportsLogprobsAndStopsWhenAsked() throws {
        let m = try TinyModel.load()
        let prompt: [Int32] = [10, 11, 12]
        let g = try m.generate(prompt: prompt, maxTokens: 6, stopAtEOS: false, logprobs: 3)
        #expect(g.tokens.count == 6 && g.tokenLogprobs.count == 6 && g.topLogprobs.count == 6)
        let first = try m.score(prompt: prompt, target: [g.tokens[0]])
        #expect(abs(Double(-g.tokenLogprobs[0]) - first.tokenNLL[0]) < 1e-4)
        for (j, top) in g.topLogprobs.enumerated() {
            #expect(top.count == 3 && zip(top, top.dropFirst()).allSatisfy { $0.logprob >= $1.logprob })
            // Greedy: the chosen token is the most likely one.
            #expect(top[0].token == g.tokens[j] && top[0].logprob == g.tokenLogprobs[j])
        }
        let whole = Sampling.topK(k: m.config.vocabSize, temperature: 0.8)
        let a = try m.generate(prompt: prompt, maxTokens: 8, sampling: whole, seed: 9, stopAtEOS: false)
        let b = try m.generate(prompt: prompt, maxTokens: 8, sampling: whole, seed: 9, stopAtEOS: false)
        #expect(a.tokens == b.tokens && a.tokens.count == 8)
        #expect(a.tokenLogprobs.isEmpty && a.topLogprobs.isEmpty)
        let stopped = try m.generate(prompt: prompt, maxTokens: 8, sampling: whole, seed: 9, stopAtEOS: false, shouldStop: { $0.count == 3 })
        #expect(stopped.tokens == Array(a.tokens.prefix(3)) && stopped.stoppedByCaller)
    }
}

/// A flag set from one thread and read from another.
final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    func set() { lock.lock(); raised = true; lock.unlock() }
    var value: Bool { lock.lock(); defer { lock.unlock() }; return raised }
}
