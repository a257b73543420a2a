import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import Logging
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
            SIGHUP: re-read the configuration file; an invalid file is logged and ignored.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let logger = bootstrapLogging(level: configuration.logLevel)
        let http = HTTPClient(configuration: .init(userAgent: configuration.relay.userAgent), logger: logger)
        defer { http.shutdown() }
        let relay = Relay(configuration: configuration.relay, database: configuration.database, http: http, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: relay, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
                logger: logger
            )
        )
        logger.info("consent-sync starting", metadata: ["version": "\(ConsentSyncVersion.current)", "instance": "\(relay.instanceID)"])

        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        do {
            try await runUntilStopped(group: group, relay: relay, signals: signals, logger: logger)
        } catch is CancellationError {
            // A second signal: the relay wrote back what it could; the rest stays pending.
        }
        logger.info("consent-sync stopped")
    }

    private func runUntilStopped(group: ServiceGroup, relay: Relay, signals: UnixSignalsSequence, logger: Logger) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                var stopRequests = 0
                for await signal in signals {
                    switch signal {
                    case .sighup:
                        await reload(relay: relay, logger: logger)
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

    /// SIGHUP: re-reads the file; applies what can change while running; keeps the old
    /// settings when the new file is invalid.
    private func reload(relay: Relay, logger: Logger) async {
        do {
            let updated = try await options.load()
            relay.reconfigure(updated.relay)
            logger.info("configuration reloaded")
        } catch {
            logger.error("configuration reload rejected; keeping the running configuration", metadata: ["error": "\(error)"])
        }
    }
}
