import ConsentSyncEngine
import ConsentSyncOps
import Testing

/// What to tell systemd when, decided without a socket.
@Suite struct SystemdNotificationPolicyTests {
    let start = ContinuousClock.now

    func snapshot(at now: ContinuousClock.Instant, turnedAgo: Duration? = .zero, ready: Bool = true) -> RelayHealth.Snapshot {
        var snapshot = RelayHealth.Snapshot()
        snapshot.lastLoopTurn = turnedAgo.map { now - $0 }
        snapshot.databaseReady = ready
        snapshot.listening = ready
        snapshot.schemaVersion = 1
        snapshot.subscribers = 3
        snapshot.backlog = 12
        snapshot.inFlight = 2
        return snapshot
    }

    @Test func aStalledLoopGetsNoWatchdogPing() {
        var policy = SystemdNotificationPolicy(watchdogInterval: .seconds(10), startedAt: start)
        let now = start + .seconds(60)
        let stalled = snapshot(at: now, turnedAgo: .seconds(11))
        #expect(!policy.shouldPingWatchdog(stalled, now: now))
        #expect(!policy.tick(stalled, now: now).contains(.watchdog))
        // The same snapshot, its loop turning: pinged.
        #expect(policy.tick(snapshot(at: now, turnedAgo: .seconds(1)), now: now).contains(.watchdog))
    }

    @Test func watchdogPingsEveryHalfInterval() {
        var policy = SystemdNotificationPolicy(watchdogInterval: .seconds(10), startedAt: start)
        var pings: [Duration] = []
        for second in 0...20 {
            let now = start + .seconds(second)
            if policy.tick(snapshot(at: now), now: now).contains(.watchdog) { pings.append(now - start) }
        }
        #expect(pings == [.seconds(0), .seconds(5), .seconds(10), .seconds(15), .seconds(20)])
    }

    @Test func noWatchdogWithoutAnInterval() {
        var policy = SystemdNotificationPolicy(watchdogInterval: nil, startedAt: start)
        #expect(!policy.tick(snapshot(at: start), now: start).contains(.watchdog))
    }

    @Test func beforeTheFirstLoopTurnTheWatchdogGetsGraceThenStops() {
        var policy = SystemdNotificationPolicy(watchdogInterval: .seconds(10), startedAt: start)
        #expect(policy.tick(snapshot(at: start + .seconds(1), turnedAgo: nil, ready: false), now: start + .seconds(1)).contains(.watchdog))
        #expect(!policy.tick(snapshot(at: start + .seconds(11), turnedAgo: nil, ready: false), now: start + .seconds(11)).contains(.watchdog))
    }

    @Test func readyOnceWhenTheRelayIsFirstReady() {
        var policy = SystemdNotificationPolicy(watchdogInterval: nil, startedAt: start)
        let waiting = policy.tick(snapshot(at: start, ready: false), now: start)
        #expect(!waiting.contains(.ready))
        let first = policy.tick(snapshot(at: start + .seconds(1)), now: start + .seconds(1))
        #expect(first.first == .ready)
        #expect(first.contains(.status("delivering: 3 subscribers, backlog 12, in flight 2")))
        // Not again, also after the relay was away for a while.
        _ = policy.tick(snapshot(at: start + .seconds(2), ready: false), now: start + .seconds(2))
        #expect(!policy.tick(snapshot(at: start + .seconds(9)), now: start + .seconds(9)).contains(.ready))
    }

    @Test func statusIsSentWhenItChangesAtMostEveryInterval() {
        var policy = SystemdNotificationPolicy(watchdogInterval: nil, statusInterval: .seconds(5), startedAt: start)
        func statuses(_ messages: [SystemdNotifier.Message]) -> [String] {
            messages.compactMap { if case .status(let text) = $0 { text } else { nil } }
        }
        var health = snapshot(at: start, ready: false)
        health.lastError = "connection failed: could not connect to server\nIs the server running?"
        #expect(statuses(policy.tick(health, now: start)) == ["waiting for database: connection failed: could not connect to server"])
        // Unchanged: nothing.
        #expect(statuses(policy.tick(health, now: start + .seconds(6))) == [])
        // Changed, but too soon after the last one: later.
        health.lastError = "connection failed: timeout"
        #expect(statuses(policy.tick(health, now: start + .seconds(7))) == ["waiting for database: connection failed: timeout"])
        var busier = health
        busier.lastError = "connection failed: refused"
        #expect(statuses(policy.tick(busier, now: start + .seconds(8))) == [])
        #expect(statuses(policy.tick(busier, now: start + .seconds(12))) == ["waiting for database: connection failed: refused"])
    }

    @Test func stoppingOnceWhenTheRelayStopsOrTheServiceShutsDown() {
        var policy = SystemdNotificationPolicy(watchdogInterval: .seconds(10), startedAt: start)
        _ = policy.tick(snapshot(at: start), now: start)
        var stopping = snapshot(at: start + .seconds(1), turnedAgo: .seconds(30))
        stopping.stopping = true
        let messages = policy.tick(stopping, now: start + .seconds(6))
        #expect(messages.first == .stopping)
        #expect(messages.contains(.status("stopping: 2 in flight")))
        // The loop no longer turns while requests drain: the watchdog is fed anyway.
        #expect(messages.contains(.watchdog))
        #expect(policy.shutdown() == [])

        var other = SystemdNotificationPolicy(watchdogInterval: nil, startedAt: start)
        #expect(other.shutdown() == [.stopping])
        #expect(other.shutdown() == [])
    }

    @Test func reloadingThenReadyAgain() {
        var policy = SystemdNotificationPolicy(watchdogInterval: nil, startedAt: start)
        // Not before the first READY=1.
        #expect(policy.reloading(monotonicMicroseconds: 1, now: start) == [])
        _ = policy.tick(snapshot(at: start), now: start)
        #expect(policy.reloading(monotonicMicroseconds: 123_456, now: start) == [
            .reloading(monotonicMicroseconds: 123_456), .status("reloading configuration"),
        ])
        let done = policy.reloaded(snapshot(at: start), now: start)
        #expect(done == [.ready, .status("delivering: 3 subscribers, backlog 12, in flight 2")])
        #expect(policy.reloaded(snapshot(at: start), now: start) == [])
    }

    @Test(arguments: [
        (false, false, nil as String?, "connecting to database"),
        (true, false, nil, "delivering (polling, LISTEN reconnecting): 3 subscribers, backlog 12, in flight 2"),
        (true, true, nil, "delivering: 3 subscribers, backlog 12, in flight 2"),
        (false, true, String(repeating: "x", count: 200), "waiting for database: " + String(repeating: "x", count: 79) + "…"),
    ])
    func statusLine(database: Bool, listening: Bool, error: String?, expected: String) {
        var health = snapshot(at: start)
        health.databaseReady = database
        health.listening = listening
        health.lastError = error
        let liveness = LoopLiveness(health, window: .seconds(30), startedAt: start, now: start)
        #expect(SystemdNotificationPolicy.status(health, liveness: liveness) == expected)
    }

    @Test func statusOfAStalledLoop() {
        let health = snapshot(at: start, turnedAgo: .seconds(45))
        let liveness = LoopLiveness(health, window: .seconds(30), startedAt: start - .seconds(100), now: start)
        #expect(SystemdNotificationPolicy.status(health, liveness: liveness) == "stalled: no loop turn for 45 s")
    }
}
