import Foundation
import Testing
@testable import Tensor

@Suite struct ResidentMemoryTests {
    /// The figures come from /proc/self/status: positive, the peak at least the resident set, and
    /// the resident set the sum of its anonymous, file-backed and shared-memory parts (within a page
    /// per part, the kernel's per-CPU counters being approximate).
    @Test func figuresAreReadFromTheKernel() throws {
        let f = try #require(ResidentMemory.current())
        #expect(f.resident > 0 && f.anonymous > 0 && f.file > 0)
        #expect(f.peak >= f.resident)
        #expect(f.anonymous + f.file <= f.resident + 64 * 4096)
    }
}
