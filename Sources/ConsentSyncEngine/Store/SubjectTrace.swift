import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// One subject's timeline: every captured change and, per recipient, whether and when it
/// arrived, how the receiver answered, or why it has not arrived yet. `consent-sync trace`
/// prints it; the receipts API (`GET /v1/subjects/{id}/receipts`) serves it as JSON.
public struct SubjectTrace: Sendable, Codable, Equatable {
    public struct Change: Sendable, Codable, Equatable {
        public var id: Int64
        public var eventID: String
        public var type: String
        public var purpose: String
        public var status: String?
        public var previousStatus: String?
        public var table: String
        public var changedAt: Date
        /// Why it could not be sent (a row without subject, an unmapped status).
        public var problem: String?
        /// The subject's personal data was removed from this record (`consent-sync forget`).
        public var erased: Bool
        public var recipients: [Recipient]
    }

    public struct Recipient: Sendable, Codable, Equatable {
        public var subscriber: String
        /// `delivered`, `pending`, `in_flight`, `dead`, `superseded`, or `not_yet_fanned_out`.
        public var state: String
        public var deliveredAt: Date?
        public var attempts: Int
        /// The receiver's last HTTP status.
        public var httpStatus: Int?
        /// The receiver's own verdict (`{"applied": …, "reason": …}` in its answer).
        public var applied: Bool?
        public var appliedReason: String?
        /// For anything not delivered: why, in words.
        public var waiting: String?
        public var nextAttemptAt: Date?
        /// This delivery re-sends an earlier one (`consent-sync replay`).
        public var replay: Bool
    }

    /// The subject asked for (never its hash).
    public var subject: String
    public var changes: [Change]

    enum CodingKeys: String, CodingKey {
        case subject, changes
    }

    /// Loads the timeline of `subject`, including what remains of it after an erasure
    /// (stored under its keyed hash).
    public static func load(subject: String, on connection: PostgresConnection) async throws -> SubjectTrace {
        let hashed = try await ErasureStore.subjectHash(subject, on: connection)
        let rows = try await connection.query(
            """
            SELECT c.id, coalesce(c.event_id::text, '') AS event_id, c.event_type, c.table_name, c.purpose, c.status, c.previous_status, c.problem,
                   extract(epoch FROM c.changed_at)::double precision AS changed_at, c.erased_at IS NOT NULL AS erased,
                   c.fanned_out, d.id AS delivery_id, s.name AS subscriber, s.state AS subscriber_state, s.state_reason,
                   d.state, d.attempts, d.last_status, d.last_error, d.applied, d.applied_reason, d.replay_of, d.superseded_by,
                   extract(epoch FROM d.completed_at)::double precision AS completed_at,
                   d.next_attempt_at = 'infinity' AS parked,
                   CASE WHEN d.next_attempt_at <> 'infinity' THEN extract(epoch FROM d.next_attempt_at)::double precision END AS next_attempt_at
            FROM (
                SELECT id, event_id, event_type, table_name, purpose, status, previous_status, problem, changed_at,
                       erased_at, fanned_out, subject
                FROM consent_sync.changes
                UNION ALL
                -- Captured but not yet fanned out: the fan-out names the event and draws its id.
                SELECT id, NULL, coalesce(event_type, 'captured'), table_name, purpose, status, previous_status, problem,
                       changed_at, NULL, false, subject
                FROM consent_sync.captured
            ) c
            LEFT JOIN LATERAL (
                -- Originals and replays, through deliveries_by_change.
                SELECT * FROM consent_sync.deliveries x WHERE x.change_id = c.id
            ) d ON true
            LEFT JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
            WHERE c.subject = ANY ($1::text[])
            ORDER BY c.id, s.name, d.id
            """,
            [postgresArray([subject, hashed])]
        )
        var changes: [Change] = []
        for row in rows {
            let id = try row.int64("id")
            if changes.last?.id != id {
                changes.append(Change(
                    id: id,
                    eventID: try row.string("event_id"),
                    type: try row.string("event_type"),
                    purpose: try row.string("purpose"),
                    status: row.optionalString("status"),
                    previousStatus: row.optionalString("previous_status"),
                    table: try row.string("table_name"),
                    changedAt: Date(timeIntervalSince1970: try row.double("changed_at")),
                    problem: row.optionalString("problem"),
                    erased: try row.bool("erased"),
                    recipients: []
                ))
                if !(try row.bool("fanned_out")) {
                    changes[changes.count - 1].recipients.append(Recipient(
                        subscriber: "*", state: "not_yet_fanned_out", attempts: 0,
                        waiting: "captured; the daemon has not yet created its deliveries (is it running?)", replay: false
                    ))
                }
            }
            guard let subscriber = row.optionalString("subscriber") else { continue }
            let state = try row.string("state")
            var recipient = Recipient(
                subscriber: subscriber,
                state: state,
                deliveredAt: state == "delivered" ? row.optionalString("completed_at").flatMap(Double.init).map(Date.init(timeIntervalSince1970:)) : nil,
                attempts: try row.int("attempts"),
                httpStatus: try row.optionalInt("last_status"),
                applied: row.optionalString("applied").map { $0 == "t" },
                appliedReason: row.optionalString("applied_reason"),
                nextAttemptAt: row.optionalString("next_attempt_at").flatMap(Double.init).map(Date.init(timeIntervalSince1970:)),
                replay: row.optionalString("replay_of") != nil
            )
            recipient.waiting = try Self.waiting(row, state: state)
            if state != "pending" { recipient.nextAttemptAt = nil }
            changes[changes.count - 1].recipients.append(recipient)
        }
        return SubjectTrace(subject: subject, changes: changes)
    }

