import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncLogging
import ConsentSyncOps
import Logging
import Metrics
import ServiceLifecycle
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
            subscribers); an invalid file is logged and the running configuration kept.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, logLevel) = bootstrapLogging(configuration)
        for warning in configuration.warnings {
            logger.warning("configuration: \(warning)")
        }

        // Metrics first: the relay creates its counters when it is made.
        let (factory, registry) = Observability.makePrometheusFactory(version: ConsentSyncVersion.current)
        MetricsSystem.bootstrap(factory)

        let http = HTTPClient(configuration: configuration.http.client(userAgent: configuration.relay.userAgent), logger: logger)
        defer { http.shutdown() }
        let relay = Relay(configuration: configuration.relay, database: configuration.database, http: http, logger: logger)
        let systemd = SystemdService(health: relay.health, logger: logger)

        // A ServiceGroup stops its services last to first: the relay drains while systemd
        // and the ops endpoints still report on it.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: systemd)]
        if configuration.ops.enabled {
            let ops = OpsServer(
                configuration: .init(host: configuration.ops.host, port: configuration.ops.port, livenessWindow: configuration.ops.healthWindow),
                health: relay.health,
                registry: registry,
                logger: logger
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
        let reloader = Reloader(options: options, relay: relay, http: http, logLevel: logLevel, systemd: systemd, logger: logger)
        do {
            try await runUntilStopped(group: group, signals: signals, reloader: reloader, logger: logger)
        } catch is CancellationError {
            // A second signal: the relay wrote back what it could; the rest stays pending.
        }
        logger.info("consent-sync stopped")
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
        } catch {
            logger.error("configuration reload rejected; keeping the running configuration", metadata: ["error": "\(error)"])
        }
    }
}
