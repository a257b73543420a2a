import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The daemon as a process: signals, draining, restarts, a database that is not there yet.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct DaemonLifecycleTests {
    static func environment(_ database: TestDatabase, _ extra: [String: String] = [:]) -> [String: String] {
        var environment = database.daemonEnvironment
        environment["CONSENT_SYNC_RELAY_POLL_INTERVAL_MS"] = "200"
        environment["CONSENT_SYNC_RELAY_JANITOR_INTERVAL_MS"] = "200"
        environment["CONSENT_SYNC_RETRY_INITIAL_DELAY_MS"] = "50"
        environment["CONSENT_SYNC_RETRY_MAX_DELAY_MS"] = "500"
        environment["CONSENT_SYNC_OPS_ENABLED"] = "false"
        environment["CONSENT_SYNC_LOG_LEVEL"] = "info"
        return environment.merging(extra) { $1 }
    }

    static func counts(_ database: TestDatabase) async throws -> [String: Int] {
        let rows = try await database.withConnection { connection in
            try await connection.query("SELECT state, count(*) AS n FROM consent_sync.deliveries GROUP BY state")
        }
        return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.string("state"), try $0.int("n")) })
    }

    @Test func sigtermLetsRequestsInFlightFinish() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { _ in .delayed(.milliseconds(1500), .status(200)) }
            defer { Task { await receiver.stop() } }
            // The receiver takes 1.5 s; limits far above that (a 30 s request timeout, a 30 s
            // drain), so that a stalled machine cannot turn an answer into a timeout and a retry.
            try await RelayFixture.addSubscriber("slow", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(30)), on: database)
            let daemon = try DaemonProcess(["run"], environment: Self.environment(database, ["CONSENT_SYNC_RELAY_DRAIN_TIMEOUT_MS": "30000"]))
            try await daemon.waitForLog("relay connected")
            for index in 0..<5 {
                try await ConsentWriter(database: database).set("s\(index)", "email", .granted)
            }
            try await receiver.waitForRequests(count: 5)
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit(timeout: .seconds(60)) == 0)
            let counts = try await Self.counts(database)
            #expect(counts == ["delivered": 5], "after a graceful stop: \(counts)")
            #expect(receiver.requests.count == 5)
        }
    }

    @Test func aDrainTimeoutLeavesUnfinishedWorkPendingForTheNextStart() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let slow = Counter(3)
            let receiver = try await WebhookReceiver.start { _ in
                slow.decrement() ? .delayed(.seconds(20), .status(200)) : .status(200)
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("stuck", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(30)), on: database)
            let environment = Self.environment(database, ["CONSENT_SYNC_RELAY_DRAIN_TIMEOUT_MS": "300"])
            let first = try DaemonProcess(["run"], environment: environment)
            try await first.waitForLog("relay connected")
            for index in 0..<3 {
                try await ConsentWriter(database: database).set("h\(index)", "email", .granted)
            }
            try await receiver.waitForRequests(count: 3)
            first.signal(SIGTERM)
            #expect(try await first.waitForExit(timeout: .seconds(30)) == 0)
            // Nothing claimed is left behind: the interrupted requests are pending again.
            #expect(try await Self.counts(database) == ["pending": 3])

            let second = try DaemonProcess(["run"], environment: environment)
            try await receiver.waitForRequests(count: 6)
            try await waitUntil("all delivered after the restart") {
                try await Self.counts(database) == ["delivered": 3]
            }
            second.signal(SIGTERM)
            #expect(try await second.waitForExit() == 0)
        }
    }

    @Test func aSecondSignalStopsAtOnceWithoutLosingWork() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { _ in .hang }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("hanging", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(60)), on: database)
            let daemon = try DaemonProcess(["run"], environment: Self.environment(database, ["CONSENT_SYNC_RELAY_DRAIN_TIMEOUT_MS": "60000"]))
            try await daemon.waitForLog("relay connected")
            try await ConsentWriter(database: database).set("q", "email", .withdrawn)
            try await receiver.waitForRequests(count: 1)
            daemon.signal(SIGTERM)
            try await daemon.waitForLog("stopping: finishing requests in flight")
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit(timeout: .seconds(30)) == 0)
            #expect(try await Self.counts(database) == ["pending": 1])
        }
    }

    /// A round's requests are started on a queue of their own while the loop goes on; a stop
    /// must still find every one of them, cut it short and write it back, not leave a lease
    /// behind that only its expiry would give back.
    @Test func aStopWithNoTimeToDrainLeavesNothingInFlight() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { _ in .hang }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("hanging", url: receiver.url, limits: .init(maxInFlight: 100, timeout: .seconds(60)), on: database)
            try await database.withConnection { connection in
                for index in 0..<100 {
                    try await ConsentWriter.set("n\(index)", "email", .granted, on: connection)
                }
            }
            let daemon = try DaemonProcess(["run"], environment: Self.environment(database, ["CONSENT_SYNC_RELAY_DRAIN_TIMEOUT_MS": "0"]))
            try await receiver.waitForRequests(count: 1)
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit(timeout: .seconds(30)) == 0)
            let counts = try await Self.counts(database)
            #expect(counts == ["pending": 100], "after a stop with no time to drain: \(counts)")
        }
    }

    @Test func theDaemonWaitsForADatabaseThatIsNotThereYet() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("patient", url: receiver.url, on: database)
            try await ConsentWriter(database: database).set("w", "email", .granted)
            let admin = try await PostgresConnection.connect(TestDatabase.baseConfiguration, logger: RelayFixture.logger)
            let quoted = try admin.escapeIdentifier(database.name)
            try await admin.query("ALTER DATABASE \(quoted) WITH ALLOW_CONNECTIONS false")
            let daemon = try DaemonProcess(["run"], environment: Self.environment(database))
            try await daemon.waitForLog("pipeline step failed; retrying")
            #expect(daemon.isRunning)
            #expect(receiver.requests.isEmpty)
            try await admin.query("ALTER DATABASE \(quoted) WITH ALLOW_CONNECTIONS true")
            await admin.close()
            try await receiver.waitForRequests(count: 1, timeout: .seconds(30))
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }

    @Test func sighupWithAnInvalidFileKeepsTheRunningConfiguration() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("reloaded", url: receiver.url, on: database)
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("consent-sync-\(UUID().uuidString).yaml")
            defer { try? FileManager.default.removeItem(at: file) }
            try "relay:\n  claim_batch_size: 10\n".write(to: file, atomically: true, encoding: .utf8)
            let daemon = try DaemonProcess(["run", "--config", file.path], environment: Self.environment(database))
            try await daemon.waitForLog("relay connected")

            try "relay:\n  claim_batch_size: -4\n".write(to: file, atomically: true, encoding: .utf8)
            daemon.signal(SIGHUP)
            try await daemon.waitForLog("configuration reload rejected")
            #expect(daemon.stderr.contains("relay.claim_batch_size"))
            try await ConsentWriter(database: database).set("after-bad-reload", "email", .granted)
            try await receiver.waitForRequests(count: 1)

            try "relay:\n  claim_batch_size: 20\n".write(to: file, atomically: true, encoding: .utf8)
            daemon.signal(SIGHUP)
            try await daemon.waitForLog("configuration reloaded")
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }
}

extension DaemonLifecycleTests {
    @Test func sighupChangesTheLogLevel() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("verbose", url: receiver.url, on: database)
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("consent-sync-\(UUID().uuidString).yaml")
            defer { try? FileManager.default.removeItem(at: file) }
            try "log:\n  level: info\n".write(to: file, atomically: true, encoding: .utf8)
            var environment = Self.environment(database)
            environment["CONSENT_SYNC_LOG_LEVEL"] = nil
            let daemon = try DaemonProcess(["run", "--config", file.path], environment: environment)
            try await daemon.waitForLog("relay connected")

            // "delivered" is logged at debug: not shown at info.
            try await ConsentWriter(database: database).set("before", "email", .granted)
            try await receiver.waitForRequests(count: 1)
            try await Task.sleep(for: .milliseconds(300))
            #expect(!daemon.stderr.contains("msg=delivered"))

            try "log:\n  level: debug\n".write(to: file, atomically: true, encoding: .utf8)
            daemon.signal(SIGHUP)
            try await daemon.waitForLog("configuration reloaded")
            try await ConsentWriter(database: database).set("after", "email", .granted)
            try await receiver.waitForRequests(count: 2)
            try await daemon.waitForLog("msg=delivered")
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }
}
