import ConsentSyncCore
import ConsentSyncPostgres
import Foundation
import Logging
import Synchronization

extension SubscriberStore {
    /// What `subscriber rotate-secret` did.
    public struct SecretRotation: Sendable, Equatable {
        public var subscriber: String
        /// Earlier secrets still active until ``expiresAt`` (0 with no overlap).
        public var expiring: Int
        /// When the last of them expires; `nil` when none is left.
        public var expiresAt: Date?
        /// Expired secrets deleted.
        public var dropped: Int
    }

    /// What `keys rotate` did.
    public struct Reencryption: Sendable, Equatable {
        /// Secrets now encrypted with the current key that were not before (other key or plaintext).
        public var reencrypted: Int
        /// Secrets that already were.
        public var unchanged: Int
        /// Expired secrets deleted on the way.
        public var dropped: Int
        /// The ids of the keys the re-encrypted secrets were under (`plaintext` for unencrypted ones).
        public var previousKeys: [String]
    }

    /// How many active secrets each key (or plaintext) protects: `keys status`.
    public struct KeyUsage: Sendable, Equatable {
        /// `nil` for plaintext secrets.
        public var keyID: String?
        public var secrets: Int
        public var subscribers: [String]
    }

    /// Gives the subscriber named `name` a new secret and lets its active ones expire after
    /// `overlap` (at once for zero): until then every request carries one signature per active
    /// secret, so receivers can switch to the new secret at their own pace. A secret that was
    /// already due to expire sooner keeps its earlier expiry. Expired secrets are deleted.
    ///
    /// Running daemons pick the change up at once (NOTIFY) or within `relay.poll_interval_ms`.
    /// - Throws: ``SubscriberStateError`` (`unknownSubscriber`) for an unknown name,
    ///   ``SecretKeyringError`` when `keyring` may not store the secret; nothing changes then.
    @discardableResult
    public static func rotateSecret(
        name: String,
        to secret: SigningSecret,
        overlap: Duration,
        keyring: SecretKeyring,
        on connection: PostgresConnection
    ) async throws -> SecretRotation {
        precondition(overlap >= .zero, "a negative overlap")
        return try await connection.withTransaction { connection in
            let rows = try await connection.query("SELECT id FROM consent_sync.subscribers WHERE name = $1 FOR UPDATE", [name])
            guard let row = rows.first else {
                throw SubscriberStateError(code: .unknownSubscriber, message: "no subscriber named '\(name.prefix(80))'")
            }
            let id = try row.int64("id")
            let sealed = try keyring.seal(secret, subscriberID: id)
            let expiring = try await connection.query(
                """
                UPDATE consent_sync.subscriber_secrets
                SET expires_at = least(coalesce(expires_at, 'infinity'), now() + $2::bigint * interval '1 millisecond')
                WHERE subscriber_id = $1::bigint AND (expires_at IS NULL OR expires_at > now())
                RETURNING extract(epoch FROM expires_at)::double precision AS expires_at, expires_at > now() AS active
                """,
                [String(id), String(overlap.milliseconds)]
            )
            let dropped = try await connection.query(
                "DELETE FROM consent_sync.subscriber_secrets WHERE subscriber_id = $1::bigint AND expires_at <= now()",
                [String(id)]
            ).affectedRows
            try await connection.query(
                "INSERT INTO consent_sync.subscriber_secrets (subscriber_id, secret) VALUES ($1::bigint, $2)",
                [String(id), sealed]
            )
            try await connection.query("UPDATE consent_sync.subscribers SET updated_at = now() WHERE id = $1::bigint", [String(id)])
            // Wakes running relays, which then re-read the subscribers.
            try await RelayWakeup.subscribers.send(on: connection)
            let stillActive = try expiring.filter { try $0.bool("active") }
            let latest = try stillActive.map { try $0.double("expires_at") }.max()
            return SecretRotation(
                subscriber: name,
                expiring: stillActive.count,
                expiresAt: latest.map(Date.init(timeIntervalSince1970:)),
                dropped: dropped
            )
        }
    }

