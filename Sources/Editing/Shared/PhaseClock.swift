import Foundation

/// Wall-clock seconds per phase of an edit computation (`phases` of ROME's and MEMIT's results): each
/// `lap` adds the time since the previous lap, or since the clock was made, to its phase. The caller
/// may add figures that are not seconds (e.g. the steps per fact) to `phases` itself.
struct PhaseClock {
    var phases: [String: Double] = [:]
    private var last = DispatchTime.now().uptimeNanoseconds

    mutating func lap(_ name: String) {
        let now = DispatchTime.now().uptimeNanoseconds
        phases[name, default: 0] += Double(now - last) / 1e9
        last = now
    }
}
