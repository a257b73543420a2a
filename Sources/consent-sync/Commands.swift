import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncLogging
import ConsentSyncPostgres
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// EX_CONFIG from sysexits.h: systemd's `RestartPreventExitStatus=78` keeps a misconfigured
/// daemon from restarting in a loop.
let exitConfigError: Int32 = 78

/// Loads the configuration, or prints why not and exits 78.
func loadConfiguration(_ options: ConfigOptions) async throws -> AppConfiguration {
    do {
        return try await options.load()
    } catch let error as ConfigurationError {
        printError("consent-sync: \(error)")
        throw ExitCode(exitConfigError)
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Installs our log handler (logfmt or JSON on stderr, journald priorities under systemd)
/// once per process, and returns the control that changes the level on reload.
@discardableResult
func bootstrapLogging(_ configuration: AppConfiguration) -> (Logger, LogLevelControl) {
    let control = configuration.log.bootstrap()
    return (Logger(label: "consent-sync"), control)
}

/// Runs `body` with a connection, turning database errors into a clear message and exit 1.
func withDatabase<T>(_ configuration: AppConfiguration, logger: Logger, _ body: (PostgresConnection) async throws -> T) async throws -> T {
    let connection: PostgresConnection
    do {
        connection = try await PostgresConnection.connect(configuration.database.with("application_name", "consent-sync cli"), logger: logger)
    } catch {
        printError("consent-sync: cannot connect to the database: \(error)")
        throw ExitCode.failure
    }
    do {
        let result = try await body(connection)
        await connection.close()
        return result
    } catch let error as ExitCode {
        await connection.close()
        throw error
    } catch {
        await connection.close()
        printError("consent-sync: \(error)")
        throw ExitCode.failure
    }
}

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "migrate", abstract: "Create or upgrade schema consent_sync (safe to run twice, or twice at once).")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let result = try await withDatabase(configuration, logger: logger) { try await Migrator.migrate($0, logger: logger) }
        if result.from == result.to {
            print("schema consent_sync is up to date (version \(result.to))")
        } else {
            print("schema consent_sync migrated from version \(result.from) to \(result.to)")
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show, per subscriber, deliveries pending, in flight, delivered and dead, and any past or near their deadline.")

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let report = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            return try await StatusReport.load(deadlines: configuration.relay.deadlines, on: connection)
        }
        print(json ? report.json() : report.table())
    }
}
