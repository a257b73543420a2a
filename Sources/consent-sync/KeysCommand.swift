import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import Logging

/// `consent-sync keys`: the master keys that encrypt subscribers' signing secrets at rest.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Show and rotate the master keys that encrypt the signing secrets in the database.",
        discussion: """
            Rotating the master key without downtime: set secrets.master_key_file to a new key \
            (openssl rand -base64 32 > new.key) and list the old one in \
            secrets.previous_master_key_files, restart the daemons, run 'consent-sync keys rotate', \
            then remove the old key from the configuration.
            """,
        subcommands: [Status.self, Rotate.self]
    )

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the configured keys (by id) and which keys the stored secrets need."
        )

        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let keys = configuration.secretKeys
            let usage = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await SubscriberStore.keyUsage(on: connection)
            }
            print("current key: \(keys.keyring.current.map { "\($0.id) (\(keys.masterKeyFile ?? ""))" } ?? "none")")
            let previous = keys.keyring.previous.map(\.id)
            print("previous keys: \(previous.isEmpty ? "none" : previous.joined(separator: ", "))")
            let rows = usage.map { entry in
                [
                    entry.keyID ?? "plaintext",
                    Self.role(of: entry.keyID, in: keys.keyring),
                    String(entry.secrets),
                    entry.subscribers.joined(separator: ","),
                ]
            }
            print(TextTable.render(header: ["KEY", "CONFIGURED", "SECRETS", "SUBSCRIBERS"], rows: rows))
            if usage.contains(where: { $0.keyID != keys.keyring.current?.id }), keys.keyring.current != nil {
                print("secrets not under the current key: run 'consent-sync keys rotate'")
            }
        }

        static func role(of keyID: String?, in keyring: SecretKeyring) -> String {
            guard let keyID else { return "-" }
            if keyID == keyring.current?.id { return "current" }
            if keyring.previous.contains(where: { $0.id == keyID }) { return "previous" }
            return "MISSING"
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-encrypt every signing secret with secrets.master_key_file, in one transaction.",
            discussion: """
                Decrypts with the current or a previous key (secrets.previous_master_key_files), \
                encrypts with the current one, and encrypts secrets still stored unencrypted. All or \
                nothing; safe to run again. Running daemons must already have the new key configured.
                """
        )

        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let keyring = configuration.secretKeys.keyring
            guard let current = keyring.current else {
                printError("consent-sync: keys rotate encrypts with secrets.master_key_file, which is not set: \(SecretKeyringError(code: .noMasterKey))")
                throw ExitCode(exitConfigError)
            }
            let result = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                do {
                    return try await SubscriberStore.reencryptSecrets(keyring: keyring, on: connection)
                } catch let error as SecretKeyringError {
                    printError("consent-sync: nothing was changed: \(error)")
                    throw ExitCode(exitConfigError)
                }
            }
            logger.notice("signing secrets re-encrypted", metadata: [
                "key": "\(current.id)", "reencrypted": "\(result.reencrypted)", "unchanged": "\(result.unchanged)",
                "actor": "\(operatorActor())",
            ])
            var line = "re-encrypted \(result.reencrypted) signing secret(s) with key \(current.id)"
            if !result.previousKeys.isEmpty { line += " (from \(result.previousKeys.joined(separator: ", ")))" }
            line += "; \(result.unchanged) already used it"
            if result.dropped > 0 { line += "; deleted \(result.dropped) expired" }
            print(line)
            if !keyring.previous.isEmpty {
                print("no secret needs a previous key now: remove secrets.previous_master_key_files from the configuration")
            }
        }
    }
}
