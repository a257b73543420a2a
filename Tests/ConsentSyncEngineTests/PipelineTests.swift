import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Logging
import Synchronization
import Testing

/// The core pipeline against a real PostgreSQL and real HTTP receivers on 127.0.0.1.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct PipelineTests {
    @Test func aChangeReachesEverySubscriberSignedAsACloudEvent() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let crm = try await WebhookReceiver.start()
            let email = try await WebhookReceiver.start()
            defer { Task { await crm.stop(); await email.stop() } }
            let crmSecret = try await RelayFixture.addSubscriber("crm", url: crm.url, on: database)
            let emailSecret = try await RelayFixture.addSubscriber("email", url: email.url, on: database)

            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("cust-1", "marketing_email", .granted)
                for (receiver, secret) in [(crm, crmSecret), (email, emailSecret)] {
                    let request = try #require(try await receiver.waitForRequests(count: 1).first)
                    try WebhookSigner.verify(
                        id: request.headers["webhook-id"],
                        timestamp: request.headers["webhook-timestamp"],
                        signatureHeader: request.headers["webhook-signature"],
                        body: request.body,
                        secrets: [secret]
                    )
                    #expect(request.headers["content-type"] == "application/cloudevents+json")
                    #expect(request.headers["user-agent"]?.hasPrefix("consent-sync/") == true)
                    let event = try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
                    #expect(event["specversion"] as? String == "1.0")
                    #expect(event["type"] as? String == "consent.granted")
                    #expect(event["subject"] as? String == "cust-1")
                    let data = try #require(event["data"] as? [String: Any])
                    #expect(data["purpose"] as? String == "marketing_email")
                    #expect(data["status"] as? String == "granted")
                    #expect(data["previous_status"] is NSNull)
                    #expect(data["source"] as? String == "test")
                    #expect((event["sequence"] as? String)?.count == 20)
                }
                // Same event, one id per delivery.
                #expect(crm.requests[0].headers["webhook-id"] != email.requests[0].headers["webhook-id"])
                #expect(try eventID(crm.requests[0]) == eventID(email.requests[0]))
                try await waitUntil("both deliveries recorded as delivered") {
                    try await deliveryStates(database).filter { $0 == "delivered" }.count == 2
                }
            }
        }
    }

    @Test func transientFailuresAreRetriedWithTheSameWebhookID() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { request in
                request.index < 2 ? .status(500, body: "try later") : .status(200)
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("flaky", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("cust-2", "analytics", .denied)
                let requests = try await receiver.waitForRequests(count: 3)
                #expect(Set(requests.map { $0.headers["webhook-id"] }).count == 1)
                try await waitUntil("delivered after three attempts") {
                    try await deliveryStates(database) == ["delivered"]
                }
                let attempts = try await database.withConnection { connection in
                    try await connection.query("SELECT attempt, status, response_excerpt FROM consent_sync.attempts ORDER BY attempt")
                }
                #expect(attempts.map { $0["status"] } == ["500", "500", "200"])
                #expect(attempts.map { $0["attempt"] } == ["1", "2", "3"])
                #expect(attempts.first?["response_excerpt"] == "try later")
            }
            #expect(receiver.requests.count == 3)
        }
    }

    @Test func aPermanentErrorIsDeadAfterOneAttempt() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { _ in .status(400, body: "unknown purpose") }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("strict", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("cust-3", "ads", .withdrawn)
                try await waitUntil("dead") { try await deliveryStates(database) == ["dead"] }
                // Give a wrong retry a chance to happen before counting.
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(receiver.requests.count == 1)
            let error = try await database.withConnection { try await $0.query("SELECT last_status, last_error FROM consent_sync.deliveries") }
            #expect(error.first?["last_status"] == "400")
            #expect(error.first?["last_error"]?.contains("400") == true)
        }
    }

    @Test func retryAfterIsHonoured() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { request in
                request.index == 0 ? .status(429, headers: [("Retry-After", "2")]) : .status(204)
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("limited", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("cust-4", "calls", .granted)
                let requests = try await receiver.waitForRequests(count: 2, timeout: .seconds(15))
                let gap = requests[1].receivedAt.timeIntervalSince(requests[0].receivedAt)
                #expect(gap >= 2.0, "retried \(gap) s after a 429 with Retry-After: 2")
            }
        }
    }

    @Test func oneSubjectStaysInOrderWhileOthersFlow() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            // S's first change fails until both of T's changes have arrived: T is not held up
            // behind S, and S's later changes wait for its first.
            let tArrived = Atomic<Int>(0)
            let receiver = try await WebhookReceiver.start { request in
                let event = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any]
                let data = event?["data"] as? [String: Any]
                switch (event?["subject"] as? String, data?["purpose"] as? String) {
                case ("T", _):
                    tArrived.add(1, ordering: .relaxed)
                    return .status(200)
                case ("S", "p1"):
                    return tArrived.load(ordering: .relaxed) < 2 ? .status(503) : .status(200)
                default:
                    return .status(200)
                }
            }
            defer { Task { await receiver.stop() } }
            // Attempts without limit: how many S's first change takes depends on how fast T's
            // two arrive, which a loaded machine slows (20, the tests' default, ran out in CI).
            try await RelayFixture.addSubscriber(
                "ordered", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(5), maxAttempts: 10_000), on: database
            )
            try await RelayFixture.withRelay(on: database) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set("S", "p1", .granted)
                try await writer.set("S", "p2", .granted)
                try await writer.set("S", "p3", .denied)
                try await writer.set("T", "p1", .granted)
                try await writer.set("T", "p2", .denied)
                try await waitUntil("everything delivered", timeout: .seconds(60)) {
                    try await deliveryStates(database) == Array(repeating: "delivered", count: 5)
                }
                let accepted = receiver.requests.compactMap { request -> (String, String)? in
                    guard let event = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any],
                          let data = event["data"] as? [String: Any] else { return nil }
                    return (event["subject"] as? String ?? "", data["purpose"] as? String ?? "")
                }
                let sOrder = accepted.filter { $0.0 == "S" }.map(\.1)
                // p1 at least once failed and once accepted, then p2, then p3: never overtaken.
                #expect(sOrder.count >= 3)
                #expect(Array(sOrder.drop { $0 == "p1" }) == ["p2", "p3"], "S's later changes overtook its first: \(sOrder)")
                #expect(sOrder.first == "p1")
                #expect(accepted.filter { $0.0 == "T" }.count == 2, "T was held up behind S")
            }
        }
    }

    @Test func aFailedAnswerDoesNotLeaveOtherSubjectsWaitingForTheNextPoll() async throws {
        // One slot: T's change is fanned out while S's is in flight, and can only be claimed
        // in the round that writes S's failure, the round that holds the subscriber back to see
        // whether that failure disabled it. The next round must come at once: the poll is an
        // hour away and S's retry (Retry-After) as far.
        var configuration = Relay.Configuration.forTests
        configuration.pollInterval = .seconds(3600)
        configuration.retry.maxRetryAfter = .seconds(3600)
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { request in
                let event = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any]
                guard event?["subject"] as? String == "S" else { return .status(204) }
                return .delayed(.milliseconds(500), .status(503, headers: [("Retry-After", "3600")]))
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("one-slot", url: receiver.url, limits: .init(maxInFlight: 1, timeout: .seconds(5)), on: database)
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set("S", "p1", .granted)
                _ = try await receiver.waitForRequests(count: 1, timeout: .seconds(15))
                try await writer.set("T", "p1", .granted)
                let requests = try await receiver.waitForRequests(count: 2, timeout: .seconds(30))
                let subjects = requests.compactMap { request in
                    (try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["subject"] as? String
                }
                #expect(subjects == ["S", "T"])
                try await waitUntil("T's delivery is written back") { try await deliveryStates(database).last == "delivered" }
                #expect(try await deliveryStates(database).first != "delivered")
            }
        }
    }

    /// A hand-over the database refuses rolls back the results written with it: they are
    /// written again, without a hand-over after three refusals, and every change still
    /// arrives once, in order. (A trigger refuses what only a hand-over does: leasing a
    /// parked delivery.)
    @Test func aRefusedHandOverLosesNothing() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { db in
                try await db.execute(
                    """
                    CREATE FUNCTION consent_sync.refuse_hand_over() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN RAISE EXCEPTION 'hand-over refused by the test'; END $$;
                    CREATE TRIGGER refuse_hand_over BEFORE UPDATE ON consent_sync.deliveries FOR EACH ROW
                    WHEN (OLD.next_attempt_at = 'infinity' AND NEW.state = 'in_flight')
                    EXECUTE FUNCTION consent_sync.refuse_hand_over();
                    """
                )
            }
            // Written before the relay starts: the first is claimed with two waiting behind it.
            let writer = ConsentWriter(database: database)
            for purpose in ["p1", "p2", "p3"] { try await writer.set("cust-1", purpose, .granted) }
            let log = RecordingLogHandler.Store()
            try await RelayFixture.withRelay(on: database, logger: Logger(label: "test") { _ in RecordingLogHandler(store: log) }) { _ in
                try await waitUntil("everything delivered", timeout: .seconds(60)) {
                    try await deliveryStates(database) == ["delivered", "delivered", "delivered"]
                }
            }
            // Each refusal is one line, the round's failure, which says what failed; the third
            // also says that deliveries are claimed from then on, and there is no fourth.
            let refusals = log.all.filter { $0.message.contains("hand") || $0.metadata["error"]?.contains("hand-over refused") == true }
            #expect(refusals.map(\.message) == Array(repeating: "pipeline step failed; retrying", count: 3), "\(refusals)")
            #expect(refusals.map { $0.metadata["error"]?.hasPrefix("handing over the next deliveries failed") == true } == [true, true, true])
            #expect(refusals.map { $0.metadata["error"]?.contains("they are claimed instead from now on") == true } == [false, false, true])
            let purposes = receiver.requests.compactMap { request in
                ((try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["data"] as? [String: Any])?["purpose"] as? String
            }
            #expect(purposes == ["p1", "p2", "p3"])
            let attempts = try await database.withConnection { try await $0.query("SELECT count(*) AS n FROM consent_sync.attempts") }
            #expect(try attempts.first?.int("n") == 3, "each attempt logged once")
        }
    }

    @Test func aTransactionThatCommitsLateIsNotSkipped() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("all", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                let a = try await database.connect()
                let b = try await database.connect()
                try await a.query("BEGIN")
                try await ConsentWriter.set("A", "email", .granted, on: a)   // lower outbox id, still open
                try await b.query("BEGIN")
                try await ConsentWriter.set("B", "email", .granted, on: b)
                try await b.query("COMMIT")
                try await receiver.waitForRequests(count: 1)
                // Let the relay fan out past A's id a few times before A commits.
                try await Task.sleep(for: .milliseconds(600))
                try await a.query("COMMIT")
                await a.close()
                await b.close()
                let requests = try await receiver.waitForRequests(count: 2)
                let subjects = requests.compactMap { try? eventSubject($0) }
                #expect(subjects == ["B", "A"])
            }
        }
    }

    @Test func changesMadeWhileStoppedAreDeliveredAfterStart() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("late", url: receiver.url, on: database)
            let writer = ConsentWriter(database: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await writer.set("before", "email", .granted)
                try await receiver.waitForRequests(count: 1)
            }
            for index in 0..<20 {
                try await writer.set("down-\(index)", "email", .denied)
            }
            #expect(receiver.requests.count == 1)
            try await RelayFixture.withRelay(on: database) { _ in
                // At least once: the first relay may have been stopped before it recorded
                // "before", which is then sent again; count distinct subjects.
                try await waitUntil("all 21 subjects arrived") {
                    Set(receiver.requests.compactMap { try? eventSubject($0) }).count == 21
                }
            }
        }
    }

    @Test func theListenerReconnectsAfterItsBackendIsKilled() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("steady", url: receiver.url, on: database)
            // A poll interval far longer than the test: only NOTIFY or the reconnect catch-up can deliver.
            var configuration = Relay.Configuration.forTests
            configuration.pollInterval = .seconds(3600)
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                let writer = ConsentWriter(database: database)
                // Written once the relay said it is idle: a change whose trigger runs just before
                // that and commits after the relay's last look is left to the (hour-long) poll.
                try await waitUntilIdle(database)
                try await writer.set("x", "email", .granted)
                try await receiver.waitForRequests(count: 1)

                let killed = try await database.withConnection { connection in
                    try await connection.query(
                        """
                        SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
                        WHERE datname = current_database() AND application_name = 'consent-sync listener'
                        """
                    )
                }
                #expect(killed.count == 1)
                // Written while the listener is away: delivered by the catch-up after reconnecting.
                try await writer.set("y", "email", .granted)
                try await receiver.waitForRequests(count: 2, timeout: .seconds(20))
                // And notifications work again afterwards.
                try await waitUntilIdle(database)
                try await writer.set("z", "email", .granted)
                try await receiver.waitForRequests(count: 3, timeout: .seconds(20))
            }
        }
    }

    @Test func noOpUpdatesAreIgnoredAndDeletesAreSent() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("all", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("d", "email", .granted)
                try await receiver.waitForRequests(count: 1)
                try await database.withConnection { connection in
                    try await connection.query("UPDATE consent_sync.consents SET status = status WHERE subject_id = 'd'")
                    try await connection.query("UPDATE consent_sync.consents SET updated_at = now() WHERE subject_id = 'd'")
                    try await connection.query("DELETE FROM consent_sync.consents WHERE subject_id = 'd'")
                }
                let requests = try await receiver.waitForRequests(count: 2)
                let event = try #require(try JSONSerialization.jsonObject(with: Data(requests[1].body)) as? [String: Any])
                #expect(event["type"] as? String == "consent.deleted")
                #expect((event["data"] as? [String: Any])?["previous_status"] as? String == "granted")
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(receiver.requests.count == 2)
            let changes = try await database.withConnection { try await $0.query("SELECT operation FROM consent_sync.changes ORDER BY id") }
            #expect(changes.map { $0["operation"] } == ["INSERT", "DELETE"])
        }
    }

    @Test func aPurposeFilterSelectsChanges() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let email = try await WebhookReceiver.start()
            let everything = try await WebhookReceiver.start()
            defer { Task { await email.stop(); await everything.stop() } }
            try await RelayFixture.addSubscriber("email", url: email.url, purposes: ["marketing_email"], on: database)
            try await RelayFixture.addSubscriber("warehouse", url: everything.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set("f", "ads", .granted)
                try await writer.set("f", "marketing_email", .withdrawn)
                try await writer.set("g", "analytics", .denied)
                try await everything.waitForRequests(count: 3)
                try await email.waitForRequests(count: 1)
                try await Task.sleep(for: .milliseconds(300))
            }
            #expect(email.requests.count == 1)
            let purposes = email.requests.compactMap { request in
                ((try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["data"] as? [String: Any])?["purpose"] as? String
            }
            #expect(purposes == ["marketing_email"])
        }
    }
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct MigrationTests {
    @Test func migrateTwiceAndConcurrentlyLeavesOneVersion() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await withThrowingTaskGroup(of: Migrator.Result.self) { group in
                for _ in 0..<3 {
                    group.addTask { try await database.withConnection { try await Migrator.migrate($0, logger: RelayFixture.logger) } }
                }
                var results: [Migrator.Result] = []
                for try await result in group { results.append(result) }
                #expect(results.filter { $0.from == 0 }.count == 1)
                #expect(results.allSatisfy { $0.to == Migrations.latestVersion })
            }
            let again = try await database.withConnection { try await Migrator.migrate($0, logger: RelayFixture.logger) }
            #expect(again == Migrator.Result(from: Migrations.latestVersion, to: Migrations.latestVersion))
            let rows = try await database.withConnection { try await $0.query("SELECT version FROM consent_sync.schema_migrations") }
            #expect(rows.count == Migrations.all.count)
            try await database.withConnection { try await Migrator.requireCurrent($0) }
        }
    }

    @Test func aDatabaseWithoutTheSchemaIsReportedClearly() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            await #expect(throws: SchemaError.notMigrated) {
                try await database.withConnection { try await Migrator.requireCurrent($0) }
            }
        }
    }
}

