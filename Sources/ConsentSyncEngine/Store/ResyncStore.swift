import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// `consent-sync resync`: back-fills a subscriber with the current state of every watched
/// row, as `consent.snapshot` events queued behind (and ordered with) live changes.
///
/// A job is a row of `consent_sync.resyncs`; each chunk and the job's position move in one
/// transaction, so an interrupted resync resumes where it stopped (run it again with the
/// same subscriber and purpose). Chunks are short transactions: rows are locked only while
/// one chunk is read.
public enum ResyncStore {
    public struct Job: Sendable, Equatable {
        public var id: Int64
        public var subscriberID: Int64
        public var subscriber: String
        public var purpose: String?
        /// Rows queued so far (before this run, when resumed).
        public var rows: Int
        /// True when an unfinished job was picked up again.
        public var resumed: Bool
    }

    static let lockBase: Int64 = 0x636F_6E73_0000_0000

    /// Starts a job, or resumes the unfinished one for the same subscriber and purpose.
    /// - Throws: ``ResyncError`` for an unknown subscriber, or one resyncing in another process now.
    public static func start(subscriber name: String, purpose: String?, actor: String, on connection: PostgresConnection) async throws -> Job {
        let subscribers = try await connection.query("SELECT id FROM consent_sync.subscribers WHERE name = $1", [name])
        guard let subscriberID = try subscribers.first?.int64("id") else {
            throw ResyncError(message: "no subscriber named '\(name.prefix(80))' ('consent-sync subscriber list' shows them)")
        }
        let existing = try await connection.query(
            """
            SELECT id, rows FROM consent_sync.resyncs
            WHERE subscriber_id = $1::bigint AND purpose IS NOT DISTINCT FROM $2 AND state = 'running'
            ORDER BY id LIMIT 1
            """,
            [String(subscriberID), purpose]
        )
        var job: Job
        if let row = existing.first {
            job = Job(id: try row.int64("id"), subscriberID: subscriberID, subscriber: name, purpose: purpose, rows: try row.int("rows"), resumed: true)
        } else {
            let created = try await connection.query(
                "INSERT INTO consent_sync.resyncs (subscriber_id, purpose, actor) VALUES ($1::bigint, $2, $3) RETURNING id",
                [String(subscriberID), purpose, actor]
            )
            job = Job(id: try created.first.orThrow("INSERT returned no id").int64("id"), subscriberID: subscriberID, subscriber: name, purpose: purpose, rows: 0, resumed: false)
        }
        // One process per job: a session lock, released when this connection closes.
        let locked = try await connection.query("SELECT pg_try_advisory_lock($1::bigint) AS ok", [String(lockBase + job.id)])
        guard try locked.first?.bool("ok") == true else {
            throw ResyncError(message: "a resync of '\(name.prefix(80))' is running in another process; wait for it, or stop it and run this again to resume")
        }
        job.rows = try await connection.query("SELECT rows FROM consent_sync.resyncs WHERE id = $1::bigint", [String(job.id)]).first?.int("rows") ?? job.rows
        return job
    }

    /// Queues every remaining row of every watched table, `chunk` rows per transaction, at
    /// most `rate` rows per second; calls `progress` with the total after each chunk.
    /// - Returns: rows queued by this run.
    @discardableResult
    public static func run(
        _ job: Job,
        chunk: Int = 500,
        rate: Double? = nil,
        on connection: PostgresConnection,
        progress: @Sendable (Int) -> Void = { _ in }
    ) async throws -> Int {
        let watches = try await connection.query("SELECT id FROM consent_sync.watches ORDER BY id").map { try $0.int64("id") }
        let started = ContinuousClock.now
        var queued = 0
        var total = job.rows
        for watch in watches {
            var after = try await position(of: job, watch: watch, on: connection)
            if after == .done { continue }
            while true {
                try Task.checkCancellation()
                let step = try await connection.withTransaction { connection in
                    let rows = try await connection.query(
                        "SELECT consent_sync.resync_chunk($1::bigint, $2::bigint, $3::jsonb, $4::integer)::text AS result",
                        [String(job.id), String(watch), after.json, String(chunk)]
                    )
                    let result = try JSONSerialization.jsonObject(with: Data(try rows.first.orThrow("resync_chunk returned no row").string("result").utf8)) as? [String: Any]
                    let count = (result?["rows"] as? Int) ?? 0
                    let next: Position = (result?["last"] as? [String]).map(Position.after) ?? .done
                    try await connection.query(
                        """
                        UPDATE consent_sync.resyncs
                        SET position = jsonb_set(position, ARRAY[$2::text], $3::jsonb), rows = rows + $4::bigint, updated_at = now()
                        WHERE id = $1::bigint
                        """,
                        [String(job.id), String(watch), next.stored, String(count)]
                    )
                    return (count, next)
                }
                queued += step.0
                total += step.0
                progress(total)
                after = step.1
                if after == .done || step.0 < chunk {
                    if after != .done {
                        try await connection.query(
                            "UPDATE consent_sync.resyncs SET position = jsonb_set(position, ARRAY[$2::text], '\"done\"'::jsonb) WHERE id = $1::bigint",
                            [String(job.id), String(watch)]
                        )
                    }
                    break
                }
                if let rate, rate > 0 {
                    // Paced: `queued` rows should have taken queued / rate seconds.
                    let due = started + .milliseconds(Int64(Double(queued) / rate * 1000))
                    if due > .now { try await Task.sleep(until: due, clock: .continuous) }
                }
            }
        }
        try await connection.query(
            "UPDATE consent_sync.resyncs SET state = 'done', finished_at = now(), updated_at = now(), position = '{}' WHERE id = $1::bigint",
            [String(job.id)]
        )
        try await connection.query("SELECT pg_advisory_unlock($1::bigint)", [String(lockBase + job.id)])
        return queued
    }

    /// Where a watch's part of the job stands.
    enum Position: Equatable {
        case start
        case after([String])
        case done

        /// The `after` argument of `resync_chunk`.
        var json: String? {
            guard case .after(let key) = self, let data = try? JSONSerialization.data(withJSONObject: key) else { return nil }
            return String(decoding: data, as: UTF8.self)
        }

        /// As kept in `resyncs.position`.
        var stored: String {
            switch self {
            case .start: "null"
            case .after: json ?? "null"
            case .done: "\"done\""
            }
        }
    }

    static func position(of job: Job, watch: Int64, on connection: PostgresConnection) async throws -> Position {
        let rows = try await connection.query(
            "SELECT (position -> $2::text)::text AS at FROM consent_sync.resyncs WHERE id = $1::bigint",
            [String(job.id), String(watch)]
        )
        guard let text = rows.first?.optionalString("at"), text != "null" else { return .start }
        if text == "\"done\"" { return .done }
        guard let key = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String] else { return .start }
        return .after(key)
    }
}

public struct ResyncError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}
