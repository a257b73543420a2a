import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import Logging
import ServiceLifecycle
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the daemon: watch the outbox and deliver webhooks until stopped (SIGTERM/SIGINT).")

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
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        logger.info("consent-sync starting", metadata: ["version": "\(ConsentSyncVersion.current)", "instance": "\(relay.instanceID)"])
        try await group.run()
    }
}

