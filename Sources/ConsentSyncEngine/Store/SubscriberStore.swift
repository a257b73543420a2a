import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// Reads and writes `consent_sync.subscribers`.
public enum SubscriberStore {
    /// What `subscriber add` takes.
    public struct NewSubscriber: Sendable {
        public var name: String
        public var url: String
        public var secret: SigningSecret
        public var purposes: [String]?
        public var eventTypes: [String]?
        public var tls = Subscriber.TLSFiles()
        public var limits: Subscriber.Limits
        /// Only these captured attributes are sent; `nil` for all.
        public var fields: [String]?
        /// Send a pseudonymous subject id (a new key is generated and stored sealed).
        public var pseudonymous = false
        /// Send only the newest waiting change per subject and purpose.
        public var newestWins = false

        public init(name: String, url: String, secret: SigningSecret, purposes: [String]? = nil, eventTypes: [String]? = nil, limits: Subscriber.Limits = .init()) {
            self.name = name
            self.url = url
            self.secret = secret
            self.purposes = purposes
            self.eventTypes = eventTypes
            self.limits = limits
        }

        /// Checks every field; throws the first problem found.
        public func validate() throws(SubscriberValidationError) {
            try SubscriberValidation.validateName(name)
            try SubscriberValidation.validateURL(url)
            if let purposes { try SubscriberValidation.validatePurposes(purposes) }
            if let eventTypes { try SubscriberValidation.validateEventTypes(eventTypes) }
            if let fields {
                guard !fields.isEmpty, fields.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 63 }) else {
                    throw SubscriberValidationError(field: "fields", reason: "give one or more attribute names (the columns a watch captures), each up to 63 bytes")
                }
            }
            guard (1...10_000).contains(limits.maxInFlight) else {
                throw SubscriberValidationError(field: "max-in-flight", reason: "must be between 1 and 10000")
            }
            guard limits.timeout >= .milliseconds(1), limits.timeout <= .seconds(3600) else {
                throw SubscriberValidationError(field: "timeout", reason: "must be between 1 ms and 1 hour")
            }
            if let rate = limits.ratePerSecond, !(rate > 0 && rate <= 1_000_000) {
                throw SubscriberValidationError(field: "rate-limit", reason: "must be a number of requests per second above 0")
            }
            if let attempts = limits.maxAttempts, !(1...10_000).contains(attempts) {
                throw SubscriberValidationError(field: "max-attempts", reason: "must be between 1 and 10000")
            }
            if let age = limits.maxAge, !(age >= .seconds(1) && age <= .seconds(31_536_000)) {
                throw SubscriberValidationError(field: "max-age", reason: "must be between 1 second and 365 days")
            }
            if (tls.clientCertificatePath == nil) != (tls.clientKeyPath == nil) {
                throw SubscriberValidationError(field: "client-cert", reason: "mutual TLS needs both --client-cert and --client-key")
            }
            for (field, path) in [("ca-bundle", tls.caBundlePath), ("client-cert", tls.clientCertificatePath), ("client-key", tls.clientKeyPath)] {
                if let path, !path.hasPrefix("/") {
                    throw SubscriberValidationError(field: field, reason: "'\(path.prefix(200))' must be an absolute path (the daemon reads it, from its own working directory)")
                }
            }
        }
    }

    /// Registers a subscriber with its first signing secret, stored as `keyring` seals it:
    /// encrypted under the current master key and bound to the new subscriber's id.
    ///
    /// ``SecretKeyring/plaintextOnly`` (the default, for tests) stores `whsec_…` text; the
    /// command line always passes the configured keyring, which refuses to store plaintext
    /// unless `secrets.allow_plaintext` is set.
    /// - Throws: ``SubscriberValidationError`` for a bad field or a taken name,
    ///   ``SecretKeyringError`` (``SecretKeyringError/Code/noMasterKey``) when the secret may
    ///   not be stored; nothing is stored then.
    @discardableResult
    public static func add(_ new: NewSubscriber, keyring: SecretKeyring = .plaintextOnly, on connection: PostgresConnection) async throws -> Int64 {
        try new.validate()
        if keyring.current == nil && !keyring.allowsPlaintext { throw SecretKeyringError(code: .noMasterKey) }
        do {
            return try await connection.withTransaction { connection in
                let rows = try await connection.query(
                    """
                    INSERT INTO consent_sync.subscribers
                        (name, url, purposes, event_types, max_in_flight, timeout_ms,
                         rate_limit, max_attempts, max_age_seconds, ca_bundle_path, client_cert_path, client_key_path,
                         fields, newest_wins)
                    VALUES ($1, $2, $3::text[], $4::text[], $5::integer, $6::integer,
                            $7::double precision, $8::integer, $9::integer, $10, $11, $12, $13::text[], $14::boolean)
                    RETURNING id
                    """,
                    [
                        new.name, new.url,
                        new.purposes.map(postgresArray), new.eventTypes.map(postgresArray),
                        String(new.limits.maxInFlight), String(new.limits.timeout.milliseconds),
                        new.limits.ratePerSecond.map { String($0) }, new.limits.maxAttempts.map(String.init),
                        new.limits.maxAge.map { String(Int($0.seconds)) },
                        new.tls.caBundlePath, new.tls.clientCertificatePath, new.tls.clientKeyPath,
                        new.fields.map(postgresArray), new.newestWins ? "true" : "false",
                    ]
                )
                let id = try rows.first.orThrow("INSERT returned no id").int64("id")
                try await connection.query(
                    "INSERT INTO consent_sync.subscriber_secrets (subscriber_id, secret) VALUES ($1::bigint, $2)",
                    [String(id), try keyring.seal(new.secret, subscriberID: id)]
                )
                if new.pseudonymous {
                    let key = PseudonymKey.generate()
                    try await connection.query(
                        "UPDATE consent_sync.subscribers SET pseudonym_key = $2 WHERE id = $1::bigint",
                        [String(id), try keyring.seal(SigningSecret(key: key.bytes), subscriberID: id)]
                    )
                }
                return id
            }
        } catch let error as PostgresError where error.sqlState == "23505" {
            throw SubscriberValidationError(field: "name", reason: "a subscriber named '\(new.name)' already exists")
        }
    }

    /// All subscribers with their active secrets, decrypted (for signing; never print these).
    /// Paused and disabled ones are included, with ``Subscriber/enabled`` false.
    ///
    /// - Throws: ``SecretKeyringError`` naming the first subscriber whose secrets cannot be
    ///   read with `keyring` (a key that is not configured, an altered ciphertext), or that
    ///   has no active secret. `consent-sync run` checks this at start-up.
    public static func all(on connection: PostgresConnection, keyring: SecretKeyring = .plaintextOnly) async throws -> [Subscriber] {
        try await load(on: connection).subscribers.map { loaded in try loaded.open(with: keyring) }
    }

    /// A subscriber row with its active secrets as stored.
    struct Loaded {
        var subscriber: Subscriber
        var storedSecrets: [String]
        /// When each of `storedSecrets` expires (seconds since 1970), `nil` for no expiry.
        var expiries: [Double?]
        var storedPseudonymKey: String?

        /// The subscriber with its active secrets and pseudonym key, decrypted; throws about
        /// this subscriber when one cannot be read (never send to it then: a pseudonymous
        /// subscriber would otherwise get raw ids).
        func open(with keyring: SecretKeyring) throws(SecretKeyringError) -> Subscriber {
            var subscriber = subscriber
            subscriber.secrets = try openSecrets(with: keyring)
            for (secret, expiry) in zip(subscriber.secrets, expiries) {
                if let expiry { subscriber.secretExpiries[secret] = Date(timeIntervalSince1970: expiry) }
            }
            if let storedPseudonymKey {
                do {
                    subscriber.pseudonymKey = PseudonymKey(bytes: try keyring.open(storedPseudonymKey, subscriberID: subscriber.id).key)
                } catch {
                    throw error.about(subscriber: subscriber.name)
                }
            }
            return subscriber
        }

        /// The active secrets, decrypted; throws about this subscriber when one cannot be read.
        func openSecrets(with keyring: SecretKeyring) throws(SecretKeyringError) -> [SigningSecret] {
            guard !storedSecrets.isEmpty else {
                throw SecretKeyringError(code: .noActiveSecret, subscriber: subscriber.name)
            }
            var secrets: [SigningSecret] = []
            for stored in storedSecrets {
                do {
                    secrets.append(try keyring.open(stored, subscriberID: subscriber.id))
                } catch {
                    throw error.about(subscriber: subscriber.name)
                }
            }
            return secrets
        }
    }

    /// Every subscriber with its active (unexpired) secrets, still sealed, oldest first; and
    /// whether any secret has expired, so that the relay knows to delete them.
    static func load(on connection: PostgresConnection) async throws -> (subscribers: [Loaded], anyExpired: Bool) {
        let rows = try await connection.query(
            """
            SELECT s.id, s.name, s.url,
                   (SELECT json_agg(ss.secret ORDER BY ss.id) FROM consent_sync.subscriber_secrets ss
                    WHERE ss.subscriber_id = s.id AND (ss.expires_at IS NULL OR ss.expires_at > now()))::text AS secrets,
                   (SELECT json_agg(extract(epoch FROM ss.expires_at) ORDER BY ss.id) FROM consent_sync.subscriber_secrets ss
                    WHERE ss.subscriber_id = s.id AND (ss.expires_at IS NULL OR ss.expires_at > now()))::text AS expiries,
                   EXISTS (SELECT 1 FROM consent_sync.subscriber_secrets ss
                           WHERE ss.subscriber_id = s.id AND ss.expires_at <= now()) AS has_expired,
                   array_to_json(s.purposes)::text AS purposes, array_to_json(s.event_types)::text AS event_types,
                   s.state, s.state_reason, s.max_in_flight, s.timeout_ms, s.rate_limit, s.max_attempts, s.max_age_seconds,
                   s.ca_bundle_path, s.client_cert_path, s.client_key_path,
                   array_to_json(s.fields)::text AS fields, s.pseudonym_key, s.newest_wins
            FROM consent_sync.subscribers s ORDER BY s.name
            """
        )
        var anyExpired = false
        var subscribers: [Loaded] = []
        for row in rows {
            if try row.bool("has_expired") { anyExpired = true }
            var subscriber = Subscriber(
                id: try row.int64("id"),
                name: try row.string("name"),
                url: try row.string("url"),
                secrets: [],
                purposes: try decodeArray(row.optionalString("purposes")),
                eventTypes: try decodeArray(row.optionalString("event_types")),
                state: try state(row),
                stateReason: row.optionalString("state_reason"),
                limits: .init(
                    maxInFlight: try row.int("max_in_flight"),
                    timeout: .milliseconds(try row.int("timeout_ms")),
                    ratePerSecond: row.optionalString("rate_limit").flatMap(Double.init),
                    maxAttempts: try row.optionalInt("max_attempts"),
                    maxAge: try row.optionalInt("max_age_seconds").map { .seconds($0) }
                )
            )
            subscriber.tls = .init(
                caBundlePath: row.optionalString("ca_bundle_path"),
                clientCertificatePath: row.optionalString("client_cert_path"),
                clientKeyPath: row.optionalString("client_key_path")
            )
            subscriber.fields = try decodeArray(row.optionalString("fields"))
            subscriber.newestWins = try row.bool("newest_wins")
            subscribers.append(Loaded(
                subscriber: subscriber,
                storedSecrets: try decodeArray(row.optionalString("secrets")) ?? [],
                expiries: try row.optionalString("expiries").map { try JSONDecoder().decode([Double?].self, from: Data($0.utf8)) } ?? [],
                storedPseudonymKey: row.optionalString("pseudonym_key")
            ))
        }
        return (subscribers, anyExpired)
    }

    /// Removes a subscriber and its deliveries. Refuses when deliveries are still
    /// outstanding, unless `force` is set, so that nothing is dropped by accident.
    /// - Returns: false when no such subscriber exists.
    public static func remove(name: String, force: Bool, on connection: PostgresConnection) async throws -> Bool {
        try await connection.withTransaction { connection in
            let rows = try await connection.query(
                """
                SELECT s.id, (SELECT count(*) FROM consent_sync.deliveries d
                              WHERE d.subscriber_id = s.id AND d.state IN ('pending', 'in_flight')) AS outstanding
                FROM consent_sync.subscribers s WHERE s.name = $1 FOR UPDATE
                """,
                [name]
            )
            guard let row = rows.first else { return false }
            let outstanding = try row.int("outstanding")
            if outstanding > 0 && !force {
                throw SubscriberValidationError(field: "name", reason: "'\(name)' still has \(outstanding) undelivered change(s); wait for them, or pass --force to drop them")
            }
            try await connection.query("DELETE FROM consent_sync.subscribers WHERE id = $1::bigint", [try row.string("id")])
            return true
        }
    }

    /// The `state` column of `row` as a ``SubscriberState``.
    static func state(_ row: PostgresRow, column: String = "state") throws -> SubscriberState {
        let text = try row.string(column)
        return try SubscriberState(rawValue: text).orThrow("unknown subscriber state '\(text)' in column \(column)")
    }

    static func decodeArray(_ json: String?) throws -> [String]? {
        guard let json else { return nil }
        return try JSONDecoder().decode([String].self, from: Data(json.utf8))
    }
}

