import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// Per-subscriber counts of deliveries, for `consent-sync status`.
public struct StatusReport: Sendable, Codable {
    public struct Line: Sendable, Codable {
        public var subscriber: String
        public var enabled: Bool
        /// `enabled`, `paused` or `disabled`.
        public var state: String
        public var pending: Int
        public var inFlight: Int
        public var delivered: Int
        public var dead: Int
        /// Seconds since the oldest undelivered change to this subscriber was captured.
        public var oldestPendingSeconds: Double?
    }

    /// Captured changes not yet turned into deliveries (normally near zero while a daemon runs).
    public var changesNotFannedOut: Int
    public var subscribers: [Line]
    /// Deliveries past or near their propagation deadline (`deadlines.*`).
    public var deadlines: [DeadlineReport.Line] = []
    /// Erasures (`consent-sync forget`) waiting for recipients to acknowledge.
    public var erasuresOpen = 0
    /// `table` or `logical` (`consent-sync capture`).
    public var captureMode = CaptureMode.table.rawValue
    /// In `logical` mode: the WAL the replication slot holds, in bytes, and whether the slot
    /// was lost (changes since were not captured).
    public var captureSlotLagBytes: Int64?
    public var captureSlotLost = false

    public static func load(deadlines: [String: Duration] = [:], on connection: PostgresConnection) async throws -> StatusReport {
        let rows = try await connection.query(
            """
            SELECT s.name, s.enabled, s.state,
                   count(d.id) FILTER (WHERE d.state = 'pending') AS pending,
                   count(d.id) FILTER (WHERE d.state = 'in_flight') AS in_flight,
                   count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
                   count(d.id) FILTER (WHERE d.state = 'dead') AS dead,
                   extract(epoch FROM now() - min(c.changed_at) FILTER (WHERE d.state IN ('pending', 'in_flight')))::double precision AS oldest
            FROM consent_sync.subscribers s
            LEFT JOIN consent_sync.deliveries d ON d.subscriber_id = s.id
            LEFT JOIN consent_sync.changes c ON c.id = d.change_id AND d.state IN ('pending', 'in_flight')
            GROUP BY s.id ORDER BY s.name
            """
        )
        let backlog = try await connection.query(
            "SELECT (SELECT count(*) FROM consent_sync.captured) + (SELECT count(*) FROM consent_sync.changes WHERE NOT fanned_out) AS n"
        )
        let erasures = try await connection.query("SELECT count(*) AS n FROM consent_sync.erasures WHERE completed_at IS NULL")
        var report = StatusReport(
            changesNotFannedOut: try backlog.first?.int("n") ?? 0,
            subscribers: try rows.map { row in
                Line(
                    subscriber: try row.string("name"),
                    enabled: try row.bool("enabled"),
                    state: try row.string("state"),
                    pending: try row.int("pending"),
                    inFlight: try row.int("in_flight"),
                    delivered: try row.int("delivered"),
                    dead: try row.int("dead"),
                    oldestPendingSeconds: row.optionalString("oldest").flatMap(Double.init)
                )
            }
        )
        report.deadlines = try await DeadlineReport.load(deadlines: deadlines, on: connection).lines
        report.erasuresOpen = try erasures.first?.int("n") ?? 0
        let capture = try await CaptureStore.state(on: connection)
        report.captureMode = capture.mode.rawValue
        report.captureSlotLagBytes = capture.slotLagBytes
        report.captureSlotLost = capture.slotLost
        return report
    }

    public func table() -> String {
        let rows = subscribers.map { line in
            [
                line.subscriber, line.state,
                String(line.pending), String(line.inFlight), String(line.delivered), String(line.dead),
                line.oldestPendingSeconds.map { Self.age($0) } ?? "-",
            ]
        }
        let table = TextTable.render(header: ["SUBSCRIBER", "STATE", "PENDING", "IN FLIGHT", "DELIVERED", "DEAD", "OLDEST PENDING"], rows: rows)
        var text = table + "\nchanges waiting for fan-out: \(changesNotFannedOut)"
        if captureSlotLost {
            text += "\ncapture: \(captureMode), replication slot LOST: changes since were not captured; run a resync"
        } else if let lag = captureSlotLagBytes {
            text += "\ncapture: \(captureMode), replication slot holds \(lag) bytes of WAL"
        } else {
            text += "\ncapture: \(captureMode)"
        }
        if erasuresOpen > 0 { text += "\nerasures waiting for acknowledgement: \(erasuresOpen)" }
        if deadlines.isEmpty {
            text += "\ndeadlines: none past or near"
        } else {
            let rows = deadlines.map { line in
                [
                    line.subscriber, line.eventType, Self.age(Double(line.deadlineSeconds)), String(line.past), String(line.near),
                    EventEnvelope.timestamp(line.earliestDeadline),
                ]
            }
            text += "\n\nDEADLINES\n" + TextTable.render(header: ["SUBSCRIBER", "EVENT TYPE", "DEADLINE", "PAST", "NEAR", "EARLIEST DEADLINE"], rows: rows)
        }
        return text
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? String(decoding: encoder.encode(self), as: UTF8.self)) ?? "{}"
    }

    static func age(_ seconds: Double) -> String {
        switch seconds {
        case ..<1: String(format: "%.0fms", seconds * 1000)
        case ..<120: String(format: "%.1fs", seconds)
        case ..<7200: String(format: "%.0fm", seconds / 60)
        default: String(format: "%.1fh", seconds / 3600)
        }
    }
}
