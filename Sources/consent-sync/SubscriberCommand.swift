import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import Foundation
import Logging

struct SubscriberCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscriber",
        abstract: "Register, list, pause, disable and remove downstream systems; rotate their signing secrets.",
        subcommands: [Add.self, List.self, Remove.self, Pause.self, Resume.self, Disable.self, Enable.self, RotateSecret.self]
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

        @Option(help: "Requests per second to this subscriber, over all daemons (approximately). Default: no limit.")
        var rateLimit: Double?

        @Option(help: "Give up after this many attempts (overrides retry.max_attempts).")
        var maxAttempts: Int?

        @Option(help: "Give up on a change this many seconds old (overrides retry.max_age_seconds).")
        var maxAgeSeconds: Int?

        @Option(help: "PEM file of the CA(s) that sign the subscriber's certificate (absolute path, read by the daemon).")
        var caBundle: String?

        @Option(help: "PEM client certificate for mutual TLS (absolute path; with --client-key).")
        var clientCert: String?

        @Option(help: "PEM private key of the client certificate (absolute path).")
        var clientKey: String?

        @Option(help: ArgumentHelp("Send only these captured attributes (comma-separated); default: every attribute the watched table captures.", valueName: "a,b"))
        var fields: String?

        @Flag(help: "Send a pseudonymous subject id (HMAC-SHA256 of the id under a key of this subscriber's own) instead of the raw id.")
        var pseudonymous = false

        @Flag(help: "When several changes of one subject and purpose wait for this subscriber, send only the newest; the others are recorded as superseded.")
        var newestWins = false

        @Flag(help: "Then back-fill it with the current state of every consent row (as 'consent-sync resync' does).")
        var resync = false

        func validate() throws {
            guard (1...10_000).contains(maxInFlight) else { throw ValidationError("--max-in-flight must be between 1 and 10000") }
            guard (1...3_600_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be between 1 and 3600000") }
        }

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let keyring = try requireSecretStorage(configuration)
            let secret = try secretFile.map(readSigningSecret) ?? .generate()
            let requested = SubscriberStore.NewSubscriber(
                name: name,
                url: url,
                secret: secret,
                purposes: purposes.isEmpty ? nil : purposes,
                eventTypes: eventTypes.isEmpty ? nil : eventTypes,
                limits: .init(
                    maxInFlight: maxInFlight,
                    timeout: .milliseconds(timeoutMs),
                    ratePerSecond: rateLimit,
                    maxAttempts: maxAttempts,
                    maxAge: maxAgeSeconds.map { .seconds($0) }
                )
            )
            var checked = requested
            checked.fields = fields.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
            checked.pseudonymous = pseudonymous
            checked.newestWins = newestWins
            checked.tls = .init(caBundlePath: caBundle, clientCertificatePath: clientCert, clientKeyPath: clientKey)
            do {
                try checked.validate()
            } catch {
                throw ValidationError(error.description)
            }
            // Refuse now what the daemon would refuse at connect time (http.allowed_schemes,
            // http.allow_networks), saying why; a name that does not resolve from here is only a warning.
            do {
                _ = try await configuration.http.client(userAgent: configuration.relay.userAgent).check(url: url)
            } catch where error.code == .dnsFailed {
                printError("consent-sync: warning: \(error.message); the daemon will check the address again when it connects")
            } catch {
                throw ValidationError("refusing --url: \(error)")
            }
            let new = checked
            try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                try await SubscriberStore.add(new, keyring: keyring, on: connection)
            }
            print("added subscriber \(name) -> \(url)")
            if resync {
                let actor = operatorActor()
                let (job, queued) = try await withDatabase(configuration, logger: logger) { connection in
                    try await ResyncCommand.resync(subscriber: name, purpose: nil, rate: nil, chunk: 500, actor: actor, on: connection)
                }
                print("resync \(job.id): \(queued) snapshot(s) of the current state queued for \(name)")
            }
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
                return try await SubscriberStore.listing(on: connection)
            }
            let rows = subscribers.map { subscriber in
                [
                    subscriber.name, subscriber.state.rawValue, subscriber.url,
                    subscriber.purposes?.joined(separator: ",") ?? "*",
                    subscriber.eventTypes?.joined(separator: ",") ?? "*",
                    String(subscriber.limits.maxInFlight), "\(subscriber.limits.timeout.milliseconds)ms",
                    Self.secrets(subscriber),
                    Self.sends(subscriber),
                    Self.why(subscriber),
                ]
            }
            print(TextTable.render(header: ["NAME", "STATE", "URL", "PURPOSES", "EVENTS", "MAX IN FLIGHT", "TIMEOUT", "SECRETS", "SENDS", "REASON"], rows: rows))
        }

        /// What it receives beyond the filters: "all", or "fields a,b; pseudonymous ids; newest only".
        static func sends(_ subscriber: SubscriberStore.Listing) -> String {
            var parts: [String] = []
            if let fields = subscriber.fields { parts.append("fields \(fields.joined(separator: ","))") }
            if subscriber.pseudonymous { parts.append("pseudonymous ids") }
            if subscriber.newestWins { parts.append("newest only") }
            return parts.isEmpty ? "all" : parts.joined(separator: "; ")
        }

        /// "1", or "2 (next expires 2026-11-30T10:15:02Z)" while a rotation overlaps. Never a secret.
        static func secrets(_ subscriber: SubscriberStore.Listing) -> String {
            guard let expiry = subscriber.nextSecretExpiry else { return String(subscriber.activeSecrets) }
            return "\(subscriber.activeSecrets) (next expires \(TimeWindow.format(expiry)))"
        }

        /// "410 Gone from receiver (by consent-sync (410 Gone), since 2026-11-29T10:15:02Z)" for a
        /// paused or disabled subscriber, "-" for an enabled one.
        static func why(_ subscriber: SubscriberStore.Listing) -> String {
            guard subscriber.state != .enabled else { return "-" }
            var details: [String] = []
            if let actor = subscriber.stateChangedBy { details.append("by \(actor)") }
            if let since = subscriber.stateChangedAt { details.append("since \(TimeWindow.format(since))") }
            let reason = subscriber.stateReason ?? "no reason given"
            return details.isEmpty ? reason : "\(reason) (\(details.joined(separator: ", ")))"
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

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop sending to a subscriber for a while. Its changes keep queuing and are sent, in order, after 'resume'."
        )

        @OptionGroup var options: ConfigOptions
        @OptionGroup var change: StateChangeOptions

        func validate() throws { try change.validate() }

        func run() async throws { try await change.apply(.pause, options: options) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send to a paused subscriber again, starting with the changes queued while it was paused."
        )

        @OptionGroup var options: ConfigOptions
        @OptionGroup var change: StateChangeOptions

        func validate() throws { try change.validate() }

        func run() async throws { try await change.apply(.resume, options: options) }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop sending to a subscriber until it is enabled again. Its changes keep queuing; nothing is dropped."
        )

        @OptionGroup var options: ConfigOptions
        @OptionGroup var change: StateChangeOptions

        func validate() throws { try change.validate() }

        func run() async throws { try await change.apply(.disable, options: options) }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send to a disabled or paused subscriber again, starting with the changes queued meanwhile."
        )

        @OptionGroup var options: ConfigOptions
        @OptionGroup var change: StateChangeOptions

        func validate() throws { try change.validate() }

        func run() async throws { try await change.apply(.enable, options: options) }
    }
}

