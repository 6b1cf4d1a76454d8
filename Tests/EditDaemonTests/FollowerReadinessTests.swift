import EditDaemon
import Testing

/// What a follower's /readyz says about its lag.
@Suite struct FollowerReadinessTests {
    @Test func notReadyWhileTheLagIsUnknownOrAboveTheLimit() {
        let unknown = FollowerDaemon.readiness(lag: [:], maxLag: 0, topic: "mesa.weight-deltas")
        #expect(!unknown.isReady && unknown.reason.contains("lag unknown") && unknown.reason.contains("mesa.weight-deltas"))
        let behind = FollowerDaemon.readiness(lag: ["mesa.weight-deltas/0": 3], maxLag: 2, topic: "mesa.weight-deltas")
        #expect(behind == .notReady("catching up: lag 3 records (at most 2 for ready)"))
        let close = FollowerDaemon.readiness(lag: ["d/0": 1, "d/1": 1], maxLag: 2, topic: "d")
        #expect(close == Readiness(isReady: true, reason: "lag 2 records (at most 2 for ready)"))
        #expect(FollowerDaemon.readiness(lag: ["d/0": 0], maxLag: 0, topic: "d") == Readiness(isReady: true, reason: "lag 0 records (at most 0 for ready)"))
    }
}
