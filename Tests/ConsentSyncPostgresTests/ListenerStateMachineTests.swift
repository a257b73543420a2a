@testable import ConsentSyncPostgres
import Testing

@Suite struct ListenerStateMachineTests {
    typealias Machine = ListenerStateMachine

    let start = ContinuousClock.now

    func makeMachine() -> Machine {
        Machine(
            backoff: .init(initial: .milliseconds(100), maximum: .seconds(1), multiplier: 2, jitter: 0),
            keepalive: .init(interval: .seconds(30), timeout: .seconds(10)),
            random: { 0 }
        )
    }

    @Test func firstConnectionListensWithoutReconnectedFlag() {
        var machine = self.makeMachine()
        #expect(machine.start() == .connect)
        #expect(machine.connected() == .listen)
        #expect(machine.subscribed(at: self.start) == .emitListening(reconnected: false))
        #expect(machine.nextDeadline == self.start + .seconds(30))
    }

    @Test func failedConnectsBackOffUpToTheCap() {
        var machine = self.makeMachine()
        _ = machine.start()
        var delays: [Duration] = []
        for _ in 0..<6 {
            guard case .closeAndRetry(_, let delay) = machine.connectFailed(reason: "refused") else {
                Issue.record("expected a retry")
                return
            }
            delays.append(delay)
            #expect(machine.retryDelayElapsed() == .connect)
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
        // Connecting at last is a first listen, not a reconnect: nothing was listened to before.
        #expect(machine.connected() == .listen)
        #expect(machine.subscribed(at: self.start) == .emitListening(reconnected: false))
    }

    @Test func lostConnectionReconnectsAndSaysSo() {
        var machine = self.makeMachine()
        _ = machine.start()
        _ = machine.connected()
        _ = machine.subscribed(at: self.start)
        #expect(machine.connectionLost(reason: "terminated") == .closeAndRetry(reason: "terminated", delay: .milliseconds(100)))
        #expect(machine.nextDeadline == nil)
        #expect(machine.retryDelayElapsed() == .connect)
        #expect(machine.connected() == .listen)
        #expect(machine.subscribed(at: self.start) == .emitListening(reconnected: true))
    }

    @Test func backoffResetsOnlyAfterListeningAgain() {
        var machine = self.makeMachine()
        _ = machine.start()
        _ = machine.connected()
        _ = machine.subscribed(at: self.start)
        _ = machine.connectionLost(reason: "a")
        _ = machine.retryDelayElapsed()
        #expect(machine.connectFailed(reason: "b") == .closeAndRetry(reason: "b", delay: .milliseconds(200)))
        _ = machine.retryDelayElapsed()
        _ = machine.connected()
        // LISTEN failing keeps counting.
        #expect(machine.connectionLost(reason: "c") == .closeAndRetry(reason: "c", delay: .milliseconds(400)))
        _ = machine.retryDelayElapsed()
        _ = machine.connected()
        _ = machine.subscribed(at: self.start)
        #expect(machine.connectionLost(reason: "d") == .closeAndRetry(reason: "d", delay: .milliseconds(100)))
    }

    @Test func quietConnectionIsProbedAndDroppedWithoutReply() {
        var machine = self.makeMachine()
        _ = machine.start()
        _ = machine.connected()
        _ = machine.subscribed(at: self.start)
        #expect(machine.deadlineReached(at: self.start + .seconds(29)) == .wait)
        #expect(machine.deadlineReached(at: self.start + .seconds(30)) == .sendKeepalive)
        machine.keepaliveSent(at: self.start + .seconds(30))
        #expect(machine.isAwaitingKeepalive)
        #expect(machine.nextDeadline == self.start + .seconds(40))
        // Notifications arriving do not answer the keepalive.
        machine.inputReceived(at: self.start + .seconds(35))
        #expect(machine.nextDeadline == self.start + .seconds(40))
        guard case .closeAndRetry(let reason, _) = machine.deadlineReached(at: self.start + .seconds(40)) else {
            Issue.record("expected the connection to be given up")
            return
        }
        #expect(reason.contains("keepalive"))
    }

    @Test func answeredKeepaliveRestartsTheQuietPeriod() {
        var machine = self.makeMachine()
        _ = machine.start()
        _ = machine.connected()
        _ = machine.subscribed(at: self.start)
        machine.inputReceived(at: self.start + .seconds(20))
        #expect(machine.deadlineReached(at: self.start + .seconds(30)) == .wait)
        #expect(machine.nextDeadline == self.start + .seconds(50))
        #expect(machine.deadlineReached(at: self.start + .seconds(50)) == .sendKeepalive)
        machine.keepaliveSent(at: self.start + .seconds(50))
        machine.keepaliveAnswered(at: self.start + .seconds(51))
        #expect(!machine.isAwaitingKeepalive)
        #expect(machine.nextDeadline == self.start + .seconds(81))
    }

    @Test func eventsOutOfPlaceAreIgnored() {
        var machine = self.makeMachine()
        #expect(machine.connected() == .wait)
        #expect(machine.connectionLost(reason: "x") == .wait)
        #expect(machine.retryDelayElapsed() == .wait)
        _ = machine.start()
        #expect(machine.subscribed(at: self.start) == .wait)
        #expect(machine.deadlineReached(at: self.start) == .wait)
    }
}