extension SubscriberCommand {
    struct RotateSecret: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-secret",
            abstract: "Give a subscriber a new signing secret; the old one stays valid for --overlap.",
            discussion: """
                Until the old secret expires every request carries two signatures (Standard \
                Webhooks: one 'v1,...' per secret, space-separated), so the receiver verifies with \
                the old secret or the new one and can switch whenever it likes. Prints the new \
                secret once, unless you pass --secret-file. Running daemons use it at once.
                """
        )

        @OptionGroup var options: ConfigOptions

        @Argument(help: "The subscriber's name.")
        var name: String

        @Option(help: "How long the old secret(s) stay valid: 0 (expire now), or e.g. 30s, 15m, 24h, 7d.")
        var overlap: String = "24h"

        @Option(help: "File holding the new signing secret (whsec_...). Default: generate one.")
        var secretFile: String?

        func validate() throws {
            _ = try Self.parseOverlap(overlap)
        }

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let keyring = try requireSecretStorage(configuration)
            let overlap = try Self.parseOverlap(self.overlap)
            let secret = try secretFile.map(readSigningSecret) ?? .generate()
            let rotation = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await SubscriberStore.rotateSecret(name: name, to: secret, overlap: overlap, keyring: keyring, on: connection)
            }
            var metadata: Logger.Metadata = ["subscriber": "\(name)", "overlap_ms": "\(overlap.milliseconds)", "actor": "\(operatorActor())"]
            if let expiresAt = rotation.expiresAt { metadata["old_secrets_expire"] = "\(TimeWindow.format(expiresAt))" }
            logger.notice("subscriber signing secret rotated", metadata: metadata)
            print("rotated the signing secret of \(name)")
            if secretFile == nil {
                print("new signing secret (shown once; give it to the receiver to verify webhook-signature):")
                print(secret.encoded)
            }
            if let expiresAt = rotation.expiresAt {
                print("the previous secret stays valid until \(TimeWindow.format(expiresAt)): until then requests carry a signature with each")
            } else {
                print("the previous secret is no longer used: requests carry only the new signature")
            }
        }

        /// `0`, or a whole number with a unit: `500ms`, `30s`, `15m`, `24h`, `7d`, `1w`; at most 365 days.
        static func parseOverlap(_ text: String) throws(ValidationError) -> Duration {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            if trimmed == "0" { return .zero }
            let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000)]
            for (unit, milliseconds) in units where trimmed.hasSuffix(unit) {
                guard let count = Int64(trimmed.dropLast(unit.count)), count >= 0 else { break }
                let total = count.multipliedReportingOverflow(by: milliseconds)
                guard !total.overflow, total.partialValue <= 365 * 86_400_000 else {
                    throw ValidationError("--overlap \(ConfigLoader.show(text)) is longer than 365 days")
                }
                return .milliseconds(total.partialValue)
            }
            throw ValidationError("--overlap \(ConfigLoader.show(text)) is not a duration: use 0, or a whole number with a unit: 30s, 15m, 24h, 7d")
        }
    }
}

