import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// The state of one delivery (`consent_sync.deliveries.state`).
public enum DeliveryState: String, Sendable, Codable, CaseIterable {
    case pending
    case inFlight = "in_flight"
    case delivered
    case dead
}

/// One delivery as operators see it: `deliveries list`. Holds no secret; it does hold the
/// subject id, which this operator tool may show.
public struct DeliveryRecord: Sendable, Codable, Equatable {
    public var id: Int64
    public var subscriber: String
    public var changeID: Int64
    /// The CloudEvents `id`: the same for every delivery of the change, replays included.
    public var eventID: String
    public var eventType: String
    public var subject: String
    public var purpose: String
    public var state: DeliveryState
    public var attempts: Int
    public var lastStatus: Int?
    public var lastError: String?
    /// When the change was captured (the event's `time`).
    public var capturedAt: Date
    /// When this delivery was created (fan-out, or the replay).
    public var createdAt: Date
    /// When a pending delivery is due; `nil` while it waits for an earlier change of its
    /// subject (``waitsForEarlierChange``), and when it is not pending.
    public var nextAttemptAt: Date?
    /// Pending, and held back until an earlier change of the same subject is finished.
    public var waitsForEarlierChange: Bool
    /// When it was delivered or given up on.
    public var completedAt: Date?
    /// For a replay: the delivery it sends again.
    public var replayOf: Int64?
    /// When `deliveries retry` last put it back in the queue after it was dead.
    public var requeuedAt: Date?
}

/// Operators' access to deliveries: list them, re-queue dead ones, replay delivered ones.
///
/// Re-queued and replayed deliveries obey the parking rules of fan-out (see ``DeliveryStore``):
/// each runs in one transaction holding the fan-out advisory lock exclusively, a delivery is
/// parked (`next_attempt_at = 'infinity'`) while a live delivery of a lower change id exists for
/// its subscriber and subject, and among the new ones of one subject only the lowest is not
/// parked. So per-subject order holds, and finishing a delivery un-parks the next as usual.
public enum DeliveryAdmin {
    /// What `deliveries list` asks for.
    public struct Query: Sendable, Equatable {
        public var state: DeliveryState?
        /// A subscriber's name; `nil` for all.
        public var subscriber: String?
        public var window: TimeWindow
        /// At most this many, the newest.
        public var limit: Int

        public init(state: DeliveryState? = nil, subscriber: String? = nil, window: TimeWindow = .all, limit: Int = 100) {
            self.state = state
            self.subscriber = subscriber
            self.window = window
            self.limit = limit
        }
    }

    /// The newest deliveries that match, oldest first.
    public struct Page: Sendable {
        public var deliveries: [DeliveryRecord]
        /// More deliveries match than the limit let through. (Not a count: counting every match
        /// of a large table is a cost an operator's listing should not put on the database.)
        public var more: Bool
    }

    /// Which dead deliveries `deliveries retry` puts back in the queue.
    public enum RetrySelection: Sendable, Equatable {
        /// This one, which must be dead.
        case delivery(id: Int64)
        /// Every dead delivery to this subscriber whose change was captured in the window.
        case subscriber(name: String, window: TimeWindow)
    }

    /// What `deliveries retry` did.
    public struct RetryResult: Sendable, Equatable {
        public var subscriber: String
        /// Its state now: a paused or disabled subscriber gets the re-queued deliveries only
        /// when it is on again.
        public var subscriberState: SubscriberState
        /// The deliveries put back in the queue, pending again.
        public var requeued: [Int64]
        /// How many of them wait for an earlier change of their subject.
        public var waiting: Int
    }

    /// What `replay` did.
    public struct ReplayResult: Sendable, Equatable {
        public var subscriber: String
        public var subscriberState: SubscriberState
        /// The new deliveries, one per change, in change order per subject.
        public var created: [Int64]
        /// How many of them wait for an earlier change of their subject.
        public var waiting: Int
        /// Delivered changes in the window not replayed because a delivery of them to this
        /// subscriber is pending or in flight anyway.
        public var skippedStillQueued: Int
    }

    // MARK: - List

