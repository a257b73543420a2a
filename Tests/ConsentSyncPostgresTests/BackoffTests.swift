@testable import ConsentSyncPostgres
import Testing

@Suite struct BackoffTests {
    let backoff = PostgresListener.Backoff()

    @Test func defaults() {
        #expect(self.backoff.initial == .milliseconds(100))
        #expect(self.backoff.maximum == .seconds(10))
        #expect(self.backoff.multiplier == 2)
    }

    @Test func growsExponentiallyWithoutJitter() {
        #expect(self.backoff.delay(attempt: 0, randomUnit: 0) == .milliseconds(100))
        #expect(self.backoff.delay(attempt: 1, randomUnit: 0) == .milliseconds(200))
        #expect(close(self.backoff.delay(attempt: 2, randomUnit: 0), .milliseconds(400)))
        #expect(close(self.backoff.delay(attempt: 5, randomUnit: 0), .milliseconds(3200)))
    }

    @Test(arguments: [7, 10, 63, 64, 1000, Int.max])
    func isCappedAtMaximum(attempt: Int) {
        #expect(self.backoff.baseDelay(attempt: attempt) == .seconds(10))
        #expect(self.backoff.delay(attempt: attempt, randomUnit: 0) == .seconds(10))
        #expect(self.backoff.delay(attempt: attempt) <= .seconds(10))
    }

    @Test func jitterOnlyShortensWithinItsFraction() {
        for attempt in 0..<20 {
            let base = self.backoff.baseDelay(attempt: attempt)
            for unit in [0, 0.25, 0.5, 0.999] {
                let delay = self.backoff.delay(attempt: attempt, randomUnit: unit)
                #expect(delay <= base)
                #expect(delay >= base * 0.8 - .nanoseconds(1))
            }
            let random = self.backoff.delay(attempt: attempt)
            #expect(random <= base && random >= base * 0.8 - .nanoseconds(1))
        }
    }

    @Test func neverDecreasesWithAttempts() {
        var previous = Duration.zero
        for attempt in 0..<100 {
            let delay = self.backoff.baseDelay(attempt: attempt)
            #expect(delay >= previous)
            previous = delay
        }
    }

    @Test func oddSettingsStayInBounds() {
        let flat = PostgresListener.Backoff(initial: .seconds(1), maximum: .seconds(5), multiplier: 1, jitter: 0)
        #expect(flat.delay(attempt: 50) == .seconds(1))
        let shrinking = PostgresListener.Backoff(initial: .seconds(1), maximum: .seconds(5), multiplier: 0.5, jitter: 0)
        #expect(shrinking.delay(attempt: 3) == .seconds(1))
        let wild = PostgresListener.Backoff(initial: .seconds(1), maximum: .seconds(5), multiplier: 3, jitter: 7)
        // A jitter above 1 counts as 1: the delay may shrink to nothing, never grow.
        #expect(wild.delay(attempt: 1, randomUnit: 0.5) == .milliseconds(1500))
        #expect(wild.delay(attempt: 1, randomUnit: 0.999_999) < .milliseconds(1))
        let initialAboveMaximum = PostgresListener.Backoff(initial: .seconds(60), maximum: .seconds(5), jitter: 0)
        #expect(initialAboveMaximum.delay(attempt: 0) == .seconds(5))
        #expect(PostgresListener.Backoff().delay(attempt: -3, randomUnit: 0) == .milliseconds(100))
    }
}

/// Equal up to floating-point rounding.
private func close(_ lhs: Duration, _ rhs: Duration) -> Bool {
    lhs - rhs < .microseconds(1) && rhs - lhs < .microseconds(1)
}
