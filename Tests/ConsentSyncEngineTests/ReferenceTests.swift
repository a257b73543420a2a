import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Testing

/// The references of deliveries (to their change and subscriber) and of attempts (to their
/// delivery), checked once per statement by triggers since schema 10 instead of row by row by
/// foreign keys, hold as the foreign keys held them: no row names a parent that does not
/// exist, deleting a parent deletes the rows that name it, and neither a concurrent insert nor
/// a concurrent delete can leave one behind.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct ReferenceTests {
    /// One subscriber `s` and one change; returns their ids.
    static func parents(on database: TestDatabase) async throws -> (subscriber: String, change: String) {
        try await RelayFixture.addSubscriber("s", url: "http://127.0.0.1:9/", on: database)
        return try await database.withConnection { db in
            let subscriber = try #require(try await db.query("SELECT id FROM consent_sync.subscribers WHERE name = 's'").first)
            let change = try #require(try await db.query(
                """
                INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                VALUES ('t', 'UPDATE', 'consent.granted', 'c1', 'email', 'granted', true) RETURNING id
                """
            ).first)
            return (try subscriber.string("id"), try change.string("id"))
        }
    }

    static let insertDelivery = "INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject) VALUES ($1::bigint, $2::bigint, 'c1')"
    static let insertAttempt = "INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at) VALUES ($1::bigint, 1, now())"

    /// One delivery of the change to the subscriber; returns its id.
    static func delivery(of change: String, to subscriber: String, on database: TestDatabase) async throws -> String {
        try await database.withConnection { db in
            try #require(try await db.query(insertDelivery + " RETURNING id", [change, subscriber]).first).string("id")
        }
    }

    static func count(_ sql: String, on database: TestDatabase) async throws -> Int {
        try await database.withConnection { try await $0.query(sql).first?.int("n") ?? -1 }
    }

    /// Waits until some session of `database` waits for a lock.
    static func waitForALockWait(on database: TestDatabase) async throws {
        try await waitUntil("a session waits for a row lock") {
            try await count(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                on: database
            ) > 0
        }
    }

    @Test func aDeliveryNamingNoSuchChangeOrSubscriberIsRefused() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let (subscriber, change) = try await Self.parents(on: database)
            let cases: [(change: String, subscriber: String, named: String)] = [
                ("999999", subscriber, "change 999999"),
                (change, "999999", "subscriber 999999"),
            ]
            for bad in cases {
                let error = await errorThrown {
                    try await database.withConnection { try await $0.query(Self.insertDelivery, [bad.change, bad.subscriber]) }
                }
                let refusal = try #require(error as? PostgresError, "expected a refusal, got \(String(describing: error))")
                #expect(refusal.sqlState == "23503", "\(refusal)")
                #expect(refusal.message.contains("a new delivery names \(bad.named), which does not exist"), "\(refusal)")
            }
            // A statement with one bad row among good ones is refused whole.
            let mixed = await errorThrown {
                try await database.withConnection { db in
                    try await db.query(
                        """
                        INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject)
                        VALUES ($1::bigint, $2::bigint, 'c1'), ($1::bigint, 999999, 'c1')
                        """,
                        [change, subscriber]
                    )
                }
            }
            #expect((mixed as? PostgresError)?.sqlState == "23503", "\(String(describing: mixed))")
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries", on: database) == 0)

            let delivery = try await Self.delivery(of: change, to: subscriber, on: database)
            let orphan = await errorThrown {
                try await database.withConnection { try await $0.query(Self.insertAttempt, ["999999"]) }
            }
            let refusal = try #require(orphan as? PostgresError, "expected a refusal, got \(String(describing: orphan))")
            #expect(refusal.sqlState == "23503", "\(refusal)")
            #expect(refusal.message.contains("a new attempt names delivery 999999, which does not exist"), "\(refusal)")
            try await database.withConnection { try await $0.query(Self.insertAttempt, [delivery]) }

            let refusals = [
                "UPDATE consent_sync.deliveries SET subscriber_id = subscriber_id + 1",
                "UPDATE consent_sync.deliveries SET id = id + 1000",
                "UPDATE consent_sync.attempts SET delivery_id = delivery_id + 1000",
                "UPDATE consent_sync.changes SET id = id + 1000",
                "UPDATE consent_sync.subscribers SET id = id + 1000",
                "TRUNCATE consent_sync.changes",
                "TRUNCATE consent_sync.subscribers CASCADE",
                "TRUNCATE consent_sync.deliveries, consent_sync.delivery_events",
            ]
            for statement in refusals {
                let error = await errorThrown { try await database.withConnection { try await $0.execute(statement) } }
                #expect((error as? PostgresError)?.sqlState == "23503", "\(statement): \(String(describing: error))")
            }
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries", on: database) == 1)
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.attempts", on: database) == 1)
            // Truncated together, as a foreign key would ask.
            try await database.withConnection {
                try await $0.execute("TRUNCATE consent_sync.changes, consent_sync.deliveries, consent_sync.attempts, consent_sync.delivery_events")
            }
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.changes", on: database) == 0)
        }
    }

    @Test func deletingAChangeOrASubscriberDeletesItsDeliveriesAndTheirAttempts() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let (subscriber, change) = try await Self.parents(on: database)
            try await RelayFixture.addSubscriber("t", url: "http://127.0.0.1:9/", on: database)
            try await database.withConnection { db in
                try await db.query(
                    """
                    WITH second AS (
                        INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        VALUES ('t', 'UPDATE', 'consent.denied', 'c1', 'email', 'denied', true) RETURNING id
                    ), added AS (
                        INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject)
                        SELECT c.id, s.id, 'c1' FROM (SELECT $1::bigint AS id UNION ALL SELECT id FROM second) c
                        CROSS JOIN consent_sync.subscribers s RETURNING id
                    )
                    INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at) SELECT id, 1, now() FROM added
                    """,
                    [change]
                )
            }
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries", on: database) == 4)

            try await database.withConnection { try await $0.query("DELETE FROM consent_sync.changes WHERE id = $1::bigint", [change]) }
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries WHERE change_id = \(change)", on: database) == 0)
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries", on: database) == 2)

            let removed = try await database.withConnection { try await SubscriberStore.remove(name: "s", force: true, on: $0) }
            #expect(removed)
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries WHERE subscriber_id = \(subscriber)", on: database) == 0)
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.deliveries", on: database) == 1)
            #expect(try await Self.count("SELECT count(*) AS n FROM consent_sync.attempts", on: database) == 1)
        }
    }

    /// A parent deleted, and a row naming it written, by two transactions at once.
    struct Race: Sendable, CustomTestStringConvertible {
        var label: String
        /// Deletes the parent (`$1`: subscriber id, `$2`: change id; both passed to each).
        var delete: String
        /// Writes the row that names it (`$1`: subscriber id, `$2`: change id, `$3`: delivery id).
        var write: String
        var testDescription: String { label }
    }

    static let races = [
        Race(
            label: "a delivery and its subscriber",
            delete: "DELETE FROM consent_sync.subscribers WHERE id = $1::bigint AND $2::bigint IS NOT NULL",
            write: "INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, replay_of) SELECT $2::bigint, $1::bigint, 'c1', $3::bigint"
        ),
        Race(
            label: "a delivery and its change",
            delete: "DELETE FROM consent_sync.changes WHERE id = $2::bigint AND $1::bigint IS NOT NULL",
            write: "INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, replay_of) SELECT $2::bigint, $1::bigint, 'c1', $3::bigint"
        ),
        Race(
            label: "an attempt and its delivery (deleted with its change)",
            delete: "DELETE FROM consent_sync.changes WHERE id = $2::bigint AND $1::bigint IS NOT NULL",
            write: "INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at) SELECT $3::bigint, 2, now() WHERE $1::bigint + $2::bigint IS NOT NULL"
        ),
    ]

    /// The rows naming a parent (deliveries and attempts) left after the race, and the parent's
    /// delivery made beforehand (with one attempt) so that an attempt has something to name.
    static func prepareRace(on database: TestDatabase) async throws -> [String] {
        let (subscriber, change) = try await parents(on: database)
        let delivery = try await delivery(of: change, to: subscriber, on: database)
        try await database.withConnection { try await $0.query(insertAttempt, [delivery]) }
        return [subscriber, change, delivery]
    }

    static func rowsLeft(on database: TestDatabase) async throws -> Int {
        try await count("SELECT (SELECT count(*) FROM consent_sync.deliveries) + (SELECT count(*) FROM consent_sync.attempts) AS n", on: database)
    }

    /// The row is written first: the delete waits for the writer's transaction, then takes the
    /// new row with the rest.
    @Test(arguments: races)
    func aParentDeletedWhileARowNamingItIsWrittenLeavesNoneBehind(_ race: Race) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let ids = try await Self.prepareRace(on: database)
            let writer = try await database.connect()
            defer { Task { await writer.close() } }
            try await writer.execute("BEGIN")
            try await writer.query(race.write, ids)

            let deletion = Task { try await database.withConnection { try await $0.query(race.delete, Array(ids.prefix(2))).count } }
            try await Self.waitForALockWait(on: database)
            try await writer.execute("COMMIT")
            _ = try await deletion.value
            let left = try await Self.rowsLeft(on: database)
            // A deleted subscriber or change takes its only delivery, and with it every attempt.
            #expect(left == 0)
        }
    }

    /// The parent is deleted first: the write waits for the deleting transaction, and once
    /// that commits the write is refused.
    @Test(arguments: races)
    func aRowWrittenWhileItsParentIsDeletedIsRefused(_ race: Race) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let ids = try await Self.prepareRace(on: database)
            let remover = try await database.connect()
            defer { Task { await remover.close() } }
            try await remover.execute("BEGIN")
            try await remover.query(race.delete, Array(ids.prefix(2)))

            let write = Task {
                await errorThrown { try await database.withConnection { try await $0.query(race.write, ids) } }
            }
            try await Self.waitForALockWait(on: database)
            try await remover.execute("COMMIT")
            let error = await write.value
            #expect((error as? PostgresError)?.sqlState == "23503", "\(String(describing: error))")
            #expect(try await Self.rowsLeft(on: database) == 0)
        }
    }
}
