import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Dead deliveries are listed and put back in the queue, and then arrive in change order.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct DeadLetterTests {
    @Test func requeuedDeadDeliveriesArriveInChangeOrderWithTheirHistoryKept() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let accepting = AnswerSwitch(false)
            let receiver = try await WebhookReceiver.start { _ in
                accepting.isOn ? .status(200) : .status(400, body: "unknown purpose")
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("strict", url: receiver.url, on: database)
            let written = try await RelayFixture.withRelay(on: database) { _ in
                let written = try await writeMixedChanges(database)
                try await waitUntil("all dead") {
                    try await deliveryCounts(database, subscriber: "strict") == ["dead": written]
                }
                return written
            }
            let firstRound = try arrivedEvents(receiver.requests)
            accepting.set(true)

            // In batches of two, so that parking must hold across transactions too.
            let result = try await database.withConnection { connection in
                try await DeliveryAdmin.retry(.subscriber(name: "strict", window: .all), actor: "operator (test)", batchSize: 2, on: connection)
            }
            #expect(result.requeued.count == written)
            // s1 has three changes and s2 two: all but the first of each wait.
            #expect(result.waiting == 3)
            #expect(result.subscriberState == .enabled)

            try await RelayFixture.withRelay(on: database) { _ in
                let requests = try await receiver.waitForRequests(count: 2 * written, timeout: .seconds(20))
                let secondRound = try arrivedEvents(requests.dropFirst(written))
                #expect(inChangeOrderPerSubject(secondRound), "out of order: \(sequencesBySubject(secondRound))")
                // The same deliveries: the same webhook-ids as before.
                #expect(Set(secondRound.map(\.webhookID)) == Set(firstRound.map(\.webhookID)))
                try await waitUntil("all delivered") {
                    try await deliveryCounts(database, subscriber: "strict") == ["delivered": written]
                }
            }

            let attempts = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT d.id, d.attempts, d.attempts_before_requeue, d.requeued_at IS NOT NULL AS requeued,
                           string_agg(a.attempt || ':' || a.status, ',' ORDER BY a.attempt) AS log
                    FROM consent_sync.deliveries d JOIN consent_sync.attempts a ON a.delivery_id = d.id
                    GROUP BY d.id ORDER BY d.id
                    """
                )
            }
            #expect(attempts.count == 6)
            for row in attempts {
                #expect(row["log"] == "1:400,2:200", "the attempt log is kept: \(row["log"] ?? "")")
                #expect(row["attempts"] == "2")
                #expect(row["attempts_before_requeue"] == "1")
                #expect(row["requeued"] == "t")
            }
            let events = try await database.withConnection { connection in
                try await connection.query("SELECT action, actor, note FROM consent_sync.delivery_events ORDER BY delivery_id")
            }
            #expect(events.count == 6)
            for event in events {
                #expect(event["action"] == "retry")
                #expect(event["actor"] == "operator (test)")
                #expect(event["note"]?.contains("400") == true, "\(event["note"] ?? "")")
            }
        }
    }

    @Test func listAndRetryThroughTheCommandLine() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let accepting = AnswerSwitch(false)
            let receiver = try await WebhookReceiver.start { _ in
                accepting.isOn ? .status(204) : .status(400, body: "no such customer")
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("strict", url: receiver.url, on: database)
            let environment = commandEnvironment(database)
            try await RelayFixture.withRelay(on: database) { _ in
                let written = try await writeMixedChanges(database)
                try await waitUntil("all dead") {
                    try await deliveryCounts(database, subscriber: "strict") == ["dead": written]
                }

                let json = try await DaemonProcess.run(
                    ["deliveries", "list", "--state", "dead", "--subscriber", "strict", "--since", "1h", "--json"], environment: environment
                )
                #expect(json.status == 0, "\(json.stderr)")
                let page = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
                let listed = try #require(page["deliveries"] as? [[String: Any]])
                #expect(page["more"] as? Bool == false)
                #expect(listed.count == written)
                for delivery in listed {
                    #expect(delivery["state"] as? String == "dead")
                    #expect(delivery["last_status"] as? Int == 400)
                    #expect(delivery["subscriber"] as? String == "strict")
                    #expect((delivery["subject"] as? String)?.hasPrefix("s") == true)
                    #expect((delivery["event_type"] as? String)?.hasPrefix("consent.") == true)
                    #expect(delivery["attempts"] as? Int == 1)
                }
                let ids = listed.compactMap { $0["id"] as? Int }
                #expect(ids == ids.sorted(), "oldest first")

                let table = try await DaemonProcess.run(["deliveries", "list", "--state", "dead", "--limit", "2"], environment: environment)
                #expect(table.status == 0, "\(table.stderr)")
                #expect(table.stdout.contains("LAST RESULT"))
                #expect(table.stdout.contains("400 receiver answered 400"), "\(table.stdout)")
                #expect(table.stdout.contains("(the newest 2; more match: raise --limit"), "\(table.stdout)")

                let nothing = try await DaemonProcess.run(["deliveries", "retry", "--subscriber", "strict", "--until", "2000-01-01"], environment: environment)
                #expect(nothing.status == 0, "\(nothing.stderr)")
                #expect(nothing.stdout.contains("nothing to re-queue"))
                #expect(try await deliveryCounts(database, subscriber: "strict") == ["dead": written])

                accepting.set(true)
                let retry = try await DaemonProcess.run(["deliveries", "retry", "--subscriber", "strict", "--since", "1h"], environment: environment)
                #expect(retry.status == 0, "\(retry.stderr)")
                #expect(retry.stdout.contains("re-queued \(written) dead deliveries to strict (3 wait for an earlier change of their subject)"), "\(retry.stdout)")
                #expect(retry.stderr.contains("re-queued dead deliveries"), "logged: \(retry.stderr)")

                let requests = try await receiver.waitForRequests(count: 2 * written, timeout: .seconds(20))
                let secondRound = try arrivedEvents(requests.dropFirst(written))
                #expect(inChangeOrderPerSubject(secondRound), "out of order: \(sequencesBySubject(secondRound))")
                try await waitUntil("all delivered") {
                    try await deliveryCounts(database, subscriber: "strict") == ["delivered": written]
                }
                let empty = try await DaemonProcess.run(["deliveries", "list", "--state", "dead"], environment: environment)
                #expect(empty.stdout.contains("no deliveries match"))

                for output in [json, table, nothing, retry, empty] {
                    #expect(!output.stdout.contains("whsec_") && !output.stderr.contains("whsec_"), "a secret was printed")
                }
            }
        }
    }

    @Test func aRequeuedDeliveryWaitsBehindAnEarlierChangeStillQueued() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let broken = AnswerSwitch(true)
            let emailFailing = AnswerSwitch(true)
            let receiver = try await WebhookReceiver.start { request in
                if broken.isOn { return .status(400) }
                let purpose = (try? arrivedEvents([request]))?.first?.purpose
                return purpose == "email" && emailFailing.isOn ? .status(503) : .status(200)
            }
            defer { Task { await receiver.stop() } }
            // Retries outlast the steps below on a slow machine (the 400s are dead at once anyway).
            try await RelayFixture.addSubscriber(
                "strict", url: receiver.url, limits: .init(maxInFlight: 8, timeout: .seconds(5), maxAttempts: 1000), on: database
            )
            let writer = ConsentWriter(database: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await writer.set("s", "email", .granted)
                try await writer.set("s", "ads", .denied)
                try await waitUntil("both dead") { try await deliveryCounts(database, subscriber: "strict") == ["dead": 2] }
                let ids = try await database.withConnection { connection in
                    try await connection.query(
                        "SELECT c.purpose, d.id FROM consent_sync.deliveries d JOIN consent_sync.changes c ON c.id = d.change_id"
                    )
                }
                let emailRow = ids.first { $0["purpose"] == "email" }
                let adsRow = ids.first { $0["purpose"] == "ads" }
                let email = try #require(try emailRow?.int64("id"))
                let ads = try #require(try adsRow?.int64("id"))
                broken.set(false)

                // The earlier change is back in the queue and keeps failing (503, retried) ...
                try await database.withConnection { connection in
                    try await DeliveryAdmin.retry(.delivery(id: email), actor: "operator (test)", on: connection)
                }
                try await receiver.waitForRequests(count: 4)
                // ... so the later one, re-queued now, waits behind it.
                let later = try await database.withConnection { connection in
                    try await DeliveryAdmin.retry(.delivery(id: ads), actor: "operator (test)", on: connection)
                }
                #expect(later.requeued == [ads])
                #expect(later.waiting == 1)
                let listed = try await database.withConnection { connection in
                    try await DeliveryAdmin.list(.init(subscriber: "strict"), on: connection).deliveries
                }
                let earlier = listed.first { $0.id == email }
                let waiting = listed.first { $0.id == ads }
                #expect(earlier?.state == .pending || earlier?.state == .inFlight)
                #expect(waiting?.state == .pending)
                #expect(waiting?.waitsForEarlierChange == true)
                let sentBefore = receiver.requests.count
                try await Task.sleep(for: .milliseconds(500))
                let meanwhile = try arrivedEvents(receiver.requests.dropFirst(sentBefore))
                let overtaken = meanwhile.contains { $0.purpose == "ads" }
                #expect(!overtaken, "the later change overtook: \(meanwhile.map(\.purpose))")

                emailFailing.set(false)
                try await waitUntil("both delivered") {
                    try await deliveryCounts(database, subscriber: "strict") == ["delivered": 2]
                }
                let events = try arrivedEvents(receiver.requests)
                #expect(events.last?.purpose == "ads", "the later change arrives last: \(events.map(\.purpose))")
            }
        }
    }

    @Test func badInputGetsAClearErrorAndChangesNothing() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start { request in
                request.index == 0 ? .status(200) : .status(400)
            }
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let writer = ConsentWriter(database: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await writer.set("a", "email", .granted)
                try await waitUntil("delivered") { try await deliveryCounts(database, subscriber: "crm") == ["delivered": 1] }
                try await writer.set("b", "email", .granted)
                try await waitUntil("dead") { try await deliveryCounts(database, subscriber: "crm") == ["delivered": 1, "dead": 1] }
            }
            let deliveredID = try await database.withConnection { connection in
                try await connection.query("SELECT id FROM consent_sync.deliveries WHERE state = 'delivered'").first?.int64("id")
            }
            let before = try await deliverySnapshot(database)

            // The store refuses.
            let notDead = await errorThrown {
                try await database.withConnection { connection in
                    try await DeliveryAdmin.retry(.delivery(id: try #require(deliveredID)), actor: "test", on: connection)
                }
            }
            #expect((notDead as? DeliveryAdminError)?.code == .notDead, "\(String(describing: notDead))")
            let missing = await errorThrown {
                try await database.withConnection { try await DeliveryAdmin.retry(.delivery(id: 987_654), actor: "test", on: $0) }
            }
            #expect((missing as? DeliveryAdminError)?.code == .noSuchDelivery)
            let unknownRetry = await errorThrown {
                try await database.withConnection { try await DeliveryAdmin.retry(.subscriber(name: "nosuch", window: .all), actor: "test", on: $0) }
            }
            #expect((unknownRetry as? DeliveryAdminError)?.code == .unknownSubscriber)
            let unknownList = await errorThrown {
                try await database.withConnection { try await DeliveryAdmin.list(.init(subscriber: "nosuch"), on: $0) }
            }
            #expect((unknownList as? DeliveryAdminError)?.code == .unknownSubscriber)
            let unknownReplay = await errorThrown {
                try await database.withConnection { try await DeliveryAdmin.replay(subscriber: "nosuch", window: .all, actor: "test", on: $0) }
            }
            #expect((unknownReplay as? DeliveryAdminError)?.code == .unknownSubscriber)

            // So does the command line: usage errors exit 64, refusals 1.
            let environment = commandEnvironment(database)
            let cases: [(arguments: [String], status: Int32, message: String)] = [
                (["deliveries", "retry", "--id", String(deliveredID ?? 0)], 1, "is delivered, not dead; only dead deliveries can be retried"),
                (["deliveries", "retry", "--id", "987654"], 1, "there is no delivery 987654"),
                (["deliveries", "retry", "--subscriber", "nosuch"], 1, "no subscriber named 'nosuch'"),
                (["deliveries", "list", "--subscriber", "nosuch"], 1, "no subscriber named 'nosuch'"),
                (["replay", "--subscriber", "nosuch", "--since", "1h"], 1, "no subscriber named 'nosuch'"),
                (["deliveries", "list", "--since", "yesterday"], 64, "--since 'yesterday' is not a time"),
                (["deliveries", "retry", "--subscriber", "crm", "--since", "2h", "--until", "3h"], 64, "must be later than --since"),
                (["replay", "--subscriber", "crm", "--since", "last week"], 64, "--since 'last week' is not a time"),
                (["replay", "--subscriber", "crm"], 64, "Missing expected argument '--since"),
                (["deliveries", "retry"], 64, "say which dead deliveries to re-queue"),
                (["deliveries", "retry", "--id", "1", "--subscriber", "crm"], 64, "use either --id or --subscriber, not both"),
                (["deliveries", "retry", "--id", "1", "--since", "1h"], 64, "--since and --until go with --subscriber"),
                (["deliveries", "list", "--state", "lost"], 64, "--state 'lost' is not a delivery state"),
                (["deliveries", "list", "--limit", "0"], 64, "--limit must be between 1 and 100000"),
            ]
            for (arguments, status, message) in cases {
                let output = try await DaemonProcess.run(arguments, environment: environment)
                #expect(output.status == status, "\(arguments): \(output.stderr)")
                #expect(output.stderr.contains(message), "\(arguments): \(output.stderr)")
            }
            #expect(try await deliverySnapshot(database) == before, "a refused command changed deliveries")
        }
    }
}

/// `--since`/`--until` parsing, without a database.
@Suite struct TimeWindowTests {
    static let now = Date(timeIntervalSince1970: 1_764_403_200)  // 2025-11-29T08:00:00Z

    @Test(arguments: [
        ("2025-11-29T10:15:02Z", 1_764_411_302.0),
        ("2025-11-29T10:15:02.250Z", 1_764_411_302.25),
        ("2025-11-29T11:15:02+01:00", 1_764_411_302.0),
        ("2025-11-29T10:15:02", 1_764_411_302.0),
        ("2025-11-29 10:15:02", 1_764_411_302.0),
        ("2025-11-29", 1_764_374_400.0),
        ("90s", 1_764_403_110.0),
        ("15m", 1_764_402_300.0),
        ("2h", 1_764_396_000.0),
        ("3d", 1_764_144_000.0),
        ("1w", 1_763_798_400.0),
    ])
    func times(text: String, expected: Double) throws {
        let date = try TimeWindow.parseTime(text, now: Self.now)
        #expect(abs(date.timeIntervalSince1970 - expected) < 0.001, "\(text) -> \(date.timeIntervalSince1970)")
    }

    @Test(arguments: ["yesterday", "", "2x", "-2h", "h", "2025-13-01", "2025-11-29T25:00:00Z", "10:15"])
    func notTimes(text: String) {
        #expect(throws: TimeWindowError.self) { try TimeWindow.parseTime(text, option: "--since", now: Self.now) }
    }

    @Test func aWindowMustNotEndBeforeItStarts() throws {
        #expect(throws: TimeWindowError.self) { try TimeWindow(since: Self.now, until: Self.now) }
        let window = try TimeWindow(since: Self.now, until: Self.now.addingTimeInterval(1))
        #expect(window.since == Self.now)
    }
}
