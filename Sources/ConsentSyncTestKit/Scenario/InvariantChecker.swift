import ConsentSyncPostgres
import Foundation

/// What the database says after a scenario: the outbox, subscribers, deliveries and attempts.
public struct ScenarioSnapshot: Sendable {
    public struct Change: Sendable {
        public var id: Int64
        public var eventID: String
        public var subject: String
        public var purpose: String
        public var eventType: String
        public var operation: String
        public var fannedOut: Bool
        public var changedAt: String
    }

    public struct Subscriber: Sendable {
        public var id: Int64
        public var name: String
        public var purposes: [String]?
        public var eventTypes: [String]?

        func matches(_ change: Change) -> Bool {
            (purposes.map { $0.contains(change.purpose) } ?? true) && (eventTypes.map { $0.contains(change.eventType) } ?? true)
        }
    }

    public struct Delivery: Sendable {
        public var id: Int64
        public var changeID: Int64
        public var subscriberID: Int64
        public var state: String
        public var attempts: Int
        public var leaseOwner: String?
        public var lastStatus: String?
        public var lastError: String?
    }

    public struct Attempt: Sendable {
        public var deliveryID: Int64
        public var attempt: Int
        public var startedAt: String
        public var status: String?
        public var error: String?
        /// The instance that made the attempt (none for a lease expiry's row).
        public var instanceID: String?

        public init(deliveryID: Int64, attempt: Int, startedAt: String, status: String?, error: String?, instanceID: String? = nil) {
            self.deliveryID = deliveryID
            self.attempt = attempt
            self.startedAt = startedAt
            self.status = status
            self.error = error
            self.instanceID = instanceID
        }

        /// The relay recorded a 2xx answer for this attempt.
        public var isAcknowledged: Bool {
            status.flatMap { Int($0) }.map { (200..<300).contains($0) } ?? false
        }

        /// The relay gave up waiting for the answer: its HTTP client's timeout, recorded as
        /// "timed out: <libcurl's message>" (`HTTPClientError.description`). The receiver may
        /// still have taken the change (its answer came too late), so a resend is allowed.
        public var timedOut: Bool {
            error?.hasPrefix("timed out") ?? false
        }
    }

    public var changes: [Change]
    public var subscribers: [Subscriber]
    public var deliveries: [Delivery]
    public var attempts: [Attempt]

    public init(changes: [Change], subscribers: [Subscriber], deliveries: [Delivery], attempts: [Attempt]) {
        self.changes = changes
        self.subscribers = subscribers
        self.deliveries = deliveries
        self.attempts = attempts
    }

    public static func load(from database: ScenarioDatabase) async throws -> ScenarioSnapshot {
        try await database.withConnection { connection in
            let changes = try await connection.query(
                """
                SELECT id, event_id::text, subject, purpose, event_type, operation, fanned_out,
                       to_char(changed_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') AS changed_at
                FROM consent_sync.changes
                UNION ALL
                -- Still in the capture queue: never fanned out (so never acknowledged either).
                SELECT id, 'queued-' || id, subject, purpose,
                       coalesce(event_type, CASE operation WHEN 'DELETE' THEN 'consent.deleted' ELSE 'consent.' || status END),
                       operation, false, to_char(changed_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS')
                FROM consent_sync.captured
                ORDER BY id
                """
            ).map { row in
                Change(
                    id: try row.int64("id"), eventID: try row.string("event_id"), subject: try row.string("subject"),
                    purpose: try row.string("purpose"), eventType: try row.string("event_type"), operation: try row.string("operation"),
                    fannedOut: try row.bool("fanned_out"), changedAt: try row.string("changed_at")
                )
            }
            let subscribers = try await connection.query(
                "SELECT id, name, array_to_json(purposes)::text AS purposes, array_to_json(event_types)::text AS event_types FROM consent_sync.subscribers ORDER BY id"
            ).map { row in
                Subscriber(
                    id: try row.int64("id"), name: try row.string("name"),
                    purposes: try row.optionalString("purposes").map { try JSONDecoder().decode([String].self, from: Data($0.utf8)) },
                    eventTypes: try row.optionalString("event_types").map { try JSONDecoder().decode([String].self, from: Data($0.utf8)) }
                )
            }
            let deliveries = try await connection.query(
                """
                SELECT id, change_id, subscriber_id, state, attempts, lease_owner::text AS lease_owner, last_status::text AS last_status, last_error
                FROM consent_sync.deliveries ORDER BY id
                """
            ).map { row in
                Delivery(
                    id: try row.int64("id"), changeID: try row.int64("change_id"), subscriberID: try row.int64("subscriber_id"),
                    state: try row.string("state"), attempts: try row.int("attempts"), leaseOwner: row.optionalString("lease_owner"),
                    lastStatus: row.optionalString("last_status"), lastError: row.optionalString("last_error")
                )
            }
            let attempts = try await connection.query(
                """
                SELECT delivery_id, attempt, to_char(started_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') AS started_at,
                       status::text AS status, error, instance_id::text AS instance_id
                FROM consent_sync.attempts ORDER BY id
                """
            ).map { row in
                Attempt(
                    deliveryID: try row.int64("delivery_id"), attempt: try row.int("attempt"), startedAt: try row.string("started_at"),
                    status: row.optionalString("status"), error: row.optionalString("error"), instanceID: row.optionalString("instance_id")
                )
            }
            return ScenarioSnapshot(changes: changes, subscribers: subscribers, deliveries: deliveries, attempts: attempts)
        }
    }
}

