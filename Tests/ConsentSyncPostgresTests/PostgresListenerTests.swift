import ConsentSyncPostgres
import ConsentSyncTestKit
import Testing

// Results of `recording.waitFor { ... }` are bound to a local before `#expect`: Swift 6.3 miscompiles
// `#expect(try await f { closure })` inside a closure (a later closure in the same body is replaced by
// this one), so such calls never appear inside the macro here.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG*"), .timeLimit(.minutes(2)))
struct PostgresListenerTests {
    static let fastBackoff = PostgresListener.Backoff(initial: .milliseconds(20), maximum: .milliseconds(200))

    @Test func receivesNotificationsAndRecoversFromATerminatedBackend() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let applicationName = "listener-" + randomSuffix()
            let listener = PostgresListener(
                configuration: database.configuration.with("application_name", applicationName),
                channels: ["alpha", "Beta \"Gamma\""],
                backoff: Self.fastBackoff,
                logger: testLogger
            )
            let recording = ListenerRecording(listener)
            let listening = try await recording.waitFor { $0.first == .listening(reconnected: false) }
            #expect(listening, "events: \(recording.events)")

            try await database.withOpenConnection { connection in
                try await connection.query("SELECT pg_notify($1, $2)", ["alpha", "one"])
                try await connection.query("SELECT pg_notify($1, $2)", ["Beta \"Gamma\"", #"two "quoted" ü"#])
                try await connection.query("SELECT pg_notify($1, $2)", ["ignored", "nobody listens"])
                let notified = try await recording.waitFor { $0.filter(\.isNotification).count == 2 }
                #expect(notified, "events: \(recording.events)")
                #expect(recording.notifications == [
                    .notification(channel: "alpha", payload: "one"),
                    .notification(channel: "Beta \"Gamma\"", payload: #"two "quoted" ü"#),
                ])

                #expect(try await database.terminateBackends(applicationName: applicationName) == 1)
                let recovered = try await recording.waitFor { events in
                    guard let lost = events.firstIndex(where: \.isDisconnected) else { return false }
                    return events[lost...].contains(.listening(reconnected: true))
                }
                #expect(recovered, "events: \(recording.events)")

                try await connection.query("SELECT pg_notify($1, $2)", ["alpha", "three"])
                let resumed = try await recording.waitFor { $0.last == .notification(channel: "alpha", payload: "three") }
                #expect(resumed, "events: \(recording.events)")
            }

            await recording.stop()
            #expect(recording.isFinished)
            #expect(recording.events.filter { $0 == .listening(reconnected: false) }.count == 1)
        }
    }

    @Test func notificationsInsideATransactionArriveOnCommit() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let listener = PostgresListener(configuration: database.configuration, channels: ["tx"], logger: testLogger)
            let recording = ListenerRecording(listener)
            let listening = try await recording.waitFor { $0.contains(.listening(reconnected: false)) }
            #expect(listening, "events: \(recording.events)")
            try await database.withOpenConnection { connection in
                try await connection.withTransaction { transaction in
                    for index in 0..<50 {
                        try await transaction.query("SELECT pg_notify('tx', $1)", [String(index)])
                    }
                }
            }
            let arrived = try await recording.waitFor { $0.filter(\.isNotification).count == 50 }
            #expect(arrived, "events: \(recording.events)")
            #expect(recording.notifications.last == .notification(channel: "tx", payload: "49"))
            await recording.stop()
        }
    }

    @Test func keepalivesKeepAQuietConnectionListening() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let listener = PostgresListener(
                configuration: database.configuration,
                channels: ["quiet"],
                // Frequent keepalives, but a timeout no stall of this busy process reaches: a
                // keepalive answered late is not what this tests, and would add a reconnection.
                keepalive: .init(interval: .milliseconds(50), timeout: .seconds(30)),
                logger: testLogger
            )
            let recording = ListenerRecording(listener)
            let listening = try await recording.waitFor { $0.contains(.listening(reconnected: false)) }
            #expect(listening, "events: \(recording.events)")
            // Several keepalive rounds pass without a disconnect, and notifications still arrive.
            try await Task.sleep(for: .milliseconds(600))
            try await database.withOpenConnection { try await $0.query("NOTIFY quiet, 'still here'") }
            let arrived = try await recording.waitFor { $0.contains(.notification(channel: "quiet", payload: "still here")) }
            #expect(arrived, "events: \(recording.events)")
            #expect(recording.events == [.listening(reconnected: false), .notification(channel: "quiet", payload: "still here")])
            await recording.stop()
        }
    }

    @Test func droppingTheIteratorClosesTheConnection() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let applicationName = "dropped-listener-" + randomSuffix()
            let listener = PostgresListener(
                configuration: database.configuration.with("application_name", applicationName),
                channels: ["x"],
                logger: testLogger
            )
            for await event in listener.events() {
                #expect(event == .listening(reconnected: false))
                break
            }
            try await database.withOpenConnection { observer in
                let gone = try await eventually {
                    try await observer.query("SELECT 1 FROM pg_stat_activity WHERE application_name = $1", [applicationName]).isEmpty
                }
                #expect(gone)
            }
        }
    }

    @Test func keepsRetryingWhileTheServerIsUnreachable() async throws {
        let listener = PostgresListener(
            configuration: PostgresConfiguration(connectionString: "host=127.0.0.1 port=1 user=nobody password=sekrit123"),
            channels: ["never"],
            backoff: Self.fastBackoff,
            logger: testLogger
        )
        let recording = ListenerRecording(listener)
        let retried = try await recording.waitFor { $0.filter(\.isDisconnected).count >= 3 }
        #expect(retried, "events: \(recording.events)")
        let events = recording.events
        #expect(events.allSatisfy { $0.isDisconnected })
        if case .disconnected(let reason) = events.first {
            #expect(reason.contains("127.0.0.1"))
            #expect(!reason.contains("sekrit123"))
        }
        let stoppedAt = ContinuousClock.now
        await recording.stop()
        #expect(recording.isFinished)
        // Promptly, not after a connection attempt's timeout (wide: a loaded machine).
        #expect(ContinuousClock.now - stoppedAt < .seconds(10))
    }
}

extension PostgresListener.Event {
    var isNotification: Bool {
        if case .notification = self { return true }
        return false
    }

    var isDisconnected: Bool {
        if case .disconnected = self { return true }
        return false
    }
}
