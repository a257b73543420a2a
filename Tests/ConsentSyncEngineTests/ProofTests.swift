import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Proof of propagation with the real daemon: receipts in `trace` and the receipts API,
/// deadlines in the metric, the log and `status`, and `forget`.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct ProofTests {
    static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("proof-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    static func get(_ client: HTTPClient, _ url: String, token: String?) async throws -> (status: Int, body: String, headers: HTTPResponse) {
        var headers: [HTTPHeader] = []
        if let token { headers.append(HTTPHeader(name: "authorization", value: "Bearer \(token)")) }
        let response = try await client.send(HTTPRequest(url: url, method: "GET", headers: headers, body: [], timeout: .seconds(10), maxResponseBytes: 1 << 22))
        return (response.status, String(decoding: response.body, as: UTF8.self), response)
    }

    /// The states of the deliveries to `subscribers`, in the order they were made.
    static func deliveryStates(_ database: TestDatabase, subscribers: [String]) async throws -> [String] {
        try await database.withConnection { connection in
            try await connection.query(
                """
                SELECT d.state FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                WHERE s.name = ANY (string_to_array($1, ',')) ORDER BY d.id
                """,
                [subscribers.joined(separator: ",")]
            ).map { try $0.string("state") }
        }
    }

    @Test func aWithdrawalsReceiptsShowInTraceTheAPIAndItsDeadlineInMetricsLogAndStatus() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let email = try await WebhookReceiver.start { _ in .status(200, headers: [("content-type", "application/json")], body: #"{"applied": true}"#) }
            let crm = try await WebhookReceiver.start { _ in .status(200, body: #"{"applied": false, "reason": "customer not found"}"#) }
            let ads = try await WebhookReceiver.start { _ in .status(503) }
            defer { Task { await email.stop(); await crm.stop(); await ads.stop() } }
            try await RelayFixture.addSubscriber("email-platform", url: email.url, on: database)
            try await RelayFixture.addSubscriber("crm", url: crm.url, on: database)
            try await RelayFixture.addSubscriber("ads", url: ads.url, on: database)

            let directory = try Self.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let token = UUID().uuidString + UUID().uuidString
            let tokenFile = directory.appendingPathComponent("receipts-token")
            try Data((token + "\n").utf8).write(to: tokenFile)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: tokenFile.path)
            let environment = DaemonLifecycleTests.environment(database, [
                "CONSENT_SYNC_OPS_ENABLED": "true",
                "CONSENT_SYNC_OPS_LISTEN": "127.0.0.1:0",
                "CONSENT_SYNC_OPS_RECEIPTS_TOKEN_FILE": tokenFile.path,
                "CONSENT_SYNC_DEADLINES_WITHDRAWN_SECONDS": "2",
                "CONSENT_SYNC_RETENTION_INTERVAL_SECONDS": "1",
            ])
            let daemon = try DaemonProcess(["run"], environment: environment)
            defer { daemon.signal(SIGKILL) }
            try await daemon.waitForLog("relay connected")
            let port = try await daemon.waitForOpsPort()

            let subject = "alice@example.com"
            let writer = ConsentWriter(database: database)
            try await writer.set(subject, "ads", .granted)
            try await writer.set(subject, "ads", .withdrawn)
            try await email.waitForRequests(count: 2)
            try await crm.waitForRequests(count: 2)
            try await ads.waitForRequests(count: 2)
            // A request seen is not yet a result written: wait until the daemon has recorded
            // both changes as delivered to email-platform and crm (ads keeps failing).
            try await waitUntil("the deliveries to email-platform and crm are recorded as delivered", timeout: .seconds(30)) {
                try await Self.deliveryStates(database, subscribers: ["email-platform", "crm"]) == Array(repeating: "delivered", count: 4)
            }

            // trace: text and JSON.
            let text = try await DaemonProcess.run(["trace", subject], environment: environment)
            #expect(text.status == 0, "\(text.stderr)")
            #expect(text.stdout.contains("consent.withdrawn"), "\(text.stdout)")
            #expect(text.stdout.contains("HTTP 200  applied"), "\(text.stdout)")
            #expect(text.stdout.contains("NOT applied (customer not found)"), "\(text.stdout)")
            #expect(text.stdout.contains("retrying after") || text.stdout.contains("waiting for an earlier change"), "\(text.stdout)")
            let json = try await DaemonProcess.run(["trace", subject, "--json"], environment: environment)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
            let changes = try #require(object["changes"] as? [[String: Any]])
            #expect(changes.map { $0["type"] as? String } == ["consent.granted", "consent.withdrawn"])
            let withdrawal = try #require(changes.last?["recipients"] as? [[String: Any]])
            let bySubscriber = Dictionary(uniqueKeysWithValues: withdrawal.map { ($0["subscriber"] as? String ?? "?", $0) })
            #expect(bySubscriber["email-platform"]?["state"] as? String == "delivered")
            #expect(bySubscriber["email-platform"]?["applied"] as? Bool == true)
            #expect(bySubscriber["email-platform"]?["http_status"] as? Int == 200)
            #expect((bySubscriber["email-platform"]?["delivered_at"] as? String)?.hasSuffix("Z") == true)
            #expect(bySubscriber["crm"]?["applied"] as? Bool == false)
            #expect(bySubscriber["crm"]?["applied_reason"] as? String == "customer not found")
            #expect(bySubscriber["ads"]?["state"] as? String == "pending")
            #expect(bySubscriber["ads"]?["waiting"] as? String == "waiting for an earlier change of this subject to this subscriber")

            // The receipts API: the same JSON, only with the token.
            let client = HTTPClient(logger: RelayFixture.logger)
            defer { client.shutdown() }
            let path = "http://127.0.0.1:\(port)/v1/subjects/\(subject.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? subject)/receipts"
            let anonymous = try await Self.get(client, path, token: nil)
            #expect(anonymous.status == 401)
            #expect(anonymous.headers.header("www-authenticate")?.hasPrefix("Bearer") == true)
            #expect(!anonymous.body.contains(subject))
            let wrong = try await Self.get(client, path, token: String(token.dropLast()) + "x")
            #expect(wrong.status == 401)
            #expect(!wrong.body.contains(subject))
            let allowed = try await Self.get(client, path, token: token)
            #expect(allowed.status == 200)
            let served = try #require(try JSONSerialization.jsonObject(with: Data(allowed.body.utf8)) as? [String: Any])
            #expect(served["subject"] as? String == subject)
            #expect((served["changes"] as? [[String: Any]])?.count == 2)
            let unknown = try await Self.get(client, "http://127.0.0.1:\(port)/v1/subjects/nobody/receipts", token: token)
            #expect(unknown.status == 200 && unknown.body.contains("\"changes\" : [\n\n  ]") || unknown.body.contains("\"changes\" : []"), "\(unknown.body)")

            // The withdrawal to ads passes its 2 s deadline: warning, metric, status.
            try await daemon.waitForLog("deliveries past their propagation deadline", timeout: .seconds(20))
            let warning = daemon.stderr.split(separator: "\n").first { $0.contains("past their propagation deadline") }.map(String.init) ?? ""
            #expect(warning.contains("subscriber=ads") && warning.contains("event_type=consent.withdrawn"), "\(warning)")
            #expect(!warning.contains(subject), "the log names the subject: \(warning)")
            let metrics = try await Self.get(client, "http://127.0.0.1:\(port)/metrics", token: nil)
            #expect(metrics.body.contains(#"consent_sync_deliveries_past_deadline{event_type="consent.withdrawn",subscriber="ads"} 1.0"#)
                || metrics.body.contains(#"consent_sync_deliveries_past_deadline{subscriber="ads",event_type="consent.withdrawn"} 1.0"#),
                "\(metrics.body.split(separator: "\n").filter { $0.contains("deadline") })")
            let status = try await DaemonProcess.run(["status"], environment: environment)
            #expect(status.stdout.contains("DEADLINES"), "\(status.stdout)")
            let line = status.stdout.split(separator: "\n").first { $0.hasPrefix("ads") && $0.contains("consent.withdrawn") }
            #expect(line != nil, "\(status.stdout)")

            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }

    /// With one daemon, and with two (either may send the erasure and scrub the subject).
    @Test(arguments: [1, 2])
    func forgetTellsEveryRecipientThenLeavesOnlyAHashedReceipt(daemons count: Int) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            // Its answers repeat the subject id: they are part of what an erasure removes.
            let crm = try await WebhookReceiver.start { request in
                let subject = (try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["subject"] as? String ?? "?"
                return .status(200, body: #"{"applied": true, "reason": "done for "# + subject + #""}"#)
            }
            let ads = try await WebhookReceiver.start()
            defer { Task { await crm.stop(); await ads.stop() } }
            try await RelayFixture.addSubscriber("crm", url: crm.url, on: database)
            // Its filter takes only ads changes; an erasure reaches it anyway.
            try await RelayFixture.addSubscriber("ads", url: ads.url, purposes: ["ads"], on: database)
            let environment = DaemonLifecycleTests.environment(database, ["CONSENT_SYNC_RETENTION_INTERVAL_SECONDS": "1"])
            let daemons = try (0..<count).map { _ in try DaemonProcess(["run"], environment: environment) }
            defer { for daemon in daemons { daemon.signal(SIGKILL) } }
            for daemon in daemons { try await daemon.waitForLog("relay connected") }

            let subject = "erin@example.com"
            let writer = ConsentWriter(database: database)
            try await writer.set(subject, "email", .granted, source: "web form, IP 203.0.113.7")
            try await writer.set(subject, "ads", .denied)
            try await writer.set("frank", "email", .granted)
            try await crm.waitForRequests(count: 3)
            // Replays of what crm got carry the subject id in rows of their own: erased too.
            let replayed = try await DaemonProcess.run(["replay", "--subscriber", "crm", "--since", "1h"], environment: environment)
            #expect(replayed.status == 0, "\(replayed.stderr)")
            try await crm.waitForRequests(count: 6)

            let forgotten = try await DaemonProcess.run(["forget", subject, "--wait", "30"], environment: environment)
            #expect(forgotten.status == 0, "\(forgotten.stderr)")
            #expect(forgotten.stdout.contains("every recipient acknowledged it"), "\(forgotten.stdout)")

            // Both got consent.deleted for each row, then subject.erased, in that order.
            let crmTypes = try crm.requests.map { try #require(try JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any])["type"] as? String }
            #expect(Array(crmTypes.suffix(3)) == ["consent.deleted", "consent.deleted", "subject.erased"], "\(crmTypes)")
            let adsTypes = try ads.requests.map { try #require(try JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any])["type"] as? String }
            #expect(adsTypes == ["consent.denied", "consent.deleted", "subject.erased"], "\(adsTypes)")
            #expect(ads.requests.last?.bodyString.contains(subject) == true, "recipients are told which subject to erase")

            // No table of schema consent_sync holds the raw id any more, nor the source text.
            let leaks = try await database.withConnection { connection in
                let tables = try await connection.query(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'consent_sync' AND table_type = 'BASE TABLE' ORDER BY 1"
                ).map { try $0.string("table_name") }
                var found: [String] = []
                for table in tables {
                    let name = try connection.escapeIdentifier(table)
                    let rows = try await connection.query(
                        "SELECT count(*) AS n FROM consent_sync.\(name) t WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0",
                        [subject, "203.0.113.7"]
                    )
                    if try rows.first?.int("n") ?? 0 > 0 { found.append(table) }
                }
                return (tables.count, found)
            }
            #expect(leaks.0 > 8)
            #expect(leaks.1.isEmpty, "the raw subject id or its payload is still in: \(leaks.1)")

            // The receipt stays, found by the id.
            let trace = try await DaemonProcess.run(["trace", subject], environment: environment)
            #expect(trace.stdout.contains("subject.erased") && trace.stdout.contains("[personal data erased]"), "\(trace.stdout)")
            #expect(trace.stdout.components(separatedBy: "delivered 20").count - 1 == 10, "5 changes to their recipients and 2 replays, all delivered: \(trace.stdout)")
            let other = try await DaemonProcess.run(["trace", "frank"], environment: environment)
            #expect(other.stdout.contains("consent.granted") && !other.stdout.contains("erased"), "\(other.stdout)")

            for daemon in daemons {
                daemon.signal(SIGTERM)
                #expect(try await daemon.waitForExit() == 0)
            }
        }
    }

    @Test func retentionPrunesOldPayloadsThenOldReceiptsAndNeverWhatIsStillOwed() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute("""
                    INSERT INTO consent_sync.subscribers (name, url) VALUES ('crm', 'https://crm.example/hook');
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, status, source, attributes, changed_at, fanned_out)
                    SELECT 'consent_sync.consents', 'INSERT', 'consent.granted', 's' || g, 'email', 'granted', 'web', '{"email": "x@example.com"}',
                           now() - make_interval(days => CASE WHEN g <= 3 THEN 800 WHEN g <= 6 THEN 100 ELSE 1 END), true
                    FROM generate_series(1, 8) g;
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state, completed_at, next_attempt_at)
                    SELECT c.id, s.id, c.subject, CASE WHEN c.subject IN ('s2', 's5') THEN 'pending' ELSE 'delivered' END, now(), now()
                    FROM consent_sync.changes c, consent_sync.subscribers s;
                    INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at, status, response_excerpt)
                    SELECT id, 1, now(), 200, '{"applied": true}' FROM consent_sync.deliveries;
                    -- Replays still owed (their originals delivered long ago) keep their change too.
                    INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, state, next_attempt_at, replay_of)
                    SELECT change_id, subscriber_id, subject, 'pending', now(), id FROM consent_sync.deliveries WHERE subject IN ('s3', 's6');
                    """)
            }
            // Two daemons' passes at once, as when several run: one at a time does the work.
            async let first = database.withConnection {
                try await RetentionStore.run(payloadAge: .seconds(90 * 86_400), receiptAge: .seconds(730 * 86_400), batch: 100, on: $0)
            }
            async let second = database.withConnection {
                try await RetentionStore.run(payloadAge: .seconds(90 * 86_400), receiptAge: .seconds(730 * 86_400), batch: 100, on: $0)
            }
            let passes = try await [first, second]
            let rows = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT c.subject, c.attributes IS NOT NULL AS has_payload,
                           (SELECT count(*) FROM consent_sync.attempts a JOIN consent_sync.deliveries d ON d.id = a.delivery_id
                            WHERE d.change_id = c.id AND a.response_excerpt IS NOT NULL) AS answers
                    FROM consent_sync.changes c ORDER BY c.id
                    """
                ).map { "\(try $0.string("subject")):\(try $0.bool("has_payload") ? "payload" : "pruned"):\(try $0.int("answers"))" }
            }
            // s1: past receipt age and finished: deleted. s2: still owed (pending), s3: a replay
            // still owed: kept whole. s4: past payload age and finished: pruned. s5 still owed,
            // s6 a replay still owed, s7 and s8 young: kept.
            #expect(rows == ["s2:payload:1", "s3:payload:1", "s4:pruned:0", "s5:payload:1", "s6:payload:1", "s7:payload:1", "s8:payload:1"], "\(rows)")
            #expect(passes.map(\.deleted).reduce(0, +) == 1, "\(passes)")
        }
    }
}
