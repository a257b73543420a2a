@testable import ConsentSyncEngine
import Testing

/// The relay loop's wake-up: a ring ends a wait, a ring with nobody waiting is kept for the
/// next wait, the timeout ends a wait nobody rings, and an old timeout never cuts a later
/// wait short. "Ended by the ring" is told from "ended by the timeout" with wide margins (a
/// 120 s timeout, 60 s allowed), so a loaded machine cannot turn one into the other.
@Suite struct DoorbellTests {
    @Test func aRingEndsAWaitLongBeforeItsTimeout() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        async let waited: Void = doorbell.wait(timeout: .seconds(120))
        try? await Task.sleep(for: .milliseconds(50))
        doorbell.ring()
        await waited
        #expect(ContinuousClock.now - started < .seconds(60))
    }

    @Test func aRingWhileNobodyWaitsIsKeptForTheNextWait() async {
        let doorbell = Doorbell()
        doorbell.ring()
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .seconds(120))
        #expect(ContinuousClock.now - started < .seconds(60))
    }

    @Test func theTimeoutEndsAWaitNobodyRings() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(100))
        #expect(ContinuousClock.now - started >= .milliseconds(99))
    }

    @Test func anEarlierWaitsTimeoutDoesNotEndALaterWait() async {
        let doorbell = Doorbell()
        // The first wait arms its timeout for 100 ms and is rung after about 20.
        await waitRungEarly(doorbell, timeout: .milliseconds(100))
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(400))
        #expect(ContinuousClock.now - started >= .milliseconds(399))
    }

    @Test func aTimeoutWithNobodyWaitingIsNotKeptAsARing() async {
        let doorbell = Doorbell()
        await waitRungEarly(doorbell, timeout: .milliseconds(50))
        // The first wait's timeout passes meanwhile, with nobody waiting.
        try? await Task.sleep(for: .milliseconds(150))
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(100))
        #expect(ContinuousClock.now - started >= .milliseconds(99))
    }

    /// A wait of `timeout`, rung after about 20 ms. On a machine too loaded to ring in time,
    /// the wait ends by its timeout and the ring is rightly kept: taken here, so that the
    /// caller starts from a doorbell with no ring kept either way.
    private func waitRungEarly(_ doorbell: Doorbell, timeout: Duration) async {
        let started = ContinuousClock.now
        async let first: Void = doorbell.wait(timeout: timeout)
        try? await Task.sleep(for: .milliseconds(20))
        doorbell.ring()
        await first
        if ContinuousClock.now - started >= timeout {
            await doorbell.wait(timeout: .zero)
        }
    }

    @Test func cancellingTheWaitingTaskEndsTheWait() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        let task = Task { await doorbell.wait(timeout: .seconds(120)) }
        try? await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await task.value
        #expect(ContinuousClock.now - started < .seconds(60))
    }
}
