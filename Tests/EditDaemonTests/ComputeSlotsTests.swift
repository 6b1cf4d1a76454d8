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

    @Test func aReleasedSlotServesAWaiter() async {
        let slots = ComputeSlots(1)
        #expect(slots.acquire(until: Date().addingTimeInterval(1)))
        let waiter = Task.detached { slots.acquire(until: Date().addingTimeInterval(10)) }
        try? await Task.sleep(nanoseconds: 100_000_000)
        slots.release()
        #expect(await waiter.value)
        slots.release()
    }
}
