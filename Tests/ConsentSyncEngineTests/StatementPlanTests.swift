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
}
