import ArgumentParser
import ConsentSyncEngine
import Foundation
import Logging

struct CaptureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Show or switch how changes leave the application's transaction.",
        discussion: """
            table (the default): the capture trigger inserts each change into a queue table in the \
            application's transaction. logical: it writes a logical decoding message instead (one WAL \
            record, no row), and a daemon streams the messages of committed transactions from a \
            replication slot, in commit order, exactly once. Cheaper for the application's writes; needs \
            wal_level = logical, the REPLICATION attribute (or superuser) for the role that runs this and \
            for the daemons' role, and a daemon reading the slot: an unread slot keeps WAL (set \
            max_slot_wal_keep_size). \
            Switching locks the watched tables against writes for a moment; switching back to table \
            reads the slot up to the switch and drops it. Without an argument: the mode and the slot.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: ArgumentHelp("table or logical.", valueName: "mode"))
    var mode: String?

    func validate() throws {
        if let mode, CaptureMode(rawValue: mode) == nil {
            throw ValidationError("unknown capture mode '\(mode.prefix(40))'; use table or logical")
        }
    }

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let wanted = mode.flatMap(CaptureMode.init(rawValue:))
        let state = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            if let wanted {
                try await CaptureStore.setMode(wanted, on: connection)
            }
            return try await CaptureStore.state(on: connection)
        }
        if let wanted {
            logger.notice("capture mode switched", metadata: ["mode": "\(wanted.rawValue)", "actor": "\(operatorActor())"])
        }
        print("capture mode: \(state.mode.rawValue)")
        if let slot = state.slotName {
            let lag = state.slotLagBytes.map { "\($0) bytes of WAL held" } ?? "?"
            print("replication slot: \(slot) (\(state.slotLost ? "LOST: changes since it was lost were not captured; run a resync" : lag))")
            if state.mode == .table {
                print("the slot is still read up to the switch by a running daemon, then dropped")
            }
        }
    }
}
