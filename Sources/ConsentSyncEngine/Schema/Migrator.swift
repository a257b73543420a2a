import ConsentSyncPostgres
import Logging

/// Applies ``Migrations`` to a database.
public enum Migrator {
    /// The schema version before and after a run.
    public struct Result: Sendable, Equatable {
        public var from: Int
        public var to: Int

        public init(from: Int, to: Int) {
            self.from = from
            self.to = to
        }
    }

    /// Brings schema `consent_sync` up to ``Migrations/latestVersion`` (or to `version`: tests
    /// of upgrades start from an earlier one).
    ///
    /// Everything happens in one transaction holding an advisory lock, so a second `migrate`
    /// running at the same moment waits, then finds nothing left to do.
    @discardableResult
    public static func migrate(_ connection: PostgresConnection, through version: Int = Migrations.latestVersion, logger: Logger) async throws -> Result {
        try await connection.withTransaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock($1::bigint)", [String(Migrations.lockKey)])
            try await connection.execute("""
                CREATE SCHEMA IF NOT EXISTS consent_sync;
                CREATE TABLE IF NOT EXISTS consent_sync.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                """)
            let current = try await currentVersion(connection) ?? 0
            guard current <= Migrations.latestVersion else {
                throw SchemaError.newerThanBinary(database: current, binary: Migrations.latestVersion)
            }
            for migration in Migrations.all where migration.version > current && migration.version <= version {
                logger.info("applying migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
                try await connection.execute(migration.sql)
                try await connection.query(
                    "INSERT INTO consent_sync.schema_migrations (version, name) VALUES ($1::integer, $2)",
                    [String(migration.version), migration.name]
                )
            }
            return Result(from: current, to: max(current, min(version, Migrations.latestVersion)))
        }
    }

    /// The applied schema version, or `nil` when `migrate` never ran on this database.
    public static func currentVersion(_ connection: PostgresConnection) async throws -> Int? {
        let rows = try await connection.query(
            "SELECT to_regclass('consent_sync.schema_migrations') IS NOT NULL AS present"
        )
        guard let row = rows.first, try row.bool("present") else { return nil }
        let version = try await connection.query("SELECT coalesce(max(version), 0) AS version FROM consent_sync.schema_migrations")
        return try version.first?.int("version")
    }

    /// Throws unless the database is at exactly the version this binary expects.
    public static func requireCurrent(_ connection: PostgresConnection) async throws {
        let version = try await currentVersion(connection)
        guard let version, version > 0 else { throw SchemaError.notMigrated }
        if version < Migrations.latestVersion { throw SchemaError.olderThanBinary(database: version, binary: Migrations.latestVersion) }
        if version > Migrations.latestVersion { throw SchemaError.newerThanBinary(database: version, binary: Migrations.latestVersion) }
    }
}

public enum SchemaError: Error, CustomStringConvertible, Equatable {
    case notMigrated
    case olderThanBinary(database: Int, binary: Int)
    case newerThanBinary(database: Int, binary: Int)

    public var description: String {
        switch self {
        case .notMigrated:
            "schema consent_sync is not installed in this database; run 'consent-sync migrate' first"
        case .olderThanBinary(let database, let binary):
            "schema consent_sync is at version \(database) but this consent-sync needs \(binary); run 'consent-sync migrate'"
        case .newerThanBinary(let database, let binary):
            "schema consent_sync is at version \(database), newer than this consent-sync knows (\(binary)); upgrade consent-sync"
        }
    }
}
