import ConsentSyncPostgres

extension DeliveryStore {
    /// Newest-wins: for subscribers in that mode, a pending delivery of a subject and purpose
    /// that has a newer one pending behind it becomes `superseded` (recorded with the change
    /// that replaced it, never silently dropped), and the first delivery still live for that
    /// subject is made due. Runs right after a fan-out, for the subjects of the changes just
    /// fanned out. A delivery in flight is never touched.
    /// After a fan-out of the changes in `changes`, in a transaction of its own under the
    /// fan-out's exclusive lock (so that no fan-out parks a delivery meanwhile).
    static func supersede(changes: ClosedRange<Int64>, on connection: PostgresConnection) async throws {
        try await connection.withTransaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock($1::bigint)", [String(fanOutLockKey)])
            try await supersede(
                fresh: """
                    SELECT DISTINCT d.subscriber_id, d.subject
                    FROM consent_sync.deliveries d JOIN consent_sync.subscribers s ON s.id = d.subscriber_id AND s.newest_wins
                    WHERE d.change_id BETWEEN $1::bigint AND $2::bigint AND d.replay_of IS NULL
                    """,
                [String(changes.lowerBound), String(changes.upperBound)],
                on: connection
            )
        }
    }

    /// The same for subjects whose delivery failed and waits again: a newer change that
    /// arrived while it was in flight supersedes it now.
    static func supersede(subjects: [(subscriberID: Int64, subject: String)], on connection: PostgresConnection) async throws {
        guard !subjects.isEmpty else { return }
        try await connection.withTransaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock_shared($1::bigint)", [String(fanOutLockKey)])
            try await supersede(
                fresh: "SELECT DISTINCT * FROM unnest($1::bigint[], $2::text[]) AS f(subscriber_id, subject)",
                [postgresArray(subjects.map { String($0.subscriberID) }), postgresArray(subjects.map(\.subject))],
                on: connection
            )
        }
    }

    private static func supersede(fresh: String, _ parameters: [String?], on connection: PostgresConnection) async throws {
        let affected = try await connection.query(
            """
            WITH fresh AS (
                \(fresh)
            ), waiting AS (
                SELECT d.id, d.subscriber_id, d.subject, d.change_id,
                       max(d.change_id) OVER (PARTITION BY d.subscriber_id, d.subject, c.purpose) AS newest
                FROM fresh f
                JOIN consent_sync.deliveries d
                  ON d.subscriber_id = f.subscriber_id AND d.subject = f.subject
                 AND d.state = 'pending' AND d.replay_of IS NULL
                JOIN consent_sync.changes c ON c.id = d.change_id
                WHERE c.event_type <> 'subject.erased' AND c.problem IS NULL
            )
            UPDATE consent_sync.deliveries d
            SET state = 'superseded', superseded_by = w.newest, completed_at = now(),
                lease_owner = NULL, lease_expires_at = NULL,
                last_error = 'superseded by change ' || w.newest || ' of the same subject and purpose (newest-wins)'
            FROM waiting w
            WHERE d.id = w.id AND w.change_id < w.newest AND d.state = 'pending'
            RETURNING d.subscriber_id, d.subject
            """,
            parameters
        )
        guard !affected.isEmpty else { return }
        try await connection.query(
            """
            WITH affected AS (
                SELECT DISTINCT * FROM unnest($1::bigint[], $2::text[]) AS a(subscriber_id, subject)
            )
            UPDATE consent_sync.deliveries p SET next_attempt_at = now()
            WHERE p.id IN (
                SELECT (SELECT q.id FROM consent_sync.deliveries q
                        WHERE q.subscriber_id = a.subscriber_id AND q.subject = a.subject
                          AND q.state IN ('pending', 'in_flight')
                        ORDER BY q.change_id LIMIT 1)
                FROM affected a)
              AND p.state = 'pending' AND p.next_attempt_at = 'infinity'
            """,
            [
                postgresArray(try affected.map { try $0.string("subscriber_id") }),
                postgresArray(try affected.map { try $0.string("subject") }),
            ]
        )
    }
}
