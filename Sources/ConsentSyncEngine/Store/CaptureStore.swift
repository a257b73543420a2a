import ConsentSyncPostgres
import Foundation

/// How captured changes leave the application's transaction (`consent-sync capture`).
public enum CaptureMode: String, Sendable, CaseIterable {
    /// The capture trigger inserts a row into the capture queue (`consent_sync.captured`).
    case table
    /// The capture trigger writes a logical decoding message; a daemon reads the messages of
    /// committed transactions from a replication slot into the queue. Cheaper for the
    /// application's writes; needs `wal_level = logical` and a slot that must be read.
    case logical
}

/// The capture mode, its replication slot, and the step that reads the slot.
public enum CaptureStore {
    public struct State: Sendable, Equatable {
        public var mode: CaptureMode
        /// The replication slot in use, also while switching back to `table` until it is read.
        public var slotName: String?
        /// How much WAL the slot holds back, in bytes (what has not been read yet, and what
        /// PostgreSQL keeps for it); `nil` without a slot.
        public var slotLagBytes: Int64?
        /// The slot is gone or lost its WAL (`max_slot_wal_keep_size`): changes were lost.
        public var slotLost: Bool
        /// The end of the last transaction whose changes are queued.
        public var position: UInt64?
    }

    public static func state(on connection: PostgresConnection) async throws -> State {
        let row = try await connection.query(
            """
            SELECT c.mode, c.slot_name, c.position::text AS position, s.slot_name IS NULL AS missing, s.wal_status,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS lag
            FROM consent_sync.capture_state c LEFT JOIN pg_replication_slots s ON s.slot_name = c.slot_name
            """
        ).first.orThrow("consent_sync.capture_state has no row")
        let mode = try row.string("mode")
        let slot = row.optionalString("slot_name")
        let missing = try row.bool("missing")
        return State(
            mode: try CaptureMode(rawValue: mode).orThrow("unknown capture mode '\(mode)'"),
            slotName: slot,
            slotLagBytes: row.optionalString("lag").flatMap(Int64.init),
            slotLost: slot != nil && (missing || row.optionalString("wal_status") == "lost"),
            position: row.optionalString("position").flatMap(PostgresReplicationStream.parse)
        )
    }

