import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import Foundation
import Logging

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Send changes already delivered to a subscriber again, as new deliveries.",
        discussion: """
            Each change captured in the window and delivered to the subscriber is sent once more: \
            with a new webhook-id (a new delivery, so receivers that de-duplicate do not drop it), \
            the same CloudEvents id and sequence, in change order per subject, behind anything of \
            that subject still queued before it. Changes still queued for the subscriber are \
            skipped. 'deliveries list --state delivered --subscriber NAME --since T' shows what \
            would be sent.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "The subscriber to send to.")
    var subscriber: String

    @Option(help: ArgumentHelp(
        "Changes captured at or after this time: ISO 8601 (2026-11-29T10:15:00Z, 2026-11-29; UTC unless an offset is given) or an age (90m, 2h, 3d).",
        valueName: "time"
    ))
    var since: String

    @Option(help: ArgumentHelp("Only changes captured before this time (same forms as --since).", valueName: "time"))
    var until: String?

    func validate() throws {
        _ = try window()
    }

    func window(now: Date = Date()) throws -> TimeWindow {
        try WindowOptions.window(since: since, until: until, now: now)
    }

    func run() async throws {
        let window = try window()
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let actor = operatorActor()
        let result = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            return try await DeliveryAdmin.replay(subscriber: subscriber, window: window, actor: actor, on: connection)
        }
        if result.skippedStillQueued > 0 {
            print("\(result.skippedStillQueued) change(s) not replayed: still queued for \(subscriber), they are sent anyway")
        }
        guard let first = result.created.first, let last = result.created.last else {
            print("no delivered changes to \(subscriber) in that window; nothing to replay")
            return
        }
        logger.notice(
            "replaying delivered changes",
            metadata: ["subscriber": "\(subscriber)", "count": "\(result.created.count)", "actor": "\(actor)"]
        )
        let count = result.created.count == 1 ? "1 change" : "\(result.created.count) changes"
        var line = "replaying \(count) to \(subscriber) as new deliveries \(first == last ? "\(first)" : "\(first)…\(last)")"
        if result.waiting > 0 { line += " (\(result.waiting) wait for an earlier change of their subject)" }
        print(line)
        if let note = stateNote(result.subscriberState, subscriber: subscriber) { print(note) }
    }
}
