import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Synchronization
import Testing

// Helpers shared by SubscriberStateTests, DeadLetterTests and ReplayTests.

/// A switch a receiver's script reads and the test flips.
final class AnswerSwitch: Sendable {
    private let value: Mutex<Bool>
    init(_ value: Bool) { self.value = Mutex(value) }
    var isOn: Bool { value.withLock { $0 } }
    func set(_ on: Bool) { value.withLock { $0 = on } }
}

/// What a test needs of one webhook as it arrived.
struct ArrivedEvent: Equatable {
    var subject: String
    var purpose: String
    /// CloudEvents `sequence`: 20 digits, compares as text.
    var sequence: String
    var eventID: String
    var webhookID: String
}

func arrivedEvents(_ requests: some Sequence<WebhookReceiver.Request>) throws -> [ArrivedEvent] {
    try requests.map { request in
        let event = try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
        let data = try #require(event["data"] as? [String: Any])
        return ArrivedEvent(
            subject: try #require(event["subject"] as? String),
            purpose: try #require(data["purpose"] as? String),
            sequence: try #require(event["sequence"] as? String),
            eventID: try #require(event["id"] as? String),
            webhookID: try #require(request.headers["webhook-id"])
        )
    }
}

/// Per subject, the sequences in arrival order.
func sequencesBySubject(_ events: [ArrivedEvent]) -> [String: [String]] {
    Dictionary(grouping: events, by: \.subject).mapValues { $0.map(\.sequence) }
}

/// True when, for every subject, each event arrived after every event of a lower sequence.
func inChangeOrderPerSubject(_ events: [ArrivedEvent]) -> Bool {
    sequencesBySubject(events).values.allSatisfy { $0 == $0.sorted() }
}

/// The error `body` throws, or `nil`. (Not `#expect(throws:)` with an async closure: see the
/// Swift 6.3.1 miscompile noted in the project's tests.)
func errorThrown<T>(by body: () async throws -> T) async -> (any Error)? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error
    }
}

/// Every delivery's id, state, attempts, due time, replay mark and lease: a snapshot to show that
/// a refused command changed nothing.
func deliverySnapshot(_ database: TestDatabase) async throws -> [[String?]] {
    try await database.withConnection { connection in
        let rows = try await connection.query(
            """
            SELECT d.id, d.state, d.attempts, d.next_attempt_at::text, d.replay_of, d.completed_at::text, d.requeued_at::text,
                   (SELECT count(*) FROM consent_sync.delivery_events) AS events
            FROM consent_sync.deliveries d ORDER BY d.id
            """
        )
        return rows.map { row in row.columnNames.map { row[$0] } }
    }
}

/// Deliveries to `subscriber` by state.
func deliveryCounts(_ database: TestDatabase, subscriber: String) async throws -> [String: Int] {
    let rows = try await database.withConnection { connection in
        try await connection.query(
            """
            SELECT d.state, count(*) AS n FROM consent_sync.deliveries d
            JOIN consent_sync.subscribers s ON s.id = d.subscriber_id WHERE s.name = $1 GROUP BY d.state
            """,
            [subscriber]
        )
    }
    return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.string("state"), try $0.int("n")) })
}

/// The environment for running `consent-sync` commands against `database`.
func commandEnvironment(_ database: TestDatabase) -> [String: String] {
    var environment = database.daemonEnvironment
    environment["CONSENT_SYNC_LOG_LEVEL"] = "info"
    environment["USER"] = "tester"
    return environment
}

/// How long the tests' relay may keep using a subscriber list read before a state change:
/// it re-reads subscribers every poll interval (200 ms in tests).
let subscriberRefresh = Duration.milliseconds(1000)

/// Writes a few changes to three subjects, several per subject; returns how many.
@discardableResult
func writeMixedChanges(_ database: TestDatabase, tag: String = "") async throws -> Int {
    let writer = ConsentWriter(database: database)
    let script: [(String, String, ConsentStatus)] = [
        ("s1\(tag)", "email", .granted), ("s2\(tag)", "email", .granted), ("s1\(tag)", "ads", .denied),
        ("s1\(tag)", "email", .withdrawn), ("s3\(tag)", "calls", .granted), ("s2\(tag)", "email", .denied),
    ]
    for (subject, purpose, status) in script {
        try await writer.set(subject, purpose, status)
    }
    return script.count
}
