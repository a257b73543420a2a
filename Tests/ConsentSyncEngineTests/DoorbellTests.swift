@testable import ConsentSyncEngine
import Testing

/// The relay loop's wake-up: a ring ends a wait, a ring with nobody waiting is kept for the
/// next wait, the timeout ends a wait nobody rings, and an old timeout never cuts a later
/// wait short.
@Suite struct DoorbellTests {
    @Test func aRingEndsAWaitLongBeforeItsTimeout() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        async let waited: Void = doorbell.wait(timeout: .seconds(30))
        try? await Task.sleep(for: .milliseconds(50))
        doorbell.ring()
        await waited
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test func aRingWhileNobodyWaitsIsKeptForTheNextWait() async {
        let doorbell = Doorbell()
        doorbell.ring()
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .seconds(30))
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test func theTimeoutEndsAWaitNobodyRings() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(100))
        #expect(ContinuousClock.now - started >= .milliseconds(99))
    }

    @Test func anEarlierWaitsTimeoutDoesNotEndALaterWait() async {
        let doorbell = Doorbell()
        // The first wait arms the timer for 100 ms and is rung after 20.
        async let first: Void = doorbell.wait(timeout: .milliseconds(100))
        try? await Task.sleep(for: .milliseconds(20))
        doorbell.ring()
        await first
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(400))
        #expect(ContinuousClock.now - started >= .milliseconds(399))
    }

    @Test func aTimeoutWithNobodyWaitingIsNotKeptAsARing() async {
        let doorbell = Doorbell()
        async let first: Void = doorbell.wait(timeout: .milliseconds(50))
        try? await Task.sleep(for: .milliseconds(10))
        doorbell.ring()
        await first
        // The first wait's timer fires meanwhile, with nobody waiting.
        try? await Task.sleep(for: .milliseconds(150))
        let started = ContinuousClock.now
        await doorbell.wait(timeout: .milliseconds(100))
        #expect(ContinuousClock.now - started >= .milliseconds(99))
    }

    @Test func cancellingTheWaitingTaskEndsTheWait() async {
        let doorbell = Doorbell()
        let started = ContinuousClock.now
        let task = Task { await doorbell.wait(timeout: .seconds(30)) }
        try? await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await task.value
        #expect(ContinuousClock.now - started < .seconds(10))
    }
}
