import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Logging
import Testing

/// An installation upgraded while changes wait: what the old capture trigger wrote is sent as
/// it was, what the new one queues after the upgrade follows it, in order.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct UpgradeTests {
    @Test func changesCapturedBeforeSchema7AreSentWithTheQueuedOnesInOrder() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let logger = Logger(label: "upgrade-test")
            try await database.withConnection { try await Migrator.migrate($0, through: 6, logger: logger) }
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await database.withConnection { connection in
                try await connection.execute(
                    """
                    CREATE TABLE public.prefs (customer text PRIMARY KEY, channel text NOT NULL, opted text);
                    """
                )
                _ = try await WatchStore.add(
                    WatchDefinition(schema: "public", table: "prefs", subjectColumns: ["customer"], purposeColumn: "channel",
                                    statusColumn: "opted", statusMap: ["yes": "granted", "no": "denied"]),
                    on: connection
                )
                // Captured by the schema-6 trigger: complete rows in the outbox, not yet fanned out.
                try await connection.execute(
                    """
                    INSERT INTO public.prefs VALUES ('c1', 'email', 'yes');
                    UPDATE public.prefs SET opted = 'no';
                    INSERT INTO consent_sync.consents (subject_id, purpose, status) VALUES ('c2', 'sms', 'granted');
                    """
                )
            }
            let before = try await database.withConnection { connection in
                try await connection.query("SELECT event_id::text AS event_id FROM consent_sync.changes ORDER BY id").map { try $0.string("event_id") }
            }
            #expect(before.count == 3)

            let result = try await database.withConnection { try await Migrator.migrate($0, logger: logger) }
            #expect(result == Migrator.Result(from: 6, to: Migrations.latestVersion))
            try await database.withConnection { connection in
                // Captured by the new trigger: queued, completed by the fan-out.
                try await connection.execute(
                    """
                    UPDATE public.prefs SET opted = 'yes';
                    UPDATE consent_sync.consents SET status = 'withdrawn';
                    """
                )
                let queued = try await connection.query("SELECT count(*) AS n FROM consent_sync.captured").first?.int("n")
                #expect(queued == 2)
            }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                let requests = try await receiver.waitForRequests(count: 5)
                let events = try requests.map { try #require(try JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any]) }
                let seen = events.map { "\($0["subject"] as? String ?? "?") \($0["type"] as? String ?? "?")" }
                #expect(seen.filter { $0.hasPrefix("c1 ") } == ["c1 consent.granted", "c1 consent.denied", "c1 consent.granted"], "\(seen)")
                #expect(seen.filter { $0.hasPrefix("c2 ") } == ["c2 consent.granted", "c2 consent.withdrawn"], "\(seen)")
                let ids = events.compactMap { $0["id"] as? String }
                #expect(Set(before).isSubset(of: Set(ids)), "an event captured before the upgrade kept its id")
                let previous = events.compactMap { ($0["data"] as? [String: Any])?["previous_status"] as? String }
                #expect(previous.sorted() == ["denied", "granted", "granted"], "\(previous)")
            }
            let left = try await database.withConnection { connection in
                try await connection.query(
                    "SELECT (SELECT count(*) FROM consent_sync.captured) + (SELECT count(*) FROM consent_sync.changes WHERE NOT fanned_out) AS n"
                ).first?.int("n")
            }
            #expect(left == 0)
        }
    }

    /// A daemon left running while `consent-sync migrate` of a newer version changes the
    /// schema under it: its statements fail, and it says why (not only the statement's error),
    /// stops calling itself ready, and goes on once the schema matches it again. Nothing waiting
    /// is lost meanwhile.
    @Test func aDaemonLeftRunningAfterANewerMigrateSaysSoAndResumesWhenItMatches() async throws {
        // What a next version's migration could do: another version row, and a column this
        // binary's fan-out and claims name renamed (42703 for them).
        try await expectADaemonLeftRunningToStopAndResume(
            newer: "ALTER TABLE consent_sync.deliveries RENAME COLUMN replay_of TO replay_of_renamed",
            undo: "ALTER TABLE consent_sync.deliveries RENAME COLUMN replay_of_renamed TO replay_of"
        )
    }

    /// The same with a migration that breaks none of the daemon's statements (schema 11 only
    /// rebuilt two indexes: an older daemon's claim still ran, but read every live delivery).
    /// The janitor finds the newer version itself: the daemon stops delivering and says why
    /// until the schema matches it again.
    @Test func aDaemonLeftRunningAfterANewerMigrateThatBreaksNoStatementStopsUntilItMatches() async throws {
        try await expectADaemonLeftRunningToStopAndResume(newer: nil, undo: nil)
    }

    /// Runs a relay that has delivered one change, then records a schema version newer than
    /// this binary's (and runs `newer`, what that version's migration changed): the relay must
    /// report the newer schema, stop calling itself ready and send nothing captured meanwhile.
    /// Then the version row goes (and `undo` runs): the change captured meanwhile must arrive,
    /// after the first, and the relay be ready again.
    private func expectADaemonLeftRunningToStopAndResume(newer: String?, undo: String?) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let writer = ConsentWriter(database: database)
            try await RelayFixture.withRelay(on: database) { running in
                try await writer.set("before", "email", .granted)
                try await receiver.waitForRequests(count: 1)

                let future = Migrations.latestVersion + 1
                try await database.withConnection { connection in
                    try await connection.execute(
                        "INSERT INTO consent_sync.schema_migrations (version, name) VALUES (\(future), 'from a newer consent-sync')"
                    )
                    if let newer { try await connection.execute(newer) }
                }
                let expected = SchemaError.newerThanBinary(database: future, binary: Migrations.latestVersion).description
                try await waitUntil("the relay reports the newer schema", timeout: .seconds(30)) {
                    running.relay.health.snapshot.lastError == expected
                }
                #expect(!running.relay.health.snapshot.databaseReady)
                // Captured meanwhile: kept, and not sent by this daemon while the schema is newer.
                try await writer.set("during", "email", .denied)
                try await Task.sleep(for: .seconds(1))
                #expect(receiver.requests.count == 1)

                try await database.withConnection { connection in
                    try await connection.execute("DELETE FROM consent_sync.schema_migrations WHERE version = \(future)")
                    if let undo { try await connection.execute(undo) }
                }
                let requests = try await receiver.waitForRequests(count: 2, timeout: .seconds(60))
                let subjects = try requests.map { try #require(try JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any])["subject"] as? String }
                #expect(subjects == ["before", "during"])
                try await waitUntil("the relay is ready again") { running.relay.health.snapshot.databaseReady }
            }
        }
    }
}
