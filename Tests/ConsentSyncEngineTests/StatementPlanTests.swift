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
    /// The write-back once joined its results to `deliveries` by reading every result again for
    /// each row it updated (a nested loop over the round's input: 90 x 90 rows for 90 results).
    @Test func theWriteBackLooksUpEachResultInThePrimaryKey() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await withClaimedDeliveries(300, on: database) { db, owner, claimed in
                let records = claimed.map {
                    AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                }
                let statement = DeliveryStore.recordStatements(records, owner: owner)[1]
                let arguments = statement.parameters.map { value in
                    value.map { "'" + $0.replacingOccurrences(of: "'", with: "''") + "'" } ?? "NULL"
                }
                try await db.execute("PREPARE write_back AS \(statement.sql)")
                let plan = try await db.query(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE write_back(\(arguments.joined(separator: ", ")))"
                ).map { $0[0] ?? "" }.joined(separator: "\n")

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

    /// Retention deletes old changes in batches; each deleted change cascades to its
    /// deliveries, and each of those to its attempts and events, through statements of the
    /// form `DELETE FROM ONLY child WHERE $1 = column`. Each must find its rows through an
    /// index: the indexes leading with `deliveries.change_id` were once all partial, and every
    /// deleted change scanned the whole table (113 ms a change at 2,000,000 deliveries).
    /// Subscribers are left out: one is removed at a time, by hand.
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
                #expect(keys == ["consent_sync.attempts.delivery_id", "consent_sync.deliveries.change_id", "consent_sync.delivery_events.delivery_id"])

                try await db.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
                for (number, cascade) in cascades.enumerated() {
                    try await db.execute("PREPARE cascade_\(number)(bigint) AS DELETE FROM ONLY \(cascade.child) WHERE $1 = \(cascade.column)")
                    let plan = try await db.query("EXPLAIN (COSTS OFF) EXECUTE cascade_\(number)(1)")
                        .map { $0[0] ?? "" }.joined(separator: "\n")
                    #expect(!plan.contains("Seq Scan"), "\(keys[number]): \(plan)")
                    #expect(plan.contains("Index"), "\(keys[number]): \(plan)")
                }
            }
        }
    }
}
