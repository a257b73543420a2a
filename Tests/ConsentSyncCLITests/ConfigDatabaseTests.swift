import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Bad configuration must change nothing: `migrate` against a real database exits 78 and
/// leaves no schema behind.
@Suite("Bad configuration leaves the database alone", .enabled(if: TestDatabase.isConfigured))
struct ConfigDatabaseTests {
    /// A libpq URI for `database`, built from `DATABASE_URL` (or the `PG*` variables).
    static func connectionString(for database: TestDatabase) -> String {
        let environment = ProcessInfo.processInfo.environment
        if let url = environment["DATABASE_URL"], !url.isEmpty {
            if url.hasPrefix("postgres"), var components = URLComponents(string: url) {
                components.path = "/" + database.name
                if let uri = components.string { return uri }
            }
            return url + " dbname=" + database.name
        }
        var parts = ["dbname=" + database.name]
        for (variable, keyword) in [("PGHOST", "host"), ("PGPORT", "port"), ("PGUSER", "user")] {
            if let value = environment[variable], !value.isEmpty { parts.append("\(keyword)=\(value)") }
        }
        return parts.joined(separator: " ")
    }

    static func schemaExists(_ database: TestDatabase) async throws -> Bool {
        let connection = try await database.connect()
        do {
            let rows = try await connection.query("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'consent_sync'")
            let exists = try rows.first?.int("n") == 1
            await connection.close()
            return exists
        } catch {
            await connection.close()
            throw error
        }
    }

    /// (name, extra YAML, environment); the database URL is added to each.
    static let badConfigurations: [(String, String, [String: String])] = [
        ("unknown key", "relay:\n  pol_interval_ms: 100\n", [:]),
        ("out of range", "relay:\n  max_in_flight: 0\n", [:]),
        ("bad ops.listen", "ops:\n  listen: nowhere\n", [:]),
        ("bad log level from the environment", "", ["CONSENT_SYNC_LOG_LEVEL": "loud"]),
        ("unknown environment variable", "", ["CONSENT_SYNC_RELAY_POL_INTERVAL_MS": "100"]),
        ("unreadable password file", "", ["CONSENT_SYNC_DATABASE_PASSWORD_FILE": "/nonexistent/pw"]),
    ]

    @Test(arguments: badConfigurations.map(\.0))
    func migrateWithBadConfigurationCreatesNothing(name: String) async throws {
        let (_, yaml, environment) = Self.badConfigurations.first { $0.0 == name }!
        try await TestDatabase.withTemporaryDatabase { database in
            try await withScratchDirectory { directory in
                let config = try directory.write(
                    "consent-sync.yaml",
                    "database:\n  url: \"\(Self.connectionString(for: database))\"\n" + yaml
                )
                for command in ["check-config", "migrate"] {
                    let result = try await ConsentSyncBinary.run([command, "--config", config], environment: environment)
                    #expect(result.status == 78, "\(command): \(result)")
                    #expect(result.stderr.contains("configuration error"), "\(command): \(result)")
                }
                #expect(try await !Self.schemaExists(database))
            }
        }
    }

    @Test func migrateWithTheSameConfigurationFixedCreatesTheSchema() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await withScratchDirectory { directory in
                let url = Self.connectionString(for: database)
                let bad = try directory.write("bad.yaml", "database:\n  url: \"\(url)\"\nrelay:\n  max_in_flight: 0\n")
                let good = try directory.write("good.yaml", "database:\n  url: \"\(url)\"\nrelay:\n  max_in_flight: 10\n")

                let refused = try await ConsentSyncBinary.run(["migrate", "--config", bad])
                #expect(refused.status == 78, "\(refused)")
                #expect(try await !Self.schemaExists(database))

                let check = try await ConsentSyncBinary.run(["check-config", "--config", good])
                #expect(check.status == 0, "\(check)")
                #expect(try await !Self.schemaExists(database), "check-config must not touch the database")

                let migrated = try await ConsentSyncBinary.run(["migrate", "--config", good])
                #expect(migrated.status == 0, "\(migrated)")
                #expect(try await Self.schemaExists(database))
            }
        }
    }
}
