import ArgumentParser
import ConsentSyncCore
import ConsentSyncEngine
import Foundation
import Logging

struct DeliveriesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deliveries",
        abstract: "List deliveries, and put dead ones back in the queue.",
        subcommands: [List.self, Retry.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the newest deliveries (oldest of them first). Shows subject ids; never secrets."
        )

        @OptionGroup var options: ConfigOptions

        @Option(help: ArgumentHelp("Only deliveries in this state: pending, in_flight, delivered or dead.", valueName: "state"))
        var state: String?

        @Option(help: "Only deliveries to this subscriber.")
        var subscriber: String?

        @OptionGroup var window: WindowOptions

        @Option(help: "Show at most this many (1-100000).")
        var limit: Int = 100

        @Flag(help: "Print JSON instead of a table.")
        var json = false

        func validate() throws {
            _ = try deliveryState()
            _ = try window.resolve()
            guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be between 1 and 100000") }
        }

        func deliveryState() throws -> DeliveryState? {
            guard let state else { return nil }
            guard let value = DeliveryState(rawValue: state) else {
                let names = DeliveryState.allCases.map(\.rawValue).joined(separator: ", ")
                throw ValidationError("--state '\(state.prefix(40))' is not a delivery state; use one of \(names)")
            }
            return value
        }

        func run() async throws {
            let query = DeliveryAdmin.Query(state: try deliveryState(), subscriber: subscriber, window: try window.resolve(), limit: limit)
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let page = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await DeliveryAdmin.list(query, on: connection)
            }
            print(json ? Self.json(page) : Self.table(page))
        }

        static func table(_ page: DeliveryAdmin.Page) -> String {
            guard !page.deliveries.isEmpty else { return "no deliveries match" }
            let rows = page.deliveries.map { delivery in
                [
                    String(delivery.id), delivery.subscriber, String(delivery.changeID), delivery.subject, delivery.eventType,
                    delivery.state.rawValue, String(delivery.attempts), lastResult(delivery),
                    TimeWindow.format(delivery.capturedAt), finishedOrNext(delivery),
                    delivery.replayOf.map { String($0) } ?? "-",
                ]
            }
            var text = TextTable.render(
                header: ["ID", "SUBSCRIBER", "CHANGE", "SUBJECT", "EVENT", "STATE", "ATTEMPTS", "LAST RESULT", "CAPTURED", "DONE / NEXT", "REPLAY OF"],
                rows: rows
            )
            if page.more {
                text += "\n(the newest \(page.deliveries.count); more match: raise --limit, or narrow with --since/--until)"
            }
            return text
        }

        /// `400 receiver answered 400; retrying cannot help`, on one line, cut at 60 characters.
        static func lastResult(_ delivery: DeliveryRecord) -> String {
            let parts = [delivery.lastStatus.map { String($0) }, delivery.lastError].compactMap { $0 }
            guard !parts.isEmpty else { return "-" }
            let line = parts.joined(separator: " ").map { $0.isNewline || $0 == "\t" ? " " : $0 }
            return line.count > 60 ? String(line.prefix(59)) + "…" : String(line)
        }

        static func finishedOrNext(_ delivery: DeliveryRecord) -> String {
            switch delivery.state {
            case .delivered, .dead:
                delivery.completedAt.map(TimeWindow.format) ?? "-"
            case .inFlight:
                "in flight"
            case .pending:
                delivery.waitsForEarlierChange
                    ? "after an earlier change"
                    : delivery.nextAttemptAt.map { "next " + TimeWindow.format($0) } ?? "-"
            }
        }

        static func json(_ page: DeliveryAdmin.Page) -> String {
            struct Output: Encodable {
                var deliveries: [DeliveryRecord]
                /// More match than --limit let through.
                var more: Bool
            }
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return (try? String(decoding: encoder.encode(Output(deliveries: page.deliveries, more: page.more)), as: UTF8.self)) ?? "{}"
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead deliveries back in the queue: one (--id), or all of a subscriber's, optionally within a time window.",
            discussion: """
                They are sent again in change order per subject, behind anything of that subject \
                still queued before them. Their attempt log is kept.
                """
        )

        @OptionGroup var options: ConfigOptions

        @Option(help: "The dead delivery to re-queue.")
        var id: Int64?

        @Option(help: "Re-queue every dead delivery to this subscriber (within --since/--until).")
        var subscriber: String?

        @OptionGroup var window: WindowOptions

        func validate() throws {
            switch (id, subscriber) {
            case (nil, nil):
                throw ValidationError("say which dead deliveries to re-queue: --id N, or --subscriber NAME")
            case (.some, .some):
                throw ValidationError("use either --id or --subscriber, not both")
            case (.some, nil) where window.since != nil || window.until != nil:
                throw ValidationError("--since and --until go with --subscriber, not with --id")
            default:
                _ = try window.resolve()
            }
        }

        func run() async throws {
            let selection: DeliveryAdmin.RetrySelection = if let id {
                .delivery(id: id)
            } else {
                .subscriber(name: subscriber ?? "", window: try window.resolve())
            }
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let actor = operatorActor()
            let result = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await DeliveryAdmin.retry(selection, actor: actor, on: connection)
            }
            guard !result.requeued.isEmpty else {
                print("no dead deliveries to \(result.subscriber) in that window; nothing to re-queue")
                return
            }
            logger.notice(
                "re-queued dead deliveries",
                metadata: ["subscriber": "\(result.subscriber)", "count": "\(result.requeued.count)", "actor": "\(actor)"]
            )
            let count = result.requeued.count == 1 ? "1 dead delivery" : "\(result.requeued.count) dead deliveries"
            var line = "re-queued \(count) to \(result.subscriber)"
            if result.waiting > 0 { line += " (\(result.waiting) wait for an earlier change of their subject)" }
            print(line)
            if let note = stateNote(result.subscriberState, subscriber: result.subscriber) { print(note) }
        }
    }
}

/// `--since` and `--until`, shared by `deliveries` and `replay`.
struct WindowOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Only changes captured at or after this time: ISO 8601 (2026-11-29T10:15:00Z, 2026-11-29; UTC unless an offset is given) or an age (90m, 2h, 3d).",
        valueName: "time"
    ))
    var since: String?

    @Option(help: ArgumentHelp("Only changes captured before this time (same forms as --since).", valueName: "time"))
    var until: String?

    /// The window, relative times counted back from now.
    func resolve(now: Date = Date()) throws -> TimeWindow {
        try Self.window(since: since, until: until, now: now)
    }

    /// Parses `--since` and `--until`; a bad value is a usage error.
    static func window(since: String?, until: String?, now: Date) throws -> TimeWindow {
        do {
            let since = try since.map { try TimeWindow.parseTime($0, option: "--since", now: now) }
            let until = try until.map { try TimeWindow.parseTime($0, option: "--until", now: now) }
            return try TimeWindow(since: since, until: until)
        } catch let error as TimeWindowError {
            throw ValidationError(error.message)
        }
    }
}

/// A reminder that a paused or disabled subscriber gets nothing until it is on again.
func stateNote(_ state: SubscriberState, subscriber: String) -> String? {
    switch state {
    case .enabled: nil
    case .paused: "note: \(subscriber) is paused; they are sent after 'consent-sync subscriber resume \(subscriber)'"
    case .disabled: "note: \(subscriber) is disabled; they are sent after 'consent-sync subscriber enable \(subscriber)'"
    }
}