/// The guarantees checked after a scenario has gone quiet, from the database and from what
/// the receivers recorded.
public enum InvariantChecker {
    /// What the scenario allows.
    public struct Expectations: Sendable {
        /// Subjects written only inside rolled-back transactions.
        public var rolledBackSubjects: Set<String> = []
        /// Crashes and database restarts may send a change twice; otherwise none may be.
        public var duplicatesAllowed = false
        /// Subscribers whose deliveries may be `dead` (the scenario forced it).
        public var deadAllowedFor: Set<String> = []
        /// With `duplicatesAllowed`, bounds them: only these deliveries (those in flight under a
        /// killed daemon's lease at the kill) may be acknowledged more than once, and each at
        /// most `1 + kills` times. Nil: no bound.
        public var duplicatesOnlyFor: Set<Int64>?
        /// How often one delivery may be acknowledged again under `duplicatesOnlyFor`.
        public var maxExtraAcknowledgements = 1

        public init(rolledBackSubjects: Set<String> = [], duplicatesAllowed: Bool = false, deadAllowedFor: Set<String> = [], duplicatesOnlyFor: Set<Int64>? = nil) {
            self.rolledBackSubjects = rolledBackSubjects
            self.duplicatesAllowed = duplicatesAllowed
            self.deadAllowedFor = deadAllowedFor
            self.duplicatesOnlyFor = duplicatesOnlyFor
        }
    }

    public enum Invariant: String, Sendable, CaseIterable {
        case everyChangeReachedEveryMatchingSubscriber = "every committed change reached every matching subscriber"
        case everyChangeFannedOut = "every committed change has exactly one delivery per matching subscriber"
        case noRolledBackOrUnknownChangeSent = "no rolled-back (or unknown) change was sent"
        case orderPerSubscriberAndSubject = "per subscriber and subject, first arrivals follow commit order"
        case noDuplicates = "no duplicates (scenario without crashes; a resend after a recorded timeout is not one)"
        case nothingInFlightOrLeased = "nothing pending, in flight or leased after quiescence"
        case noUnexpectedDead = "no dead delivery unless the scenario forced one"
        case deliveredMeansAcknowledged = "a delivery marked delivered was acknowledged with a 2xx"
        case eachAttemptLoggedOnce = "each attempt is logged once by the instance that made it (results written again after a lost connection included)"
    }

    public struct Violation: Sendable, CustomStringConvertible {
        public var invariant: Invariant
        public var subscriber: String?
        public var subject: String?
        public var detail: String

        public var description: String {
            "[\(invariant.rawValue)] \(subscriber.map { "subscriber \($0): " } ?? "")\(subject.map { "subject \($0): " } ?? "")\(detail)"
        }
    }

