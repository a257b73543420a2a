@testable import ConsentSyncEngine
import Testing

/// The backlog count's spacing: every interval while counting is quick, a hundred times the
/// count's duration when it is slow.
struct BacklogScheduleTests {
    @Test func countsAtTheIntervalWhileCountingIsQuick() {
        let start = ContinuousClock.now
        var schedule = BacklogSchedule(interval: .seconds(10))
        #expect(schedule.isDue(at: start))
        schedule.counted(startedAt: start, took: .milliseconds(3))
        #expect(!schedule.isDue(at: start + .milliseconds(9_999)))
        #expect(schedule.isDue(at: start + .seconds(10)))
    }

    @Test func aSlowCountSpacesTheNextOut() {
        let start = ContinuousClock.now
        var schedule = BacklogSchedule(interval: .seconds(10))
        schedule.counted(startedAt: start, took: .milliseconds(400))
        #expect(!schedule.isDue(at: start + .seconds(39)))
        #expect(schedule.isDue(at: start + .seconds(40)))

        // Quick again (the backlog drained): back to the interval, and to a new one on reload.
        schedule.counted(startedAt: start + .seconds(40), took: .milliseconds(2))
        schedule.interval = .seconds(5)
        #expect(!schedule.isDue(at: start + .milliseconds(44_999)))
        #expect(schedule.isDue(at: start + .seconds(45)))
    }
}
