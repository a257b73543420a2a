import ConsentSyncCore
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Mutual TLS end to end: subscribers registered with the CLI (`subscriber add --ca-bundle
/// --client-cert --client-key`), a real `consent-sync run`, and an HTTPS receiver on 127.0.0.1
/// that requires a client certificate signed by its CA (certificates made with openssl in the
/// test). `TLSTests` covers the same at the HTTP layer; this shows the daemon carries the
/// settings from the database to the handshake.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct MutualTLSDaemonTests {
    @Test func theDaemonPresentsTheSubscribersClientCertificateAndOneWithoutIsRefused() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await withTLSReceiver { receiver, certificates in
                let masterKeyFile = certificates.path("master.key")
                let secretFile = certificates.path("hook.secret")
                try Self.writePrivate(MasterKey.generate().fileContents, to: masterKeyFile)
                try Self.writePrivate(SigningSecret.generate().encoded + "\n", to: secretFile)
                var environment = commandEnvironment(database)
                environment["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE"] = masterKeyFile
                environment["CONSENT_SYNC_RELAY_POLL_INTERVAL_MS"] = "200"
                environment["CONSENT_SYNC_RETRY_INITIAL_DELAY_MS"] = "200"
                environment["CONSENT_SYNC_OPS_ENABLED"] = "false"

                let withCertificate = try await DaemonProcess.run(
                    [
                        "subscriber", "add", "with-cert", "--url", receiver.url, "--secret-file", secretFile,
                        "--ca-bundle", certificates.path("ca.pem"),
                        "--client-cert", certificates.path("client-a.pem"), "--client-key", certificates.path("client-a.key"),
                    ],
                    environment: environment
                )
                #expect(withCertificate.status == 0, "\(withCertificate.stderr)")
                let withoutCertificate = try await DaemonProcess.run(
                    ["subscriber", "add", "without-cert", "--url", receiver.url, "--secret-file", secretFile, "--ca-bundle", certificates.path("ca.pem")],
                    environment: environment
                )
                #expect(withoutCertificate.status == 0, "\(withoutCertificate.stderr)")

                try await ConsentWriter(database: database).set("customer-1", "email", .granted)
                let daemon = try DaemonProcess(["run"], environment: environment)
                try await daemon.waitForLog("relay connected")

                // Until the first is delivered and the second has failed at least twice.
                let deadline = ContinuousClock.now + .seconds(60)
                var attempts: [Attempt] = []
                while ContinuousClock.now < deadline {
                    attempts = try await Self.attempts(database)
                    let delivered = attempts.contains { $0.subscriber == "with-cert" && $0.status == 200 }
                    let refused = attempts.filter { $0.subscriber == "without-cert" }.count
                    if delivered && refused >= 2 { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                daemon.signal(SIGTERM)
                let status = try await daemon.waitForExit()
                #expect(status == 0, "\(daemon.stderr.suffix(3000))")

                let states = try await Self.states(database)
                print("mTLS through the daemon: \(attempts.map(\.description).joined(separator: "; "))")
                #expect(states["with-cert"] == "delivered", "\(attempts)")
                // The receiver answers with the common name of the certificate it was shown.
                let accepted = attempts.filter { $0.subscriber == "with-cert" && $0.status == 200 }
                #expect(accepted.count == 1, "\(attempts)")
                #expect(accepted.first?.response == "client-a", "\(attempts)")

                // Without a certificate: refused in the handshake, recorded, retried, never delivered.
                #expect(states["without-cert"] == "pending", "\(attempts)")
                let refused = attempts.filter { $0.subscriber == "without-cert" }
                #expect(refused.count >= 2, "\(attempts)")
                #expect(refused.allSatisfy { $0.status == nil && ($0.error ?? "").hasPrefix("TLS failed") }, "\(refused)")
                // Neither the key's path nor any secret goes to the log; the paths are settings, not secrets.
                #expect(!daemon.stderr.contains("whsec_"))
            }
        }
    }

    struct Attempt: CustomStringConvertible {
        var subscriber: String
        var status: Int?
        var error: String?
        var response: String?
        var description: String { "\(subscriber): status \(status.map(String.init) ?? "-") error \(error ?? "-") response \(response ?? "-")" }
    }

    static func attempts(_ database: TestDatabase) async throws -> [Attempt] {
        let rows = try await database.withConnection { connection in
            try await connection.query(
                """
                SELECT s.name, a.status, a.error, a.response_excerpt FROM consent_sync.attempts a
                JOIN consent_sync.deliveries d ON d.id = a.delivery_id JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                ORDER BY a.id
                """
            )
        }
        return try rows.map { row in
            Attempt(subscriber: try row.string("name"), status: row["status"].flatMap { Int($0) }, error: row["error"], response: row["response_excerpt"])
        }
    }

    static func states(_ database: TestDatabase) async throws -> [String: String] {
        let rows = try await database.withConnection { connection in
            try await connection.query(
                "SELECT s.name, d.state FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id"
            )
        }
        return Dictionary(try rows.map { (try $0.string("name"), try $0.string("state")) }, uniquingKeysWith: { first, _ in first })
    }

    static func writePrivate(_ text: String, to path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .withoutOverwriting)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }
}