    public struct Report: Sendable, CustomStringConvertible {
        public var violations: [Violation] = []
        public var changes = 0
        public var deliveries = 0
        /// Requests the receivers saw, whatever they answered.
        public var requests = 0
        /// Extra 2xx acknowledgements of a change already acknowledged by that subscriber: all of
        /// them, including those in ``duplicatesAfterTimeout``.
        public var duplicates = 0
        /// The part of ``duplicates`` explained by the relay's own timeouts: the receiver took a
        /// request the relay had already given up on (and recorded as timed out), so the relay
        /// rightly sent it again. At-least-once allows these; they are not violations.
        public var duplicatesAfterTimeout = 0
        /// ``duplicates`` that no recorded timeout explains: the ones a scenario bounds.
        public var unexplainedDuplicates: Int { duplicates - duplicatesAfterTimeout }
        public var dead = 0
        /// The timelines of (up to three) subjects with violations.
        public var timelines = ""

        public var isClean: Bool { violations.isEmpty }

        public func violations(of invariant: Invariant) -> [Violation] {
            violations.filter { $0.invariant == invariant }
        }

        public var description: String {
            var text = "changes=\(changes) deliveries=\(deliveries) requests=\(requests) duplicates=\(duplicates) duplicates_after_timeout=\(duplicatesAfterTimeout) dead=\(dead) violations=\(violations.count)"
            if !violations.isEmpty {
                text += "\n" + violations.prefix(20).map { "  " + $0.description }.joined(separator: "\n")
                if violations.count > 20 { text += "\n  … and \(violations.count - 20) more" }
                text += "\n" + timelines
            }
            return text
        }
    }

    /// Loads the database's side and checks.
    public static func check(
        database: ScenarioDatabase,
        receipts: [String: [WebhookReceipt]],
        expectations: Expectations
    ) async throws -> Report {
        let snapshot = try await ScenarioSnapshot.load(from: database)
        return evaluate(snapshot, receipts: receipts, expectations: expectations)
    }

