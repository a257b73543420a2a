import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncPostgres
import Foundation
import Logging

/// A relay running in this process against a test database, stopped when the body ends.
public struct RunningRelay: Sendable {
    public let relay: Relay
    public let database: TestDatabase
}

extension Relay.Configuration {
    /// Quick settings for tests: short poll, short backoff, short leases.
    public static var forTests: Relay.Configuration {
        var configuration = Relay.Configuration()
        configuration.pollInterval = .milliseconds(200)
        configuration.janitorInterval = .milliseconds(200)
        configuration.leaseMargin = .seconds(5)
        configuration.drainTimeout = .seconds(2)
        configuration.retry = RetryPolicy(
            backoff: Backoff(initial: .milliseconds(50), maximum: .milliseconds(400), minimum: .milliseconds(10)),
            maxAttempts: 20,
            maxAge: .seconds(600),
            maxRetryAfter: .seconds(30)
        )
        return configuration
    }
}

public enum RelayFixture {
    /// A logger for tests: warnings and up on stderr, so failures explain themselves.
    public static let logger: Logger = {
        var logger = Logger(label: "consent-sync.test") { label in StreamLogHandler.standardError(label: label) }
        logger.logLevel = ProcessInfo.processInfo.environment["CONSENT_SYNC_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }()

    /// Runs a relay (migrations already applied by the caller or here) for the duration of `body`;
    /// `keyring` decrypts the subscribers' secrets (plaintext ones by default).
    @discardableResult
    public static func withRelay<T: Sendable>(
        on database: TestDatabase,
        configuration: Relay.Configuration = .forTests,
        keyring: SecretKeyring = .plaintextOnly,
        logger: Logger = RelayFixture.logger,
        _ body: (RunningRelay) async throws -> T
    ) async throws -> T {
        let http = HTTPClient(configuration: .init(), logger: logger)
        defer { http.shutdown() }
        let relay = Relay(configuration: configuration, database: database.configuration, http: http, keyring: keyring, logger: logger)
        let task = Task { try await relay.run() }
        do {
            let result = try await body(RunningRelay(relay: relay, database: database))
            task.cancel()
            _ = await task.result
            return result
        } catch {
            task.cancel()
            _ = await task.result
            throw error
        }
    }

    /// Runs `count` relays side by side on one database (as several daemons would), each
    /// with its own HTTP client and instance id, for the duration of `body`.
    @discardableResult
    public static func withRelays<T: Sendable>(
        _ count: Int,
        on database: TestDatabase,
        configuration: Relay.Configuration = .forTests,
        _ body: () async throws -> T
    ) async throws -> T {
        guard count > 0 else { return try await body() }
        return try await withRelay(on: database, configuration: configuration) { _ in
            try await withRelays(count - 1, on: database, configuration: configuration, body)
        }
    }

    /// A migrated throwaway database.
    @discardableResult
    public static func withMigratedDatabase<T: Sendable>(_ body: (TestDatabase) async throws -> T) async throws -> T {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withConnection { try await Migrator.migrate($0, logger: logger) }
            return try await body(database)
        }
    }

    /// Registers a subscriber pointing at `url` and returns its secret, stored as `keyring`
    /// seals it (plaintext by default).
    @discardableResult
    public static func addSubscriber(
        _ name: String,
        url: String,
        purposes: [String]? = nil,
        eventTypes: [String]? = nil,
        limits: Subscriber.Limits = .init(maxInFlight: 8, timeout: .seconds(5)),
        keyring: SecretKeyring = .plaintextOnly,
        on database: TestDatabase
    ) async throws -> SigningSecret {
        let secret = SigningSecret.generate()
        try await database.withConnection { connection in
            try await SubscriberStore.add(
                .init(name: name, url: url, secret: secret, purposes: purposes, eventTypes: eventTypes, limits: limits),
                keyring: keyring,
                on: connection
            )
        }
        return secret
    }
}

/// Writes consent rows into the default table, the way an application would.
public struct ConsentWriter: Sendable {
    public let database: TestDatabase

    public init(database: TestDatabase) {
        self.database = database
    }

    /// Upserts one consent row in its own transaction.
    public func set(_ subject: String, _ purpose: String, _ status: ConsentStatus, source: String? = "test") async throws {
        try await database.withConnection { connection in
            try await Self.set(subject, purpose, status, source: source, on: connection)
        }
    }

    public static func set(_ subject: String, _ purpose: String, _ status: ConsentStatus, source: String? = "test", on connection: PostgresConnection) async throws {
        try await connection.query(
            """
            INSERT INTO consent_sync.consents (subject_id, purpose, status, source) VALUES ($1, $2, $3, $4)
            ON CONFLICT (subject_id, purpose) DO UPDATE SET status = excluded.status, source = excluded.source, updated_at = now()
            """,
            [subject, purpose, status.rawValue, source]
        )
    }
}

extension TestDatabase {
    /// Runs `body` with a fresh connection to this database and closes it afterwards.
    @discardableResult
    public func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connect()
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}
