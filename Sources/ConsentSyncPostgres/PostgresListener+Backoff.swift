import Foundation

extension PostgresListener {
    /// Capped exponential backoff with jitter: attempt `n` waits about `initial * multiplier^n`,
    /// at most `maximum`, shortened by up to `jitter` (a fraction) at random so that many
    /// listeners do not reconnect in lock step.
    public struct Backoff: Sendable, Equatable {
        public var initial: Duration
        public var maximum: Duration
        public var multiplier: Double
        /// Fraction of the delay that is random, in `0...1`.
        public var jitter: Double

        public init(
            initial: Duration = .milliseconds(100),
            maximum: Duration = .seconds(10),
            multiplier: Double = 2,
            jitter: Double = 0.2
        ) {
            self.initial = initial
            self.maximum = maximum
            self.multiplier = multiplier
            self.jitter = jitter
        }

        /// The delay before retry `attempt` (0 for the first retry) without jitter.
        public func baseDelay(attempt: Int) -> Duration {
            let initial = max(self.initial.seconds, 0)
            let maximum = max(self.maximum.seconds, 0)
            let growth = pow(max(self.multiplier, 1), Double(max(attempt, 0)))
            let delay = initial * growth
            // `delay` may be infinite or NaN for huge attempts; the cap applies either way.
            guard delay.isFinite, delay < maximum else { return .seconds(maximum) }
            return .seconds(delay)
        }

        /// The delay before retry `attempt`, with `randomUnit` in `0..<1` choosing the jitter.
        public func delay(attempt: Int, randomUnit: Double) -> Duration {
            let base = self.baseDelay(attempt: attempt).seconds
            let jitter = min(max(self.jitter, 0), 1)
            let unit = min(max(randomUnit, 0), 1)
            return .seconds(base * (1 - jitter * unit))
        }

        /// The delay before retry `attempt`, with random jitter.
        public func delay(attempt: Int) -> Duration {
            self.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1))
        }
    }
}

extension Duration {
    /// The duration in seconds as a `Double`.
    var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