    /// The newest `query.limit` deliveries that match `query`, oldest first.
    /// - Throws: ``DeliveryAdminError`` when the subscriber does not exist.
    public static func list(_ query: Query, on connection: PostgresConnection) async throws -> Page {
        var subscriberID: Int64?
        if let name = query.subscriber {
            subscriberID = try await subscriber(named: name, on: connection).id
        }
        let rows = try await connection.query(
            """
            SELECT d.id, s.name AS subscriber, d.change_id, c.event_id, c.event_type, c.subject, c.purpose,
                   d.state, d.attempts, d.last_status, d.last_error,
                   extract(epoch FROM c.changed_at)::double precision AS captured_at,
                   extract(epoch FROM d.created_at)::double precision AS created_at,
                   CASE WHEN d.state = 'pending' AND d.next_attempt_at <> 'infinity'
                        THEN extract(epoch FROM d.next_attempt_at)::double precision END AS next_attempt_at,
                   (d.state = 'pending' AND d.next_attempt_at = 'infinity') AS waiting,
                   extract(epoch FROM d.completed_at)::double precision AS completed_at,
                   d.replay_of,
                   extract(epoch FROM d.requeued_at)::double precision AS requeued_at
            FROM consent_sync.deliveries d
            JOIN consent_sync.changes c ON c.id = d.change_id
            JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
            WHERE ($1::text IS NULL OR d.state = $1::text)
              AND ($2::bigint IS NULL OR d.subscriber_id = $2::bigint)
              AND ($3::double precision IS NULL OR c.changed_at >= to_timestamp($3::double precision))
              AND ($4::double precision IS NULL OR c.changed_at < to_timestamp($4::double precision))
            ORDER BY d.id DESC
            LIMIT $5::integer
            """,
            [
                query.state?.rawValue, subscriberID.map { String($0) },
                query.window.since.map(epoch), query.window.until.map(epoch),
                String(max(0, query.limit) + 1),
            ]
        )
        let deliveries = try rows.prefix(max(0, query.limit)).map(record)
        return Page(deliveries: deliveries.reversed(), more: rows.count > query.limit)
    }

    // MARK: - Retry

    /// Puts dead deliveries back in the queue: pending, due now (or parked behind an earlier
    /// change of their subject), their attempts and the attempt log kept, a `retry` event
    /// recorded for each.
    ///
    /// Many deliveries are re-queued in transactions of `batchSize`, in change order, so that
    /// the fan-out lock is never held for long; the parking rules hold across batches, since a
    /// later batch sees the earlier ones as queued.
    ///
    /// A re-queued delivery keeps its attempt count and creation time, which the retry policy
    /// reads: unless the relay counts from ``DeliveryRecord/requeuedAt``, a delivery that died of
    /// `max_attempts` or `max_age` gets one more attempt.
    /// - Throws: ``DeliveryAdminError`` for an unknown subscriber or delivery, or a delivery
    ///   that is not dead; nothing is changed then.
    public static func retry(
        _ selection: RetrySelection,
        actor: String,
        batchSize: Int = 5000,
        on connection: PostgresConnection
    ) async throws -> RetryResult {
        var result: RetryResult
        switch selection {
        case .delivery(let id):
            result = try await connection.withTransaction { connection in
                try await connection.query("SELECT pg_advisory_xact_lock($1::bigint)", [String(DeliveryStore.fanOutLockKey)])
                let rows = try await connection.query(
                    """
                    SELECT d.state, s.name, s.state AS subscriber_state
                    FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id
                    WHERE d.id = $1::bigint FOR UPDATE OF d
                    """,
                    [String(id)]
                )
                guard let row = rows.first else {
                    throw DeliveryAdminError(code: .noSuchDelivery, message: "there is no delivery \(id)")
                }
                let state = try row.string("state")
                guard state == DeliveryState.dead.rawValue else {
                    let hint = state == DeliveryState.delivered.rawValue
                        ? "to send a delivered change again, use 'consent-sync replay'"
                        : "it is still queued and will be sent"
                    throw DeliveryAdminError(code: .notDead, message: "delivery \(id) is \(state), not dead; only dead deliveries can be retried (\(hint))")
                }
                let requeued = try await requeue([id], actor: actor, on: connection)
                return RetryResult(
                    subscriber: try row.string("name"),
                    subscriberState: try SubscriberStore.state(row, column: "subscriber_state"),
                    requeued: requeued.ids,
                    waiting: requeued.waiting
                )
            }
        case .subscriber(let name, let window):
            let subscriber = try await subscriber(named: name, on: connection)
            let rows = try await connection.query(
                """
                SELECT d.id FROM consent_sync.deliveries d JOIN consent_sync.changes c ON c.id = d.change_id
                WHERE d.subscriber_id = $1::bigint AND d.state = 'dead'
                  AND ($2::double precision IS NULL OR c.changed_at >= to_timestamp($2::double precision))
                  AND ($3::double precision IS NULL OR c.changed_at < to_timestamp($3::double precision))
                ORDER BY d.change_id, d.id
                """,
                [String(subscriber.id), window.since.map(epoch), window.until.map(epoch)]
            )
            let ids = try rows.map { try $0.int64("id") }
            result = RetryResult(subscriber: name, subscriberState: subscriber.state, requeued: [], waiting: 0)
            for start in stride(from: 0, to: ids.count, by: max(1, batchSize)) {
                let batch = Array(ids[start..<min(ids.count, start + max(1, batchSize))])
                let requeued = try await connection.withTransaction { connection in
                    try await connection.query("SELECT pg_advisory_xact_lock($1::bigint)", [String(DeliveryStore.fanOutLockKey)])
                    return try await requeue(batch, actor: actor, on: connection)
                }
                result.requeued += requeued.ids
                result.waiting += requeued.waiting
            }
        }
        if !result.requeued.isEmpty {
            try await RelayWakeup.deliveries.send(on: connection)
        }
        return result
    }

