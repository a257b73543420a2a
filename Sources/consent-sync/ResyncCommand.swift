import ArgumentParser
import ConsentSyncEngine
import Foundation
import ConsentSyncPostgres
import Logging
import Synchronization

struct ResyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resync",
        abstract: "Back-fill a subscriber with the current state of every consent row, as consent.snapshot events.",
        discussion: """
            Reads every watched table in chunks (one short transaction each, rows locked only \
            while read) and queues one consent.snapshot per row for this subscriber, behind any \
            live change of the same subject: a snapshot never overtakes, nor arrives after, a \
            newer live change. Interrupted (Ctrl-C, a crash), it resumes where it stopped when run \
            again with the same --subscriber and --purpose. The daemon sends the snapshots.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "The subscriber to back-fill.")
    var subscriber: String

    @Option(help: "Only rows of this purpose.")
    var purpose: String?

    @Option(help: ArgumentHelp("At most this many rows queued per second (default: as fast as the database allows).", valueName: "rows/s"))
    var rate: Double?

    @Option(help: "Rows per transaction (1-10000).")
    var chunk: Int = 500

    func validate() throws {
        guard (1...10_000).contains(chunk) else { throw ValidationError("--chunk must be between 1 and 10000") }
        if let rate { guard rate > 0 && rate <= 1_000_000 else { throw ValidationError("--rate must be a number of rows per second above 0") } }
        if let purpose { guard !purpose.isEmpty && purpose.count <= 128 else { throw ValidationError("--purpose must be 1 to 128 characters") } }
    }

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let actor = operatorActor()
        let (job, queued) = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            return try await Self.resync(subscriber: subscriber, purpose: purpose, rate: rate, chunk: chunk, actor: actor, on: connection)
        }
        logger.notice("resync finished", metadata: ["subscriber": "\(job.subscriber)", "resync": "\(job.id)", "rows": "\(queued)", "actor": "\(actor)"])
        print("resync \(job.id) of \(job.subscriber) done: \(job.rows + queued) snapshot(s) queued\(job.resumed ? " (resumed; \(queued) in this run)" : ""); the daemon sends them")
    }

    /// Starts (or resumes) and runs a job, printing progress every few seconds.
    static func resync(subscriber: String, purpose: String?, rate: Double?, chunk: Int, actor: String, on connection: PostgresConnection) async throws -> (ResyncStore.Job, Int) {
        let job = try await ResyncStore.start(subscriber: subscriber, purpose: purpose, actor: actor, on: connection)
        if job.resumed { print("resuming resync \(job.id) of \(subscriber) after \(job.rows) row(s)") }
        let lastReport = Mutex(ContinuousClock.now)
        let queued = try await ResyncStore.run(job, chunk: chunk, rate: rate, on: connection) { total in
            let due = lastReport.withLock { last in
                guard ContinuousClock.now - last >= .seconds(5) else { return false }
                last = .now
                return true
            }
            if due { print("… \(total) row(s) queued") }
        }
        return (job, queued)
    }
}