    /// The checks themselves, on values (so a test can corrupt either side and see them fail).
    /// - Parameter receipts: per subscriber name, what its receiver recorded.
    public static func evaluate(
        _ snapshot: ScenarioSnapshot,
        receipts: [String: [WebhookReceipt]],
        expectations: Expectations
    ) -> Report {
        var report = Report()
        report.changes = snapshot.changes.count
        report.deliveries = snapshot.deliveries.count
        report.requests = receipts.values.reduce(0) { $0 + $1.count }
        report.dead = snapshot.deliveries.filter { $0.state == "dead" }.count

        let changesByEvent = Dictionary(snapshot.changes.map { ($0.eventID.lowercased(), $0) }, uniquingKeysWith: { first, _ in first })
        let changesByID = Dictionary(uniqueKeysWithValues: snapshot.changes.map { ($0.id, $0) })
        let subscribersByID = Dictionary(uniqueKeysWithValues: snapshot.subscribers.map { ($0.id, $0) })
        var deliveriesByPair: [String: [ScenarioSnapshot.Delivery]] = [:]
        for delivery in snapshot.deliveries {
            deliveriesByPair["\(delivery.changeID)/\(delivery.subscriberID)", default: []].append(delivery)
        }
        // Attempts per delivery, in the order they were recorded (the snapshot's order).
        let attemptsByDelivery = Dictionary(grouping: snapshot.attempts, by: \.deliveryID)
        func fail(_ invariant: Invariant, _ subscriber: String?, _ subject: String?, _ detail: String) {
            report.violations.append(Violation(invariant: invariant, subscriber: subscriber, subject: subject, detail: detail))
        }

        // Receipts, in arrival order, per subscriber.
        var sortedReceipts: [String: [WebhookReceipt]] = [:]
        for (name, list) in receipts { sortedReceipts[name] = list.sorted { $0.index < $1.index } }

        // No rolled-back or unknown change was sent.
        for (name, list) in sortedReceipts {
            for receipt in list {
                if let subject = receipt.subject, expectations.rolledBackSubjects.contains(subject) {
                    fail(.noRolledBackOrUnknownChangeSent, name, subject, "a change of a rolled-back transaction arrived: \(receipt)")
                } else if let eventID = receipt.eventID, changesByEvent[eventID.lowercased()] == nil {
                    fail(.noRolledBackOrUnknownChangeSent, name, receipt.subject, "event \(eventID) is not in the outbox: \(receipt)")
                } else if receipt.eventID == nil {
                    fail(.noRolledBackOrUnknownChangeSent, name, receipt.subject, "a request without a CloudEvents id arrived: \(receipt) \(receipt.note ?? "")")
                }
            }
        }

        // Per subscriber: acknowledgements per event, first arrivals per webhook-id.
        for subscriber in snapshot.subscribers {
            let list = sortedReceipts[subscriber.name] ?? []
            var acknowledged: [String: Int] = [:]
            var acknowledgedDeliveries = Set<Int64>()
            for receipt in list where receipt.isAccepted {
                if let eventID = receipt.eventID?.lowercased() { acknowledged[eventID, default: 0] += 1 }
                if let id = receipt.deliveryID { acknowledgedDeliveries.insert(id) }
            }
            for (eventID, count) in acknowledged.sorted(by: { $0.key < $1.key }) where count > 1 {
                let change = changesByEvent[eventID]
                let delivery = change.flatMap { deliveriesByPair["\($0.id)/\(subscriber.id)"]?.first?.id }
                let extra = count - 1
                let unexplained = unexplainedExtraAcknowledgements(extra, attempts: delivery.flatMap { attemptsByDelivery[$0] } ?? [])
                report.duplicates += extra
                report.duplicatesAfterTimeout += extra - unexplained
                guard unexplained > 0 else { continue }
                let what = "event \(eventID) (delivery \(delivery.map(String.init) ?? "-")) acknowledged \(count) times"
                    + (unexplained < extra ? " (\(extra - unexplained) extra after a recorded timeout)" : "")
                if !expectations.duplicatesAllowed {
                    fail(.noDuplicates, subscriber.name, change?.subject, what)
                } else if let allowed = expectations.duplicatesOnlyFor {
                    if delivery.map({ !allowed.contains($0) }) ?? true {
                        fail(.noDuplicates, subscriber.name, change?.subject, "\(what) but was not in flight at a kill")
                    } else if unexplained > expectations.maxExtraAcknowledgements {
                        fail(.noDuplicates, subscriber.name, change?.subject, "\(what): \(unexplained) unexplained extra, more than the \(expectations.maxExtraAcknowledgements) allowed")
                    }
                }
            }

            // Every matching change reached it, and has one delivery row for it.
            for change in snapshot.changes where subscriber.matches(change) {
                if acknowledged[change.eventID.lowercased()] == nil {
                    fail(.everyChangeReachedEveryMatchingSubscriber, subscriber.name, change.subject, "change \(change.id) (\(change.eventType), \(change.purpose)) never acknowledged")
                }
                let rows = deliveriesByPair["\(change.id)/\(subscriber.id)"] ?? []
                if rows.count != 1 {
                    fail(.everyChangeFannedOut, subscriber.name, change.subject, "change \(change.id) has \(rows.count) delivery rows (fanned_out \(change.fannedOut))")
                }
            }

            // Order: first arrival of each webhook-id, per subject, must follow outbox id order.
            var seenWebhookIDs = Set<String>()
            var lastBySubject: [String: (change: Int64, receipt: WebhookReceipt)] = [:]
            for receipt in list {
                guard let webhookID = receipt.webhookID, seenWebhookIDs.insert(webhookID).inserted,
                      let eventID = receipt.eventID, let change = changesByEvent[eventID.lowercased()] else { continue }
                if let last = lastBySubject[change.subject], last.change >= change.id {
                    fail(.orderPerSubscriberAndSubject, subscriber.name, change.subject, "change \(change.id) arrived first at \(receipt) after change \(last.change) (\(last.receipt))")
                }
                lastBySubject[change.subject] = (change.id, receipt)
            }

            // Delivered means a 2xx head was written for that delivery.
            for delivery in snapshot.deliveries where delivery.subscriberID == subscriber.id && delivery.state == "delivered" {
                if !acknowledgedDeliveries.contains(delivery.id) {
                    fail(.deliveredMeansAcknowledged, subscriber.name, changesByID[delivery.changeID]?.subject, "delivery \(delivery.id) is delivered but no 2xx answer went out for it")
                }
            }
        }

        for delivery in snapshot.deliveries {
            let name = subscribersByID[delivery.subscriberID]?.name
            let subject = changesByID[delivery.changeID]?.subject
            if delivery.state == "in_flight" || delivery.state == "pending" || delivery.leaseOwner != nil {
                fail(.nothingInFlightOrLeased, name, subject, "delivery \(delivery.id) is \(delivery.state) (lease \(delivery.leaseOwner ?? "none"))")
            }
            if delivery.state == "dead", !(name.map(expectations.deadAllowedFor.contains) ?? false) {
                fail(.noUnexpectedDead, name, subject, "delivery \(delivery.id) is dead: \(delivery.lastStatus ?? "-") \(delivery.lastError ?? "")")
            }
            if let change = changesByID[delivery.changeID], let subscriber = subscribersByID[delivery.subscriberID], !subscriber.matches(change) {
                fail(.everyChangeFannedOut, name, subject, "delivery \(delivery.id) sends change \(change.id) to a subscriber whose filters do not match it")
            }
        }
        for change in snapshot.changes where !change.fannedOut {
            fail(.everyChangeFannedOut, nil, change.subject, "change \(change.id) was never fanned out")
        }
        var logged: [String: Int] = [:]
        for attempt in snapshot.attempts {
            guard let instance = attempt.instanceID else { continue }
            logged["delivery \(attempt.deliveryID), attempt \(attempt.attempt), instance \(instance)", default: 0] += 1
        }
        for (what, count) in logged.sorted(by: { $0.key < $1.key }) where count > 1 {
            fail(.eachAttemptLoggedOnce, nil, nil, "\(what) is logged \(count) times")
        }

        var subjects: [String] = []
        for subject in report.violations.compactMap(\.subject) where !subjects.contains(subject) && subjects.count < 3 {
            subjects.append(subject)
        }
        report.timelines = subjects.map { timeline(of: $0, snapshot: snapshot, receipts: sortedReceipts) }.joined(separator: "\n")
        return report
    }

