import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Pause, resume, disable, enable: nothing is sent while a subscriber is off, nothing is
/// dropped, and everything arrives in order when it is on again.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct SubscriberStateTests {
    @Test func aPausedSubscriberGetsNothingAndResumeSendsEverythingInOrder() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("warm-up", "email", .granted)
                try await receiver.waitForRequests(count: 1)

                let paused = try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .pause, reason: "CRM upgrade until 14:00", actor: "operator (test)", on: connection)
                }
                #expect(paused.changed)
                #expect(paused.from == .enabled && paused.to == .paused)
                // No waiting for the relay to re-read its subscribers: a pause binds every
                // claim after it commits.

                let written = try await writeMixedChanges(database)
                try await waitUntil("the changes written while paused are queued for it") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": 1, "pending": written]
                }
                try await Task.sleep(for: .milliseconds(500))
                #expect(receiver.requests.count == 1, "a paused subscriber got requests")

                let again = try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .pause, reason: nil, actor: "operator (test)", on: connection)
                }
                #expect(!again.changed, "pausing twice records nothing")

                let resumed = try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .resume, reason: "upgrade done", actor: "operator (test)", on: connection)
                }
                #expect(resumed.from == .paused && resumed.to == .enabled)
                let requests = try await receiver.waitForRequests(count: 1 + written, timeout: .seconds(20))
                let events = try arrivedEvents(requests.dropFirst())
                #expect(events.count == written)
                #expect(inChangeOrderPerSubject(events), "out of order: \(sequencesBySubject(events))")
                try await waitUntil("all delivered") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": 1 + written]
                }
            }

            let history = try await database.withConnection { try await SubscriberStore.stateHistory(name: "crm", on: $0) }
            #expect(history.map(\.action) == [.pause, .resume])
            #expect(history.map(\.reason) == ["CRM upgrade until 14:00", "upgrade done"])
            #expect(history.map(\.to) == [.paused, .enabled])
            #expect(history.map(\.actor) == ["operator (test)", "operator (test)"])
        }
    }

    @Test func aDisabledSubscriberKeepsItsDeliveriesAndEnableSendsThemInOrder() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let crm = try await WebhookReceiver.start()
            let warehouse = try await WebhookReceiver.start()
            defer { Task { await crm.stop(); await warehouse.stop() } }
            try await RelayFixture.addSubscriber("crm", url: crm.url, on: database)
            try await RelayFixture.addSubscriber("warehouse", url: warehouse.url, on: database)
            let crmID = try await database.withConnection { connection in
                try await SubscriberStore.all(on: connection).first { $0.name == "crm" }?.id
            }

            try await RelayFixture.withRelay(on: database) { _ in
                // What the relay calls when a receiver answers 410 Gone.
                let disabled = try await database.withConnection { connection in
                    try await SubscriberStore.disable(
                        id: try #require(crmID), reason: "receiver answered 410 Gone", actor: "consent-sync (410 Gone from receiver)", on: connection
                    )
                }
                #expect(disabled?.to == .disabled)

                let written = try await writeMixedChanges(database)
                // The other subscriber is not held up.
                try await warehouse.waitForRequests(count: written)
                try await Task.sleep(for: .milliseconds(500))
                #expect(crm.requests.isEmpty, "a disabled subscriber got requests")
                #expect(try await deliveryCounts(database, subscriber: "crm") == ["pending": written])

                let subscribers = try await database.withConnection { try await SubscriberStore.all(on: $0) }
                let crmSubscriber = subscribers.first { $0.name == "crm" }
                let seen = try #require(crmSubscriber)
                #expect(!seen.enabled)
                #expect(seen.state == .disabled)
                #expect(seen.stateReason == "receiver answered 410 Gone")

                // `resume` is for pauses, and `pause` of a disabled subscriber means nothing: both refused.
                for action in [SubscriberState.Action.resume, .pause] {
                    let error = await errorThrown {
                        try await database.withConnection { connection in
                            try await SubscriberStore.changeState(name: "crm", action: action, reason: nil, actor: "operator (test)", on: connection)
                        }
                    }
                    #expect((error as? SubscriberStateError)?.code == .refused, "\(action): \(String(describing: error))")
                }
                #expect(try await deliveryCounts(database, subscriber: "crm") == ["pending": written], "pending deliveries survive")

                try await database.withConnection { connection in
                    try await SubscriberStore.changeState(name: "crm", action: .enable, reason: "receiver moved to a new URL", actor: "operator (test)", on: connection)
                }
                let requests = try await crm.waitForRequests(count: written, timeout: .seconds(20))
                let events = try arrivedEvents(requests)
                #expect(inChangeOrderPerSubject(events), "out of order: \(sequencesBySubject(events))")
                try await waitUntil("all delivered") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": written]
                }
            }

            let history = try await database.withConnection { try await SubscriberStore.stateHistory(name: "crm", on: $0) }
            #expect(history.map(\.action) == [.disable, .enable])
            #expect(history.map(\.actor) == ["consent-sync (410 Gone from receiver)", "operator (test)"])
            #expect(history.map(\.reason) == ["receiver answered 410 Gone", "receiver moved to a new URL"])
            let after = try await database.withConnection { try await SubscriberStore.all(on: $0) }
            let enabled = after.first { $0.name == "crm" }
            #expect(enabled?.state == .enabled)
            #expect(enabled?.stateReason == nil, "enabling clears the reason")
        }
    }

    @Test func theCommandsChangeRecordAndShowTheState() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.addSubscriber("crm", url: "https://crm.example.com/hooks", on: database)
            let environment = commandEnvironment(database)

            let pause = try await DaemonProcess.run(["subscriber", "pause", "crm", "--reason", "CRM maintenance"], environment: environment)
            #expect(pause.status == 0, "\(pause.stderr)")
            #expect(pause.stdout.contains("paused crm"))
            #expect(pause.stderr.contains("subscriber paused"), "the change is logged: \(pause.stderr)")
            #expect(pause.stderr.contains("operator (tester)"))

            let list = try await DaemonProcess.run(["subscriber", "list"], environment: environment)
            #expect(list.status == 0, "\(list.stderr)")
            let crmLine = list.stdout.split(separator: "\n").first { $0.hasPrefix("crm ") }
            let line = try #require(crmLine)
            #expect(line.contains("paused"))
            #expect(line.contains("CRM maintenance (by operator (tester), since "))

            let twice = try await DaemonProcess.run(["subscriber", "pause", "crm"], environment: environment)
            #expect(twice.status == 0)
            #expect(twice.stdout.contains("crm is already paused; nothing changed"))

            let disable = try await DaemonProcess.run(["subscriber", "disable", "crm", "--reason", "contract ended"], environment: environment)
            #expect(disable.status == 0, "\(disable.stderr)")

            // Refused, unknown, malformed: a clear error, nothing changed.
            let resume = try await DaemonProcess.run(["subscriber", "resume", "crm"], environment: environment)
            #expect(resume.status == 1)
            #expect(resume.stderr.contains("cannot resume 'crm': it is disabled, not paused"), "\(resume.stderr)")
            let unknown = try await DaemonProcess.run(["subscriber", "enable", "nosuch"], environment: environment)
            #expect(unknown.status == 1)
            #expect(unknown.stderr.contains("no subscriber named 'nosuch'"), "\(unknown.stderr)")
            let multiline = try await DaemonProcess.run(["subscriber", "enable", "crm", "--reason", "two\nlines"], environment: environment)
            #expect(multiline.status == 64)
            #expect(multiline.stderr.contains("--reason: the reason must be one line"), "\(multiline.stderr)")

            let history = try await database.withConnection { try await SubscriberStore.stateHistory(name: "crm", on: $0) }
            #expect(history.map(\.action) == [.pause, .disable])
            #expect(history.map(\.from) == [.enabled, .paused])
            #expect(history.map(\.actor) == ["operator (tester)", "operator (tester)"])
            let listing = try await database.withConnection { try await SubscriberStore.listing(on: $0) }
            #expect(listing.first?.state == .disabled)
            #expect(listing.first?.stateReason == "contract ended")

            for output in [pause, list, twice, disable, resume, unknown, multiline] {
                #expect(!output.stdout.contains("whsec_") && !output.stderr.contains("whsec_"), "a secret was printed")
            }
        }
    }

    @Test func version1SubscribersKeepTheirStateThroughTheMigration() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute("CREATE SCHEMA consent_sync")
                try await connection.execute(
                    "CREATE TABLE consent_sync.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                let first = try #require(Migrations.all.first)
                try await connection.execute(first.sql)
                try await connection.query("INSERT INTO consent_sync.schema_migrations (version, name) VALUES (1, $1)", [first.name])
                try await connection.query(
                    """
                    INSERT INTO consent_sync.subscribers (name, url, secrets, enabled)
                    VALUES ('on', 'https://a.example', ARRAY['x'], true), ('off', 'https://b.example', ARRAY['x'], false)
                    """
                )
                try await Migrator.migrate(connection, logger: RelayFixture.logger)
                let rows = try await connection.query("SELECT name, state, enabled FROM consent_sync.subscribers ORDER BY name")
                #expect(rows.map { [$0["name"], $0["state"], $0["enabled"]] } == [["off", "disabled", "f"], ["on", "enabled", "t"]])
            }
        }
    }
}

