import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// Deliveries not yet made that are past their propagation deadline, or near it (in the last
/// quarter of it), per subscriber and event type.
public struct DeadlineReport: Sendable, Equatable, Codable {
    public struct Line: Sendable, Equatable, Codable {
        public var subscriber: String
        public var eventType: String
        public var deadlineSeconds: Int
        public var past: Int
        public var near: Int
        /// The earliest deadline among them (already passed when `past` > 0).
        public var earliestDeadline: Date
    }

    public var lines: [Line]

    public var past: Int { lines.reduce(0) { $0 + $1.past } }

    /// The share of a deadline after which a delivery counts as near it.
    public static let nearAfter = 0.75

    public static func load(deadlines: [String: Duration], on connection: PostgresConnection) async throws -> DeadlineReport {
        let entries = deadlines.filter { $0.value > .zero }.sorted { $0.key < $1.key }
        guard !entries.isEmpty else { return DeadlineReport(lines: []) }
        let rows = try await connection.query(
            """
            WITH deadline AS (
                SELECT * FROM unnest($1::text[], $2::double precision[]) AS l(event_type, seconds)
            )
            SELECT s.name AS subscriber, c.event_type, l.seconds::integer AS seconds,
                   count(*) FILTER (WHERE c.changed_at + make_interval(secs => l.seconds) < now()) AS past,
                   count(*) FILTER (WHERE c.changed_at + make_interval(secs => l.seconds) >= now()) AS near,
                   extract(epoch FROM min(c.changed_at) + make_interval(secs => l.seconds))::double precision AS earliest
            FROM consent_sync.deliveries d
            JOIN consent_sync.changes c ON c.id = d.change_id
            JOIN deadline l ON l.event_type = c.event_type
            JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
            WHERE d.state IN ('pending', 'in_flight')
              AND c.changed_at + make_interval(secs => l.seconds * $3::double precision) < now()
            GROUP BY s.name, c.event_type, l.seconds
            ORDER BY s.name, c.event_type
            """,
            [postgresArray(entries.map(\.key)), postgresArray(entries.map { String($0.value.seconds) }), String(nearAfter)]
        )
        return DeadlineReport(lines: try rows.map { row in
            Line(
                subscriber: try row.string("subscriber"),
                eventType: try row.string("event_type"),
                deadlineSeconds: try row.int("seconds"),
                past: try row.int("past"),
                near: try row.int("near"),
                earliestDeadline: Date(timeIntervalSince1970: try row.double("earliest"))
            )
        })
    }
}
