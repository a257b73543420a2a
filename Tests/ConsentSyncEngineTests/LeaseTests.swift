import ConsentSyncCore
@testable import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Leases against a real PostgreSQL: an instance never takes back what it still works on, and
/// still takes back what it no longer does.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct LeaseTests {
    /// A round that stalls after its write-back handed this instance the subject's next delivery
    /// keeps that delivery. Its own janitor must not take the lease back before the round returns
    /// and the request starts: that sent the delivery twice in one CI run, with one daemon and
    /// no crash.
    @Test func aRoundStalledPastTheLeaseKeepsWhatItWasHanded() async throws {
        let outcome = try await Self.stallTheRoundThatHandsOver(instances: 1)
        #expect(outcome.expired.isEmpty, "leases taken back from the instance still working on them: deliveries \(outcome.expired)")
        #expect(outcome.handedOverArrivals == 1, "\(outcome.arrived)")
        #expect(outcome.inOrder, "\(outcome.arrived)")
    }

    /// With two instances the other one's janitor does take back the lease of a delivery handed
    /// over in a round stalled past it, as leases are for. The stalled instance must then not
    /// send it too: it checks its leases after a slow round, and the delivery goes out once.
    @Test func aRoundStalledPastTheLeaseDoesNotSendWhatAnotherInstanceTookBack() async throws {
        let outcome = try await Self.stallTheRoundThatHandsOver(instances: 2)
        #expect(outcome.expired == [2], "the other instance took the handed-over delivery back")
        #expect(outcome.handedOverArrivals == 1, "\(outcome.arrived)")
        #expect(outcome.inOrder, "\(outcome.arrived)")
    }

    struct Stalled {
        /// The purposes in the order they arrived: p1, p2 (the one handed over), p3.
        var arrived: [String]
        /// The deliveries whose lease was taken back.
        var expired: [Int64]
        var handedOverArrivals: Int { arrived.filter { $0 == "p2" }.count }
        /// Each first arrived after the one before it (p1 may come twice on a machine so loaded
        /// that its first request took over the 5 s timeout: at least once, not this test's point).
        var inOrder: Bool { arrived.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } } == ["p1", "p2", "p3"] }
    }

    /// Three changes of one subject, a subscriber with a 5 s timeout, and `instances` relays
    /// with 5.3 s leases and a janitor every 100 ms. The test holds the subscriber's row from
    /// the start. The round writing back the first answer commits the write-back (which hands
    /// its instance the subject's next delivery), then stalls at its failure tracking: the only
    /// statement of a round that waits for that row, and one that only a round writing back a
    /// success after failures runs. The row is held until that lease has been over for a second
    /// (ten janitor turns), or was taken back.
    static func stallTheRoundThatHandsOver(instances: Int) async throws -> Stalled {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(5)), on: database)
            let writer = ConsentWriter(database: database)
            for purpose in ["p1", "p2", "p3"] { try await writer.set("cust-1", purpose, .granted) }

            var configuration = Relay.Configuration.forTests
            configuration.leaseMargin = .milliseconds(300)
            configuration.janitorInterval = .milliseconds(100)
            return try await database.withConnection { blocker in
                // As if it had been failing: a success clears this, which waits for the row lock.
                try await blocker.query("UPDATE consent_sync.subscribers SET failing_since = now()")
                try await blocker.query("BEGIN")
                // NO KEY UPDATE: the fan-out's reference checks (KEY SHARE) go through.
                try await blocker.query("SELECT id FROM consent_sync.subscribers FOR NO KEY UPDATE")
                return try await RelayFixture.withRelays(instances, on: database, configuration: configuration) {
                    try await waitUntil("the handed-over delivery's lease has been over for a second, or was taken back", timeout: .seconds(90)) {
                        // clock_timestamp(): now() stands still in this transaction.
                        let rows = try await blocker.query(
                            """
                            SELECT (SELECT count(*) FROM consent_sync.deliveries
                                    WHERE state = 'in_flight' AND lease_expires_at < clock_timestamp() - interval '1 second') AS overdue,
                                   (SELECT count(*) FROM consent_sync.attempts WHERE error LIKE 'lease expired%') AS expired
                            """
                        )
                        return try rows.first.map { try $0.int("overdue") + $0.int("expired") } ?? 0 > 0
                    }
                    try await blocker.query("ROLLBACK")
                    try await waitUntil("every delivery is delivered", timeout: .seconds(60)) {
                        try await deliveryStates(database) == ["delivered", "delivered", "delivered"]
                    }
                    // A second copy would come just after the first: give it time to arrive.
                    try await Task.sleep(for: .milliseconds(500))
                    let expired = try await blocker.query("SELECT delivery_id FROM consent_sync.attempts WHERE error LIKE 'lease expired%'")
                        .map { try $0.int64("delivery_id") }
                    return Stalled(arrived: try arrivedEvents(receiver.requests).map(\.purpose), expired: expired)
                }
            }
        }
    }

    /// A lease of this instance's that it no longer works on (a claim whose answer it never read,
    /// a result it could not write) still runs out, and the instance takes it back itself:
    /// with one daemon there is nobody else to.
    @Test func anInstanceTakesBackItsOwnLeaseItNoLongerWorksOn() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await ConsentWriter(database: database).set("cust-1", "email", .granted)
            // Leased (far ahead, so no janitor takes it) before the relay starts.
            try await database.withConnection { db in
                try await DeliveryStore.prepareSession(db)
                _ = try await DeliveryStore.fanOut(limit: 100, on: db)
                try await db.query(
                    "UPDATE consent_sync.deliveries SET state = 'in_flight', attempts = 1, lease_owner = $1::uuid, lease_expires_at = now() + interval '1 hour'",
                    [UUID().uuidString]
                )
            }
            try await RelayFixture.withRelay(on: database) { running in
                // Now the relay's, and over: as if it had claimed it and lost the claim's answer.
                try await database.withConnection { db in
                    try await db.query(
                        "UPDATE consent_sync.deliveries SET lease_owner = $1::uuid, lease_expires_at = now() - interval '1 second'",
                        [running.relay.instanceID.uuidString]
                    )
                }
                let requests = try await receiver.waitForRequests(count: 1)
                try await waitUntil("the delivery is delivered") { try await deliveryStates(database) == ["delivered"] }
                #expect(requests.count == 1)
                let errors = try await database.withConnection { db in
                    try await db.query("SELECT attempt, coalesce(error, status::text) AS outcome FROM consent_sync.attempts ORDER BY attempt")
                        .map { "\(try $0.int("attempt")) \(try $0.string("outcome"))" }
                }
                #expect(errors.count == 2)
                #expect(errors.first?.hasPrefix("1 lease expired") == true, "\(errors)")
                #expect(errors.last == "2 200", "\(errors)")
            }
        }
    }
}
