import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The daemon's defaults refuse webhooks to http and to non-public addresses.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct AddressGuardTests {
    static func lastErrors(_ database: TestDatabase) async throws -> [String] {
        try await database.withConnection { connection in
            try await connection.query("SELECT state, last_error FROM consent_sync.deliveries ORDER BY id")
                .map { "\($0["state"] ?? ""): \($0["last_error"] ?? "")" }
        }
    }

    @Test(arguments: [
        (["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES": "https"], "scheme 'http' is not allowed"),
        (["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES": "https, http"], "is loopback"),
        (["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES": "https, http", "CONSENT_SYNC_HTTP_ALLOW_NETWORKS": "10.0.0.0/8"], "is loopback"),
    ])
    func loopbackTargetsAreRefusedUnlessAllowed(settings: [String: String], reason: String) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("internal", url: receiver.url, on: database)
            var environment = DaemonLifecycleTests.environment(database)
            environment["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES"] = nil
            environment["CONSENT_SYNC_HTTP_ALLOW_NETWORKS"] = nil
            environment.merge(settings) { $1 }
            let daemon = try DaemonProcess(["run"], environment: environment)
            try await daemon.waitForLog("relay connected")
            try await ConsentWriter(database: database).set("ssrf", "email", .granted)
            try await waitUntil("the delivery is refused") {
                try await Self.lastErrors(database).first?.hasPrefix("dead") == true
            }
            let errors = try await Self.lastErrors(database)
            #expect(errors.count == 1)
            #expect(errors.first?.contains(reason) == true, "\(errors)")
            #expect(receiver.requests.isEmpty, "a refused target must see no request")
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }

    @Test func anAllowlistedLoopbackTargetIsServed() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("internal", url: receiver.url, on: database)
            let daemon = try DaemonProcess(["run"], environment: DaemonLifecycleTests.environment(database))
            try await ConsentWriter(database: database).set("allowed", "email", .granted)
            try await receiver.waitForRequests(count: 1)
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }
}