    /// Of `extra` acknowledgements beyond the first of one delivery, how many no timeout of the
    /// relay explains. Each attempt the relay recorded as timed out before it recorded the first
    /// 2xx may have been taken by the receiver after the relay gave up, so it explains one extra
    /// acknowledgement. Nothing explains a send after the relay recorded a 2xx: a second 2xx
    /// attempt, or more acknowledgements than those timeouts account for. Never more than `extra`.
    static func unexplainedExtraAcknowledgements(_ extra: Int, attempts: [ScenarioSnapshot.Attempt]) -> Int {
        let firstAcknowledged = attempts.firstIndex(where: \.isAcknowledged) ?? attempts.endIndex
        let timeouts = attempts[..<firstAcknowledged].filter(\.timedOut).count
        let acknowledgedByRelay = attempts.filter(\.isAcknowledged).count
        return min(extra, max(0, extra - timeouts, acknowledgedByRelay - 1))
    }

    /// Everything about one subject: its changes with their deliveries and attempts, then what
    /// each receiver saw of it.
    public static func timeline(of subject: String, snapshot: ScenarioSnapshot, receipts: [String: [WebhookReceipt]]) -> String {
        let names = Dictionary(uniqueKeysWithValues: snapshot.subscribers.map { ($0.id, $0.name) })
        var lines = ["timeline of subject '\(subject)':"]
        let changes = snapshot.changes.filter { $0.subject == subject }
        let eventIDs = Set(changes.map { $0.eventID.lowercased() })
        for change in changes {
            lines.append("  change \(change.id) at \(change.changedAt) \(change.operation) \(change.eventType) purpose=\(change.purpose) event=\(change.eventID)\(change.fannedOut ? "" : " NOT FANNED OUT")")
            for delivery in snapshot.deliveries where delivery.changeID == change.id {
                lines.append("    delivery \(delivery.id) -> \(names[delivery.subscriberID] ?? "?"): \(delivery.state), \(delivery.attempts) attempt(s), last \(delivery.lastStatus ?? "-") \(delivery.lastError ?? "")\(delivery.leaseOwner.map { ", leased to \($0)" } ?? "")")
                for attempt in snapshot.attempts where attempt.deliveryID == delivery.id {
                    lines.append("      attempt \(attempt.attempt) at \(attempt.startedAt): \(attempt.status ?? "-") \(attempt.error ?? "")")
                }
            }
        }
        for (name, list) in receipts.sorted(by: { $0.key < $1.key }) {
            let mine = list.filter { receipt in
                receipt.subject == subject || receipt.eventID.map { eventIDs.contains($0.lowercased()) } ?? false
            }
            guard !mine.isEmpty else { continue }
            lines.append("  received by \(name):")
            for receipt in mine.prefix(40) { lines.append("    \(receipt)") }
        }
        return lines.joined(separator: "\n")
    }
}
