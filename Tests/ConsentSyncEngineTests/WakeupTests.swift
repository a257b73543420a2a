import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Synchronization
import Testing

/// NOTIFY is cheap only when rare: writers notify while a daemon is idle, not while it is busy.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct WakeupTests {
    @Test func anIdleDaemonIsWokenByNotifyNotByThePoll() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            var configuration = Relay.Configuration.forTests
            configuration.pollInterval = .seconds(3600)
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                try await waitUntilIdle(database)
                // What the capture trigger reads: the number of idle daemons.
                #expect(try await database.withConnection(Self.idleFlag) == 1)
                // Only a NOTIFY can deliver this within the test: the poll is an hour away.
                try await ConsentWriter(database: database).set("idle-1", "email", .granted)
                try await receiver.waitForRequests(count: 1, timeout: .seconds(60))
                try await waitUntilIdle(database)  // idle again
                try await ConsentWriter(database: database).set("idle-2", "email", .denied)
                try await receiver.waitForRequests(count: 2, timeout: .seconds(60))
            }
            // A stopped daemon removes its row: nobody to notify, so writers do not.
            let rows = try await database.withConnection { try await $0.query("SELECT 1 FROM consent_sync.listeners") }
            #expect(rows.isEmpty)
            #expect(try await database.withConnection(Self.idleFlag) == 0)
        }
    }

    static func idleFlag(_ connection: PostgresConnection) async throws -> Int {
        try await connection.query("SELECT pg_sequence_last_value('consent_sync.idle_listeners') AS n").first?.int("n") ?? -1
    }

    /// Two daemons: the flag counts both while both wait, one after the other stops, none
    /// after both; and a change written while one is idle reaches a receiver through NOTIFY.
    @Test func theIdleFlagCountsEveryIdleDaemon() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            var configuration = Relay.Configuration.forTests
            configuration.pollInterval = .seconds(3600)
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                    try await waitUntil("both relays say they are idle") {
                        try await database.withConnection(Self.idleFlag) == 2
                    }
                    #expect(try await database.withConnection { try await $0.query("SELECT 1 FROM consent_sync.listeners WHERE idle") }.count == 2)
                }
                try await waitUntil("one relay left, idle") {
                    try await database.withConnection(Self.idleFlag) == 1
                }
                try await ConsentWriter(database: database).set("two-1", "email", .granted)
                try await receiver.waitForRequests(count: 1, timeout: .seconds(60))
            }
            #expect(try await database.withConnection(Self.idleFlag) == 0)
        }
    }

    @Test func aBusyDaemonIsNotNotifiedForEveryChange() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, limits: .init(maxInFlight: 32, timeout: .seconds(5)), on: database)

            // Count what a separate connection hears on the channel.
            let heard = Mutex(0)
            let listener = PostgresListener(configuration: database.configuration, channels: ["consent_sync"], logger: RelayFixture.logger)
            let listening = Task {
                for await event in listener.events() {
                    if case .notification = event { heard.withLock { $0 += 1 } }
                }
            }
            defer { listening.cancel() }

            let writers = 4
            let perWriter = 400
            try await RelayFixture.withRelay(on: database) { _ in
                try await waitUntilIdle(database)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<writers {
                        group.addTask {
                            try await database.withConnection { connection in
                                // 150 rows per writer, each written two or three times with
                                // alternating status: every write is a real change.
                                for index in 0..<perWriter {
                                    let status: ConsentStatus = (index / 150) % 2 == 0 ? .granted : .denied
                                    try await ConsentWriter.set("w\(writer)-\(index % 50)", "p\(index % 3)", status, on: connection)
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                try await receiver.waitForRequests(count: writers * perWriter, timeout: .seconds(60))
            }
            let notifications = heard.withLock { $0 }
            let changes = writers * perWriter
            // Every change is its own transaction: notifying on each would be 1,600 NOTIFYs.
            #expect(notifications >= 1, "the first change after idling must wake the daemon")
            #expect(notifications < changes / 4, "\(notifications) NOTIFYs for \(changes) committed changes")
            print("wake-up: \(notifications) NOTIFYs for \(changes) changes")
        }
    }

    @Test func pollOnlyModeDeliversWithoutListen() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            var configuration = Relay.Configuration.forTests
            configuration.listen = false
            try await RelayFixture.withRelay(on: database, configuration: configuration) { running in
                try await ConsentWriter(database: database).set("polled", "email", .granted)
                try await receiver.waitForRequests(count: 1)
                let listeners = try await database.withConnection { connection in
                    try await connection.query(
                        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'consent-sync listener'"
                    )
                }
                #expect(listeners.isEmpty)
                #expect(running.relay.health.snapshot.isReady)
            }
        }
    }
}
