import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// `consent-sync capture logical`: the trigger writes logical decoding messages, a daemon
/// reads them from a replication slot. Needs `wal_level = logical` (scripts/with-postgres.sh
/// starts PostgreSQL with it).
@Suite struct LogicalCaptureTests {
    static func queued(_ database: TestDatabase) async throws -> Int {
        try await database.withConnection { connection in
            try await connection.query("SELECT count(*) AS n FROM consent_sync.captured").first?.int("n") ?? -1
        }
    }

    static func slots(_ database: TestDatabase) async throws -> Int {
        try await database.withConnection { connection in
            try await connection.query("SELECT count(*) AS n FROM pg_replication_slots WHERE database = current_database()").first?.int("n") ?? -1
        }
    }

    /// "subject/purpose/type/previous" of each request, in arrival order.
    static func events(_ requests: [WebhookReceiver.Request]) throws -> [String] {
        try requests.map { request in
            let event = try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
            let data = try #require(event["data"] as? [String: Any])
            let type = (event["type"] as? String ?? "?").replacingOccurrences(of: "consent.", with: "")
            return "\(event["subject"] as? String ?? "?")/\(data["purpose"] as? String ?? "?")/\(type)/\(data["previous_status"] as? String ?? "-")"
        }
    }

    @Test func changesGoThroughTheWALInCommitOrderAndTheWriterInsertsNoRow() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            #expect(try await Self.slots(database) == 1)

            // No daemon yet: the application's writes leave nothing in the queue table.
            let writer = ConsentWriter(database: database)
            try await writer.set("a, \"odd\" (id)", "email", .granted)
            try await writer.set("a, \"odd\" (id)", "email", .withdrawn)
            try await writer.set("b", "ads", .denied, source: nil)
            try await writer.set("b", "ads", .denied, source: nil)  // no change: not captured
            try await database.withConnection { connection in
                try await connection.query("DELETE FROM consent_sync.consents WHERE subject_id = $1", ["a, \"odd\" (id)"])
                // Someone else's message under our prefix: kept as a change that cannot be sent.
                try await connection.query("SELECT pg_logical_emit_message(true, 'consent_sync', 'not a record (')")
            }
            #expect(try await Self.queued(database) == 0)