    /// Switches every watch to `mode` (run as the schema's owner; `logical` also needs the
    /// REPLICATION attribute or superuser, and `wal_level = logical`). Back to `table`, the
    /// slot is read up to the switch and dropped before this returns, unless a running daemon
    /// is reading it; then that daemon finishes it.
    public static func setMode(_ mode: CaptureMode, on connection: PostgresConnection) async throws {
        let current = try await state(on: connection)
        switch mode {
        case .logical:
            let level = try await connection.query("SELECT current_setting('wal_level') AS level").first?.optionalString("level") ?? "?"
            guard level == "logical" else {
                throw CaptureModeError(reason: "capture through the WAL needs wal_level = logical (it is \(level)); set it in postgresql.conf and restart PostgreSQL")
            }
            // Slots are named per cluster: the database's oid keeps two copies of one
            // installation (a restored dump) in one cluster apart.
            let installation = try await DeliveryStore.installationID(on: connection)
            let oid = try await connection.query("SELECT oid FROM pg_database WHERE datname = current_database()").first?.string("oid") ?? "0"
            let slot = current.slotName ?? "consent_sync_\(installation.lowercased().filter { $0.isHexDigit }.prefix(16))_\(oid)"
            let found = try await connection.query(
                "SELECT coalesce(database = current_database(), false) AS ours FROM pg_replication_slots WHERE slot_name = $1", [slot]
            )
            if let other = found.first, try !other.bool("ours") {
                throw CaptureModeError(reason: "replication slot \(slot) belongs to another database; drop it (pg_drop_replication_slot) if it is left over")
            }
            let exists = !found.isEmpty
            if !exists {
                // Outside a transaction: PostgreSQL refuses to create one in a transaction that wrote.
                try await connection.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slot])
            }
            do {
                try await connection.query("SELECT consent_sync.set_capture_mode('logical', $1)", [slot])
            } catch {
                // An unread slot keeps WAL forever: never leave one behind.
                if !exists { _ = try? await connection.query("SELECT pg_drop_replication_slot($1)", [slot]) }
                throw error
            }
        case .table:
            try await connection.query("SELECT consent_sync.set_capture_mode('table', NULL)")
            guard current.slotName != nil else { return }
            let deadline = ContinuousClock.now + .seconds(60)
            while try await state(on: connection).slotName != nil, ContinuousClock.now < deadline {
                let step = try await capture(maxChanges: 10_000, on: connection)
                if step.taken == -1 { try await Task.sleep(for: .milliseconds(50)) }
            }
        }
    }

    /// Queues the capture messages of transactions read from the slot's stream (record texts,
    /// their commit times, their transactions' ends) and moves the position to `end` in the
    /// same transaction; what was queued before is skipped. Returns how many were queued.
    /// `commitTimes` as PostgreSQL sends them: microseconds since 2000-01-01 UTC.
    static func queue(payloads: [String], commitTimes: [Int64], ends: [UInt64], through end: UInt64, on connection: PostgresConnection) async throws -> Int {
        let rows = try await connection.query(
            """
            SELECT consent_sync.capture_queue($1::text[],
                       ARRAY(SELECT timestamptz '2000-01-01 00:00:00+00' + t * interval '1 microsecond'
                             FROM unnest($2::bigint[]) WITH ORDINALITY AS u (t, o) ORDER BY o),
                       $3::pg_lsn[], $4::pg_lsn) AS taken
            """,
            [
                postgresArray(payloads),
                postgresArray(commitTimes.map(String.init)),
                postgresArray(ends.map(PostgresReplicationStream.format)),
                PostgresReplicationStream.format(end),
            ]
        )
        return try rows.first?.int("taken") ?? 0
    }

    /// Writes a message of ours when the position is more than `bytes` of WAL behind, so that
    /// a quiet slot still moves on (``queue(payloads:commitTimes:ends:through:on:)`` takes its end).
    static func mark(after bytes: Int, on connection: PostgresConnection) async throws {
        try await connection.query("SELECT consent_sync.capture_mark($1::bigint)", [String(bytes)])
    }

    /// Waits until every transaction committed so far has been read from the slot into the
    /// queue: by a daemon streaming it, or here when none does. Throws after `timeout`.
    public static func readUpToNow(on connection: PostgresConnection, timeout: Duration = .seconds(30)) async throws {
        guard try await state(on: connection).slotName != nil else { return }
        let now = try await connection.query("SELECT pg_logical_emit_message(true, 'consent_sync.mark', '')::text AS lsn").first?.string("lsn")
        let target = try (now.flatMap(PostgresReplicationStream.parse)).orThrow("pg_logical_emit_message returned no LSN")
        let deadline = ContinuousClock.now + timeout
        while try await (state(on: connection).position ?? 0) < target {
            guard ContinuousClock.now < deadline else {
                throw CaptureModeError(reason: "the replication slot was not read up to now within \(timeout); is a daemon running (or holding the slot without reading it)?")
            }
            let step = try await capture(maxChanges: 10_000, on: connection)
            if step.taken < 0 || !step.more { try await Task.sleep(for: .milliseconds(50)) }
        }
    }

    /// Moves what the slot holds into the capture queue, at most about `maxChanges` decoded
    /// rows (whole transactions). `taken`: changes queued; -1 when another daemon is reading
    /// the slot now, -2 when no slot is in use. `more`: call again at once.
    public static func capture(maxChanges: Int, on connection: PostgresConnection) async throws -> (taken: Int, more: Bool) {
        let row = try await connection.query("SELECT taken, more FROM consent_sync.capture_from_wal($1::integer)", [String(maxChanges)])
            .first.orThrow("capture_from_wal returned no row")
        return (try row.int("taken"), try row.bool("more"))
    }
}

/// A capture mode that cannot be switched to, and why.
public struct CaptureModeError: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public var description: String { reason }
}