// MARK: - Helpers

/// A thread-safe countdown for receivers' scripts.
final class Counter: Sendable {
    private let value: Mutex<Int>
    init(_ value: Int) { self.value = Mutex(value) }
    /// Decrements if positive; true when it did.
    func decrement() -> Bool {
        value.withLock { value in
            guard value > 0 else { return false }
            value -= 1
            return true
        }
    }
}

func eventID(_ request: WebhookReceiver.Request) throws -> String? {
    (try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["id"] as? String
}

func eventSubject(_ request: WebhookReceiver.Request) throws -> String? {
    (try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["subject"] as? String
}

func deliveryStates(_ database: TestDatabase) async throws -> [String] {
    try await database.withConnection { connection in
        try await connection.query("SELECT state FROM consent_sync.deliveries ORDER BY id").map { $0["state"] ?? "" }
    }
}

/// Waits until every relay on `database` has told it that it is idle (writers NOTIFY it).
func waitUntilIdle(_ database: TestDatabase) async throws {
    try await waitUntil("the relay says it is idle") {
        try await database.withConnection {
            try await $0.query("SELECT coalesce(bool_and(idle), false) AS idle FROM consent_sync.listeners").first?.bool("idle") == true
        }
    }
}

/// Polls `condition` until it holds, failing after `timeout`.
func waitUntil(_ what: String, timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("timed out waiting until \(what)")
    throw CancellationError()
}
