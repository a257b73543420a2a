import ArgumentParser
import ConsentSyncEngine
import Foundation
import Logging

struct TraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Show one subject's timeline: every change, and where each arrived, when, and what the receiver answered.",
        discussion: """
            For each captured change of the subject, per subscriber: delivered (time, HTTP status, \
            and the receiver's own verdict when it answered {"applied": true|false, "reason": "..."}), \
            or why not yet (retrying after an error, waiting for an earlier change, subscriber paused \
            or disabled, superseded, dead). After 'consent-sync forget', the receipts remain under the \
            subject's keyed hash and are still found by its id. The ops listener serves the same as \
            JSON at GET /v1/subjects/{id}/receipts (ops.receipts_token_file).
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The subject id, as in the consent table.")
    var subject: String

    @Flag(help: "Print JSON (the receipts API's format) instead of text.")
    var json = false

    func validate() throws {
        guard !subject.isEmpty, subject.utf8.count <= 2048 else { throw ValidationError("the subject id must be 1 to 2048 bytes") }
    }

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let trace = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            return try await SubjectTrace.load(subject: subject, on: connection)
        }
        if json {
            print(String(decoding: try trace.json(), as: UTF8.self))
        } else {
            print(trace.text())
        }
    }
}

struct ForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Erase a subject: tell every recipient (subject.erased), then remove its personal data here, keeping a receipt.",
        discussion: """
            Deletes the subject's rows from the default consent table (each sent as consent.deleted) \
            and queues a subject.erased event for every subscriber, whatever its filters (paused and \
            disabled ones too: the erasure waits for them). Once every recipient has acknowledged it, \
            a running daemon replaces the subject id in schema consent_sync by its keyed hash and \
            removes the payloads and answer texts, keeping when, what and who as proof. Tables you \
            watch are your application's: delete the subject's rows there first. \
            'consent-sync trace SUBJECT' shows the progress.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The subject id to erase.")
    var subject: String

    @Option(help: ArgumentHelp("Wait up to this many seconds for every recipient to acknowledge, and complete the erasure; 0: return at once.", valueName: "seconds"))
    var wait: Int = 0

    func validate() throws {
        guard !subject.isEmpty, subject.utf8.count <= 2048 else { throw ValidationError("the subject id must be 1 to 2048 bytes") }
        guard (0...86_400).contains(wait) else { throw ValidationError("--wait must be between 0 and 86400 seconds") }
    }

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        let (logger, _) = bootstrapLogging(configuration)
        let actor = operatorActor()
        let (request, complete) = try await withDatabase(configuration, logger: logger) { connection in
            try await Migrator.requireCurrent(connection)
            let request = try await ErasureStore.forget(subject: subject, actor: actor, on: connection)
            let deadline = ContinuousClock.now + .seconds(wait)
            var complete = false
            while wait > 0 && !complete && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(250))
                try await ErasureStore.completeDue(on: connection)
                complete = try await ErasureStore.isComplete(request.erasureID, on: connection) ?? false
            }
            return (request, complete)
        }
        logger.notice("erasure requested", metadata: ["erasure": "\(request.erasureID)", "change": "\(request.changeID)", "actor": "\(actor)"])
        print("erasure \(request.erasureID): subject.erased queued for every subscriber (change \(request.changeID)); \(request.deletedConsents) row(s) deleted from consent_sync.consents")
        if complete {
            print("every recipient acknowledged it; the subject's personal data is removed, the receipt kept")
        } else {
            print("the subject's data is removed once every recipient acknowledges it (a running daemon does it); 'consent-sync trace' shows who has")
        }
    }
}