    /// Re-encrypts every active secret that is not yet under the current master key (under a
    /// previous key, or plaintext) with it, in one transaction: all or nothing. Idempotent.
    /// Deletes expired secrets too.
    ///
    /// Afterwards no secret needs a previous key any more, so the previous keys can be
    /// removed from the configuration.
    /// - Throws: ``SecretKeyringError`` when no master key is configured, or for the first
    ///   secret that cannot be decrypted (nothing is changed then).
    public static func reencryptSecrets(keyring: SecretKeyring, on connection: PostgresConnection) async throws -> Reencryption {
        guard keyring.current != nil else { throw SecretKeyringError(code: .noMasterKey) }
        return try await connection.withTransaction { connection in
            // Readers (running daemons) go on; other writers wait, so that no secret sealed
            // with an old key slips in while this runs.
            try await connection.query("LOCK TABLE consent_sync.subscriber_secrets IN SHARE ROW EXCLUSIVE MODE")
            let dropped = try await connection.query("DELETE FROM consent_sync.subscriber_secrets WHERE expires_at <= now()").affectedRows
            let rows = try await connection.query(
                """
                SELECT ss.id, ss.subscriber_id, s.name, ss.secret
                FROM consent_sync.subscriber_secrets ss JOIN consent_sync.subscribers s ON s.id = ss.subscriber_id
                ORDER BY ss.id
                """
            )
            var result = Reencryption(reencrypted: 0, unchanged: 0, dropped: dropped, previousKeys: [])
            for row in rows {
                let subscriberID = try row.int64("subscriber_id")
                let name = try row.string("name")
                let stored = try row.string("secret")
                let secret: SigningSecret
                do {
                    secret = try keyring.open(stored, subscriberID: subscriberID)
                } catch let error as SecretKeyringError {
                    throw error.about(subscriber: name)
                }
                if keyring.isSealedWithCurrentKey(stored) {
                    result.unchanged += 1
                    continue
                }
                let previous = SecretKeyring.keyID(of: stored) ?? "plaintext"
                if !result.previousKeys.contains(previous) { result.previousKeys.append(previous) }
                try await connection.query(
                    "UPDATE consent_sync.subscriber_secrets SET secret = $2 WHERE id = $1::bigint",
                    [try row.string("id"), try keyring.seal(secret, subscriberID: subscriberID)]
                )
                result.reencrypted += 1
            }
            // Pseudonym keys are sealed the same way; they never change (the ids receivers
            // know must stay stable), only their encryption does.
            let pseudonymKeys = try await connection.query(
                "SELECT id, name, pseudonym_key FROM consent_sync.subscribers WHERE pseudonym_key IS NOT NULL ORDER BY id FOR UPDATE"
            )
            for row in pseudonymKeys {
                let subscriberID = try row.int64("id")
                let stored = try row.string("pseudonym_key")
                let key: SigningSecret
                do {
                    key = try keyring.open(stored, subscriberID: subscriberID)
                } catch let error as SecretKeyringError {
                    throw error.about(subscriber: try row.string("name"))
                }
                guard !keyring.isSealedWithCurrentKey(stored) else { continue }
                let previous = SecretKeyring.keyID(of: stored) ?? "plaintext"
                if !result.previousKeys.contains(previous) { result.previousKeys.append(previous) }
                try await connection.query(
                    "UPDATE consent_sync.subscribers SET pseudonym_key = $2 WHERE id = $1::bigint",
                    [String(subscriberID), try keyring.seal(key, subscriberID: subscriberID)]
                )
                result.reencrypted += 1
            }
            if result.reencrypted > 0 {
                try await RelayWakeup.subscribers.send(on: connection)
            }
            return result
        }
    }

