import ArgumentParser
import ConsentSyncCore

@main
struct ConsentSyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consent-sync",
        abstract: "Relays every committed consent change in PostgreSQL to downstream systems as signed webhooks.",
        version: ConsentSyncVersion.current,
        subcommands: [
            RunCommand.self,
            MigrateCommand.self,
            SubscriberCommand.self,
            KeysCommand.self,
            DeliveriesCommand.self,
            ReplayCommand.self,
            WatchCommand.self,
            CaptureCommand.self,
            TraceCommand.self,
            ForgetCommand.self,
            ResyncCommand.self,
            StatusCommand.self,
            ReceiveCommand.self,
            CheckConfigCommand.self,
        ]
    )
}

/// Options every command that reads the configuration takes.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Configuration file (YAML).", valueName: "path"))
    var config: String?

    func load() async throws -> AppConfiguration {
        try await AppConfiguration.load(path: config)
    }
}
