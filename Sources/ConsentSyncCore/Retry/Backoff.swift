/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(maximum, initial × 2^(n-1))]`, never less than `minimum`.
///
/// Full jitter spreads the retries of many deliveries that failed together (a receiver
/// outage) instead of sending them back in synchronised waves.
public struct Backoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    public var minimum: Duration

    public init(initial: Duration = .seconds(5), maximum: Duration = .seconds(3600), minimum: Duration = .milliseconds(100)) {
        self.initial = initial
        self.maximum = maximum
        self.minimum = minimum
    }

    /// The upper bound of the wait before retry number `retry` (1 for the first retry).
    public func ceiling(forRetry retry: Int) -> Duration {
        let exponent = min(max(retry - 1, 0), 62)
        let initialMs = max(initial.milliseconds, 1)
        let (grown, overflow) = initialMs.multipliedReportingOverflow(by: Int64(1) << exponent)
        let capped = overflow ? maximum.milliseconds : min(grown, maximum.milliseconds)
        return .milliseconds(max(capped, minimum.milliseconds))
    }

    /// A random wait before retry number `retry`.
    public func delay(forRetry retry: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let upper = ceiling(forRetry: retry).milliseconds
        let lower = min(minimum.milliseconds, upper)
        return .milliseconds(Int64.random(in: lower...upper, using: &generator))
    }

    public func delay(forRetry retry: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(forRetry: retry, using: &generator)
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Seconds as a floating-point number.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
