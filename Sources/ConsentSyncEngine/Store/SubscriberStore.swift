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

    @discardableResult
    public static func add(_ new: NewSubscriber, on connection: PostgresConnection) async throws -> Int64 {
        try new.validate()
        do {
            let rows = try await connection.query(
                """
                INSERT INTO consent_sync.subscribers
                    (name, url, secrets, purposes, event_types, max_in_flight, timeout_ms,
                     rate_limit, max_attempts, max_age_seconds, ca_bundle_path, client_cert_path, client_key_path)
                VALUES ($1, $2, ARRAY[$3], $4::text[], $5::text[], $6::integer, $7::integer,
                        $8::double precision, $9::integer, $10::integer, $11, $12, $13)
                RETURNING id
                """,
                [
                    new.name, new.url, new.secret.encoded,
                    new.purposes.map(postgresArray), new.eventTypes.map(postgresArray),
                    String(new.limits.maxInFlight), String(new.limits.timeout.milliseconds),
                    new.limits.ratePerSecond.map { String($0) }, new.limits.maxAttempts.map(String.init),
                    new.limits.maxAge.map { String(Int($0.seconds)) },
                    new.tls.caBundlePath, new.tls.clientCertificatePath, new.tls.clientKeyPath,
                ]
            )
            return try rows.first.map { try $0.int64("id") } ?? 0
        } catch let error as PostgresError where error.sqlState == "23505" {
            throw SubscriberValidationError(field: "name", reason: "a subscriber named '\(new.name)' already exists")
        }
    }

    /// All subscribers, with their secrets (for the relay; never print these). Paused and
    /// disabled ones are included, with ``Subscriber/enabled`` false.
    public static func all(on connection: PostgresConnection) async throws -> [Subscriber] {
        let rows = try await connection.query(
            """
            SELECT id, name, url, array_to_json(secrets)::text AS secrets,
                   array_to_json(purposes)::text AS purposes, array_to_json(event_types)::text AS event_types,
                   state, state_reason, max_in_flight, timeout_ms, rate_limit, max_attempts, max_age_seconds,
                   ca_bundle_path, client_cert_path, client_key_path
            FROM consent_sync.subscribers ORDER BY name
            """
        )
        return try rows.map { row in
            let name = try row.string("name")
            let secrets = try decodeArray(row.optionalString("secrets")) ?? []
            let parsed: [SigningSecret]
            do {
                parsed = try secrets.map { try SigningSecret(parsing: $0) }
            } catch let error as SigningSecretError {
                throw SubscriberValidationError(field: "secrets", reason: "subscriber '\(name)' has an unreadable signing secret in the database: \(error.reason)")
            }
            var subscriber = Subscriber(
                id: try row.int64("id"),
                name: name,
                url: try row.string("url"),
                secrets: parsed,
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
            return subscriber
        }
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
    postgresArrayOfOptionals(values.map { Optional($0) })
}

/// Like ``postgresArray(_:)``, with `nil` as SQL NULL. NUL characters, which PostgreSQL
/// text cannot hold, become U+FFFD.
func postgresArrayOfOptionals(_ values: [String?]) -> String {
    let quoted = values.map { value -> String in
        guard let value else { return "NULL" }
        var escaped = "\""
        for character in value {
            switch character {
            case "\"", "\\": escaped.append("\\"); escaped.append(character)
            case "\u{0}": escaped.append("\u{FFFD}")
            default: escaped.append(character)
            }
        }
        return escaped + "\""
    }
    return "{" + quoted.joined(separator: ",") + "}"
}
