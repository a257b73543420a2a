import ConsentSyncPostgres
import Foundation
import Logging

/// A throwaway database per test, created on the server named by `DATABASE_URL` (or the `PG*`
/// variables) and dropped afterwards, also when the body throws or the task is cancelled.
public struct TestDatabase: Sendable {
    /// `cs_test_<random hex>`.
    public let name: String
    /// ``TestDatabase/baseConfiguration`` pointed at this database.
    public let configuration: PostgresConfiguration

    /// True when `DATABASE_URL` or one of `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGSERVICE` is set.
    public static var isConfigured: Bool {
        let environment = ProcessInfo.processInfo.environment
        return ["DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"].contains {
            !(environment[$0] ?? "").isEmpty
        }
    }

    /// `DATABASE_URL` when set, otherwise the `PG*` environment. Its database is the one that test
    /// databases are created from (the role needs `CREATEDB`).
    public static var baseConfiguration: PostgresConfiguration {
        PostgresConfiguration(connectionString: ProcessInfo.processInfo.environment["DATABASE_URL"] ?? "")
    }

    /// Warnings and up on stderr; `CONSENT_SYNC_TEST_LOG=debug` shows more.
    public static let logger: Logger = {
        var logger = Logger(label: "consent-sync.test-database") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = ProcessInfo.processInfo.environment["CONSENT_SYNC_TEST_LOG"]
            .flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }()

    public init(name: String) {
        self.name = name
        self.configuration = Self.baseConfiguration.with("dbname", name)
    }

    /// Creates a database, runs `body` with it and drops it (`DROP DATABASE ... WITH (FORCE)`, which
    /// also ends connections the body left open).
    @discardableResult
    public static func withTemporaryDatabase<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (TestDatabase) async throws -> T
    ) async throws -> T {
        let database = TestDatabase(name: "cs_test_" + Self.randomHex())
        try await Self.withAdminConnection { admin in
            try await admin.execute("CREATE DATABASE \(try admin.escapeIdentifier(database.name))")
        }
        let result: T
        do {
            result = try await body(database)
        } catch {
            await database.drop()
            throw error
        }
        await database.drop()
        return result
    }

    /// A new connection to this database; the caller closes it.
    public func connect(applicationName: String = "consent-sync test") async throws -> PostgresConnection {
        try await PostgresConnection.connect(self.configuration.with("application_name", applicationName), logger: Self.logger)
    }

    /// Terminates backends connected to this database (only those with `applicationName` when given)
    /// and returns how many were signalled.
    @discardableResult
    public func terminateBackends(applicationName: String? = nil) async throws -> Int {
        try await Self.withAdminConnection { admin in
            let rows = try await admin.query(
                """
                SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS terminated
                FROM pg_stat_activity
                WHERE datname = $1 AND pid <> pg_backend_pid() AND ($2::text IS NULL OR application_name = $2::text)
                """,
                [self.name, applicationName]
            )
            return try rows.first?.int("terminated") ?? 0
        }
    }

    /// Terminates every other backend connected to this database.
    @discardableResult
    public func terminateOtherBackends() async throws -> Int {
        try await self.terminateBackends()
    }

    /// Drops the database, ignoring task cancellation; a failure is logged, not thrown.
    private func drop() async {
        let name = self.name
        // Detached so that a cancelled test still cleans up.
        let outcome = await Task.detached {
            try await Self.withAdminConnection { admin in
                // A replication slot of the database (logical capture) would refuse the drop; one
                // in use stays in use until its backend has gone.
                for _ in 0..<50 {
                    let active = try await admin.query(
                        """
                        SELECT count(*) FILTER (WHERE active) AS active,
                               count(pg_drop_replication_slot(slot_name)) FILTER (WHERE NOT active) AS dropped
                        FROM pg_replication_slots WHERE database = $1
                        """,
                        [name]
                    ).first?.int("active") ?? 0
                    guard active > 0 else { break }
                    try await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", [name])
                    try await Task.sleep(for: .milliseconds(100))
                }
                try await admin.execute("DROP DATABASE IF EXISTS \(try admin.escapeIdentifier(name)) WITH (FORCE)")
            }
        }.result
        if case .failure(let error) = outcome {
            Self.logger.warning("could not drop test database \(name): \(error)")
        }
    }

    private static func withAdminConnection<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let admin = try await PostgresConnection.connect(
            Self.baseConfiguration.with("application_name", "consent-sync test admin"),
            logger: Self.logger
        )
        do {
            let result = try await body(admin)
            await admin.close()
            return result
        } catch {
            await admin.close()
            throw error
        }
    }

    private static func randomHex() -> String {
        let value = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - value.count) + value
    }
}
