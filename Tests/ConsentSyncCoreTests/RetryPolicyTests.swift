import ConsentSyncCore
import Foundation
import Testing

/// A deterministic generator (SplitMix64) so that jitter can be tested.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct BackoffTests {
    @Test func ceilingDoublesAndIsCapped() {
        let backoff = Backoff(initial: .seconds(1), maximum: .seconds(60), minimum: .milliseconds(100))
        #expect(backoff.ceiling(forRetry: 1) == .seconds(1))
        #expect(backoff.ceiling(forRetry: 2) == .seconds(2))
        #expect(backoff.ceiling(forRetry: 6) == .seconds(32))
        #expect(backoff.ceiling(forRetry: 7) == .seconds(60))
        #expect(backoff.ceiling(forRetry: 1000) == .seconds(60))
    }

    @Test func fullJitterStaysWithinBoundsAndSpreads() {
        let backoff = Backoff(initial: .seconds(1), maximum: .seconds(60), minimum: .milliseconds(100))
        var generator = SeededGenerator(state: 42)
        for retry in 1...40 {
            var seen = Set<Int64>()
            for _ in 0..<200 {
                let delay = backoff.delay(forRetry: retry, using: &generator)
                #expect(delay >= .milliseconds(100))
                #expect(delay <= backoff.ceiling(forRetry: retry))
                seen.insert(delay.milliseconds)
            }
            #expect(seen.count > 50, "full jitter should spread delays, retry \(retry)")
        }
    }
}

@Suite struct RetryPolicyTests {
    let policy = RetryPolicy(
        backoff: Backoff(initial: .seconds(1), maximum: .seconds(60)),
        maxAttempts: 5,
        maxAge: .seconds(3600),
        maxRetryAfter: .seconds(120)
    )

    @Test(arguments: [200, 201, 202, 204, 299])
    func successIsDelivered(_ status: Int) {
        #expect(policy.decide(.response(status: status, retryAfter: nil), attempt: 1, age: .zero) == .delivered)
    }

    @Test(arguments: [408, 425, 429, 500, 502, 503, 504, 599])
    func transientStatusesRetry(_ status: Int) {
        guard case .retry = policy.decide(.response(status: status, retryAfter: nil), attempt: 1, age: .zero) else {
            Issue.record("\(status) should be retried")
            return
        }
    }

    @Test(arguments: [100, 301, 302, 304, 400, 401, 403, 404, 410, 413, 422])
    func permanentStatusesAreDeadAtOnce(_ status: Int) {
        guard case .dead(let reason) = policy.decide(.response(status: status, retryAfter: nil), attempt: 1, age: .zero) else {
            Issue.record("\(status) should be dead")
            return
        }
        #expect(reason.contains("\(status)"))
    }

    @Test func transportErrorsRetryUnlessPermanent() {
        guard case .retry = policy.decide(.transportError(message: "timeout", retryable: true), attempt: 1, age: .zero) else {
            Issue.record("timeouts are retried")
            return
        }
        #expect(policy.decide(.transportError(message: "bad url", retryable: false), attempt: 1, age: .zero) == .dead(reason: "bad url"))
    }

    @Test func retryAfterIsHonouredWithinBounds() {
        var generator = SeededGenerator(state: 1)
        let asked = policy.decide(.response(status: 429, retryAfter: "30"), attempt: 1, age: .zero, using: &generator)
        #expect(asked == .retry(after: .seconds(30)))
        let capped = policy.decide(.response(status: 503, retryAfter: "86400"), attempt: 1, age: .zero, using: &generator)
        #expect(capped == .retry(after: .seconds(120)))
        // A Retry-After shorter than the backoff does not shorten it.
        guard case .retry(let after) = policy.decide(.response(status: 503, retryAfter: "0"), attempt: 4, age: .zero, using: &generator) else {
            Issue.record("should retry")
            return
        }
        #expect(after >= .milliseconds(100))
    }

    @Test func givesUpAfterMaxAttemptsOrMaxAge() {
        guard case .dead(let reason) = policy.decide(.response(status: 500, retryAfter: nil), attempt: 5, age: .zero) else {
            Issue.record("5th attempt of 5 should be the last")
            return
        }
        #expect(reason.contains("5 attempts"))
        guard case .dead = policy.decide(.response(status: 500, retryAfter: "600"), attempt: 1, age: .seconds(3500)) else {
            Issue.record("past max age should be dead")
            return
        }
    }
}

@Suite struct RetryAfterTests {
    let now = Date(timeIntervalSince1970: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT

    @Test func parsesDelaySeconds() {
        #expect(RetryAfter.parse("120", now: now) == .seconds(120))
        #expect(RetryAfter.parse(" 0 ", now: now) == .zero)
        #expect(RetryAfter.parse("99999999999999999999", now: now) != nil)
    }

    @Test(arguments: ["Sun, 06 Nov 1994 08:50:37 GMT", "Sunday, 06-Nov-94 08:50:37 GMT", "Sun Nov  6 08:50:37 1994"])
    func parsesHTTPDates(_ value: String) {
        #expect(RetryAfter.parse(value, now: now) == .seconds(60))
    }

    @Test func pastDatesMeanNow() {
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:00:00 GMT", now: now) == .zero)
    }

    @Test func agreesWithTheEpochForKnownDates() {
        #expect(RetryAfter.httpDate("Thu, 01 Jan 1970 00:00:00 GMT")?.timeIntervalSince1970 == 0)
        #expect(RetryAfter.httpDate("Sun, 06 Nov 1994 08:49:37 GMT")?.timeIntervalSince1970 == 784_111_777)
        #expect(RetryAfter.httpDate("Tue, 29 Feb 2028 12:00:00 GMT")?.timeIntervalSince1970 == 1_835_438_400)
    }

    /// Found by fuzzing: Foundation's DateFormatter stopped the process on this one.
    @Test(arguments: [
        "", "soon", "-5", "1.5", "Sun, 32 Nov 1994 08:50:37 GMT", "12 monkeys",
        "Sun, 06 Nov 0997 08:9:37\u{738}MT", "Sun, 29 Feb 2027 08:49:37 GMT", "Sun, 06 Nov 1994 24:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 1994 08:49:37 GMT GMT", String(repeating: "9", count: 200),
        "Ｓun, 06 Nov 1994 08:49:37 GMT", "Sun,\u{0}06 Nov 1994 08:49:37 GMT",
    ])
    func rejectsGarbage(_ value: String) {
        #expect(RetryAfter.parse(value, now: now) == nil)
    }
}
