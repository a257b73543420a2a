import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// True when a migrated database has no unique constraint on `consent_sync.deliveries`.
private func schemaAllowsReplays() async throws -> Bool {
    guard TestDatabase.isConfigured else { return false }
    return try await RelayFixture.withMigratedDatabase { database in
        try await database.withConnection { connection in
            try await connection.query(
                "SELECT 1 FROM pg_constraint WHERE conrelid = 'consent_sync.deliveries'::regclass AND contype = 'u'"
            ).isEmpty
        }
    }
}

/// `replay`: delivered changes are sent again as new deliveries (new webhook-id, same event id),
/// in change order per subject, never ahead of an earlier change still queued.
///
/// Replays need a second delivery of one change to one subscriber, which the unique
/// constraint on `deliveries (change_id, subscriber_id)` of schema version 1 forbids, and which
/// fan-out's `ON CONFLICT (change_id, subscriber_id)` relied on then. This suite turns itself on once
/// the schema has no unique constraint on deliveries any more (only a unique index that keeps
/// one original per pair: partial over originals from schema 3, from schema 9 one whose third
/// key is 0 for an original and the row's own id for a replay).
@Suite(
    .enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"),
    .enabled("needs a schema that lets one change be delivered twice to one subscriber") { try await schemaAllowsReplays() }
)
struct ReplayTests {
    @Test func aReplayResendsDeliveredChangesWithNewWebhookIDsAndTheSameEventIDs() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let since = Date().addingTimeInterval(-1)
            let written = try await RelayFixture.withRelay(on: database) { _ in
                let written = try await writeMixedChanges(database)
                try await receiver.waitForRequests(count: written)
                try await waitUntil("all delivered") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": written]
                }
                return written
            }
            let originals = try arrivedEvents(receiver.requests)

            let none = try await database.withConnection { connection in
                try await DeliveryAdmin.replay(subscriber: "crm", window: try TimeWindow(since: nil, until: since), actor: "operator (test)", on: connection)
            }
            #expect(none.created.isEmpty, "nothing was captured before the window")

            // In batches of two changes, so that parking must hold across transactions too.
            let result = try await database.withConnection { connection in
                try await DeliveryAdmin.replay(
                    subscriber: "crm", window: try TimeWindow(since: since, until: nil), actor: "operator (test)", batchSize: 2, on: connection
                )
            }
            #expect(result.created.count == written)
            #expect(result.waiting == 3, "s1 has three changes and s2 two: all but the first of each wait")
            #expect(result.skippedStillQueued == 0)

            try await RelayFixture.withRelay(on: database) { _ in
                let requests = try await receiver.waitForRequests(count: 2 * written, timeout: .seconds(20))
                let replays = try arrivedEvents(requests.dropFirst(written))
                #expect(inChangeOrderPerSubject(replays), "out of order: \(sequencesBySubject(replays))")
                #expect(Set(replays.map(\.webhookID)).isDisjoint(with: originals.map(\.webhookID)), "a replay is a new delivery")
                #expect(Set(replays.map(\.eventID)) == Set(originals.map(\.eventID)), "of the same events")
                #expect(Set(replays.map(\.sequence)) == Set(originals.map(\.sequence)))
                try await waitUntil("the replays delivered") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": 2 * written]
                }
            }

            let marks = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT r.id, r.replay_of, o.change_id = r.change_id AS same_change, o.replay_of IS NULL AS original,
                           (SELECT e.action || ' by ' || e.actor FROM consent_sync.delivery_events e WHERE e.delivery_id = r.id) AS event
                    FROM consent_sync.deliveries r JOIN consent_sync.deliveries o ON o.id = r.replay_of ORDER BY r.id
                    """
                )
            }
            #expect(marks.count == 6)
            for mark in marks {
                #expect(mark["same_change"] == "t" && mark["original"] == "t")
                #expect(mark["event"] == "replay by operator (test)")
            }
            let listed = try await database.withConnection { connection in
                try await DeliveryAdmin.list(.init(subscriber: "crm"), on: connection).deliveries
            }
            #expect(listed.filter { $0.replayOf != nil }.count == 6)
        }
    }

    /// The one unique index over a change's deliveries (schema 9): a second original of a
    /// (change, subscriber) is refused, and the fan-out's guard looks in it; replays, even
    /// two of the same original, go in.
    @Test func oneOriginalPerChangeAndSubscriberAndAnyNumberOfReplays() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute("""
                    INSERT INTO consent_sync.subscribers (name, url) VALUES ('crm', 'https://crm.example/hook');
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, fanned_out)
                    VALUES ('consent_sync.consents', 'INSERT', 'consent.granted', 's1', 'email', 'granted', true);
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state)
                    SELECT c.id, s.id, c.subject, 'delivered' FROM consent_sync.changes c, consent_sync.subscribers s;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, replay_of)
                    SELECT d.change_id, d.subscriber_id, d.subject, d.id FROM consent_sync.deliveries d, generate_series(1, 2);
                    """)
                var refused: PostgresError?
                do {
                    try await connection.execute("""
                        INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject)
                        SELECT change_id, subscriber_id, subject FROM consent_sync.deliveries WHERE replay_of IS NULL
                        """)
                } catch let error as PostgresError {
                    refused = error
                }
                #expect(refused?.sqlState == "23505", "a second original: \(String(describing: refused))")
                let kinds = try await connection.query(
                    "SELECT (replay_of IS NULL)::text || ' ' || count(*) AS line FROM consent_sync.deliveries GROUP BY replay_of IS NULL ORDER BY 1"
                ).map { try $0.string("line") }
                #expect(kinds == ["false 2", "true 1"])
                // The trace finds the original and its replays through the one index by change.
                let trace = try await SubjectTrace.load(subject: "s1", on: connection)
                let recipients = trace.changes.flatMap(\.recipients).map { "\($0.subscriber) \($0.replay ? "replay" : "original")" }
                #expect(recipients == ["crm original", "crm replay", "crm replay"])
            }
        }
    }

    @Test func aReplayWaitsBehindAnEarlierChangeStillQueued() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            // The subject's first change dies, its second is delivered; the first is then re-queued
            // (while the subscriber is paused) and a replay of the second must not overtake it.
            let rejectingEmail = AnswerSwitch(true)
            let receiver = try await WebhookReceiver.start { request in
                let purpose = (try? arrivedEvents([request]))?.first?.purpose
                return purpose == "email" && rejectingEmail.isOn ? .status(400) : .status(200)
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let writer = ConsentWriter(database: database)
            let since = Date().addingTimeInterval(-1)
            try await RelayFixture.withRelay(on: database) { _ in
                try await writer.set("s", "email", .granted)
                try await writer.set("s", "ads", .denied)
                try await waitUntil("one dead, one delivered") {
                    try await deliveryCounts(database, subscriber: "crm") == ["dead": 1, "delivered": 1]
                }
                try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .pause, reason: "replay test", actor: "operator (test)", on: connection)
                }
                rejectingEmail.set(false)

                let retried = try await database.withConnection { connection in
                    try await DeliveryAdmin.retry(.subscriber(name: "crm", window: .all), actor: "operator (test)", on: connection)
                }
                #expect(retried.waiting == 0)
                #expect(retried.subscriberState == .paused)
                let replay = try await database.withConnection { connection in
                    try await DeliveryAdmin.replay(subscriber: "crm", window: try TimeWindow(since: since, until: nil), actor: "operator (test)", on: connection)
                }
                #expect(replay.created.count == 1)
                #expect(replay.waiting == 1, "the replay of the later change waits for the re-queued earlier one")

                let sentBefore = receiver.requests.count
                try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .resume, reason: nil, actor: "operator (test)", on: connection)
                }
                let requests = try await receiver.waitForRequests(count: sentBefore + 2, timeout: .seconds(20))
                let after = try arrivedEvents(requests.dropFirst(sentBefore))
                #expect(after.map(\.purpose) == ["email", "ads"], "the replay overtook the earlier change")
            }
        }
    }

    @Test func aReplayOfOlderChangesGoesAheadOfANewerOneStillQueued() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let writer = ConsentWriter(database: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await writer.set("s", "email", .granted)
                try await writer.set("s", "email", .denied)
                try await receiver.waitForRequests(count: 2)
                try await waitUntil("delivered") { try await deliveryCounts(database, subscriber: "crm") == ["delivered": 2] }

                try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .pause, reason: nil, actor: "operator (test)", on: connection)
                }
                try await writer.set("s", "email", .withdrawn)   // newer, queued while paused

                let output = try await DaemonProcess.run(["replay", "--subscriber", "crm", "--since", "1h"], environment: commandEnvironment(database))
                #expect(output.status == 0, "\(output.stderr)")
                #expect(output.stdout.contains("replaying 2 changes to crm as new deliveries"), "\(output.stdout)")
                #expect(output.stdout.contains("note: crm is paused"))

                try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .resume, reason: nil, actor: "operator (test)", on: connection)
                }
                let requests = try await receiver.waitForRequests(count: 5, timeout: .seconds(20))
                let events = try arrivedEvents(requests)
                // Per subject in change order: the replayed older changes first, the newer one last,
                // so a receiver that applies whatever arrives ends with the newest state.
                #expect(inChangeOrderPerSubject(Array(events.dropFirst(2))), "\(sequencesBySubject(events))")
                let statuses = requests.dropFirst(2).compactMap { request in
                    ((try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["data"] as? [String: Any])?["status"] as? String
                }
                #expect(statuses == ["granted", "denied", "withdrawn"])
            }
        }
    }
}
