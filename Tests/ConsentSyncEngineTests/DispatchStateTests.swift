import ConsentSyncCore
@testable import ConsentSyncEngine
import Foundation
import Testing

/// The claim budget's arithmetic on a simulated clock: in-flight limits, fair shares and the
/// rate limit's token bucket (a second's worth of burst, then the rate, split among daemons).
struct DispatchStateTests {
    static let start = ContinuousClock.now

    static func subscriber(_ id: Int64, maxInFlight: Int = 16, rate: Double? = nil) -> Subscriber {
        Subscriber(
            id: id, name: "s\(id)", url: "http://127.0.0.1:1/", secrets: [SigningSecret.generate()],
            limits: .init(maxInFlight: maxInFlight, ratePerSecond: rate)
        )
    }

    static func delivery(for subscriberID: Int64) -> ClaimedDelivery {
        let change = ConsentChange(
            id: 1, eventID: "e", table: "t", operation: .update, eventType: "consent.granted",
            subject: "s", purpose: "p", status: "granted", previousStatus: nil, source: nil, changedAt: Date()
        )
        return ClaimedDelivery(id: 1, subscriberID: subscriberID, attempt: 1, age: .zero, change: change)
    }

    /// Runs `budgets` every `step` for `duration`, starting everything it grants at once,
    /// and returns the simulated start times.
    static func simulate(rate: Double, instances: Int = 1, step: Duration, for duration: Duration) -> [Duration] {
        var state = DispatchState(maxInFlight: 1_000)
        state.instances = instances
        let subscriber = subscriber(1, maxInFlight: 1_000, rate: rate)
        var starts: [Duration] = []
        var elapsed = Duration.zero
        while elapsed <= duration {
            for (id, count) in state.budgets(for: [subscriber], perRound: 1_000, now: start + elapsed) {
                for _ in 0..<count {
                    state.started(delivery(for: id), now: start + elapsed)
                    starts.append(elapsed)
                }
            }
            elapsed += step
        }
        return starts
    }

    static func busiestSecond(_ starts: [Duration]) -> Int {
        starts.indices.map { index in starts[index...].prefix { $0 < starts[index] + .seconds(1) }.count }.max() ?? 0
    }

    @Test func aRateLimitAllowsASecondsBurstThenTheRate() {
        let starts = Self.simulate(rate: 10, step: .milliseconds(7), for: .seconds(5))
        #expect(starts.prefix(10).allSatisfy { $0 == .zero }, "a full bucket: ten at once")
        #expect(starts.count(where: { $0 == .zero }) == 10)
        // Then one per 100 ms: 10 + 50 in five seconds (give or take the step).
        #expect((59...61).contains(starts.count), "\(starts.count) starts in 5 s at 10/s")
        #expect(Self.busiestSecond(starts) <= 21, "at most the burst plus a second's rate in any second")
        let gaps = zip(starts.dropFirst(10), starts.dropFirst(11)).map { $1 - $0 }
        #expect(gaps.allSatisfy { $0 >= .milliseconds(90) }, "after the burst, spaced by the rate: \(gaps)")
    }

    @Test func daemonsSharingTheDatabaseSplitTheRate() {
        let alone = Self.simulate(rate: 30, step: .milliseconds(5), for: .seconds(4))
        let shared = Self.simulate(rate: 30, instances: 3, step: .milliseconds(5), for: .seconds(4))
        #expect((148...152).contains(alone.count), "30 burst + 30/s for 4 s: \(alone.count)")
        #expect((48...52).contains(shared.count), "a third of it each: \(shared.count)")
    }

    /// A round whose claim is slow spends its tokens as its requests start. The time the claim
    /// took refills nothing past a full bucket, so the next round gets only what accrued since.
    /// (A CI run once saw 27 requests start within a second at 10/s: a full bucket budgeted,
    /// started 0.7 s later, and 7 more tokens credited for those 0.7 s.)
    @Test func aSlowClaimEarnsNoTokensOnTopOfAFullBucket() {
        var state = DispatchState(maxInFlight: 100)
        let metered = Self.subscriber(1, maxInFlight: 100, rate: 10)
        let first = state.budgets(for: [metered], perRound: 100, now: Self.start)
        #expect(first.first?.count == 10, "a full bucket")
        let startedAt = Self.start + .milliseconds(700)
        for _ in 0..<10 { state.started(Self.delivery(for: 1), now: startedAt) }
        #expect(state.budgets(for: [metered], perRound: 100, now: startedAt + .milliseconds(10)).isEmpty)
        let later = state.budgets(for: [metered], perRound: 100, now: startedAt + .milliseconds(310))
        #expect(later.first?.count == 3, "three tokens in the 310 ms since the burst started")
    }

    @Test func aSlowRateStillSendsOneAtATime() {
        // Below one per second the bucket holds one token, not a fraction.
        let starts = Self.simulate(rate: 0.5, step: .milliseconds(50), for: .seconds(9))
        #expect(starts.count == 5, "one at once, then one every 2 s: \(starts)")
    }

    @Test func inFlightLimitsAndFairSharesBoundEachRound() {
        var state = DispatchState(maxInFlight: 10)
        let busy = Self.subscriber(1, maxInFlight: 3)
        let other = Self.subscriber(2, maxInFlight: 100)
        var budgets = state.budgets(for: [busy, other], perRound: 100, now: Self.start)
        #expect(budgets.map(\.count) == [3, 5], "its own limit for the first, a fair half for the second")
        for _ in 0..<3 { state.started(Self.delivery(for: 1)) }
        budgets = state.budgets(for: [busy, other], perRound: 100, now: Self.start)
        // The first has no slot left; the second gets its share of the seven free ones.
        #expect(budgets.map(\.subscriberID) == [2])
        #expect(budgets.first?.count == 3)
        var disabled = other
        disabled.enabled = false
        #expect(state.budgets(for: [busy, disabled], perRound: 100, now: Self.start).isEmpty)
    }

    @Test func anInstanceOutOfTokensWakesWhenTheNextOneIsDue() {
        var state = DispatchState(maxInFlight: 100)
        let metered = Self.subscriber(1, maxInFlight: 100, rate: 4)
        let budgets = state.budgets(for: [metered], perRound: 100, now: Self.start)
        #expect(budgets.first?.count == 4)
        for _ in 0..<4 { state.started(Self.delivery(for: 1), now: Self.start) }
        #expect(state.nextWake(pollInterval: .seconds(5), now: Self.start) == .milliseconds(250))
    }

    /// A slot held for a delivery that may be handed over is not claimed again in that round,
    /// and is free again once given back.
    @Test func aReservedSlotIsLeftOutOfTheBudgets() {
        var state = DispatchState(maxInFlight: 100)
        let subscriber = Self.subscriber(1, maxInFlight: 3)
        state.started(Self.delivery(for: 1))
        state.reserve(1)
        #expect(state.budgets(for: [subscriber], perRound: 10).first?.count == 1)
        #expect(state.inFlightTotal == 2)
        state.unreserve(1)
        #expect(state.budgets(for: [subscriber], perRound: 10).first?.count == 2)
        #expect(state.inFlightTotal == 1)
    }
}
