import Foundation

/// Small statistics helpers for the CounterFact metrics and their error bars.
///
/// Conventions: functions of an empty sample return NaN (there is no value), never 0, so that a
/// missing measurement cannot be mistaken for a failing one.
public enum Statistics {
    /// Arithmetic mean; NaN for an empty sample.
    public static func mean(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return .nan }
        return values.reduce(0, +) / Double(values.count)
    }

    /// Sample standard deviation (divisor n − 1); NaN for fewer than two values.
    public static func standardDeviation(_ values: [Double]) -> Double {
        guard values.count >= 2 else { return .nan }
        let center = mean(values)
        let squares = values.reduce(0) { $0 + ($1 - center) * ($1 - center) }
        return (squares / Double(values.count - 1)).squareRoot()
    }

    /// Standard error of the mean, s / √n with the sample standard deviation s; NaN for fewer than
    /// two values. Used for the magnitude metrics (EM, PM, NM).
    public static func standardError(_ values: [Double]) -> Double {
        standardDeviation(values) / Double(values.count).squareRoot()
    }

    /// Binomial standard error √(p(1 − p)/n) of a success rate `p` in [0, 1] measured on `n`
    /// trials; NaN when `n` is 0. Used for ES, PS and NS with `n` = the number of cases.
    ///
    /// When a case has several prompts of a kind (ROME layout: 2 paraphrases, 10 neighbors) its
    /// value is a fraction rather than 0 or 1, and this is an upper bound on the standard error of
    /// the case-averaged rate (the variance of a [0, 1] variable with mean p is at most p(1 − p)).
    public static func binomialStandardError(rate p: Double, trials n: Int) -> Double {
        guard n > 0 else { return .nan }
        return (max(0, p * (1 - p)) / Double(n)).squareRoot()
    }

    /// Harmonic mean with `scipy.stats.hmean` semantics: n / Σ 1/xᵢ, 0 if any value is 0; NaN for
    /// an empty input or one containing a NaN or a negative value.
    public static func harmonicMean(_ values: [Double]) -> Double {
        guard !values.isEmpty, values.allSatisfy({ $0 >= 0 }) else { return .nan }
        if values.contains(0) { return 0 }
        return Double(values.count) / values.reduce(0) { $0 + 1 / $1 }
    }

    /// Bootstrap standard error of `statistic` over a sample of `count` items: the sample standard
    /// deviation of `statistic` evaluated on `resamples` resamples of the item indices drawn with
    /// replacement. Deterministic for a given `seed`. NaN for fewer than two items or resamples;
    /// resamples on which the statistic is NaN are left out.
    public static func bootstrapStandardError(
        count: Int, resamples: Int = 1000, seed: UInt64 = 0, statistic: ([Int]) -> Double
    ) -> Double {
        guard count >= 2, resamples >= 2 else { return .nan }
        var generator = SplitMix64(seed: seed)
        var indices = [Int](repeating: 0, count: count)
        var values: [Double] = []
        values.reserveCapacity(resamples)
        for _ in 0..<resamples {
            for slot in 0..<count { indices[slot] = Int.random(in: 0..<count, using: &generator) }
            let value = statistic(indices)
            if !value.isNaN { values.append(value) }
        }
        return standardDeviation(values)
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a small, fast, seedable generator for reproducible bootstraps,
/// canary draws and test corpora.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
