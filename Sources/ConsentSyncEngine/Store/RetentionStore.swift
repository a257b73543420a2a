import ConsentSyncCore
import ConsentSyncPostgres

/// Retention: payloads (attributes, source, the receivers' answer texts) of finished changes
/// older than `retention.payload_days` are removed, and whole records (change, deliveries,
/// attempts: the receipts) older than `retention.receipt_days` are deleted. In small batches,
/// walking the outbox in id order from a mark kept in `consent_sync.meta`, so that each pass
/// costs the same however large the history.
public enum RetentionStore {
    public struct Pass: Sendable, Equatable {
        public var pruned = 0
        public var deleted = 0
    }

    static let lockKey: Int64 = 0x636F_6E73_656E_7403

    /// One pass of at most `batch` changes each way. Only one instance works at a time; the others skip.
    public static func run(payloadAge: Duration?, receiptAge: Duration?, batch: Int = 1000, on connection: PostgresConnection) async throws -> Pass {
        try await connection.withTransaction { connection in
            let locked = try await connection.query("SELECT pg_try_advisory_xact_lock($1::bigint) AS ok", [String(lockKey)])
            guard try locked.first?.bool("ok") == true else { return Pass() }
            var pass = Pass()
            if let payloadAge {
                let rows = try await connection.query(
                    """
                    WITH mark AS (
                        SELECT coalesce((SELECT value::bigint FROM consent_sync.meta WHERE key = 'pruned_through'), 0) AS id
                    ), scan AS (
                        SELECT c.id,
                               c.changed_at < now() - make_interval(secs => $1::double precision) AND c.fanned_out
                               AND NOT EXISTS (SELECT 1 FROM consent_sync.deliveries d
                                               WHERE d.change_id = c.id AND d.state IN ('pending', 'in_flight')) AS due
                        FROM consent_sync.changes c, mark WHERE c.id > mark.id AND c.pruned_at IS NULL ORDER BY c.id LIMIT $2::integer
                    ), stop AS (
                        -- The mark moves up to the first change not yet due (still owed, or young);
                        -- due ones beyond it are pruned now, and skipped when the scan comes back.
                        SELECT coalesce((SELECT min(id) - 1 FROM scan WHERE NOT due), (SELECT max(id) FROM scan), (SELECT id FROM mark)) AS upto
                    ), pruned AS (
                        UPDATE consent_sync.changes c SET attributes = NULL, source = NULL, pruned_at = now()
                        FROM scan WHERE c.id = scan.id AND scan.due
                        RETURNING c.id
                    ), answers AS (
                        UPDATE consent_sync.attempts a SET response_excerpt = NULL
                        FROM consent_sync.deliveries d
                        WHERE a.delivery_id = d.id AND a.response_excerpt IS NOT NULL
                          AND d.change_id = ANY (ARRAY(SELECT id FROM pruned))
                    ), moved AS (
                        INSERT INTO consent_sync.meta (key, value) SELECT 'pruned_through', upto::text FROM stop
                        ON CONFLICT (key) DO UPDATE SET value = excluded.value
                    )
                    SELECT (SELECT count(*) FROM pruned) AS pruned
                    """,
                    [String(payloadAge.seconds), String(batch)]
                )
                pass.pruned = try rows.first?.int("pruned") ?? 0
            }
            if let receiptAge {
                let rows = try await connection.query(
                    """
                    WITH head AS (
                        -- The oldest changes by id (ids follow time): a bounded look, not a scan.
                        SELECT id, changed_at, fanned_out FROM consent_sync.changes ORDER BY id LIMIT $2::integer
                    ), old AS (
                        SELECT c.id FROM head c
                        WHERE c.changed_at < now() - make_interval(secs => $1::double precision) AND c.fanned_out
                          AND NOT EXISTS (SELECT 1 FROM consent_sync.deliveries d
                                          WHERE d.change_id = c.id AND d.state IN ('pending', 'in_flight'))
                    ), gone AS (
                        DELETE FROM consent_sync.changes c USING old WHERE c.id = old.id RETURNING c.id
                    ), erasures AS (
                        DELETE FROM consent_sync.erasures e
                        WHERE e.completed_at < now() - make_interval(secs => $1::double precision)
                    )
                    SELECT count(*) AS deleted FROM gone
                    """,
                    [String(receiptAge.seconds), String(batch)]
                )
                pass.deleted = try rows.first?.int("deleted") ?? 0
            }
            return pass
        }
    }
}
