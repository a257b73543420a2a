import ConsentSyncCore
@testable import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The plans PostgreSQL makes for the relay's statements, as its sessions make them (one
/// generic plan per prepared statement): the cost per delivery must not grow with the
/// number of results in a round or with the table.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct StatementPlanTests {
    /// Runs `statement` as a prepared statement named `name` (the plan its session would
    /// use) under `EXPLAIN ANALYZE`, and returns the plan.
    static func explainAnalyzed(_ statement: PostgresStatement, as name: String, on db: PostgresConnection) async throws -> String {
        let arguments = statement.parameters.map { value in
            value.map { "'" + $0.replacingOccurrences(of: "'", with: "''") + "'" } ?? "NULL"
        }
        try await db.execute("PREPARE \(name) AS \(statement.sql)")
        return try await db.query(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE \(name)(\(arguments.joined(separator: ", ")))"
        ).map { $0[0] ?? "" }.joined(separator: "\n")
    }

    /// The write-back once joined its results to `deliveries` by reading every result again for
    /// each row it updated (a nested loop over the round's input: 90 x 90 rows for 90 results).
    @Test func theWriteBackLooksUpEachResultInThePrimaryKey() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await withClaimedDeliveries(300, on: database) { db, owner, claimed in
                let records = claimed.map {
                    AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                }
                let plan = try await Self.explainAnalyzed(DeliveryStore.recordStatements(records, owner: owner)[1], as: "write_back", on: db)

                let states = try await db.query("SELECT state || ' ' || count(*) AS line FROM consent_sync.deliveries GROUP BY state")
                let lines = try states.map { try $0.string("line") }
                #expect(lines == ["delivered 300"])
                // Each result found through the primary key, none by filtering a join.
                #expect(plan.contains("Index Scan using deliveries_pkey on deliveries d"), "\(plan)")
                #expect(plan.contains("Index Cond: (id = i"), "\(plan)")
                #expect(!plan.contains("Rows Removed by Join Filter"), "\(plan)")
            }
        }
    }

    /// The hand-over finds each ended delivery through the primary key and its subject's next
    /// one through `deliveries_live_by_subject`, whatever the round's size; and its un-park
    /// leaves out the subjects handed over through one hash of them, not by reading them all
    /// again for each ended delivery.
    @Test func theHandOverFindsEachSubjectsNextDeliveryThroughAnIndex() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.addSubscriber("crm", url: "http://127.0.0.1:9/hook", on: database)
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                for purpose in ["first", "second"] {
                    try await db.execute(
                        """
                        INSERT INTO consent_sync.consents (subject_id, purpose, status, source)
                        SELECT 'cust-' || g, '\(purpose)', 'granted', 'test' FROM generate_series(1, 300) AS g
                        """
                    )
                }
                _ = try await DeliveryStore.fanOut(limit: 1000, on: db)
                let subscriber = try #require(try await db.query("SELECT id FROM consent_sync.subscribers").first?.int64("id"))
                let owner = UUID()
                let claimed = try await DeliveryStore.claim(owner: owner, budgets: [(subscriber, 1000)], lease: .seconds(60), on: db)
                #expect(claimed.count == 300)
                let records = claimed.map {
                    AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                }
                let statements = DeliveryStore.recordStatements(records, owner: owner, handOver: records.map(\.deliveryID), lease: .seconds(60))
                #expect(statements.count == 3)
                // The write-back alone (it leaves the next ones parked for the hand-over), then the hand-over explained.
                _ = try await db.pipeline([Array(statements.prefix(2))])
                let plan = try await Self.explainAnalyzed(statements[2], as: "hand_over", on: db)

                let states = try await db.query("SELECT state || ' ' || count(*) AS line FROM consent_sync.deliveries GROUP BY state ORDER BY 1")
                #expect(try states.map { try $0.string("line") } == ["delivered 300", "in_flight 300"])
                #expect(plan.contains("Index Scan using deliveries_live_by_subject on deliveries q"), "\(plan)")
                #expect(plan.contains("deliveries_pkey on deliveries e"), "\(plan)")
                #expect(!plan.contains("Seq Scan"), "\(plan)")
                // Rows are dropped by a filter only where the un-park leaves out the subjects
                // handed over (here all 300), never by an index scan.
                let lines = plan.split(separator: "\n").map(String.init)
                let dropped = lines.indices.filter { lines[$0].contains("Rows Removed by Filter") }
                let droppedByTheHash = dropped.filter { $0 > 0 && lines[$0 - 1].contains("Filter: (NOT (hashed SubPlan") }
                #expect(dropped == droppedByTheHash, "\(plan)")
                #expect(plan.contains("NOT (hashed SubPlan"), "\(plan)")
                #expect(!plan.contains("Nested Loop Anti Join"), "\(plan)")
                #expect(plan.contains("Index Scan using deliveries_pkey on deliveries d"), "\(plan)")
                #expect(!plan.contains("deliveries_due"), "\(plan)")
            }
        }
    }

    /// A claim returns each change once, on the first of its deliveries in the result, and
    /// reads its row once: the others (the same change for other subscribers) carry its id,
    /// and ``DeliveryStore/claimResult(_:)`` gives them the same change.
    @Test func aClaimReadsEachChangeOncePerResult() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            for name in ["crm", "email", "ads"] {
                try await RelayFixture.addSubscriber(name, url: "http://127.0.0.1:9/hook", on: database)
            }
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                try await db.execute(
                    """
                    INSERT INTO consent_sync.consents (subject_id, purpose, status, source)
                    SELECT 'cust-' || g, 'marketing_email', 'granted', 'test' FROM generate_series(1, 100) AS g
                    """
                )
                _ = try await DeliveryStore.fanOut(limit: 1000, on: db)
                let subscribers = try await db.query("SELECT id FROM consent_sync.subscribers ORDER BY id").map { try $0.int64("id") }
                let owner = UUID()

                // Half of them claimed: each carries its own change, read from the outbox.
                let claimed = try await DeliveryStore.claim(owner: owner, budgets: subscribers.map { ($0, 50) }, lease: .seconds(60), on: db)
                #expect(claimed.count == 150)
                let stored = try await db.query(
                    """
                    SELECT d.id, d.change_id, c.event_id::text AS event_id, c.subject
                    FROM consent_sync.deliveries d JOIN consent_sync.changes c ON c.id = d.change_id
                    WHERE d.state = 'in_flight'
                    """
                )
                let expected = Dictionary(uniqueKeysWithValues: try stored.map {
                    (try $0.int64("id"), [try $0.string("change_id"), try $0.string("event_id"), try $0.string("subject")])
                })
                #expect(expected.count == 150)
                for delivery in claimed {
                    let actual = [String(delivery.change.id), delivery.change.eventID, delivery.change.subject]
                    #expect(expected[delivery.id] == actual, "delivery \(delivery.id)")
                }

                // The rest, explained: one lookup in `changes` per change claimed, not per delivery.
                let statement = DeliveryStore.claimStatement(owner: owner, budgets: subscribers.map { ($0, 1000) }, lease: .seconds(60))
                let plan = try await Self.explainAnalyzed(statement, as: "claim_rest", on: db)
                let counts = try #require(try await db.query(
                    """
                    SELECT count(*) AS deliveries, count(DISTINCT change_id) AS changes FROM consent_sync.deliveries
                    WHERE state = 'in_flight' AND id <> ALL ($1::bigint[])
                    """,
                    [postgresArray(claimed.map { String($0.id) })]
                ).first)
                #expect(try counts.int("deliveries") == 150)
                let changes = try counts.int("changes")
                #expect(changes < 150)
                let lookup = plan.split(separator: "\n").first { $0.contains("Index Scan using changes_pkey on changes c") }
                #expect(lookup?.contains("loops=\(changes))") == true, "\(plan)")
                // Sorted once, by the numbering of each change's deliveries, not again for the output.
                #expect(plan.components(separatedBy: "Sort Key:").count == 2, "\(plan)")
            }
        }
    }

    /// The fan-out keeps a delivery that already exists for a change and subscriber rather
    /// than adding a second one (or failing on the unique index), and finds it with one look per
    /// pair in `deliveries_by_change`; a replay of that change does not count as its delivery.
    @Test func theFanOutAddsNoDeliveryThatExistsAndLooksEachUpInTheUniqueIndex() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            for name in ["crm", "email"] {
                try await RelayFixture.addSubscriber(name, url: "http://127.0.0.1:9/hook", on: database)
            }
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                // Outbox rows not yet fanned out; the first already has a delivery to crm (as if
                // fanned out before), the second only a replay to crm.
                try await db.execute(
                    """
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        SELECT 't', 'UPDATE', 'consent.granted', 'cust-' || g, 'email', 'granted', false FROM generate_series(1, 50) g;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state)
                        SELECT min(c.id), s.id, 'cust-1', 'delivered' FROM consent_sync.changes c, consent_sync.subscribers s
                        WHERE s.name = 'crm' GROUP BY s.id;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state, replay_of)
                        SELECT min(c.id) + 1, s.id, 'cust-2', 'delivered', (SELECT min(id) FROM consent_sync.deliveries)
                        FROM consent_sync.changes c, consent_sync.subscribers s WHERE s.name = 'crm' GROUP BY s.id
                    """
                )
                let statement = DeliveryStore.fanOutStatements(limit: 1000)[1]
                let plan = try await db.withTransaction { db in
                    try await db.execute("SELECT pg_advisory_xact_lock(\(DeliveryStore.fanOutLockKey))")
                    return try await Self.explainAnalyzed(statement, as: "fan_out", on: db)
                }

                let rows = try await db.query(
                    """
                    SELECT s.name, count(*) FILTER (WHERE d.replay_of IS NULL) AS originals, count(*) AS n,
                           count(*) FILTER (WHERE d.state = 'delivered' AND d.replay_of IS NULL) AS kept
                    FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                    GROUP BY s.name ORDER BY s.name
                    """
                )
                let counts = try rows.map { [try $0.string("name"), try $0.string("originals"), try $0.string("n"), try $0.string("kept")] }
                #expect(counts == [["crm", "50", "51", "1"], ["email", "50", "50", "0"]])
                #expect(try await db.query("SELECT count(*) AS n FROM consent_sync.changes WHERE NOT fanned_out").first?.int("n") == 0)
                let look = plan.split(separator: "\n").first { $0.contains("using deliveries_by_change on deliveries x") }
                // A look per pair, by change and subscriber: never a walk of the whole index.
                #expect(look?.contains("loops=100)") == true, "\(plan)")
                #expect(plan.contains("Index Cond: ((change_id = p.change_id) AND (subscriber_id = p.subscriber_id)"), "\(plan)")
                #expect(!plan.contains("Conflict"), "\(plan)")
            }
        }
    }

    /// An attempt is in one index, the primary key `(delivery_id, attempt, id)` (schema 11); the
    /// write-back's check for an attempt already logged (after a lost answer) finds it there.
    @Test func theWriteBackFindsAnAttemptAlreadyLoggedInTheAttemptsOneIndex() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await withClaimedDeliveries(100, on: database) { db, owner, claimed in
                var records = claimed.map {
                    AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                }
                // Written once; the answer lost: written again, each attempt logged once.
                _ = try await DeliveryStore.record(records, owner: owner, on: db)
                for index in records.indices { records[index].mayBeLogged = true }
                let plan = try await Self.explainAnalyzed(DeliveryStore.recordStatements(records, owner: owner)[1], as: "write_back_again", on: db)

                let indexes = try await db.query("SELECT indexname FROM pg_indexes WHERE schemaname = 'consent_sync' AND tablename = 'attempts'")
                #expect(try indexes.map { try $0.string("indexname") } == ["attempts_pkey"])
                #expect(try await db.query("SELECT count(*) AS n FROM consent_sync.attempts").first?.int("n") == 100)
                let look = plan.split(separator: "\n").first { $0.contains("using attempts_pkey on attempts a") }
                #expect(look?.contains("loops=100)") == true, "\(plan)")
                #expect(plan.contains("Index Cond: ((delivery_id = i_2.id) AND (attempt = i_2.attempt))"), "\(plan)")
            }
        }
    }

    /// A parked delivery (waiting behind an earlier one of its subject) has no entry in
    /// `deliveries_due` (schema 11): no claim looks for it there, and most deliveries of a
    /// drain are parked when fanned out. The claim still finds the due ones through that index.
    @Test func parkedDeliveriesAreNotInTheClaimsIndexAndTheClaimUsesIt() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.addSubscriber("crm", url: "http://127.0.0.1:9/hook", on: database)
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                // 50 changes of one subject (one due, 49 parked behind it) and 10 of others.
                try await db.execute(
                    """
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        SELECT 't', 'UPDATE', 'consent.granted', CASE WHEN g <= 50 THEN 'cust-1' ELSE 'cust-' || g END,
                               'email', 'granted', false
                        FROM generate_series(1, 60) g
                    """
                )
                let fanned = try await DeliveryStore.fanOut(limit: 1000, on: db)
                #expect(fanned.deliveries == 60)
                // One delivery removed, so that VACUUM scans each index and counts its entries.
                try await db.execute("DELETE FROM consent_sync.deliveries WHERE subject = 'cust-60'")
                try await db.execute("VACUUM consent_sync.deliveries")
                let entries = try await db.query(
                    """
                    SELECT c.relname, c.reltuples::bigint AS n FROM pg_class c
                    WHERE c.relnamespace = 'consent_sync'::regnamespace AND c.relname IN ('deliveries_due', 'deliveries_live_by_subject')
                    ORDER BY c.relname
                    """
                ).map { "\(try $0.string("relname")) \(try $0.string("n"))" }
                #expect(entries == ["deliveries_due 10", "deliveries_live_by_subject 59"])

                let subscriber = try #require(try await db.query("SELECT id FROM consent_sync.subscribers").first?.int64("id"))
                let claim = DeliveryStore.claimStatement(owner: UUID(), budgets: [(subscriber, 100)], lease: .seconds(60))
                let plan = try await Self.explainAnalyzed(claim, as: "claim", on: db)
                #expect(plan.contains("Index Scan using deliveries_due on deliveries d"), "\(plan)")
                let states = try await db.query("SELECT state || ' ' || count(*) AS line FROM consent_sync.deliveries GROUP BY state ORDER BY state")
                #expect(try states.map { try $0.string("line") } == ["in_flight 10", "pending 49"])
            }
        }
    }

    /// Retention deletes old changes in batches; the deleted changes cascade to their
    /// deliveries and those to their attempts (schema 10's statement triggers, one `DELETE` by
    /// an array of ids each), and to their events through a foreign key, by statements of the
    /// form `DELETE FROM ONLY child WHERE $1 = column`. Each must find its rows through an index:
    /// the indexes leading with `deliveries.change_id` were once all partial, and every deleted
    /// change scanned the whole table (113 ms a change at 2,000,000 deliveries). Subscribers
    /// are left out: one is removed at a time, by hand.
    @Test func deletingAChangeFindsWhatCascadesThroughAnIndex() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { db in
                let cascades = try await db.query(
                    """
                    SELECT c.conrelid::regclass::text AS child, a.attname AS column
                    FROM pg_constraint c
                    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                    WHERE c.contype = 'f' AND c.confdeltype = 'c' AND cardinality(c.conkey) = 1
                      AND c.connamespace = 'consent_sync'::regnamespace
                      AND c.confrelid <> 'consent_sync.subscribers'::regclass
                    ORDER BY 1, 2
                    """
                ).map { (child: try $0.string("child"), column: try $0.string("column")) }
                let keys = cascades.map { "\($0.child).\($0.column)" }
                #expect(keys == ["consent_sync.delivery_events.delivery_id"])

                try await db.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
                for (number, cascade) in cascades.enumerated() {
                    try await db.execute("PREPARE cascade_\(number)(bigint) AS DELETE FROM ONLY \(cascade.child) WHERE $1 = \(cascade.column)")
                    let plan = try await db.query("EXPLAIN (COSTS OFF) EXECUTE cascade_\(number)(1)")
                        .map { $0[0] ?? "" }.joined(separator: "\n")
                    #expect(!plan.contains("Seq Scan"), "\(keys[number]): \(plan)")
                    #expect(plan.contains("Index"), "\(keys[number]): \(plan)")
                }

                // The triggers' cascade, as it runs: 20,000 deliveries of 10,000 changes, an
                // attempt each, with statistics, and one change deleted. The transaction's own
                // counters show how `deliveries` and `attempts` were read.
                try await db.execute(
                    """
                    RESET enable_seqscan; RESET plan_cache_mode;
                    INSERT INTO consent_sync.subscribers (name, url) VALUES ('a', 'http://127.0.0.1:9/'), ('b', 'http://127.0.0.1:9/');
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        SELECT 't', 'UPDATE', 'consent.granted', 's' || i, 'email', 'granted', true FROM generate_series(1, 10000) i;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state)
                        SELECT c.id, s.id, c.subject, 'delivered' FROM consent_sync.changes c CROSS JOIN consent_sync.subscribers s;
                    INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at) SELECT id, 1, now() FROM consent_sync.deliveries;
                    ANALYZE consent_sync.deliveries, consent_sync.attempts;
                    """
                )
                // Counters not yet flushed from earlier statements show here too: compared by difference.
                let counters = """
                    SELECT relname, seq_scan, idx_scan FROM pg_stat_xact_user_tables
                    WHERE relid IN ('consent_sync.deliveries'::regclass, 'consent_sync.attempts'::regclass) ORDER BY relname
                    """
                let scans = try await db.withTransaction { db in
                    let before = try await db.query(counters).map { (seq: try $0.int("seq_scan"), index: try $0.int("idx_scan")) }
                    let deleted = try await db.query("DELETE FROM consent_sync.changes WHERE id = (SELECT min(id) FROM consent_sync.changes) RETURNING id")
                    #expect(deleted.count == 1)
                    let after = try await db.query(counters).map { (table: try $0.string("relname"), seq: try $0.int("seq_scan"), index: try $0.int("idx_scan")) }
                    return zip(before, after).map { b, a in
                        "\(a.table): \(a.seq - b.seq) sequential, \(a.index > b.index ? "some" : "no") index"
                    }
                }
                #expect(scans == ["attempts: 0 sequential, some index", "deliveries: 0 sequential, some index"])
                let left = try await db.query(
                    "SELECT (SELECT count(*) FROM consent_sync.deliveries) + (SELECT count(*) FROM consent_sync.attempts) AS n"
                ).first?.int("n")
                #expect(left == 2 * 19_998)
            }
        }
    }

    /// Schema 10's triggers check the parents of new deliveries and attempts with plans that
    /// PL/pgSQL keeps for the session. Written with `IN (SELECT … FROM added)`, the check's
    /// plan was made for the session's first fan-out while `changes` was small (auto_explain in
    /// a profiled live run: 90 new deliveries, 190 changes estimated), a hash join with a full
    /// scan of `changes_pkey`, and kept as the table grew: 29,252 rows read to check 27, 13 ms,
    /// the fan-out at 2.2–2.5 ms a call instead of 0.3–0.4. Looked up by an array of ids, a
    /// check of one row reads one row.
    @Test func theReferenceChecksReadOnlyTheParentsTheyCheck() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                // The session's first checks run on small tables, known to be nearly empty (a
                // new installation, vacuumed): 90 new deliveries of 200 changes, and their
                // attempts. Then the tables grow to 5,000 rows.
                try await db.execute("VACUUM ANALYZE consent_sync.changes, consent_sync.deliveries, consent_sync.subscribers")
                try await db.execute(
                    """
                    INSERT INTO consent_sync.subscribers (name, url) VALUES ('a', 'http://127.0.0.1:9/');
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        SELECT 't', 'UPDATE', 'consent.granted', 's' || i, 'email', 'granted', true FROM generate_series(1, 200) i;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state)
                        SELECT c.id, s.id, c.subject, 'delivered' FROM consent_sync.changes c CROSS JOIN consent_sync.subscribers s
                        ORDER BY c.id LIMIT 90;
                    INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at) SELECT id, 1, now() FROM consent_sync.deliveries;
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                        SELECT 't', 'UPDATE', 'consent.granted', 's' || i, 'email', 'granted', true FROM generate_series(1, 5000) i;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state)
                        SELECT c.id, s.id, c.subject, 'delivered' FROM consent_sync.changes c CROSS JOIN consent_sync.subscribers s
                        WHERE c.id > (SELECT max(change_id) FROM consent_sync.deliveries);
                    INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at)
                        SELECT id, 1, now() FROM consent_sync.deliveries WHERE id > (SELECT max(delivery_id) FROM consent_sync.attempts);
                    """
                )
                let counters = """
                    SELECT relname, idx_tup_fetch + seq_tup_read AS n FROM pg_stat_xact_user_tables
                    WHERE relid IN ('consent_sync.changes'::regclass, 'consent_sync.deliveries'::regclass) ORDER BY relname
                    """
                let read = try await db.withTransaction { db in
                    let before = try await db.query(counters).map { try $0.int("n") }
                    try await db.execute(
                        """
                        INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, replay_of)
                            VALUES ((SELECT min(id) FROM consent_sync.changes), (SELECT min(id) FROM consent_sync.subscribers), 'x', 1);
                        INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at)
                            SELECT min(id), 2, now() FROM consent_sync.deliveries
                        """
                    )
                    let after = try await db.query(counters).map { (table: try $0.string("relname"), n: try $0.int("n")) }
                    return zip(before, after).map { (table: $1.table, rows: $1.n - $0) }
                }
                // The two statements' own reads (min(id) of each table) and one row per check,
                // not the 5,000 rows of each table.
                #expect(read.map(\.table) == ["changes", "deliveries"])
                #expect(read.allSatisfy { $0.rows <= 10 }, "\(read)")
            }
        }
    }
}