/// The keyring that stores new signing secrets; prints why not and exits 78 when no master
/// key is configured and plaintext is not allowed, before anything is touched.
func requireSecretStorage(_ configuration: AppConfiguration) throws -> SecretKeyring {
    let keyring = configuration.secretKeys.keyring
    guard keyring.current != nil || keyring.allowsPlaintext else {
        printError("consent-sync: \(SecretKeyringError(code: .noMasterKey))")
        throw ExitCode(exitConfigError)
    }
    return keyring
}

/// The signing secret in `path` (`whsec_<base64>`); the error names the file, never its contents.
func readSigningSecret(_ path: String) throws -> SigningSecret {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ValidationError("cannot read --secret-file \(path)")
    }
    do {
        return try SigningSecret(parsing: String(decoding: data, as: UTF8.self))
    } catch {
        throw ValidationError("\(path): \(error)")
    }
}

/// The arguments of `subscriber pause|resume|enable|disable`, and what they do.
struct StateChangeOptions: ParsableArguments {
    @Argument(help: "The subscriber's name.")
    var name: String

    @Option(help: "Why (one line, at most 500 characters): recorded with the change and shown by 'subscriber list'.")
    var reason: String?

    func validate() throws {
        do {
            _ = try SubscriberStateError.checkedReason(reason)
        } catch {
            throw ValidationError("--reason: \(error.message)")
        }
    }

    /// Applies `action`, records it as done by this operator, logs it and says what happened.
    func apply(_ action: SubscriberState.Action, options: ConfigOptions) async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let actor = operatorActor()
        let change = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            return try await SubscriberStore.changeState(name: name, action: action, reason: reason, actor: actor, on: connection)
        }
        guard change.changed else {
            print("\(name) is already \(change.to.rawValue); nothing changed")
            return
        }
        var metadata: Logger.Metadata = [
            "subscriber": "\(name)", "from": "\(change.from.rawValue)", "to": "\(change.to.rawValue)", "actor": "\(actor)",
        ]
        if let reason = change.reason { metadata["reason"] = "\(reason)" }
        logger.notice("subscriber \(Self.pastTense(action))", metadata: metadata)
        switch change.to {
        case .enabled:
            print("\(Self.pastTense(action)) \(name): its queued changes are sent in order (running daemons notice within relay.poll_interval_ms)")
        case .paused:
            print("paused \(name): no requests until 'consent-sync subscriber resume \(name)'; its changes keep queuing")
        case .disabled:
            print("disabled \(name): no requests until 'consent-sync subscriber enable \(name)'; its changes keep queuing")
        }
    }

    static func pastTense(_ action: SubscriberState.Action) -> String {
        switch action {
        case .pause: "paused"
        case .resume: "resumed"
        case .enable: "enabled"
        case .disable: "disabled"
        }
    }
}

/// Who runs this command, for the audit trail: `operator (alice)`; under sudo, the user who
/// called sudo.
func operatorActor() -> String {
    let environment = ProcessInfo.processInfo.environment
    guard let user = environment["SUDO_USER"] ?? environment["USER"] ?? environment["LOGNAME"], !user.isEmpty else {
        return "operator"
    }
    return "operator (\(user.prefix(64)))"
}
