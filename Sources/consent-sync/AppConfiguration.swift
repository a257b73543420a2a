import Configuration
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import Foundation
import Logging
import SystemPackage

/// The daemon's settings: the config file, overridden by `CONSENT_SYNC_*` environment variables.
struct AppConfiguration: Sendable {
    static let defaultPath = "/etc/consent-sync/consent-sync.yaml"

    var database: PostgresConfiguration
    var relay: Relay.Configuration
    var logLevel: Logger.Level

    /// Reads and checks everything; throws a ``ConfigurationError`` naming the key at fault.
    static func load(path explicitPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> AppConfiguration {
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: environment).prefixKeys(with: ["consent_sync"]),
        ]
        let path = explicitPath ?? environment["CONSENT_SYNC_CONFIG"] ?? defaultPath
        let mustExist = explicitPath != nil || environment["CONSENT_SYNC_CONFIG"] != nil
        if mustExist || FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw ConfigurationError(key: nil, file: path, reason: "the file does not exist or cannot be read")
            }
            do {
                providers.append(try await FileProvider<YAMLSnapshot>(filePath: FilePath(path)))
            } catch {
                throw ConfigurationError(key: nil, file: path, reason: "not valid YAML: \(error)")
            }
        }
        let reader = ConfigReader(providers: providers)
        var values = Values(reader: reader, file: mustExist || FileManager.default.fileExists(atPath: path) ? path : nil)
        return try values.build(environment: environment)
    }

    /// Typed, range-checked reads that fail loudly instead of falling back to a default.
    struct Values {
        let reader: ConfigReader
        let file: String?

        func string(_ key: String) -> String? {
            reader.string(forKey: ConfigKey(key))
        }

        func int(_ key: String, default value: Int, in range: ClosedRange<Int>) throws -> Int {
            let configKey = ConfigKey(key)
            if let number = reader.int(forKey: configKey) {
                guard range.contains(number) else {
                    throw ConfigurationError(key: key, file: file, reason: "\(number) is out of range; use \(range.lowerBound)...\(range.upperBound)")
                }
                return number
            }
            if let text = reader.string(forKey: configKey) {
                throw ConfigurationError(key: key, file: file, reason: "'\(text.prefix(40))' is not a whole number; use \(range.lowerBound)...\(range.upperBound)")
            }
            return value
        }

        func milliseconds(_ key: String, default value: Duration, in range: ClosedRange<Int>) throws -> Duration {
            .milliseconds(try int(key, default: Int(value.milliseconds), in: range))
        }

        mutating func build(environment: [String: String]) throws -> AppConfiguration {
            // Database: a libpq connection string (or URI); PG* variables apply underneath it.
            let url = string("database.url") ?? environment["DATABASE_URL"] ?? ""
            var database = PostgresConfiguration(connectionString: url)
            if let passwordFile = string("database.password_file"), !passwordFile.isEmpty {
                database = database.with("password", try readSecretFile(passwordFile, key: "database.password_file"))
            }

            var relay = Relay.Configuration()
            relay.pollInterval = try milliseconds("relay.poll_interval_ms", default: relay.pollInterval, in: 10...3_600_000)
            relay.fanOutBatchSize = try int("relay.fan_out_batch_size", default: relay.fanOutBatchSize, in: 1...100_000)
            relay.claimBatchSize = try int("relay.claim_batch_size", default: relay.claimBatchSize, in: 1...10_000)
            relay.maxInFlight = try int("relay.max_in_flight", default: relay.maxInFlight, in: 1...100_000)
            relay.leaseMargin = try milliseconds("relay.lease_margin_ms", default: relay.leaseMargin, in: 1000...3_600_000)
            relay.janitorInterval = try milliseconds("relay.janitor_interval_ms", default: relay.janitorInterval, in: 100...3_600_000)
            relay.drainTimeout = try milliseconds("relay.drain_timeout_ms", default: relay.drainTimeout, in: 0...3_600_000)
            if let source = string("relay.event_source"), !source.isEmpty { relay.eventSource = source }

            var retry = RetryPolicy()
            retry.backoff.initial = try milliseconds("retry.initial_delay_ms", default: retry.backoff.initial, in: 1...86_400_000)
            retry.backoff.maximum = try milliseconds("retry.max_delay_ms", default: retry.backoff.maximum, in: 1...604_800_000)
            retry.backoff.minimum = min(retry.backoff.minimum, retry.backoff.initial)
            guard retry.backoff.maximum >= retry.backoff.initial else {
                throw ConfigurationError(key: "retry.max_delay_ms", file: file, reason: "must not be less than retry.initial_delay_ms")
            }
            retry.maxAttempts = try int("retry.max_attempts", default: retry.maxAttempts, in: 1...10_000)
            retry.maxAge = .seconds(try int("retry.max_age_seconds", default: Int(retry.maxAge.seconds), in: 1...31_536_000))
            retry.maxRetryAfter = .seconds(try int("retry.max_retry_after_seconds", default: Int(retry.maxRetryAfter.seconds), in: 0...86_400))
            relay.retry = retry

            let levelText = string("log.level") ?? "info"
            guard let level = Logger.Level(rawValue: levelText.lowercased()) else {
                throw ConfigurationError(key: "log.level", file: file, reason: "'\(levelText.prefix(20))' is not a level; use trace, debug, info, notice, warning, error or critical")
            }
            return AppConfiguration(database: database, relay: relay, logLevel: level)
        }

        func readSecretFile(_ path: String, key: String) throws -> String {
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw ConfigurationError(key: key, file: file, reason: "cannot read the file '\(path)'")
            }
            return text.trimmingCharacters(in: .newlines)
        }
    }
}

/// A bad setting: says which key, in which file, and what would be valid.
struct ConfigurationError: Error, CustomStringConvertible {
    var key: String?
    var file: String?
    var reason: String

    var description: String {
        var text = "configuration error"
        if let key { text += " at '\(key)' (environment: CONSENT_SYNC_\(key.uppercased().replacingOccurrences(of: ".", with: "_")))" }
        if let file { text += " in \(file)" }
        return text + ": " + reason
    }
}
