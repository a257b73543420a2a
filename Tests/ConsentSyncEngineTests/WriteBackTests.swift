import ConsentSyncCore
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

    /// A delivery that ends hands its subject's next one to the same instance, in the write-back's
    /// transaction: leased at once (no un-park and later claim); the one after stays parked.
    /// For a subscriber that is not enabled the next one is only un-parked, as without it.
    @Test func anEndedDeliveryHandsItsSubjectsNextOneToTheSameInstance() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.addSubscriber("crm", url: "http://127.0.0.1:9/hook", on: database)
            let writer = ConsentWriter(database: database)
            for purpose in ["p1", "p2", "p3"] { try await writer.set("cust-1", purpose, .granted) }
            for purpose in ["p1", "p2"] { try await writer.set("cust-2", purpose, .granted) }
            try await writer.set("cust-3", "p1", .granted)
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                _ = try await DeliveryStore.fanOut(limit: 100, on: db)
                let subscriber = try #require(try await db.query("SELECT id FROM consent_sync.subscribers").first?.int64("id"))
                let owner = UUID()
                let claimed = try await DeliveryStore.claim(owner: owner, budgets: [(subscriber, 10)], lease: .seconds(60), on: db)
                #expect(claimed.map { "\($0.change.subject)/\($0.change.purpose)" } == ["cust-1/p1", "cust-2/p1", "cust-3/p1"])
                #expect(claimed.map(\.followed) == [true, true, false], "cust-1 and cust-2 have more waiting, cust-3 not")

                func finish(_ deliveries: [ClaimedDelivery]) async throws -> [ClaimedDelivery] {
                    let records = deliveries.map {
                        AttemptRecord($0, verdict: .delivered, status: 204, error: nil, excerpt: nil, startedAt: Date(), duration: .milliseconds(1))
                    }
                    let statements = DeliveryStore.recordStatements(records, owner: owner, handOver: records.map(\.deliveryID), lease: .seconds(60))
                    let results = try await db.pipeline([statements])
                    #expect(try DeliveryStore.recordResult(results[1].get()) == Set(deliveries.map(\.id)))
                    return try DeliveryStore.claimResult(results[2].get())
                }
                func states() async throws -> [String] {
                    try await db.query(
                        """
                        SELECT c.subject || '/' || c.purpose || ' ' || d.state || ' ' || d.attempts
                               || CASE WHEN d.next_attempt_at = 'infinity' THEN ' parked' ELSE '' END
                               || CASE WHEN d.lease_owner = $1::uuid THEN ' leased' ELSE '' END AS line
                        FROM consent_sync.deliveries d JOIN consent_sync.changes c ON c.id = d.change_id ORDER BY d.id
                        """,
                        [owner.uuidString]
                    ).map { try $0.string("line") }
                }

                let handed = try await finish(claimed)
                // Handed over with whether another waits behind it: cust-1/p3 behind p2, nothing behind cust-2/p2.
                #expect(handed.map { "\($0.change.subject)/\($0.change.purpose) \($0.attempt) \($0.followed)" } == ["cust-1/p2 1 true", "cust-2/p2 1 false"])
                let afterFirst = try await states()
                #expect(afterFirst == [
                    "cust-1/p1 delivered 1", "cust-1/p2 in_flight 1 leased", "cust-1/p3 pending 0 parked", "cust-2/p1 delivered 1",
                    "cust-2/p2 in_flight 1 leased", "cust-3/p1 delivered 1",
                ])

                // Paused: the next one is un-parked for a claim (which the pause holds back), not leased.
                try await db.execute("UPDATE consent_sync.subscribers SET state = 'paused'")
                #expect(try await finish(handed).isEmpty)
                let afterSecond = try await states()
                #expect(afterSecond == [
                    "cust-1/p1 delivered 1", "cust-1/p2 delivered 1", "cust-1/p3 pending 0", "cust-2/p1 delivered 1",
                    "cust-2/p2 delivered 1", "cust-3/p1 delivered 1",
                ])
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