/// A PostgreSQL array literal for a bound `text[]` (or, with a cast, any array) parameter.
func postgresArray(_ values: [String]) -> String {
    arrayLiteral(values) { $0 }
}

/// Like ``postgresArray(_:)``, with `nil` as SQL NULL. NUL characters, which PostgreSQL
/// text cannot hold, become U+FFFD.
///
/// Escaping works on UTF-8 bytes, not `Character`s: a quote followed by a combining mark is
/// one grapheme, and must still be escaped (found with a receiver answering random bytes).
/// The three bytes it looks for (`"`, `\`, NUL) never occur inside a multi-byte sequence.
/// Built once per round for every result written back, so it copies each value's runs of
/// bytes that need no escape whole, from its contiguous storage: byte by byte through
/// `String.UTF8View` it was about 0.6 µs per delivery of a drain (profiled).
func postgresArrayOfOptionals(_ values: [String?]) -> String {
    arrayLiteral(values) { $0 }
}

private func arrayLiteral<Value>(_ values: [Value], _ text: (Value) -> String?) -> String {
    var literal: [UInt8] = []
    literal.reserveCapacity(2 + values.reduce(0) { $0 + (text($1)?.utf8.count ?? 4) + 3 })
    literal.append(UInt8(ascii: "{"))
    for (index, value) in values.enumerated() {
        if index > 0 { literal.append(UInt8(ascii: ",")) }
        guard var value = text(value) else {
            literal.append(contentsOf: "NULL".utf8)
            continue
        }
        literal.append(UInt8(ascii: "\""))
        value.withUTF8 { bytes in
            var start = 0
            for position in bytes.indices {
                let byte = bytes[position]
                guard byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte == 0 else { continue }
                literal.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<position]))
                if byte == 0 {
                    literal.append(contentsOf: [0xEF, 0xBF, 0xBD])  // U+FFFD
                } else {
                    literal.append(UInt8(ascii: "\\"))
                    literal.append(byte)
                }
                start = position + 1
            }
            literal.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...]))
        }
        literal.append(UInt8(ascii: "\""))
    }
    literal.append(UInt8(ascii: "}"))
    return String(decoding: literal, as: UTF8.self)
}