    /// Re-queues those of `ids` that are dead, in the caller's transaction, which holds the
    /// fan-out lock.
    private static func requeue(_ ids: [Int64], actor: String, on connection: PostgresConnection) async throws -> (ids: [Int64], waiting: Int) {
        let rows = try await connection.query(
            """
            WITH target AS (
                SELECT d.id, d.subscriber_id, d.subject, d.change_id, d.last_status, d.last_error,
                       row_number() OVER (PARTITION BY d.subscriber_id, d.subject ORDER BY d.change_id, d.id) AS position
                FROM consent_sync.deliveries d
                WHERE d.id = ANY ($1::bigint[]) AND d.state = 'dead'
            ), requeued AS (
                UPDATE consent_sync.deliveries d SET
                    state = 'pending',
                    next_attempt_at = CASE WHEN t.position > 1 OR EXISTS (
                            SELECT 1 FROM consent_sync.deliveries e
                            WHERE e.subscriber_id = t.subscriber_id AND e.subject = t.subject
                              AND e.state IN ('pending', 'in_flight') AND e.change_id < t.change_id)
                        THEN 'infinity'::timestamptz ELSE now() END,
                    completed_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    requeued_at = now(), attempts_before_requeue = d.attempts
                FROM target t WHERE d.id = t.id
                RETURNING d.id, d.next_attempt_at = 'infinity'::timestamptz AS waiting
            ), logged AS (
                INSERT INTO consent_sync.delivery_events (delivery_id, action, actor, note)
                SELECT t.id, 'retry', $2,
                       left('was dead: ' || coalesce(t.last_error, 'status ' || t.last_status::text, 'no reason recorded'), 1000)
                FROM target t
            )
            SELECT id, waiting FROM requeued ORDER BY id
            """,
            [postgresArray(ids.map { String($0) }), actor]
        )
        return (try rows.map { try $0.int64("id") }, try rows.filter { try $0.bool("waiting") }.count)
    }

    // MARK: - Replay

