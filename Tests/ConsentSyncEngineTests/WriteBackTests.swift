@testable import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The write-back of results, as the relay sends it again when its connection was lost before
/// the answer came: it may have been committed already.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct WriteBackTests {
    @Test func resultsWrittenTwiceLogEachAttemptOnce() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await withClaimedDeliveries(3, on: database) { db, owner, claimed in
                let records = claimed.map {
                    AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                }

                // As the relay keeps them after a lost connection: perhaps written already.
                let kept = records.map { record in
                    var record = record
                    record.mayBeLogged = true
                    return record
                }

                let first = try await DeliveryStore.record(records, owner: owner, on: db)
                let again = try await DeliveryStore.record(kept, owner: owner, on: db)
                #expect(first == Set(claimed.map(\.id)))
                #expect(again.isEmpty)
                #expect(try await Self.attemptRows(db) == [1, 1, 1])

                // An instance whose lease was lost still logs its own attempt (the request was made).
                _ = try await DeliveryStore.record(kept, owner: UUID(), on: db)
                #expect(try await Self.attemptRows(db) == [2, 2, 2])
            }
        }
    }

    /// Attempt rows per delivery, in delivery order.
    static func attemptRows(_ db: PostgresConnection) async throws -> [Int] {
        try await db.query(
            """
            SELECT count(a.id) AS n FROM consent_sync.deliveries d
            LEFT JOIN consent_sync.attempts a ON a.delivery_id = d.id
            GROUP BY d.id ORDER BY d.id
            """
        ).map { try $0.int("n") }
    }
}

/// What the write-back tests start from: one subscriber, `count` consent changes fanned out
/// and all of their deliveries claimed by one owner, on a session prepared as the relay's.
func withClaimedDeliveries(
    _ count: Int,
    on database: TestDatabase,
    _ body: (PostgresConnection, UUID, [ClaimedDelivery]) async throws -> Void
) async throws {
    try await RelayFixture.addSubscriber("crm", url: "http://127.0.0.1:9/hook", on: database)
    try await database.withConnection { db in
        try await DeliveryStore.prepareSession(db)
        try await db.execute(
            """
            INSERT INTO consent_sync.consents (subject_id, purpose, status, source)
            SELECT 'cust-' || g, 'marketing_email', 'granted', 'test' FROM generate_series(1, \(count)) AS g
            """
        )
        _ = try await DeliveryStore.fanOut(limit: count + 100, on: db)
        let subscriber = try #require(try await db.query("SELECT id FROM consent_sync.subscribers").first?.int64("id"))
        let owner = UUID()
        let claimed = try await DeliveryStore.claim(owner: owner, budgets: [(subscriber, count)], lease: .seconds(60), on: db)
        #expect(claimed.count == count)
        try await body(db, owner, claimed)
    }
}
