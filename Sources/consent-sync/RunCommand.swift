import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncLogging
import ConsentSyncOps
import Foundation
import ConsentSyncPostgres
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the daemon: watch the outbox and deliver webhooks until stopped.",
        discussion: """
            SIGTERM or SIGINT: stop claiming, let requests in flight finish (up to \
            relay.drain_timeout_ms), record their results, exit 0. A second signal stops at once; \
            unfinished deliveries stay pending and are sent after the next start. \
            SIGHUP: re-read the configuration file (log level, limits, pacing, retry policy, \
            subscribers); an invalid file is logged and the running configuration kept. \
            Master keys (secrets.*) are read at start only. \
            Exits 78 at start when a subscriber's signing secret cannot be decrypted with the \
            configured master keys.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, logLevel) = bootstrapLogging(configuration)
        for warning in configuration.warnings {
            logger.warning("configuration: \(warning)")
        }

        // Never sign with the wrong secret: refuse to start when a secret cannot be decrypted.
        try await SecretStartupCheck(configuration: configuration, logger: logger).run()

        // Metrics first: the relay creates its counters when it is made.
        let (factory, registry) = Observability.makePrometheusFactory(version: ConsentSyncVersion.current)
        MetricsSystem.bootstrap(factory)

        let http = HTTPClient(configuration: configuration.http.client(userAgent: configuration.relay.userAgent), logger: logger)
        let relay = Relay(
            configuration: configuration.relay, database: configuration.database, http: http,
            keyring: configuration.secretKeys.keyring, logger: logger
        )
        let systemd = SystemdService(health: relay.health, logger: logger)

        // A ServiceGroup stops its services last to first: the relay drains while systemd
        // and the ops endpoints still report on it.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: systemd)]
        if configuration.ops.enabled {
            let ops = OpsServer(
                configuration: .init(host: configuration.ops.host, port: configuration.ops.port, livenessWindow: configuration.ops.healthWindow),
                health: relay.health,
                registry: registry,
                receipts: configuration.ops.receiptsToken.map { token in
                    let lookup = ReceiptLookup(database: configuration.database, logger: logger)
                    return OpsServer.ReceiptsAPI(token: token) { subject in try await lookup.receipts(subject: subject) }
                },
                logger: logger,
                onServerRunning: { [logger, host = configuration.ops.host] port in
                    // The port actually bound: `ops.listen` may give port 0 for any free one.
                    logger.info("ops endpoints listening", metadata: ["address": "\(host.contains(":") ? "[\(host)]" : host):\(port)"])
                }
            )
            services.append(.init(service: ops))
        }
        services.append(.init(service: relay, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))

        logger.info("consent-sync starting", metadata: [
            "version": "\(ConsentSyncVersion.current)",
            "instance": "\(relay.instanceID)",
            "ops": "\(configuration.ops.enabled ? "\(configuration.ops.host):\(configuration.ops.port)" : "disabled")",
        ])

        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let reloader = Reloader(
            options: options, relay: relay, http: http, logLevel: logLevel, systemd: systemd,
            keyIDs: configuration.secretKeys.keyring.keyIDs, logger: logger
        )
        do {
            try await runUntilStopped(group: group, signals: signals, reloader: reloader, logger: logger)
        } catch is CancellationError {
            // A second signal: the relay wrote back what it could; the rest stays pending.
        }
        await shutDown(http, logger: logger)
        logger.info("consent-sync stopped")
        // Every result is written and every log line too (one write(2) each). End here rather
        // than in exit(), whose atexit handlers (OpenSSL's, libcurl's) run while other threads,
        // such as the listener's, may still be inside libpq: seen once in CI, a daemon that had
        // logged "stopped" was still there 30 s later.
        fflush(nil)  // every stdio stream (print)
        _exit(0)
    }

    /// Stops the HTTP client's thread, but never lets it hold up the exit: every result is
    /// already written, so after a few seconds the process ends regardless.
    private func shutDown(_ http: HTTPClient, logger: Logger) async {
        let done = Atomic<Bool>(false)
        let thread = Thread {
            http.shutdown()
            done.store(true, ordering: .releasing)
        }
        thread.start()
        let deadline = ContinuousClock.now + .seconds(5)
        while !done.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        if !done.load(ordering: .acquiring) {
            logger.warning("the HTTP client did not stop within 5 s; exiting anyway")
        }
    }

    private func runUntilStopped(group: ServiceGroup, signals: UnixSignalsSequence, reloader: Reloader, logger: Logger) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                var stopRequests = 0
                for await signal in signals {
                    switch signal {
                    case .sighup:
                        await reloader.reload()
                    default:
                        stopRequests += 1
                        if stopRequests == 1 {
                            logger.info("stopping: finishing requests in flight", metadata: ["signal": "\(signal)"])
                            await group.triggerGracefulShutdown()
                        } else {
                            logger.warning("stopping now: unfinished deliveries stay pending", metadata: ["signal": "\(signal)"])
                            throw CancellationError()
                        }
                    }
                }
            }
            // The group ends after a graceful shutdown; a second signal ends the signal task
            // with an error, which cancels the group.
            try await tasks.next()
            tasks.cancelAll()
        }
    }
}

/// SIGHUP: re-reads the file and applies what can change while running; keeps the old
/// settings when the new file is invalid.
struct Reloader: Sendable {
    let options: ConfigOptions
    let relay: Relay
    let http: HTTPClient
    let logLevel: LogLevelControl
    let systemd: SystemdService
    /// The master keys the relay was started with.
    let keyIDs: [String]
    let logger: Logger

    func reload() async {
        systemd.reloading()
        defer { systemd.reloaded() }
        do {
            let updated = try await options.load()
            relay.reconfigure(updated.relay)
            http.updateAddressPolicy(updated.http.addressPolicy)
            logLevel.level = updated.log.level
            logger.info("configuration reloaded", metadata: ["log_level": "\(updated.log.level)"])
            if updated.secretKeys.keyring.keyIDs != keyIDs {
                logger.warning("secrets.* master keys changed; they are read at start only: restart consent-sync to use them", metadata: [
                    "running_keys": "\(keyIDs.joined(separator: ","))",
                    "configured_keys": "\(updated.secretKeys.keyring.keyIDs.joined(separator: ","))",
                ])
            }
        } catch {
            logger.error("configuration reload rejected; keeping the running configuration", metadata: ["error": "\(error)"])
        }
    }
}

/// Before the daemon starts: can every subscriber's signing secret be decrypted with the
/// configured master keys?
///
/// A secret that cannot be decrypted (a key that is not configured, a wrong key, an altered
/// ciphertext) is a configuration error: `run` prints which subscriber and which key and exits
/// 78, so systemd does not restart it in a loop and nothing is ever signed with a wrong
/// secret. Skipping that subscriber instead would leave its receiver silently without
/// changes while the service looks healthy. When the database cannot be reached (or is not
/// migrated) the check is skipped, because the daemon must start and wait for the database;
/// the relay then leaves out, and logs, any subscriber whose secrets it cannot read.
struct SecretStartupCheck {
    let configuration: AppConfiguration
    let logger: Logger
    /// How long to try reaching the database for the check.
    var timeout: Duration = .seconds(10)

    enum Outcome: Sendable {
        case readable(plaintext: [SubscriberStore.KeyUsage])
        case unreadable(SecretKeyringError)
        case skipped(String)
    }

    func run() async throws {
        let keyring = configuration.secretKeys.keyring
        switch await check(keyring) {
        case .unreadable(let error):
            printError("consent-sync: \(error)")
            throw ExitCode(exitConfigError)
        case .skipped(let reason):
            logger.warning("signing secrets not checked at start-up; a subscriber whose secrets cannot be read will be left out and logged", metadata: ["reason": "\(reason)"])
        case .readable(let plaintext):
            let count = plaintext.reduce(0) { $0 + $1.secrets }
            guard count > 0, keyring.current != nil || !keyring.allowsPlaintext else { return }
            let todo = keyring.current == nil
                ? "set secrets.master_key_file, then run 'consent-sync keys rotate' to encrypt them"
                : "run 'consent-sync keys rotate' to encrypt them"
            logger.warning("signing secrets are stored unencrypted in the database; \(todo)", metadata: [
                "secrets": "\(count)",
                "subscribers": "\(plaintext.flatMap(\.subscribers).joined(separator: ","))",
            ])
        }
    }

    private func check(_ keyring: SecretKeyring) async -> Outcome {
        let database = configuration.database.with("application_name", "consent-sync start-up check")
        let logger = self.logger
        let timeout = self.timeout
        return await withTaskGroup(of: Outcome.self) { group in
            group.addTask {
                let connection: PostgresConnection
                do {
                    connection = try await PostgresConnection.connect(database, logger: logger)
                } catch {
                    return .skipped("cannot connect to the database: \(error)")
                }
                let outcome: Outcome
                do {
                    try await Migrator.requireCurrent(connection)
                    _ = try await SubscriberStore.all(on: connection, keyring: keyring)
                    outcome = .readable(plaintext: try await SubscriberStore.keyUsage(on: connection).filter { $0.keyID == nil })
                } catch let error as SecretKeyringError {
                    outcome = .unreadable(error)
                } catch {
                    outcome = .skipped("\(error)")
                }
                await connection.close()
                return outcome
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .skipped("the database did not answer within \(timeout)")
            }
            let first = await group.next() ?? .skipped("cancelled")
            group.cancelAll()
            return first
        }
    }
}
