import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Synchronization
import Testing

/// Per subscriber: fewer attributes, pseudonymous subject ids, only the newest change.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct MinimisationTests {
    static func add(
        _ name: String, url: String, fields: [String]? = nil, pseudonymous: Bool = false, newestWins: Bool = false,
        keyring: SecretKeyring = .plaintextOnly, on database: TestDatabase
    ) async throws {
        var new = SubscriberStore.NewSubscriber(name: name, url: url, secret: .generate(), limits: .init(maxInFlight: 8, timeout: .seconds(5), maxAttempts: 1000))
        new.fields = fields
        new.pseudonymous = pseudonymous
        new.newestWins = newestWins
        try await database.withConnection { try await SubscriberStore.add(new, keyring: keyring, on: $0) }
    }

    static func event(_ request: WebhookReceiver.Request) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
    }

    @Test func pseudonymousSubscribersGetStableIdsOfTheirOwnAndNeverTheRawOne() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let key = MasterKey.generate()
            let keyring = SecretKeyring(current: key)
            let plain = try await WebhookReceiver.start()
            let ads = try await WebhookReceiver.start()
            let analytics = try await WebhookReceiver.start()
            defer { Task { await plain.stop(); await ads.stop(); await analytics.stop() } }
            try await Self.add("crm", url: plain.url, keyring: keyring, on: database)
            try await Self.add("ads", url: ads.url, pseudonymous: true, keyring: keyring, on: database)
            try await Self.add("analytics", url: analytics.url, pseudonymous: true, keyring: keyring, on: database)
            let stored = try await database.withConnection { connection in
                try await connection.query("SELECT pseudonym_key FROM consent_sync.subscribers WHERE pseudonym_key IS NOT NULL").map { try $0.string("pseudonym_key") }
            }
            #expect(stored.count == 2 && stored.allSatisfy { $0.hasPrefix("enc:v1:\(key.id):") }, "pseudonym keys are stored sealed")

            let raw = "customer-4711@example.com"
            try await RelayFixture.withRelay(on: database, keyring: keyring) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set(raw, "ads", .granted)
                try await writer.set(raw, "ads", .withdrawn)
                try await writer.set("someone-else", "email", .granted)
                for receiver in [plain, ads, analytics] { try await receiver.waitForRequests(count: 3) }
            }
            // Subjects arrive in any order among themselves: tell them apart by purpose.
            func subjects(_ receiver: WebhookReceiver) throws -> (ads: [String?], email: [String?], events: [[String: Any]]) {
                let events = try receiver.requests.map(Self.event)
                func purpose(_ event: [String: Any]) -> String? { (event["data"] as? [String: Any])?["purpose"] as? String }
                return (events.filter { purpose($0) == "ads" }.map { $0["subject"] as? String },
                        events.filter { purpose($0) == "email" }.map { $0["subject"] as? String }, events)
            }
            let plainSubjects = try subjects(plain)
            #expect(plainSubjects.ads == [raw, raw] && plainSubjects.email == ["someone-else"])
            var pseudonyms: [[String?]] = []
            for receiver in [ads, analytics] {
                let seen = try subjects(receiver)
                #expect(seen.ads.count == 2 && seen.ads[0] == seen.ads[1], "one subject, one stable id")
                #expect(seen.email.count == 1 && seen.email[0] != seen.ads[0])
                #expect((seen.ads + seen.email).allSatisfy { $0?.count == 64 })
                #expect(seen.events.map { $0["partitionkey"] as? String } == seen.events.map { $0["subject"] as? String })
                #expect(seen.events.map { ($0["data"] as? [String: Any])?["subject"] as? String } == seen.events.map { $0["subject"] as? String })
                for request in receiver.requests {
                    #expect(!request.bodyString.contains(raw) && !request.bodyString.contains("customer-4711"), "the raw id was sent: \(request.bodyString)")
                }
                pseudonyms.append(seen.ads)
            }
            #expect(pseudonyms[0][0] != pseudonyms[1][0], "two subscribers got the same pseudonym")

            // Master-key rotation re-seals the pseudonym keys without changing the ids.
            let rotated = SecretKeyring(current: MasterKey.generate(), previous: keyring.current.map { [$0] } ?? [])
            _ = try await database.withConnection { try await SubscriberStore.reencryptSecrets(keyring: rotated, on: $0) }
            let subscribers = try await database.withConnection { try await SubscriberStore.all(on: $0, keyring: SecretKeyring(current: rotated.current)) }
            let ids = subscribers.filter { $0.pseudonymKey != nil }.sorted { $0.name < $1.name }.map { $0.pseudonymKey?.pseudonym(for: raw) }
            #expect(ids == [pseudonyms[0][0], pseudonyms[1][0]])
        }
    }

    @Test func aSubscriberWithAFieldListGetsOnlyThoseAttributes() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute(WatchTests.applicationTable)
                var definition = WatchTests.definition()
                definition.columns = ["email", "phone"]
                try await WatchStore.add(definition, on: connection)
            }
            let all = try await WebhookReceiver.start()
            let narrow = try await WebhookReceiver.start()
            defer { Task { await all.stop(); await narrow.stop() } }
            try await Self.add("warehouse", url: all.url, on: database)
            try await Self.add("mailer", url: narrow.url, fields: ["email"], on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await database.withConnection { connection in
                    try await connection.execute("""
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted, email, phone)
                        VALUES (1, gen_random_uuid(), 'email', 'yes', 'ada@example.com', '+44 20 7946 0000')
                        """)
                }
                try await all.waitForRequests(count: 1)
                try await narrow.waitForRequests(count: 1)
            }
            let wide = try Self.event(all.requests[0])["data"] as? [String: Any]
            let slim = try Self.event(narrow.requests[0])["data"] as? [String: Any]
            #expect((wide?["attributes"] as? [String: String]) == ["email": "ada@example.com", "phone": "+44 20 7946 0000"])
            #expect((slim?["attributes"] as? [String: String]) == ["email": "ada@example.com"])
            #expect(!narrow.requests[0].bodyString.contains("7946"))
        }
    }

    /// With one relay, and with two side by side (as two daemons would run): superseding
    /// happens in the claim and the write-back of whichever instance gets there.
    @Test(arguments: [1, 2])
    func newestWinsSendsOnlyTheLastWaitingChangeAndRecordsTheRestAsSuperseded(relays: Int) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let up = AnswerSwitch(false)
            let responder: WebhookReceiver.Responder = { _ in up.isOn ? .status(200) : .status(503) }
            let latest = try await WebhookReceiver.start(responder: responder)
            let everything = try await WebhookReceiver.start(responder: responder)
            defer { Task { await latest.stop(); await everything.stop() } }
            try await Self.add("ads", url: latest.url, newestWins: true, on: database)
            try await Self.add("crm", url: everything.url, on: database)

            try await RelayFixture.withRelays(relays, on: database) {
                let writer = ConsentWriter(database: database)
                // Another purpose of the same subject, and another subject: never superseded by these.
                try await writer.set("alice", "email", .granted)
                for status in [ConsentStatus.granted, .withdrawn, .granted, .withdrawn] {
                    try await writer.set("alice", "ads", status)
                    try await Task.sleep(for: .milliseconds(150))
                }
                try await writer.set("bob", "ads", .denied)
                try await waitUntil("every change queued and the older ones superseded while the receivers are down") {
                    let ads = try await deliveryCounts(database, subscriber: "ads")
                    let crm = try await deliveryCounts(database, subscriber: "crm")
                    return ads["superseded"] == 3 && crm.values.reduce(0, +) == 6
                }
                up.set(true)
                try await waitUntil("everything settled") {
                    let ads = try await deliveryCounts(database, subscriber: "ads")
                    let crm = try await deliveryCounts(database, subscriber: "crm")
                    return ads == ["delivered": 3, "superseded": 3] && crm == ["delivered": 6]
                }
            }
            let delivered = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT s.name, c.subject || '/' || c.purpose || '/' || c.status AS what
                    FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                    JOIN consent_sync.changes c ON c.id = d.change_id
                    WHERE d.state = 'delivered' ORDER BY s.name, c.id
                    """
                ).map { (try $0.string("name"), try $0.string("what")) }
            }
            #expect(delivered.filter { $0.0 == "ads" }.map(\.1) == ["alice/email/granted", "alice/ads/withdrawn", "bob/ads/denied"])
            #expect(delivered.filter { $0.0 == "crm" }.map(\.1) == [
                "alice/email/granted", "alice/ads/granted", "alice/ads/withdrawn", "alice/ads/granted", "alice/ads/withdrawn", "bob/ads/denied",
            ])
            let superseded = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT d.superseded_by, d.last_error, c.id AS change_id FROM consent_sync.deliveries d
                    JOIN consent_sync.subscribers s ON s.id = d.subscriber_id JOIN consent_sync.changes c ON c.id = d.change_id
                    WHERE s.name = 'ads' AND d.state = 'superseded' ORDER BY c.id
                    """
                ).map { (try $0.int64("superseded_by"), try $0.int64("change_id"), try $0.string("last_error")) }
            }
            #expect(superseded.count == 3)
            #expect(superseded.allSatisfy { $0.0 > $0.1 }, "each points at a newer change: \(superseded)")
            #expect(superseded.allSatisfy { $0.2.contains("newest-wins") })
            // What the receivers accepted (200) is what was recorded delivered, in order.
            let okAds = try latest.requests.suffix(3).map { request -> String in
                let event = try Self.event(request)
                let data = event["data"] as? [String: Any]
                return "\(event["subject"] as? String ?? "?")/\(data?["purpose"] as? String ?? "?")/\(data?["status"] as? String ?? "?")"
            }
            #expect(Set(okAds) == Set(["alice/email/granted", "alice/ads/withdrawn", "bob/ads/denied"]))
        }
    }
}