    /// Why a delivery has not arrived, in words; `nil` once delivered.
    static func waiting(_ row: PostgresRow, state: String) throws -> String? {
        let lastError = row.optionalString("last_error")
        switch state {
        case "delivered":
            return nil
        case "in_flight":
            return "being sent now"
        case "dead":
            return "gave up: \(lastError ?? "no reason recorded"); 'consent-sync deliveries retry' sends it again"
        case "superseded":
            return "superseded by change \(row.optionalString("superseded_by") ?? "?") (newest-wins): not sent"
        default:
            let subscriberState = try row.string("subscriber_state")
            if subscriberState != "enabled" {
                return "subscriber is \(subscriberState)" + (row.optionalString("state_reason").map { ": \($0)" } ?? "") + "; kept until it is enabled"
            }
            if try row.bool("parked") {
                return "waiting for an earlier change of this subject to this subscriber"
            }
            if let lastError {
                return "retrying after: \(lastError)"
            }
            if let status = try row.optionalInt("last_status") {
                return "retrying after HTTP \(status)"
            }
            return "queued"
        }
    }

    /// Pretty JSON with ISO 8601 times: what the receipts API returns.
    public func json() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(EventEnvelope.timestamp(date))
        }
        return Array(try encoder.encode(self))
    }

    /// The timeline for people.
    public func text() -> String {
        guard !changes.isEmpty else { return "no changes captured for subject \(subject)" }
        var lines = ["subject \(subject): \(changes.count) change(s)"]
        for change in changes {
            var head = "\(EventEnvelope.timestamp(change.changedAt))  change \(change.id)  \(change.type)  purpose \(change.purpose)"
            if let previous = change.previousStatus, let status = change.status { head += "  (\(previous) -> \(status))" }
            head += "  from \(change.table)"
            if change.erased { head += "  [personal data erased]" }
            lines.append(head)
            if let problem = change.problem { lines.append("    not sendable: \(problem)") }
            if change.recipients.isEmpty { lines.append("    no subscriber takes this change") }
            let width = change.recipients.map(\.subscriber.count).max() ?? 0
            for recipient in change.recipients {
                var line = "    " + recipient.subscriber.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                if let at = recipient.deliveredAt {
                    line += "delivered \(EventEnvelope.timestamp(at))"
                    if let status = recipient.httpStatus { line += "  HTTP \(status)" }
                    if let applied = recipient.applied {
                        line += applied ? "  applied" : "  NOT applied"
                        if let reason = recipient.appliedReason { line += " (\(reason))" }
                    }
                } else {
                    line += recipient.state
                    if let waiting = recipient.waiting { line += ": \(waiting)" }
                    if let next = recipient.nextAttemptAt { line += "; next attempt \(EventEnvelope.timestamp(next))" }
                }
                if recipient.attempts > 0 { line += "  (\(recipient.attempts) attempt\(recipient.attempts == 1 ? "" : "s"))" }
                if recipient.replay { line += "  [replay]" }
                lines.append(line)
            }
        }
        return lines.joined(separator: "\n")
    }
}
