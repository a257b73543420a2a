import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Signing secrets: rotation with an overlap, encryption at rest, master-key rotation.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct SecretTests {
    /// True when `request`'s `webhook-signature` verifies with `secret` alone.
    static func verifies(_ request: WebhookReceiver.Request, with secret: SigningSecret) -> Bool {
        do {
            try WebhookSigner.verify(
                id: request.headers["webhook-id"],
                timestamp: request.headers["webhook-timestamp"],
                signatureHeader: request.headers["webhook-signature"],
                body: request.body,
                secrets: [secret]
            )
            return true
        } catch {
            return false
        }
    }

    static func signatureCount(_ request: WebhookReceiver.Request) -> Int {
        (request.headers["webhook-signature"] ?? "").split(separator: " ").count
    }

    static func storedSecrets(_ database: TestDatabase) async throws -> [String] {
        try await database.withConnection { connection in
            try await connection.query("SELECT secret FROM consent_sync.subscriber_secrets ORDER BY id").map { try $0.string("secret") }
        }
    }

    /// Every row of every table in schema `consent_sync` as text: what a `pg_dump` would show.
    static func dump(_ database: TestDatabase) async throws -> String {
        try await database.withConnection { connection in
            let tables = try await connection.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'consent_sync' AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
            var text = ""
            for table in tables {
                let name = try connection.escapeIdentifier(try table.string("table_name"))
                for row in try await connection.query("SELECT t::text AS row FROM consent_sync.\(name) t") {
                    text += try row.string("row") + "\n"
                }
            }
            return text
        }
    }

    /// The forms in which a secret's key material could appear in the database.
    static func traces(of secret: SigningSecret) -> [String] {
        [secret.encoded, Data(secret.key).base64EncodedString(), secret.key.map { String(format: "%02x", $0) }.joined()]
    }

    static func pendingDeliveries(_ database: TestDatabase, subscriber: String) async throws -> Int {
        try await database.withConnection { connection in
            try await connection.query(
                """
                SELECT count(*) AS n FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                WHERE s.name = $1 AND d.state = 'pending'
                """,
                [subscriber]
            ).first?.int("n") ?? -1
        }
    }

    // MARK: - Rotation

    /// When the relay started the attempt that `request` is (it signs with the secrets active
    /// at that moment), from its own record; matched by the webhook-id, which ends in the
    /// delivery's id. Waits until the attempt's result is written.
    static func startedAt(_ request: WebhookReceiver.Request, on database: TestDatabase) async throws -> Date {
        let webhookID = try #require(request.headers["webhook-id"])
        let delivery = try #require(webhookID.split(separator: "_").last.flatMap { Int64($0) }, "webhook-id \(webhookID)")
        var started: Double?
        try await waitUntil("the relay recorded delivery \(delivery)'s attempt") {
            started = try await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT extract(epoch FROM started_at)::double precision AS t FROM consent_sync.attempts
                    WHERE delivery_id = $1::bigint AND status = 200 ORDER BY attempt DESC LIMIT 1
                    """,
                    [String(delivery)]
                ).first?.double("t")
            }
            return started != nil
        }
        return Date(timeIntervalSince1970: try #require(started))
    }

    @Test func duringTheOverlapBothSecretsVerifyAndAfterItOnlyTheNewOne() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let keyring = SecretKeyring(current: .generate())
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            let old = try await RelayFixture.addSubscriber("crm", url: receiver.url, keyring: keyring, on: database)
            try await RelayFixture.withRelay(on: database, keyring: keyring) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set("before", "email", .granted)
                let first = try await receiver.waitForRequests(count: 1)[0]
                #expect(Self.signatureCount(first) == 1)
                #expect(Self.verifies(first, with: old))

                // A long overlap, so that a loaded machine has ample time to pick the rotation
                // up; the test does not wait it out (see below).
                let new = SigningSecret.generate()
                let rotation = try await database.withConnection { connection in
                    try await SubscriberStore.rotateSecret(name: "crm", to: new, overlap: .seconds(60), keyring: keyring, on: connection)
                }
                #expect(rotation.expiring == 1)
                let expiresAt = try #require(rotation.expiresAt)
                // The relay re-reads its subscribers on the rotation's NOTIFY, at the latest
                // within a poll interval (200 ms here); on a loaded machine a change may still
                // go out before that, signed as before. Write until one carries both signatures
                // (for half the overlap at most).
                var sent = 1
                // Writes one change at a time until its request carries `signatures` signatures,
                // each request verifying with `secret`; nil when `until` comes first.
                func writeUntilSigned(_ signatures: Int, verifyingWith secret: SigningSecret, until: Date) async throws -> WebhookReceiver.Request? {
                    while Date() < until {
                        try await writer.set("w\(sent)", "email", .granted)
                        sent += 1
                        let request = try await receiver.waitForRequests(count: sent)[sent - 1]
                        #expect(Self.verifies(request, with: secret), "request \(sent) must verify with the secret every receiver still knows")
                        if Self.signatureCount(request) == signatures { return request }
                    }
                    return nil
                }
                let during = try await writeUntilSigned(2, verifyingWith: old, until: expiresAt - 30)
                let both = try #require(during, "no request signed with both secrets during the overlap")
                // Signed within the overlap by the relay's own clock: the start it recorded (it
                // signs then), not when this busy process's receiver got round to the request.
                let signedAt = try await Self.startedAt(both, on: database)
                #expect(signedAt < expiresAt, "signed with both secrets at \(signedAt), after the overlap ended at \(expiresAt)")
                // A receiver that knows only the old secret, and one that knows only the new one.
                #expect(Self.verifies(both, with: old))
                #expect(Self.verifies(both, with: new))

                // End the overlap now instead of waiting a minute: the old secret's expiry moves
                // into the past, as the clock would take it there, and the relay is told to
                // re-read its subscribers, as after a rotation. (That it signs by the expiry at
                // the moment it starts an attempt is SignatureTests' signingSecrets(at:).)
                let moved = try await database.withConnection { connection in
                    let moved = try await connection.query(
                        "UPDATE consent_sync.subscriber_secrets SET expires_at = now() WHERE expires_at IS NOT NULL"
                    ).affectedRows
                    try await connection.query("SELECT pg_notify('consent_sync', 'subscribers')")
                    return moved
                }
                #expect(moved == 1)
                // Until the relay has re-read them, a change may still go out signed as before;
                // write until one carries the new signature alone.
                let after = try await writeUntilSigned(1, verifyingWith: new, until: Date() + 30)
                let only = try #require(after, "the relay still signs with the expired secret")
                #expect(Self.verifies(only, with: new))
                #expect(!Self.verifies(only, with: old))
                // And it never goes back to the expired one.
                try await writer.set("later", "email", .granted)
                let later = try await receiver.waitForRequests(count: sent + 1)[sent]
                #expect(Self.signatureCount(later) == 1)
                #expect(Self.verifies(later, with: new))
                #expect(!Self.verifies(later, with: old))
                // The relay deletes the expired secret.
                try await waitUntil("the expired secret is deleted") {
                    try await Self.storedSecrets(database).count == 1
                }
            }
        }
    }

    @Test func rotationWithoutOverlapReplacesTheSecretAtOnceAndTheListingCountsActiveSecrets() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let keyring = SecretKeyring(current: .generate())
            try await RelayFixture.addSubscriber("crm", url: "https://crm.example.com/hooks", keyring: keyring, on: database)
            try await database.withConnection { connection in
                let day = try await SubscriberStore.rotateSecret(name: "crm", to: .generate(), overlap: .seconds(86_400), keyring: keyring, on: connection)
                #expect(day.expiring == 1)
                let listing = try #require(try await SubscriberStore.listing(on: connection).first)
                #expect(listing.activeSecrets == 2)
                let expiry = try #require(listing.nextSecretExpiry)
                #expect(abs(expiry.timeIntervalSinceNow - 86_400) < 60)

                // A second rotation does not extend the first secret's expiry; with no overlap
                // every earlier secret goes at once.
                let newest = SigningSecret.generate()
                let now = try await SubscriberStore.rotateSecret(name: "crm", to: newest, overlap: .zero, keyring: keyring, on: connection)
                #expect(now.expiring == 0)
                #expect(now.expiresAt == nil)
                #expect(now.dropped == 2)
                let after = try #require(try await SubscriberStore.listing(on: connection).first)
                #expect(after.activeSecrets == 1)
                #expect(after.nextSecretExpiry == nil)
                let subscribers = try await SubscriberStore.all(on: connection, keyring: keyring)
                #expect(subscribers.first?.secrets == [newest])

                let unknown = await errorThrown {
                    try await SubscriberStore.rotateSecret(name: "nosuch", to: .generate(), overlap: .zero, keyring: keyring, on: connection)
                }
                #expect((unknown as? SubscriberStateError)?.code == .unknownSubscriber)
            }
        }
    }

    // MARK: - Encryption at rest

    @Test func storedSecretsAreEncryptedAndBoundToTheirSubscriber() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let key = MasterKey.generate()
            let keyring = SecretKeyring(current: key)
            let crm = try await RelayFixture.addSubscriber("crm", url: "https://crm.example.com/hooks", keyring: keyring, on: database)
            let email = try await RelayFixture.addSubscriber("email", url: "https://mail.example.com/hooks", keyring: keyring, on: database)
            let rotated = SigningSecret.generate()
            try await database.withConnection { connection in
                try await SubscriberStore.rotateSecret(name: "crm", to: rotated, overlap: .seconds(3600), keyring: keyring, on: connection)
            }

            let stored = try await Self.storedSecrets(database)
            #expect(stored.count == 3)
            #expect(stored.allSatisfy { $0.hasPrefix("enc:v1:\(key.id):") }, "\(stored)")
            let dump = try await Self.dump(database)
            #expect(!dump.contains("whsec_"))
            for secret in [crm, email, rotated] {
                for trace in Self.traces(of: secret) {
                    #expect(!dump.contains(trace), "key material in the database")
                }
            }

            try await database.withConnection { connection in
                let subscribers = try await SubscriberStore.all(on: connection, keyring: keyring)
                #expect(subscribers.map(\.name) == ["crm", "email"])
                #expect(subscribers.first?.secrets == [crm, rotated])
                #expect(subscribers.last?.secrets == [email])

                // Without the key: an error that names the subscriber and the key, never a secret.
                let missing = await errorThrown { try await SubscriberStore.all(on: connection, keyring: SecretKeyring(current: .generate())) }
                let missingError = try #require(missing as? SecretKeyringError)
                #expect(missingError.code == .keyNotConfigured)
                #expect("\(missingError)".contains("subscriber 'crm' has a secret encrypted with key \(key.id), which is not configured"), "\(missingError)")

                // A ciphertext copied to another subscriber does not decrypt there.
                try await connection.query(
                    """
                    UPDATE consent_sync.subscriber_secrets SET secret = (
                        SELECT ss.secret FROM consent_sync.subscriber_secrets ss JOIN consent_sync.subscribers s ON s.id = ss.subscriber_id
                        WHERE s.name = 'crm' ORDER BY ss.id LIMIT 1)
                    WHERE subscriber_id = (SELECT id FROM consent_sync.subscribers WHERE name = 'email')
                    """
                )
                let moved = await errorThrown { try await SubscriberStore.all(on: connection, keyring: keyring) }
                let movedError = try #require(moved as? SecretKeyringError)
                #expect(movedError.code == .decryptionFailed)
                #expect("\(movedError)".contains("subscriber 'email' has a secret that does not decrypt with key \(key.id)"), "\(movedError)")
            }
        }
    }

    @Test func withoutAMasterKeyNothingIsStoredUnlessPlaintextIsAllowed() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                let refused = await errorThrown {
                    try await SubscriberStore.add(
                        .init(name: "crm", url: "https://crm.example.com/hooks", secret: .generate()),
                        keyring: SecretKeyring(current: nil),
                        on: connection
                    )
                }
                #expect((refused as? SecretKeyringError)?.code == .noMasterKey)
                let listing = try await SubscriberStore.listing(on: connection)
                #expect(listing.isEmpty)

                try await SubscriberStore.add(.init(name: "legacy", url: "https://legacy.example.com/hooks", secret: .generate()), keyring: .plaintextOnly, on: connection)
                let before = try await Self.storedSecrets(database)
                let rotation = await errorThrown {
                    try await SubscriberStore.rotateSecret(name: "legacy", to: .generate(), overlap: .zero, keyring: SecretKeyring(current: nil), on: connection)
                }
                #expect((rotation as? SecretKeyringError)?.code == .noMasterKey)
                let after = try await Self.storedSecrets(database)
                #expect(after == before, "nothing changed")
            }
        }
    }

    @Test func aRunningRelayNeverSignsWithASecretItCannotRead() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let (old, new) = (MasterKey.generate(), MasterKey.generate())
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            let late = try await WebhookReceiver.start()
            defer { Task { await late.stop() } }
            let secret = try await RelayFixture.addSubscriber("crm", url: receiver.url, keyring: SecretKeyring(current: old), on: database)
            try await RelayFixture.withRelay(on: database, keyring: SecretKeyring(current: old)) { _ in
                let writer = ConsentWriter(database: database)
                try await writer.set("a", "email", .granted)
                #expect(Self.verifies(try await receiver.waitForRequests(count: 1)[0], with: secret))

                // Someone re-encrypts with a key this relay was not given, and registers a
                // subscriber under it.
                let reencryption = try await database.withConnection { connection in
                    try await SubscriberStore.reencryptSecrets(keyring: SecretKeyring(current: new, previous: [old]), on: connection)
                }
                #expect(reencryption.reencrypted == 1)
                try await RelayFixture.addSubscriber("late", url: late.url, keyring: SecretKeyring(current: new), on: database)
                try await Task.sleep(for: subscriberRefresh)

                try await writer.set("b", "email", .granted)
                // crm keeps the secret read before: still correctly signed.
                let second = try await receiver.waitForRequests(count: 2)[1]
                #expect(Self.verifies(second, with: secret))
                // late was never readable: nothing is sent to it; its change waits.
                try await Task.sleep(for: subscriberRefresh)
                #expect(late.requests.isEmpty)
                #expect(try await Self.pendingDeliveries(database, subscriber: "late") == 1)
            }
        }
    }

    @Test func keysRotateReencryptsEverythingInOneGoAndIsIdempotent() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let (old, new) = (MasterKey.generate(), MasterKey.generate())
            let plaintext = try await RelayFixture.addSubscriber("legacy", url: "https://legacy.example.com/hooks", on: database)
            let encrypted = try await RelayFixture.addSubscriber("crm", url: "https://crm.example.com/hooks", keyring: SecretKeyring(current: old), on: database)
            #expect(try await Self.dump(database).contains(plaintext.encoded), "stored as plaintext by the default keyring")
            try await database.withConnection { connection in
                // The old key is missing: nothing changes.
                let failed = await errorThrown { try await SubscriberStore.reencryptSecrets(keyring: SecretKeyring(current: new), on: connection) }
                #expect((failed as? SecretKeyringError)?.code == .keyNotConfigured)
                #expect(try await SubscriberStore.keyUsage(on: connection).map(\.keyID) == [old.id, nil])

                let rotating = SecretKeyring(current: new, previous: [old])
                let first = try await SubscriberStore.reencryptSecrets(keyring: rotating, on: connection)
                #expect(first.reencrypted == 2)
                #expect(first.unchanged == 0)
                #expect(Set(first.previousKeys) == [old.id, "plaintext"])
                let again = try await SubscriberStore.reencryptSecrets(keyring: rotating, on: connection)
                #expect(again.reencrypted == 0)
                #expect(again.unchanged == 2)

                let usage = try await SubscriberStore.keyUsage(on: connection)
                #expect(usage.map(\.keyID) == [new.id])
                #expect(usage.first?.secrets == 2)
                #expect(usage.first?.subscribers == ["crm", "legacy"])
                let subscribers = try await SubscriberStore.all(on: connection, keyring: SecretKeyring(current: new))
                #expect(subscribers.map(\.secrets) == [[encrypted], [plaintext]])
            }
            #expect(!(try await Self.dump(database)).contains("whsec_"))
        }
    }

    @Test func version3SecretsMoveToTheirOwnTable() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let secret = SigningSecret.generate()
            try await database.withConnection { connection in
                try await connection.execute("CREATE SCHEMA consent_sync")
                try await connection.execute(
                    "CREATE TABLE consent_sync.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for migration in Migrations.all where migration.version <= 3 {
                    try await connection.execute(migration.sql)
                    try await connection.query("INSERT INTO consent_sync.schema_migrations (version, name) VALUES ($1::integer, $2)", [String(migration.version), migration.name])
                }
                try await connection.query(
                    "INSERT INTO consent_sync.subscribers (name, url, secrets) VALUES ('crm', 'https://crm.example.com/hooks', ARRAY[$1])",
                    [secret.encoded]
                )
                try await Migrator.migrate(connection, logger: RelayFixture.logger)
                let columns = try await connection.query(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'consent_sync' AND table_name = 'subscribers' AND column_name = 'secrets'"
                )
                #expect(columns.isEmpty, "the plaintext column is gone")
                let subscribers = try await SubscriberStore.all(on: connection, keyring: SecretKeyring(current: .generate()))
                #expect(subscribers.first?.secrets == [secret])
            }
        }
    }

    // MARK: - The command line and the daemon

    static func environment(_ database: TestDatabase, _ extra: [String: String] = [:]) -> [String: String] {
        var environment = database.daemonEnvironment
        environment["CONSENT_SYNC_RELAY_POLL_INTERVAL_MS"] = "200"
        environment["CONSENT_SYNC_RELAY_JANITOR_INTERVAL_MS"] = "200"
        environment["CONSENT_SYNC_OPS_ENABLED"] = "false"
        environment["CONSENT_SYNC_LOG_LEVEL"] = "info"
        environment["USER"] = "tester"
        return environment.merging(extra) { $1 }
    }

    /// Runs `body` with a fresh private directory, removed afterwards.
    static func withDirectory<T>(_ body: (URL) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("consent-sync-secrets-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: directory) }
        return try await body(directory)
    }

    static func write(_ text: String, to directory: URL, _ name: String) throws -> String {
        let path = directory.appendingPathComponent(name).path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .withoutOverwriting)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        return path
    }

    @Test func theDaemonRefusesAWrongMasterKeyAtStartAndKeysRotateMovesToANewOne() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await Self.withDirectory { directory in
                let (right, wrong) = (MasterKey.generate(), MasterKey.generate())
                let rightFile = try Self.write(right.fileContents, to: directory, "right.key")
                let wrongFile = try Self.write(wrong.fileContents, to: directory, "wrong.key")
                let secret = SigningSecret.generate()
                let secretFile = try Self.write(secret.encoded + "\n", to: directory, "crm.secret")
                let receiver = try await WebhookReceiver.start()
                defer { Task { await receiver.stop() } }
                let withRight = Self.environment(database, ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": rightFile])
                let withWrong = Self.environment(database, ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": wrongFile])

                let add = try await DaemonProcess.run(["subscriber", "add", "crm", "--url", receiver.url, "--secret-file", secretFile], environment: withRight)
                #expect(add.status == 0, "\(add.stderr)")
                let dump = try await Self.dump(database)
                #expect(!dump.contains("whsec_"))
                for trace in Self.traces(of: secret) { #expect(!dump.contains(trace), "key material in the database") }
                #expect(try await Self.storedSecrets(database).first?.hasPrefix("enc:v1:\(right.id):") == true)

                try await ConsentWriter(database: database).set("customer-1", "email", .granted)

                // The wrong key, or none: a clear error, exit 78, nothing sent.
                let refused = try await DaemonProcess.run(["run"], environment: withWrong, timeout: .seconds(30))
                #expect(refused.status == 78, "\(refused.stderr)")
                #expect(refused.stderr.contains("subscriber 'crm' has a secret encrypted with key \(right.id), which is not configured (configured: \(wrong.id)): set secrets.master_key_file"), "\(refused.stderr)")
                #expect(!refused.stderr.contains("relay connected"))
                let keyless = try await DaemonProcess.run(["run"], environment: Self.environment(database), timeout: .seconds(30))
                #expect(keyless.status == 78, "\(keyless.stderr)")
                #expect(keyless.stderr.contains("which is not configured (no master key is configured)"), "\(keyless.stderr)")
                try await Task.sleep(for: .milliseconds(300))
                #expect(receiver.requests.isEmpty, "signed with a wrong secret")

                // The right key: delivered, correctly signed.
                let daemon = try DaemonProcess(["run"], environment: withRight)
                let first = try await receiver.waitForRequests(count: 1, timeout: .seconds(20))[0]
                #expect(Self.verifies(first, with: secret))
                daemon.signal(SIGTERM)
                #expect(try await daemon.waitForExit() == 0)

                // Master-key rotation: new key current, old one previous; then only the new one.
                let newKey = MasterKey.generate()
                let newFile = try Self.write(newKey.fileContents, to: directory, "new.key")
                let rotating = Self.environment(database, [
                    "CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": newFile,
                    "CONSENT_SYNC_SECRETS_PREVIOUS_MASTER_KEY_FILES": rightFile,
                ])
                let rotate = try await DaemonProcess.run(["keys", "rotate"], environment: rotating)
                #expect(rotate.status == 0, "\(rotate.stderr)")
                #expect(rotate.stdout.contains("re-encrypted 1 signing secret(s) with key \(newKey.id) (from \(right.id))"), "\(rotate.stdout)")
                let again = try await DaemonProcess.run(["keys", "rotate"], environment: rotating)
                #expect(again.stdout.contains("re-encrypted 0 signing secret(s) with key \(newKey.id); 1 already used it"), "\(again.stdout)")
                let status = try await DaemonProcess.run(["keys", "status"], environment: Self.environment(database, ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": newFile]))
                #expect(status.status == 0, "\(status.stderr)")
                #expect(status.stdout.contains("current key: \(newKey.id)"), "\(status.stdout)")

                let onlyNew = Self.environment(database, ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": newFile])
                let restarted = try DaemonProcess(["run"], environment: onlyNew)
                try await restarted.waitForLog("relay connected")
                try await ConsentWriter(database: database).set("customer-2", "email", .granted)
                let second = try await receiver.waitForRequests(count: 2, timeout: .seconds(20))[1]
                #expect(Self.verifies(second, with: secret))
                restarted.signal(SIGTERM)
                #expect(try await restarted.waitForExit() == 0)
                #expect(!restarted.stderr.contains("unencrypted"))

                let oldOnly = try await DaemonProcess.run(["run"], environment: withRight, timeout: .seconds(30))
                #expect(oldOnly.status == 78, "the old key is no longer enough: \(oldOnly.stderr)")

                for output in [add.stdout, add.stderr, refused.stderr, rotate.stdout, rotate.stderr, status.stdout, daemon.stderr, restarted.stderr] {
                    #expect(!output.contains("whsec_"), "a secret was printed")
                    for key in [right, wrong, newKey] {
                        #expect(!output.contains(key.fileContents.trimmingCharacters(in: .newlines)), "a master key was printed")
                    }
                }
            }
        }
    }

    @Test func theCommandsRefuseToStorePlaintextAndRotateShowingNoSecrets() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await Self.withDirectory { directory in
                let key = MasterKey.generate()
                let keyFile = try Self.write(key.fileContents, to: directory, "master.key")
                let add = ["subscriber", "add", "crm", "--url", "https://crm.example.com/hooks"]

                let refused = try await DaemonProcess.run(add, environment: Self.environment(database))
                #expect(refused.status == 78, "\(refused)")
                #expect(refused.stderr.contains("no master key is configured to encrypt signing secrets"), "\(refused.stderr)")
                #expect(try await Self.storedSecrets(database).isEmpty)

                let plain = try await DaemonProcess.run(add, environment: Self.environment(database, ["CONSENT_SYNC_SECRETS_ALLOW_PLAINTEXT": "true"]))
                #expect(plain.status == 0, "\(plain.stderr)")
                #expect(try await Self.storedSecrets(database).first?.hasPrefix("whsec_") == true, "plaintext, as explicitly allowed")

                let environment = Self.environment(database, ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": keyFile])
                let rotate = try await DaemonProcess.run(["subscriber", "rotate-secret", "crm", "--overlap", "2h"], environment: environment)
                #expect(rotate.status == 0, "\(rotate.stderr)")
                let printed = try #require(rotate.stdout.split(separator: "\n").first { $0.hasPrefix("whsec_") })
                let newSecret = try SigningSecret(parsing: String(printed))
                #expect(rotate.stdout.contains("the previous secret stays valid until "), "\(rotate.stdout)")
                #expect(rotate.stderr.contains("subscriber signing secret rotated"), "\(rotate.stderr)")
                #expect(!rotate.stderr.contains("whsec_"))
                let stored = try await Self.storedSecrets(database)
                #expect(stored.count == 2)
                #expect(stored.last?.hasPrefix("enc:v1:\(key.id):") == true)

                let list = try await DaemonProcess.run(["subscriber", "list"], environment: environment)
                #expect(list.status == 0, "\(list.stderr)")
                #expect(list.stdout.contains("SECRETS"))
                let line = try #require(list.stdout.split(separator: "\n").first { $0.hasPrefix("crm ") })
                #expect(line.contains("2 (next expires "), "\(line)")
                #expect(!list.stdout.contains("whsec_") && !list.stdout.contains("enc:v1"))

                let badOverlap = try await DaemonProcess.run(["subscriber", "rotate-secret", "crm", "--overlap", "soon"], environment: environment)
                #expect(badOverlap.status == 64)
                #expect(badOverlap.stderr.contains("--overlap 'soon' is not a duration"), "\(badOverlap.stderr)")

                let now = try await DaemonProcess.run(["subscriber", "rotate-secret", "crm", "--overlap", "0", "--secret-file", try Self.write(newSecret.encoded, to: directory, "s")], environment: environment)
                #expect(now.status == 0, "\(now.stderr)")
                #expect(!now.stdout.contains("whsec_"), "a secret from a file is not printed")
                #expect(now.stdout.contains("requests carry only the new signature"))
                let remaining = try await Self.storedSecrets(database)
                #expect(remaining.count == 1)
                #expect(remaining.allSatisfy { $0.hasPrefix("enc:v1:") })
            }
        }
    }

    @Test func checkConfigShowsKeyFilesAndIDsAndRefusesBadKeyFiles() async throws {
        try await Self.withDirectory { directory in
            let (current, previous) = (MasterKey.generate(), MasterKey.generate())
            let currentFile = try Self.write(current.fileContents, to: directory, "current.key")
            let previousFile = try Self.write(previous.fileContents, to: directory, "previous.key")
            let good = try await DaemonProcess.run(["check-config"], environment: [
                "CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": currentFile,
                "CONSENT_SYNC_SECRETS_PREVIOUS_MASTER_KEY_FILES": previousFile,
            ])
            #expect(good.status == 0, "\(good)")
            #expect(good.stdout.contains("\"\(currentFile)\" (key \(current.id))"), "\(good.stdout)")
            #expect(good.stdout.contains("\"\(previousFile)\" (keys \(previous.id))"), "\(good.stdout)")
            for key in [current, previous] {
                #expect(!good.stdout.contains(key.fileContents.trimmingCharacters(in: .newlines)))
            }

            let short = try Self.write(Data(repeating: 7, count: 16).base64EncodedString(), to: directory, "short.key")
            let bad = try await DaemonProcess.run(["check-config"], environment: ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": short])
            #expect(bad.status == 78)
            #expect(bad.stderr.contains("secrets.master_key_file"), "\(bad.stderr)")
            #expect(bad.stderr.contains("holds a 16-byte key, too short"), "\(bad.stderr)")
            #expect(!bad.stderr.contains(Data(repeating: 7, count: 16).base64EncodedString()))

            let missing = try await DaemonProcess.run(["run"], environment: ["CONSENT_SYNC_SECRETS_MASTER_KEY_FILE": directory.appendingPathComponent("nosuch.key").path])
            #expect(missing.status == 78, "a missing key file stops the daemon before it starts: \(missing.stderr)")
            #expect(missing.stderr.contains("cannot read"), "\(missing.stderr)")
        }
    }
}
