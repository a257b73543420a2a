import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

extension SubscriberStore {
    /// One change of a subscriber's state, as recorded in `consent_sync.subscriber_events`.
    public struct StateChange: Sendable, Equatable {
        public var subscriberID: Int64
        public var subscriber: String
        public var action: SubscriberState.Action
        public var from: SubscriberState
        public var to: SubscriberState
        public var reason: String?
        public var actor: String

        /// False when the subscriber already was in the requested state: nothing was written.
        public var changed: Bool { from != to }
    }

    /// A row of `consent_sync.subscriber_events`.
    public struct StateEvent: Sendable, Equatable {
        public var at: Date
        public var action: SubscriberState.Action
        public var from: SubscriberState
        public var to: SubscriberState
        public var reason: String?
        public var actor: String
    }

    /// What `subscriber list` shows: everything but the secrets.
    public struct Listing: Sendable {
        public var name: String
        public var url: String
        public var purposes: [String]?
        public var eventTypes: [String]?
        public var state: SubscriberState
        public var stateReason: String?
        /// When the state last changed; `nil` when it never did.
        public var stateChangedAt: Date?
        /// Who changed it last (`operator (alice)`, `consent-sync (410 Gone from receiver)`).
        public var stateChangedBy: String?
        public var limits: Subscriber.Limits
        /// Signing secrets in use: 1, or more while a rotation overlaps.
        public var activeSecrets: Int
        /// When the next of them expires; `nil` when none is due to.
        public var nextSecretExpiry: Date?
        /// Only these attributes; `nil` for all captured.
        public var fields: [String]? = nil
        public var pseudonymous = false
        public var newestWins = false
    }

    /// Applies `action` (pause, resume, enable, disable) to the subscriber named `name`, records
    /// it with `reason` and `actor`, and returns what happened.
    ///
    /// Asking for the state a subscriber is already in changes and records nothing
    /// (``StateChange/changed`` is false). Takes effect in a running relay when it next reads
    /// the subscribers (within `relay.poll_interval_ms`); requests already in flight finish.
    /// - Throws: ``SubscriberStateError`` for an unknown name, a refused transition (such as
    ///   `resume` of a disabled subscriber) or an unusable reason; nothing is changed then.
    @discardableResult
    public static func changeState(
        name: String,
        action: SubscriberState.Action,
        reason: String?,
        actor: String,
        on connection: PostgresConnection
    ) async throws -> StateChange {
        let reason = try SubscriberStateError.checkedReason(reason)
        return try await connection.withTransaction { connection in
            let rows = try await connection.query(
                "SELECT id, name, state FROM consent_sync.subscribers WHERE name = $1 FOR UPDATE",
                [name]
            )
            guard let row = rows.first else {
                throw SubscriberStateError(code: .unknownSubscriber, message: "no subscriber named '\(name.prefix(80))'")
            }
            return try await apply(action, to: row, reason: reason, actor: actor, on: connection)
        }
    }

    /// Disables the subscriber with `id`: for the relay, when a receiver answers `410 Gone` or
    /// has failed for too long. Its pending deliveries stay, and new ones keep being created,
    /// until an operator enables it again.
    /// - Parameters:
    ///   - reason: why, for operators (`receiver answered 410 Gone`); shown by `subscriber list`.
    ///   - actor: who decided, e.g. `consent-sync (410 Gone from receiver)` or `operator`.
    /// - Returns: the change (``StateChange/changed`` is false when it was disabled already,
    ///   and the first reason is kept), or `nil` when no subscriber has that id any more.
    @discardableResult
    public static func disable(id: Int64, reason: String, actor: String, on connection: PostgresConnection) async throws -> StateChange? {
        let reason = try SubscriberStateError.checkedReason(reason)
        return try await connection.withTransaction { connection in
            let rows = try await connection.query(
                "SELECT id, name, state FROM consent_sync.subscribers WHERE id = $1::bigint FOR UPDATE",
                [String(id)]
            )
            guard let row = rows.first else { return nil }
            return try await apply(.disable, to: row, reason: reason, actor: actor, on: connection)
        }
    }

    /// The recorded state changes of the subscriber named `name`, oldest first.
    public static func stateHistory(name: String, on connection: PostgresConnection) async throws -> [StateEvent] {
        let rows = try await connection.query(
            """
            SELECT extract(epoch FROM e.at)::double precision AS at, e.action, e.from_state, e.to_state, e.reason, e.actor
            FROM consent_sync.subscriber_events e JOIN consent_sync.subscribers s ON s.id = e.subscriber_id
            WHERE s.name = $1 ORDER BY e.at, e.id
            """,
            [name]
        )
        return try rows.map { row in
            let action = try row.string("action")
            return StateEvent(
                at: Date(timeIntervalSince1970: try row.double("at")),
                action: try SubscriberState.Action(rawValue: action).orThrow("unknown subscriber action '\(action)'"),
                from: try state(row, column: "from_state"),
                to: try state(row, column: "to_state"),
                reason: row.optionalString("reason"),
                actor: try row.string("actor")
            )
        }
    }