/// The state rules, without a database.
@Suite struct SubscriberStateTransitionTests {
    @Test(arguments: [
        (SubscriberState.enabled, SubscriberState.Action.pause, SubscriberState.Transition.change(to: .paused)),
        (.enabled, .resume, .unchanged),
        (.enabled, .enable, .unchanged),
        (.enabled, .disable, .change(to: .disabled)),
        (.paused, .pause, .unchanged),
        (.paused, .resume, .change(to: .enabled)),
        (.paused, .enable, .change(to: .enabled)),
        (.paused, .disable, .change(to: .disabled)),
        (.disabled, .disable, .unchanged),
        (.disabled, .enable, .change(to: .enabled)),
    ])
    func transitions(from state: SubscriberState, action: SubscriberState.Action, expected: SubscriberState.Transition) {
        #expect(state.applying(action) == expected)
    }

    @Test(arguments: [SubscriberState.Action.pause, .resume])
    func aDisabledSubscriberIsNotStartedOrPausedByMistake(action: SubscriberState.Action) {
        guard case .refused(let reason) = SubscriberState.disabled.applying(action) else {
            Issue.record("\(action) of a disabled subscriber was not refused")
            return
        }
        #expect(reason.contains("enable"))
    }

    @Test func enabledFollowsTheState() {
        var subscriber = Subscriber(id: 1, name: "a", url: "https://a.example", secrets: [], state: .paused, stateReason: "later")
        #expect(!subscriber.enabled)
        subscriber.enabled = true
        #expect(subscriber.state == .enabled)
        subscriber.enabled = false
        #expect(subscriber.state == .disabled)
        #expect(Subscriber(id: 2, name: "b", url: "https://b.example", secrets: [], enabled: false).state == .disabled)
    }

    @Test(arguments: ["two\nlines", "tab\there", String(repeating: "x", count: 501)])
    func unusableReasonsAreRefused(reason: String) {
        #expect(throws: SubscriberStateError.self) { try SubscriberStateError.checkedReason(reason) }
    }

    @Test func reasonsAreTrimmedAndEmptyOnesDropped() throws {
        #expect(try SubscriberStateError.checkedReason("  maintenance  ") == "maintenance")
        #expect(try SubscriberStateError.checkedReason("   ") == nil)
        #expect(try SubscriberStateError.checkedReason(nil) == nil)
    }
}