    /// Which keys the active secrets are encrypted with, and how many are plaintext.
    public static func keyUsage(on connection: PostgresConnection) async throws -> [KeyUsage] {
        let rows = try await connection.query(
            """
            SELECT ss.secret, s.name
            FROM consent_sync.subscriber_secrets ss JOIN consent_sync.subscribers s ON s.id = ss.subscriber_id
            WHERE ss.expires_at IS NULL OR ss.expires_at > now()
            ORDER BY s.name, ss.id
            """
        )
        var usage: [KeyUsage] = []
        for row in rows {
            let keyID = SecretKeyring.keyID(of: try row.string("secret"))
            let name = try row.string("name")
            if let index = usage.firstIndex(where: { $0.keyID == keyID }) {
                usage[index].secrets += 1
                if usage[index].subscribers.last != name { usage[index].subscribers.append(name) }
            } else {
                usage.append(KeyUsage(keyID: keyID, secrets: 1, subscribers: [name]))
            }
        }
        return usage
    }

    /// Deletes every expired secret; returns how many.
    @discardableResult
    public static func dropExpiredSecrets(on connection: PostgresConnection) async throws -> Int {
        try await connection.query("DELETE FROM consent_sync.subscriber_secrets WHERE expires_at <= now()").affectedRows
    }

    /// For the relay: every subscriber, by id, with its active secrets decrypted.
    ///
    /// A subscriber whose secrets cannot be read (a master key this daemon lacks, an altered
    /// ciphertext) never gets a request signed with anything else: it keeps the secrets it
    /// had in `previous` when it was readable before, so that a mistake made while the
    /// daemon runs does not stop its deliveries, and is left out (its deliveries wait)
    /// otherwise. Either way an error is logged, at most once a minute per subscriber.
    /// Expired secrets are deleted when there are any.
    public static func all(
        on connection: PostgresConnection,
        keyring: SecretKeyring,
        keeping previous: [Int64: Subscriber],
        logger: Logger
    ) async throws -> [Int64: Subscriber] {
        let (loaded, anyExpired) = try await load(on: connection)
        if anyExpired {
            try await dropExpiredSecrets(on: connection)
        }
        var subscribers: [Int64: Subscriber] = [:]
        for entry in loaded {
            var subscriber = entry.subscriber
            do {
                subscriber = try entry.open(with: keyring)
            } catch {
                let kept = previous[subscriber.id]
                let problem = "\(logger[metadataKey: "instance"] ?? "")/\(subscriber.id)/\(error.code)/\(error.keyID ?? "")"
                if UnreadableSecretReports.shared.shouldReport(problem) {
                    logger.error(
                        kept == nil
                            ? "cannot read a subscriber's signing secret; not sending to it"
                            : "cannot read a subscriber's signing secret; still signing with the secrets read before",
                        metadata: ["subscriber": "\(subscriber.name)", "error": "\(error)"]
                    )
                }
                guard let kept, entry.storedPseudonymKey == nil || kept.pseudonymKey != nil else { continue }
                subscriber.secrets = kept.secrets
                subscriber.secretExpiries = kept.secretExpiries
                subscriber.pseudonymKey = kept.pseudonymKey
            }
            subscribers[subscriber.id] = subscriber
        }
        return subscribers
    }
}

/// Remembers which unreadable secrets were logged when, so that a relay re-reading its
/// subscribers every poll interval logs each problem once a minute, not every time.
final class UnreadableSecretReports: Sendable {
    static let shared = UnreadableSecretReports()
    private let reported = Mutex<[String: ContinuousClock.Instant]>([:])
    private let interval: Duration = .seconds(60)

    /// True when `problem` (which names the relay instance, the subscriber and the error)
    /// was not reported within the last minute.
    func shouldReport(_ key: String) -> Bool {
        let now = ContinuousClock.now
        return reported.withLock { reported in
            if let last = reported[key], now - last < interval { return false }
            reported[key] = now
            return true
        }
    }
}