    /// Every subscriber without its secrets, with its state, why, since when and by whom, and
    /// how many secrets it has in use.
    public static func listing(on connection: PostgresConnection) async throws -> [Listing] {
        let rows = try await connection.query(
            """
            SELECT s.name, s.url, array_to_json(s.purposes)::text AS purposes, array_to_json(s.event_types)::text AS event_types,
                   s.state, s.state_reason, extract(epoch FROM s.state_changed_at)::double precision AS state_changed_at,
                   last.actor, s.max_in_flight, s.timeout_ms,
                   secrets.active AS active_secrets, extract(epoch FROM secrets.next_expiry)::double precision AS next_secret_expiry,
                   array_to_json(s.fields)::text AS fields, s.pseudonym_key IS NOT NULL AS pseudonymous, s.newest_wins
            FROM consent_sync.subscribers s
            CROSS JOIN LATERAL (
                SELECT count(*) AS active, min(ss.expires_at) AS next_expiry FROM consent_sync.subscriber_secrets ss
                WHERE ss.subscriber_id = s.id AND (ss.expires_at IS NULL OR ss.expires_at > now())
            ) secrets
            LEFT JOIN LATERAL (
                SELECT e.actor FROM consent_sync.subscriber_events e
                WHERE e.subscriber_id = s.id ORDER BY e.at DESC, e.id DESC LIMIT 1
            ) last ON true
            ORDER BY s.name
            """
        )
        return try rows.map { row in
            Listing(
                name: try row.string("name"),
                url: try row.string("url"),
                purposes: try decodeArray(row.optionalString("purposes")),
                eventTypes: try decodeArray(row.optionalString("event_types")),
                state: try state(row),
                stateReason: row.optionalString("state_reason"),
                stateChangedAt: row.optionalString("state_changed_at").flatMap(Double.init).map(Date.init(timeIntervalSince1970:)),
                stateChangedBy: row.optionalString("actor"),
                limits: .init(maxInFlight: try row.int("max_in_flight"), timeout: .milliseconds(try row.int("timeout_ms"))),
                activeSecrets: try row.int("active_secrets"),
                nextSecretExpiry: row.optionalString("next_secret_expiry").flatMap(Double.init).map(Date.init(timeIntervalSince1970:)),
                fields: try decodeArray(row.optionalString("fields")),
                pseudonymous: try row.bool("pseudonymous"),
                newestWins: try row.bool("newest_wins")
            )
        }
    }

    /// Applies `action` to the subscriber in `row` (locked by the caller's transaction).
    private static func apply(
        _ action: SubscriberState.Action,
        to row: PostgresRow,
        reason: String?,
        actor: String,
        on connection: PostgresConnection
    ) async throws -> StateChange {
        let id = try row.int64("id")
        let name = try row.string("name")
        let current = try state(row)
        var change = StateChange(subscriberID: id, subscriber: name, action: action, from: current, to: current, reason: reason, actor: actor)
        switch current.applying(action) {
        case .unchanged:
            return change
        case .refused(let why):
            throw SubscriberStateError(code: .refused, message: "cannot \(action.rawValue) '\(name)': \(why)")
        case .change(let target):
            change.to = target
        }
        try await connection.query(
            """
            WITH updated AS (
                UPDATE consent_sync.subscribers
                SET state = $2, state_reason = CASE WHEN $2 = 'enabled' THEN NULL ELSE $4 END,
                    state_changed_at = now(), updated_at = now()
                WHERE id = $1::bigint
            )
            INSERT INTO consent_sync.subscriber_events (subscriber_id, action, from_state, to_state, reason, actor)
            VALUES ($1::bigint, $3, $5, $2, $4, $6)
            """,
            [String(id), change.to.rawValue, action.rawValue, reason, current.rawValue, actor]
        )
        // Wakes running relays; they pick the new state up when they next read the subscribers.
        try await RelayWakeup.subscribers.send(on: connection)
        return change
    }
}

/// Why a subscriber's state could not be changed. Nothing was changed.
public struct SubscriberStateError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        /// No subscriber has that name.
        public static let unknownSubscriber = Code(name: "unknown subscriber")
        /// The action does not apply to the subscriber's state (e.g. `resume` of a disabled one).
        public static let refused = Code(name: "refused")
        /// The reason is too long or holds control characters.
        public static let invalidReason = Code(name: "invalid reason")
        public var description: String { name }
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// The longest reason kept.
    public static let maxReasonLength = 500

    /// `reason` without surrounding white space, `nil` when empty; throws when it is longer than
    /// ``maxReasonLength`` or holds control characters (it is shown in one table cell).
    public static func checkedReason(_ reason: String?) throws(SubscriberStateError) -> String? {
        guard let trimmed = reason?.trimmingCharacters(in: .whitespaces), !trimmed.isEmpty else { return nil }
        guard trimmed.count <= maxReasonLength else {
            throw SubscriberStateError(code: .invalidReason, message: "the reason is longer than \(maxReasonLength) characters")
        }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw SubscriberStateError(code: .invalidReason, message: "the reason must be one line without control characters")
        }
        return trimmed
    }
}
