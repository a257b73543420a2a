import ConsentSyncEngine
import ConsentSyncPostgres
import Foundation
import Logging
import Synchronization

/// A scenario's own failure (a fixture that could not start, a database that never drained).
public struct ScenarioError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A small seeded generator (SplitMix64), so that a failing scenario can be run again with
/// the same random choices: `CONSENT_SYNC_SCENARIO_SEED=<seed>`.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { self.state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `CONSENT_SYNC_SCENARIO_SEED` when set, else a random seed.
    public static var scenarioSeed: UInt64 {
        ProcessInfo.processInfo.environment["CONSENT_SYNC_SCENARIO_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1 ... .max)
    }
}

enum ScenarioClock {
    static func format(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        let whole = Int(seconds)
        let millis = Int((seconds - Double(whole)) * 1000)
        let day = whole % 86_400
        return String(format: "%02d:%02d:%02d.%03d", day / 3600, (day / 60) % 60, day % 60, millis)
    }
}

extension Duration {
    /// Seconds as a Double, for summaries.
    var secondsValue: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}

/// A database a scenario runs against: a ``TestDatabase`` on the shared server, or one on a
/// ``PrivateCluster`` that the scenario may restart.
public struct ScenarioDatabase: Sendable {
    public let name: String
    public let configuration: PostgresConfiguration
    /// What a child `consent-sync` needs to reach it (and nothing else of the parent's).
    public let daemonEnvironment: [String: String]

    public init(name: String, configuration: PostgresConfiguration, daemonEnvironment: [String: String]) {
        self.name = name
        self.configuration = configuration
        self.daemonEnvironment = daemonEnvironment
    }

    public init(_ database: TestDatabase) {
        self.init(name: database.name, configuration: database.configuration, daemonEnvironment: database.daemonEnvironment)
    }

    static let logger: Logger = {
        var logger = Logger(label: "consent-sync.scenario") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = ProcessInfo.processInfo.environment["CONSENT_SYNC_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }()

    public func connect(applicationName: String = "consent-sync scenario") async throws -> PostgresConnection {
        try await PostgresConnection.connect(self.configuration.with("application_name", applicationName), logger: Self.logger)
    }

    /// Runs `body` with a fresh connection and closes it afterwards.
    public func withConnection<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await self.connect()
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Applies the schema migrations.
    public func migrate() async throws {
        try await self.withConnection { _ = try await Migrator.migrate($0, logger: Self.logger) }
    }
}
