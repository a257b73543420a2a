import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Synchronization
import Testing

/// `resync`: a new system gets the current state of every row, interleaved correctly with
/// live changes, resumable after an interruption.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct ResyncTests {
    struct Arrival {
        var type: String
        var subject: String
        var purpose: String
        var status: String?
        var sequence: String
    }

    static func arrivals(_ receiver: WebhookReceiver) throws -> [Arrival] {
        try receiver.requests.map { request in
            let event = try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
            let data = try #require(event["data"] as? [String: Any])
            return Arrival(
                type: try #require(event["type"] as? String),
                subject: try #require(data["subject"] as? String),
                purpose: try #require(data["purpose"] as? String),
                status: data["status"] as? String,
                sequence: try #require(event["sequence"] as? String)
            )
        }
    }

    @Test func tenThousandRowsWithLiveChangesEndInExactlyTheTablesState() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let purposes = ["email", "sms", "ads", "analytics", "phone"]
            try await database.withConnection { connection in
                try await connection.execute("""
                    INSERT INTO consent_sync.consents (subject_id, purpose, status, source)
                    SELECT 'cust-' || s, p, (ARRAY['granted', 'denied', 'withdrawn'])[1 + (s + length(p)) % 3], 'import'
                    FROM generate_series(1, 2000) s, unnest(ARRAY['email', 'sms', 'ads', 'analytics', 'phone']) p;
                    -- Captured before the warehouse existed: not for it.
                    UPDATE consent_sync.changes SET fanned_out = true;
                    """)
            }
            let startedAt = ContinuousClock.now
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("warehouse", url: receiver.url, limits: .init(maxInFlight: 64, timeout: .seconds(5)), on: database)

            var configuration = Relay.Configuration.forTests
            configuration.claimBatchSize = 500
            try await RelayFixture.withRelay(on: database, configuration: configuration) { _ in
                // Live changes all along: updates, deletions and new rows, some of them to rows
                // the resync is reading at that moment.
                let writing = Atomic<Bool>(true)
                let writer = Task {
                    var written = 0
                    try await database.withConnection { connection in
                        while writing.load(ordering: .relaxed) {
                            let subject = "cust-\(Int.random(in: 1...2100))"
                            let purpose = purposes.randomElement()!
                            if Int.random(in: 0..<10) == 0 {
                                try await connection.query("DELETE FROM consent_sync.consents WHERE subject_id = $1 AND purpose = $2", [subject, purpose])
                            } else {
                                try await ConsentWriter.set(subject, purpose, ConsentStatus.allCases.randomElement()!, on: connection)
                            }
                            written += 1
                        }
                    }
                    return written
                }

                // Interrupted after a few chunks, then resumed.
                let first = Task {
                    try await database.withConnection { connection in
                        let job = try await ResyncStore.start(subscriber: "warehouse", purpose: nil, actor: "test", on: connection)
                        let stop = Atomic<Bool>(false)
                        do {
                            try await ResyncStore.run(job, chunk: 400, on: connection) { total in
                                if total >= 2000 { stop.store(true, ordering: .relaxed) }
                                if stop.load(ordering: .relaxed) { withUnsafeCurrentTask { $0?.cancel() } }
                            }
                        } catch is CancellationError {}
                        return job.id
                    }
                }
                let firstJob = try await first.value
                let resumed = try await database.withConnection { connection in
                    let job = try await ResyncStore.start(subscriber: "warehouse", purpose: nil, actor: "test", on: connection)
                    let queued = try await ResyncStore.run(job, chunk: 400, on: connection)
                    return (job, queued)
                }
                #expect(resumed.0.id == firstJob && resumed.0.resumed, "the second run resumes the first job")
                #expect(resumed.0.rows >= 2000 && resumed.0.rows < 10_000)
                writing.store(false, ordering: .relaxed)
                let written = try await writer.value
                let queuedAt = ContinuousClock.now
                #expect(written > 50, "the writer ran alongside (\(written) changes)")

                try await waitUntil("every delivery to the warehouse is made", timeout: .seconds(120)) {
                    let counts = try await deliveryCounts(database, subscriber: "warehouse")
                    return counts["pending", default: 0] + counts["in_flight", default: 0] == 0 && counts["delivered", default: 0] > 10_000
                }
                print("resync figures: \(resumed.0.rows + resumed.1) snapshot(s) queued in \(queuedAt - startedAt) (interrupted once, resumed), \(written) live change(s) alongside; all delivered \(ContinuousClock.now - queuedAt) later")
                let snapshots = try await database.withConnection { connection in
                    try await connection.query(
                        "SELECT count(*) AS n, count(DISTINCT (subject, purpose)) AS rows FROM consent_sync.changes WHERE resync_id = $1::bigint",
                        [String(firstJob)]
                    ).first.map { (try $0.int("n"), try $0.int("rows")) }
                }
                #expect(snapshots?.0 == snapshots?.1, "a row was snapshotted twice across the interruption: \(String(describing: snapshots))")
            }

            let arrivals = try Self.arrivals(receiver)
            // The receiver's view, applying events in arrival order, is the table's state.
            var view: [String: String] = [:]
            var lastSequence: [String: (sequence: String, type: String)] = [:]
            var overtaken: [String] = []
            for arrival in arrivals {
                let key = arrival.subject + "/" + arrival.purpose
                if let last = lastSequence[key], last.sequence > arrival.sequence {
                    overtaken.append("\(key): \(arrival.type) \(arrival.sequence) after \(last.type) \(last.sequence)")
                }
                lastSequence[key] = (arrival.sequence, arrival.type)
                if arrival.type == "consent.deleted" { view[key] = nil } else { view[key] = arrival.status }
            }
            let table = try await database.withConnection { connection in
                try await connection.query("SELECT subject_id, purpose, status FROM consent_sync.consents").map {
                    (try $0.string("subject_id") + "/" + $0.string("purpose"), try $0.string("status"))
                }
            }
            let expected = Dictionary(uniqueKeysWithValues: table)
            #expect(overtaken.isEmpty, "\(overtaken.prefix(5))")
            // Rows the writer deleted before the resync read them have no snapshot.
            #expect(arrivals.filter { $0.type == "consent.snapshot" }.count > 9_000)
            let wrong = expected.filter { view[$0.key] != $0.value }.prefix(5)
            let extra = view.keys.filter { expected[$0] == nil }.prefix(5)
            #expect(wrong.isEmpty && extra.isEmpty, "differs from the table: \(Array(wrong)) extra: \(Array(extra))")
            #expect(view.count == expected.count)
        }
    }

    @Test func theCommandLineQueuesSnapshotsForANewSubscriberAndRefusesBadArguments() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute("""
                    INSERT INTO consent_sync.consents (subject_id, purpose, status)
                    VALUES ('a', 'email', 'granted'), ('b', 'email', 'withdrawn'), ('b', 'ads', 'denied');
                    """)
            }
            var environment = database.daemonEnvironment
            environment["CONSENT_SYNC_SECRETS_ALLOW_PLAINTEXT"] = "true"
            let added = try await DaemonProcess.run(
                ["subscriber", "add", "warehouse", "--url", "http://127.0.0.1:9/hook", "--resync"], environment: environment
            )
            #expect(added.status == 0, "\(added.stderr)")
            #expect(added.stdout.contains("3 snapshot(s) of the current state queued for warehouse"), "\(added.stdout)")
            let again = try await DaemonProcess.run(["resync", "--subscriber", "warehouse", "--purpose", "email", "--rate", "100"], environment: environment)
            #expect(again.status == 0, "\(again.stderr)")
            #expect(again.stdout.contains("2 snapshot(s) queued"), "\(again.stdout)")
            let snapshots = try await database.withConnection { connection in
                try await connection.query("SELECT count(*) AS n FROM consent_sync.changes WHERE event_type = 'consent.snapshot' AND target_subscriber_id IS NOT NULL").first?.int("n")
            }
            #expect(snapshots == 5)
            let unknown = try await DaemonProcess.run(["resync", "--subscriber", "nobody"], environment: environment)
            #expect(unknown.status == 1 && unknown.stderr.contains("no subscriber named 'nobody'"), "\(unknown.stderr)")
            let badChunk = try await DaemonProcess.run(["resync", "--subscriber", "warehouse", "--chunk", "0"], environment: environment)
            #expect(badChunk.status != 0 && badChunk.stderr.contains("--chunk must be between 1 and 10000"), "\(badChunk.stderr)")
        }
    }

    /// Two processes for one job: the second is refused while the first runs; after the first
    /// is killed, running it again resumes where it stopped, and no row is queued twice.
    @Test func aSecondProcessForTheSameResyncIsRefusedAndAKilledOneResumes() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute("""
                    INSERT INTO consent_sync.consents (subject_id, purpose, status)
                    SELECT 's' || g, 'email', 'granted' FROM generate_series(1, 300) g;
                    INSERT INTO consent_sync.subscribers (name, url) VALUES ('warehouse', 'http://127.0.0.1:9/hook');
                    """)
            }
            let environment = database.daemonEnvironment
            let snapshots: @Sendable () async throws -> Int = {
                try await database.withConnection { connection in
                    try await connection.query("SELECT count(*) AS n FROM consent_sync.changes WHERE event_type = 'consent.snapshot'").first?.int("n") ?? 0
                }
            }
            let first = try DaemonProcess(["resync", "--subscriber", "warehouse", "--rate", "5", "--chunk", "5"], environment: environment)
            defer { first.signal(SIGKILL) }
            try await waitUntil("the first process queued some", timeout: .seconds(60)) { try await snapshots() > 0 }
            let second = try await DaemonProcess.run(["resync", "--subscriber", "warehouse"], environment: environment)
            #expect(second.status != 0 && second.stderr.contains("is running in another process"), "\(second.stderr)")

            first.signal(SIGKILL)
            _ = try await first.waitForExit()
            let before = try await snapshots()
            #expect(before < 300, "the first process finished before it was killed; slow it down")
            let resumed = try await DaemonProcess.run(["resync", "--subscriber", "warehouse", "--chunk", "50"], environment: environment)
            #expect(resumed.status == 0, "\(resumed.stderr)")
            let rows = try await database.withConnection { connection in
                try await connection.query(
                    "SELECT count(*) AS n, count(DISTINCT subject) AS subjects FROM consent_sync.changes WHERE event_type = 'consent.snapshot'"
                ).first.map { (try $0.int("n"), try $0.int("subjects")) }
            }
            #expect(rows?.0 == 300 && rows?.1 == 300, "snapshots, subjects: \(String(describing: rows)) (\(before) before the kill)")
        }
    }
}
