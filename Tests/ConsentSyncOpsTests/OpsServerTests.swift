import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncOps
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Metrics
import Prometheus
import Testing

/// `/metrics`, `/healthz` and `/readyz` served for a relay running against a real PostgreSQL.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct OpsServerTests {
    @Test func metricsParseAndTheDeliveriesCounterMoves() async throws {
        // The relay records through the task's factory: nothing global is bootstrapped.
        let (factory, registry) = Observability.makePrometheusFactory()
        try await withMetricsFactory(factory) {
            try await RelayFixture.withMigratedDatabase { database in
                let receiver = try await WebhookReceiver.start()
                defer { Task { await receiver.stop() } }
                try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
                try await RelayFixture.withRelay(on: database) { running in
                    try await withOpsServer(snapshot: { running.relay.health.snapshot }, registry: registry) { client in
                        func delivered() async throws -> (Double, [ParsedSample]) {
                            let answer = try await client.get("/metrics")
                            #expect(answer.status == 200)
                            #expect(answer.contentType == "text/plain; version=0.0.4; charset=utf-8")
                            let samples = try await parsePrometheusText(answer.body)
                            let value = samples.first {
                                $0.name == "consent_sync_deliveries_total" && $0.labels == ["subscriber": "crm", "outcome": "delivered"]
                            }?.value
                            return (value ?? 0, samples)
                        }
                        let (before, _) = try await delivered()
                        #expect(before == 0)

                        try await ConsentWriter(database: database).set("cust-1", "marketing_email", .granted)
                        try await receiver.waitForRequests(count: 1)
                        var after = 0.0
                        var samples: [ParsedSample] = []
                        try await waitUntil("the deliveries counter moved") {
                            (after, samples) = try await delivered()
                            return after > before
                        }
                        #expect(after == 1)
                        #expect(samples.contains { $0.name == "consent_sync_build_info" && $0.value == 1 })
                        #expect(samples.contains { $0.name == "consent_sync_changes_captured_total" && $0.value >= 1 })
                        #expect(samples.contains { $0.name == "consent_sync_attempt_duration_seconds_count" && $0.labels["subscriber"] == "crm" && $0.value == 1 })
                        #expect(samples.contains { $0.name == "consent_sync_delivery_lag_seconds_count" && $0.labels["subscriber"] == "crm" && $0.value == 1 })
                        let families = Dictionary(samples.map { ($0.family, $0.type) }, uniquingKeysWith: { first, _ in first })
                        #expect(families["consent_sync_deliveries"] == "counter")
                        #expect(families["consent_sync_attempt_duration_seconds"] == "histogram")
                    }
                }
            }
        }
    }

    @Test func healthzIsOkWhileTheRelayRuns() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.withRelay(on: database) { running in
                try await withOpsServer(snapshot: { running.relay.health.snapshot }) { client in
                    try await waitUntil("the relay's loop turned") { running.relay.health.snapshot.lastLoopTurn != nil }
                    for _ in 0..<3 {
                        let answer = try await client.get("/healthz")
                        #expect(answer.status == 200)
                        #expect(answer.contentType == "application/json")
                        let json = try answer.json()
                        #expect(json["status"] as? String == "ok")
                        #expect((json["loop_age_ms"] as? Int).map { $0 >= 0 && $0 < 30_000 } == true)
                        try await Task.sleep(for: .milliseconds(300))
                    }
                    #expect(try await client.get("/nope").status == 404)
                }
            }
        }
    }

    @Test func healthzIsUnavailableWhenTheLoopStalls() async throws {
        // A relay that never turned, watched for longer than the window.
        try await withOpsServer(snapshot: { RelayHealth.Snapshot() }, livenessWindow: .milliseconds(100)) { client in
            try await Task.sleep(for: .milliseconds(200))
            let answer = try await client.get("/healthz")
            #expect(answer.status == 503)
            #expect(try answer.json()["status"] as? String == "stalled")
        }
    }

    @Test func readyzFollowsTheRelaysDatabase() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.withRelay(on: database) { running in
                try await withOpsServer(snapshot: { running.relay.health.snapshot }) { client in
                    try await waitUntil("ready") { try await client.get("/readyz").status == 200 }
                    let ready = try await client.get("/readyz")
                    #expect(ready.body == #"{"status":"ready","database":true,"listening":true,"schema_version":"# + "\(Migrations.latestVersion)}\n")

                    // The shared server stays up: only this test's database refuses connections.
                    let admin = try await PostgresConnection.connect(
                        TestDatabase.baseConfiguration.with("application_name", "consent-sync ops test admin"),
                        logger: RelayFixture.logger
                    )
                    let name = try admin.escapeIdentifier(database.name)
                    do {
                        try await admin.execute("ALTER DATABASE \(name) WITH ALLOW_CONNECTIONS false")
                        try await database.terminateOtherBackends()

                        var seen: OpsClient.Answer?
                        try await waitUntil("not ready while the database refuses connections") {
                            let answer = try await client.get("/readyz")
                            seen = answer
                            return answer.status == 503
                        }
                        let json = try #require(try seen?.json())
                        #expect(json["status"] as? String == "not_ready")
                        #expect(json["database"] as? Bool == false || json["listening"] as? Bool == false, "\(json)")
                        // Keep it away for a few reconnect attempts.
                        try await Task.sleep(for: .seconds(1))
                        let stillDown = try await client.get("/readyz")
                        #expect(stillDown.status == 503, "\(stillDown.body)")
                        // While the database is away, the loop goes on turning: alive, not ready.
                        #expect(try await client.get("/healthz").status == 200)

                        try await admin.execute("ALTER DATABASE \(name) WITH ALLOW_CONNECTIONS true")
                    } catch {
                        try? await admin.execute("ALTER DATABASE \(name) WITH ALLOW_CONNECTIONS true")
                        await admin.close()
                        throw error
                    }
                    await admin.close()

                    try await waitUntil("ready again", timeout: .seconds(30)) { try await client.get("/readyz").status == 200 }
                    let again = try await client.get("/readyz").json()
                    #expect(again["database"] as? Bool == true)
                    #expect(again["listening"] as? Bool == true)
                    #expect(again["last_error"] == nil)
                }
            }
        }
    }
}
