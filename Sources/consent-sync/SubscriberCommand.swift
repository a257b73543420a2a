import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import Foundation

struct SubscriberCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscriber",
        abstract: "Register, list and remove downstream systems.",
        subcommands: [Add.self, List.self, Remove.self]
    )

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a downstream system. Prints its signing secret once, unless you pass --secret-file."
        )

        @OptionGroup var options: ConfigOptions

        @Argument(help: "A unique name: lower-case letters, digits, '.', '_', '-'.")
        var name: String

        @Option(help: "Where to POST the webhooks (https, or http).")
        var url: String

        @Option(name: .customLong("purpose"), help: "Only changes of this purpose (repeat for several). Default: all.")
        var purposes: [String] = []

        @Option(name: .customLong("event-type"), help: "Only these event types, e.g. consent.withdrawn (repeat for several). Default: all.")
        var eventTypes: [String] = []

        @Option(help: "File holding the signing secret (whsec_...). Default: generate one.")
        var secretFile: String?

        @Option(help: "Requests in flight at once to this subscriber, per daemon (1-10000).")
        var maxInFlight: Int = 16

        @Option(help: "Time allowed for one request, in milliseconds.")
        var timeoutMs: Int = 10_000

        func validate() throws {
            guard (1...10_000).contains(maxInFlight) else { throw ValidationError("--max-in-flight must be between 1 and 10000") }
            guard (1...3_600_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be between 1 and 3600000") }
        }

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let secret: SigningSecret
            if let secretFile {
                guard let data = FileManager.default.contents(atPath: secretFile) else {
                    throw ValidationError("cannot read --secret-file \(secretFile)")
                }
                do {
                    secret = try SigningSecret(parsing: String(decoding: data, as: UTF8.self))
                } catch {
                    throw ValidationError("\(secretFile): \(error)")
                }
            } else {
                secret = .generate()
            }
            let new = SubscriberStore.NewSubscriber(
                name: name,
                url: url,
                secret: secret,
                purposes: purposes.isEmpty ? nil : purposes,
                eventTypes: eventTypes.isEmpty ? nil : eventTypes,
                limits: .init(maxInFlight: maxInFlight, timeout: .milliseconds(timeoutMs))
            )
            do {
                try new.validate()
            } catch {
                throw ValidationError(error.description)
            }
            try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                try await SubscriberStore.add(new, on: connection)
            }
            print("added subscriber \(name) -> \(url)")
            if secretFile == nil {
                print("signing secret (shown once; give it to the receiver to verify webhook-signature):")
                print(secret.encoded)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List subscribers (never shows secrets).")

        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let subscribers = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await SubscriberStore.all(on: connection)
            }
            let rows = subscribers.map { subscriber in
                [
                    subscriber.name, subscriber.enabled ? "enabled" : "disabled", subscriber.url,
                    subscriber.purposes?.joined(separator: ",") ?? "*",
                    subscriber.eventTypes?.joined(separator: ",") ?? "*",
                    String(subscriber.limits.maxInFlight), "\(subscriber.limits.timeout.milliseconds)ms",
                ]
            }
            print(TextTable.render(header: ["NAME", "STATE", "URL", "PURPOSES", "EVENTS", "MAX IN FLIGHT", "TIMEOUT"], rows: rows))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a subscriber and its delivery history.")

        @OptionGroup var options: ConfigOptions

        @Argument var name: String

        @Flag(help: "Remove even if changes are still waiting to be delivered to it (they are dropped).")
        var force = false

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let removed = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await SubscriberStore.remove(name: name, force: force, on: connection)
            }
            guard removed else {
                printError("consent-sync: no subscriber named '\(name)'")
                throw ExitCode.failure
            }
            print("removed subscriber \(name)")
        }
    }
}