    /// Sends changes already delivered to `subscriber` again: one new delivery per change
    /// captured in `window` (a new delivery id, so a new `webhook-id`; the same change, so the
    /// same CloudEvents `id` and `sequence`), marked with ``DeliveryRecord/replayOf``, in change
    /// order per subject behind anything of that subject still queued before it. Changes with a
    /// delivery to this subscriber still pending or in flight are skipped: they are sent anyway.
    ///
    /// Works through the window in change order, `batchSize` changes per transaction, so that
    /// the fan-out lock is never held for long; the parking rules hold across batches.
    /// - Throws: ``DeliveryAdminError`` for an unknown subscriber; nothing is changed then.
    public static func replay(
        subscriber name: String,
        window: TimeWindow,
        actor: String,
        batchSize: Int = 5000,
        on connection: PostgresConnection
    ) async throws -> ReplayResult {
        let subscriber = try await subscriber(named: name, on: connection)
        var result = ReplayResult(subscriber: name, subscriberState: subscriber.state, created: [], waiting: 0, skippedStillQueued: 0)
        var after: Int64 = 0
        while true {
            let row = try await connection.withTransaction { connection in
                try await connection.query("SELECT pg_advisory_xact_lock($1::bigint)", [String(DeliveryStore.fanOutLockKey)])
                return try await connection.query(
                    """
                    WITH window_changes AS (
                        SELECT d.change_id, d.subject, min(d.id) AS original
                        FROM consent_sync.deliveries d JOIN consent_sync.changes c ON c.id = d.change_id
                        WHERE d.subscriber_id = $1::bigint AND d.state = 'delivered' AND d.change_id > $5::bigint
                          AND ($2::double precision IS NULL OR c.changed_at >= to_timestamp($2::double precision))
                          AND ($3::double precision IS NULL OR c.changed_at < to_timestamp($3::double precision))
                        GROUP BY d.change_id, d.subject
                        ORDER BY d.change_id
                        LIMIT $6::integer
                    ), delivered AS (
                        SELECT w.*, EXISTS (
                                   SELECT 1 FROM consent_sync.deliveries e
                                   WHERE e.subscriber_id = $1::bigint AND e.change_id = w.change_id
                                     AND e.state IN ('pending', 'in_flight')) AS queued
                        FROM window_changes w
                    ), ranked AS (
                        SELECT x.change_id, x.subject, x.original,
                               row_number() OVER (PARTITION BY x.subject ORDER BY x.change_id) AS position
                        FROM delivered x WHERE NOT x.queued
                    ), inserted AS (
                        INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, next_attempt_at, replay_of)
                        SELECT r.change_id, $1::bigint, r.subject,
                               CASE WHEN r.position > 1 OR EXISTS (
                                        SELECT 1 FROM consent_sync.deliveries e
                                        WHERE e.subscriber_id = $1::bigint AND e.subject = r.subject
                                          AND e.state IN ('pending', 'in_flight') AND e.change_id < r.change_id)
                                    THEN 'infinity'::timestamptz ELSE now() END,
                               r.original
                        FROM ranked r ORDER BY r.change_id
                        RETURNING id, replay_of, next_attempt_at = 'infinity'::timestamptz AS waiting
                    ), logged AS (
                        INSERT INTO consent_sync.delivery_events (delivery_id, action, actor, note)
                        SELECT i.id, 'replay', $4, 'replay of delivery ' || i.replay_of FROM inserted i
                    )
                    SELECT (SELECT count(*) FROM window_changes) AS taken,
                           (SELECT coalesce(max(change_id), 0) FROM window_changes) AS last_change,
                           (SELECT count(*) FROM delivered WHERE queued) AS skipped,
                           (SELECT count(*) FROM inserted WHERE waiting) AS waiting,
                           (SELECT coalesce(array_to_json(array_agg(id ORDER BY id)), '[]')::text FROM inserted) AS ids
                    """,
                    [
                        String(subscriber.id), window.since.map(epoch), window.until.map(epoch), actor,
                        String(after), String(max(1, batchSize)),
                    ]
                ).first.orThrow("replay returned no row")
            }
            result.created += try JSONDecoder().decode([Int64].self, from: Data(try row.string("ids").utf8))
            result.waiting += try row.int("waiting")
            result.skippedStillQueued += try row.int("skipped")
            after = try row.int64("last_change")
            if try row.int("taken") < max(1, batchSize) { break }
        }
        if !result.created.isEmpty {
            try await RelayWakeup.deliveries.send(on: connection)
        }
        return result
    }

    // MARK: - Helpers

    private static func subscriber(named name: String, on connection: PostgresConnection) async throws -> (id: Int64, state: SubscriberState) {
        let rows = try await connection.query("SELECT id, state FROM consent_sync.subscribers WHERE name = $1", [name])
        guard let row = rows.first else {
            throw DeliveryAdminError(code: .unknownSubscriber, message: "no subscriber named '\(name.prefix(80))'")
        }
        return (try row.int64("id"), try SubscriberStore.state(row))
    }

    private static func epoch(_ date: Date) -> String {
        String(date.timeIntervalSince1970)
    }

    private static func record(_ row: PostgresRow) throws -> DeliveryRecord {
        func date(_ column: String) -> Date? {
            row.optionalString(column).flatMap(Double.init).map(Date.init(timeIntervalSince1970:))
        }
        let state = try row.string("state")
        return DeliveryRecord(
            id: try row.int64("id"),
            subscriber: try row.string("subscriber"),
            changeID: try row.int64("change_id"),
            eventID: try row.string("event_id"),
            eventType: try row.string("event_type"),
            subject: try row.string("subject"),
            purpose: try row.string("purpose"),
            state: try DeliveryState(rawValue: state).orThrow("unknown delivery state '\(state)'"),
            attempts: try row.int("attempts"),
            lastStatus: try row.optionalInt("last_status"),
            lastError: row.optionalString("last_error"),
            capturedAt: Date(timeIntervalSince1970: try row.double("captured_at")),
            createdAt: Date(timeIntervalSince1970: try row.double("created_at")),
            nextAttemptAt: date("next_attempt_at"),
            waitsForEarlierChange: try row.bool("waiting"),
            completedAt: date("completed_at"),
            replayOf: row.optionalString("replay_of").flatMap(Int64.init),
            requeuedAt: date("requeued_at")
        )
    }
}

/// Why `deliveries list`, `deliveries retry` or `replay` did nothing.
public struct DeliveryAdminError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        /// No subscriber has that name.
        public static let unknownSubscriber = Code(name: "unknown subscriber")
        /// No delivery has that id.
        public static let noSuchDelivery = Code(name: "no such delivery")
        /// Only dead deliveries can be re-queued.
        public static let notDead = Code(name: "not dead")
        public var description: String { name }
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