            try await RelayFixture.withRelay(on: database) { _ in
                try await receiver.waitForRequests(count: 4)
                try await waitUntil("everything recorded") {
                    try await deliveryCounts(database, subscriber: "crm") == ["delivered": 4, "dead": 1]
                }
            }
            // In order per subject (subjects go out side by side).
            let arrived = try Self.events(receiver.requests)
            #expect(arrived.filter { $0.hasPrefix("a,") } == [
                "a, \"odd\" (id)/email/granted/-", "a, \"odd\" (id)/email/withdrawn/granted", "a, \"odd\" (id)/email/deleted/withdrawn",
            ], "\(arrived)")
            #expect(arrived.filter { $0.hasPrefix("b/") } == ["b/ads/denied/-"], "\(arrived)")
            let dead = try await database.withConnection { connection in
                try await connection.query("SELECT problem FROM consent_sync.changes WHERE problem IS NOT NULL").map { try $0.string("problem") }
            }
            #expect(dead.count == 1 && dead[0].contains("not a capture record") && dead[0].contains("not a record ("), "\(dead)")
        }
    }

    /// The slot is advanced only at the start of the next read, after the rows are committed:
    /// a reader that stops in between (a crash) must not queue anything twice.
    @Test func aReadThatStopsBeforeTheSlotMovesQueuesNothingTwice() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            let writer = ConsentWriter(database: database)
            for index in 0..<5 { try await writer.set("s\(index)", "email", .granted) }

            let first = try await database.withConnection { try await CaptureStore.capture(maxChanges: 1000, on: $0) }
            #expect(first.taken == 5)
            // Another connection (the restarted daemon): the slot still holds those five.
            let pending = try await database.withConnection { connection in
                try await connection.query(
                    "SELECT count(*) AS n FROM pg_logical_slot_peek_binary_changes((SELECT slot_name FROM consent_sync.capture_state), NULL, NULL, 'proto_version', '1', 'publication_names', 'consent_sync_capture', 'messages', 'true')"
                ).first?.int("n") ?? 0
            }
            #expect(pending >= 5, "the slot moved before the next read")
            let again = try await database.withConnection { try await CaptureStore.capture(maxChanges: 1000, on: $0) }
            #expect(again.taken == 0)
            #expect(try await Self.queued(database) == 5)

            try await writer.set("s9", "email", .denied)
            let last = try await database.withConnection { try await CaptureStore.capture(maxChanges: 1000, on: $0) }
            #expect(last.taken == 1)
            #expect(try await Self.queued(database) == 6)
        }
    }

    @Test func switchingBackToTheTableReadsTheSlotToTheSwitchAndDropsIt() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            let writer = ConsentWriter(database: database)
            try await writer.set("s", "email", .granted)
            try await writer.set("s", "email", .denied)
            try await writer.set("t", "email", .granted)
            #expect(try await Self.queued(database) == 0)

            let state = try await database.withConnection { connection in
                try await CaptureStore.setMode(.table, on: connection)
                return try await CaptureStore.state(on: connection)
            }
            #expect(state.mode == .table && state.slotName == nil)
            #expect(try await Self.slots(database) == 0)
            #expect(try await Self.queued(database) == 3)
            // And the trigger writes rows again.
            try await writer.set("s", "email", .withdrawn)
            #expect(try await Self.queued(database) == 4)

            try await RelayFixture.withRelay(on: database) { _ in
                try await receiver.waitForRequests(count: 4)
            }
            let arrived = try Self.events(receiver.requests)
            #expect(arrived.filter { $0.hasPrefix("s/") } == ["s/email/granted/-", "s/email/denied/granted", "s/email/withdrawn/denied"], "\(arrived)")
            #expect(arrived.filter { $0.hasPrefix("t/") } == ["t/email/granted/-"], "\(arrived)")
        }
    }

    /// Two daemons: one reads the slot at a time; every change arrives once, in order per subject.
    @Test func twoRelaysDeliverEveryChangeOnceInOrder() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            let statuses: [ConsentStatus] = [.granted, .denied, .withdrawn]
            // Taken while both relays run: tearing a relay down by cancelling it (as this fixture
            // does, unlike SIGTERM) may leave a result unwritten, and the other then sends it again.
            let events = try await RelayFixture.withRelays(2, on: database) {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writerIndex in 0..<4 {
                        group.addTask {
                            try await database.withConnection { connection in
                                for index in 0..<75 {
                                    try await ConsentWriter.set("w\(writerIndex)-s\(index % 5)", "email", statuses[index % 3], on: connection)
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                try await receiver.waitForRequests(count: 300, timeout: .seconds(60))
                try await Task.sleep(for: .milliseconds(300))
                return try arrivedEvents(receiver.requests)
            }
            #expect(events.count == 300)
            #expect(Set(events.map(\.eventID)).count == 300, "a change arrived twice")
            #expect(inChangeOrderPerSubject(events))
        }
    }

    /// Idle, the walsender sends a committed change at once: delivered within tens of milliseconds.
    @Test func anIdleDaemonDeliversAChangeWithinTensOfMilliseconds() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            var configuration = Relay.Configuration.forTests
            configuration.pollInterval = .seconds(3600)
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                var latencies: [Double] = []
                for index in 0..<10 {
                    try await waitUntilIdle(database)
                    try await Task.sleep(for: .milliseconds(100))
                    let written = Date()
                    try await ConsentWriter(database: database).set("idle-\(index)", "email", .granted)
                    let request = try await receiver.waitForRequests(count: index + 1)[index]
                    latencies.append(request.receivedAt.timeIntervalSince(written) * 1000)
                }
                latencies.sort()
                print("logical capture, idle to delivery (ms, 10 changes): p50 \(latencies[4]), max \(latencies[9])")
            }
        }
    }

    @Test func theCommandSwitchesAndShowsTheModeAndTheDaemonReadsTheSlot() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            let environment = DaemonLifecycleTests.environment(database)
            let logical = try await DaemonProcess.run(["capture", "logical"], environment: environment)
            #expect(logical.status == 0, "\(logical.stderr)")
            #expect(logical.stdout.contains("capture mode: logical") && logical.stdout.contains("replication slot: consent_sync_"), "\(logical.stdout)")
            let bogus = try await DaemonProcess.run(["capture", "bogus"], environment: environment)
            #expect(bogus.status == 64 && bogus.stderr.contains("unknown capture mode 'bogus'; use table or logical"), "\(bogus.stderr)")

            let daemon = try DaemonProcess(["run"], environment: environment.merging([
                "CONSENT_SYNC_OPS_ENABLED": "true", "CONSENT_SYNC_OPS_LISTEN": "127.0.0.1:0", "CONSENT_SYNC_RELAY_BACKLOG_INTERVAL_MS": "200",
            ]) { $1 })
            defer { daemon.signal(SIGKILL) }
            try await daemon.waitForLog("relay connected")
            let port = try await daemon.waitForOpsPort()
            try await ConsentWriter(database: database).set("cli", "email", .withdrawn)
            try await receiver.waitForRequests(count: 1)
            // The slot's WAL and whether it was lost, for alerts.
            let client = HTTPClient(logger: RelayFixture.logger)
            defer { client.shutdown() }
            try await waitUntil("the slot's gauges are exported") {
                let metrics = try await ProofTests.get(client, "http://127.0.0.1:\(port)/metrics", token: nil).body
                return metrics.contains("consent_sync_capture_slot_wal_bytes ") && metrics.contains("consent_sync_capture_slot_lost 0")
            }
            let status = try await DaemonProcess.run(["status"], environment: environment)
            #expect(status.stdout.contains("capture: logical, replication slot holds"), "\(status.stdout)")

            // Back to table while the daemon streams the slot: it lets go, the rest is read, the
            // slot dropped, and the next change comes through the queue table.
            try await ConsentWriter(database: database).set("cli", "email", .granted)
            let back = try await DaemonProcess.run(["capture", "table"], environment: environment)
            #expect(back.status == 0 && back.stdout.contains("capture mode: table"), "\(back.stdout) \(back.stderr)")
            try await waitUntil("the slot is dropped") { try await Self.slots(database) == 0 }
            try await ConsentWriter(database: database).set("cli", "email", .denied)
            let arrived = try Self.events(try await receiver.waitForRequests(count: 3))
            #expect(arrived == ["cli/email/withdrawn/-", "cli/email/granted/withdrawn", "cli/email/denied/granted"], "\(arrived)")
            daemon.signal(SIGTERM)
            #expect(try await daemon.waitForExit() == 0)
        }
    }

    /// The daemon streaming the slot is killed: another takes the slot over, and what was
    /// written meanwhile arrives, each change once at most twice (only those in flight at the kill).
    @Test func whenTheStreamingDaemonIsKilledAnotherTakesTheSlotOver() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            let environment = DaemonLifecycleTests.environment(database)
            let first = try DaemonProcess(["run"], environment: environment)
            defer { first.signal(SIGKILL) }
            try await first.waitForLog("streaming the replication slot")
            let second = try DaemonProcess(["run"], environment: environment)
            defer { second.signal(SIGKILL) }
            try await second.waitForLog("relay connected")
            let writer = ConsentWriter(database: database)
            for index in 0..<20 { try await writer.set("k\(index % 4)", "email", (index / 4) % 2 == 0 ? .granted : .denied) }
            try await receiver.waitForRequests(count: 20)

            first.signal(SIGKILL)
            _ = try await first.waitForExit()
            for index in 20..<40 { try await writer.set("k\(index % 4)", "email", (index / 4) % 2 == 0 ? .granted : .denied) }
            try await second.waitForLog("streaming the replication slot", timeout: .seconds(30))
            try await waitUntil("every change of both halves delivered (those leased to the killed daemon after their lease)", timeout: .seconds(120)) {
                Set(try arrivedEvents(receiver.requests).map(\.eventID)).count == 40
            }
            let events = try arrivedEvents(receiver.requests)
            #expect(inChangeOrderPerSubject(events))
            #expect(events.count - 40 <= 4, "duplicates beyond what was in flight at the kill: \(events.count - 40)")
            second.signal(SIGTERM)
            #expect(try await second.waitForExit() == 0)
        }
    }
}
