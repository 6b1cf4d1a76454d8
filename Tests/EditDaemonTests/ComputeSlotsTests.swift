@testable import EditDaemon
import Foundation
import Testing

/// The query API's gate for model work: concurrent requests take turns instead of each starting a
/// full set of BLAS threads on the same cores.
@Suite struct ComputeSlotsTests {
    @Test func oneSlotPerSetOfBLASThreadsTheCoresHold() {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        #expect(ComputeSlots.forMachine(blasThreads: 1) == cores)
        #expect(ComputeSlots.forMachine(blasThreads: 0) == 1)
        #expect(ComputeSlots.forMachine(blasThreads: cores) == 1)
        #expect(ComputeSlots.forMachine(blasThreads: cores * 4) == 1)
    }

    @Test func aHeldSlotMakesTheNextWaitUntilItsDeadline() {
        let slots = ComputeSlots(1)
        #expect(slots.acquire(until: Date().addingTimeInterval(1)))
        let t0 = Date()
        #expect(!slots.acquire(until: Date().addingTimeInterval(0.2)))
        #expect(Date().timeIntervalSince(t0) >= 0.15)
        slots.release()
        #expect(slots.acquire(until: Date()))
        slots.release()
    }

    @Test func aReleasedSlotServesAWaiter() {
        let slots = ComputeSlots(1)
        #expect(slots.acquire(until: Date().addingTimeInterval(1)))
        // The waiter blocks a thread of its own, as a query's model work does (`onThread`).
        let done = DispatchSemaphore(value: 0)
        let got = Box()
        let waiter = Thread {
            got.value = slots.acquire(until: Date().addingTimeInterval(60))
            done.signal()
        }
        waiter.start()
        Thread.sleep(forTimeInterval: 0.1)
        slots.release()
        #expect(done.wait(timeout: .now() + 60) == .success)
        #expect(got.value)
        slots.release()
    }

    final class Box: @unchecked Sendable {  // written by the waiter before `done.signal()`, read after `done.wait`
        var value = false
    }
}
