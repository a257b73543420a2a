import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// A delivery claimed by this instance, with the change it carries.
struct ClaimedDelivery: Sendable {
    var id: Int64
    var subscriberID: Int64
    /// The number of this attempt (1 for the first).
    var attempt: Int
    /// How long ago the delivery was created, or re-queued from dead.
    var age: Duration
    /// Attempts made before an operator re-queued it from dead: the retry budget starts again.
    var attemptsBeforeRequeue: Int = 0
    /// The delivery this one replays (`consent-sync replay`), if any.
    var replayOf: Int64?
    var change: ConsentChange
    /// A later delivery of its subject was waiting behind it when it was claimed: when it
    /// ends, that one is handed over (see ``DeliveryStore/handOverStatement(after:owner:lease:)``).
    var followed = false

    /// The attempt number as far as the retry policy is concerned.
    var retryAttempt: Int { max(1, attempt - attemptsBeforeRequeue) }
}

/// The result of one attempt, to be written back.
struct AttemptRecord: Sendable {
    enum Verdict: String, Sendable {
        case delivered
        case retry
        case dead
    }

    var deliveryID: Int64
    var subscriberID: Int64
    var attempt: Int
    var verdict: Verdict
    /// The receiver said it is gone (410): disable the subscriber with this reason.
    var disableSubscriber: String?
    /// Cut short by shutdown: says nothing about the receiver's health.
    var interrupted = false
    var retryIn: Duration
    var status: Int?
    var error: String?
    var responseExcerpt: String?
    /// The receiver's own verdict, when its body said `{"applied": …}`.
    var answer: ReceiverAnswer?
    /// The change's subject, and whether its subscriber wants only the newest change: a
    /// delivery that waits again is superseded by a newer one that arrived meanwhile.
    var subject = ""
    var newestWins = false
    var startedAt: Date
    var duration: Duration
    /// Its delivery had a later one of its subject waiting behind it when it was claimed.
    var followed = false
    /// Written once already, and that write may have committed before its answer was lost:
    /// its attempt is logged only if it is not there yet.
    var mayBeLogged = false
}

/// The SQL of the pipeline: fan-out, claim, record, lease expiry.
///
/// Fan-out and recording of finished deliveries are serialised against each other by an
/// advisory lock (exclusive for fan-out, shared for recording), so that a new delivery is
/// never parked behind one that finished in a transaction it could not yet see.
enum DeliveryStore {
    static let fanOutLockKey: Int64 = 0x636F_6E73_656E_7402

    /// Settings for the relay's own connections: its statements are short and many, and JIT
    /// compilation (triggered by a cost estimate, e.g. of a fan-out over a big batch) cost
    /// 400 ms per fan-out in the benchmark while the statement itself took well under 1 ms.
    ///
    /// No sequential scans where an index can serve: every statement here is written for index
    /// lookups, but statistics taken while `changes` and `deliveries` were empty (a VACUUM
    /// ANALYZE before a back-fill, until autovacuum analyzes again) made the planner scan
    /// `deliveries` once per new delivery: 4.8 s per fan-out of 1,000 changes, a 50-second
    /// stall at the start of the benchmark's 100,000-change drain.
    ///
    /// The round's statements (fan-out, claim, write-back, failure tracking, locks) are
    /// prepared (`prepared: true`): parsed once per connection and planned once, for any
    /// parameter values (`plan_cache_mode = force_generic_plan`; left to itself PostgreSQL
    /// re-planned the failure tracking every round). Planning the fan-out cost 0.85 ms per
    /// round, most of it for an empty outbox; prepared, a 30,000-change drain ran at 8,700
    /// instead of 6,500 deliveries/s and live latency at 1,000 changes/s fell from p50 8.6 /
    /// p99 22.6 ms to 3.2 / 9.8 ms. Planning the write-back took 0.22 ms per live round, as
    /// long as running it.
    ///
    /// No bitmap scans: re-planned each round, the write-back ANDed a bitmap of the round's
    /// ids in the primary key with one of every entry of `deliveries_leases`, whose estimate
    /// was small but which holds an entry for every delivery that went in flight since the
    /// last vacuum (44,000 for 12 rows in flight in a live run: 1.3 of its 2.3 ms). Plain index
    /// scans also mark the dead entries they pass, so later scans skip them.
    ///
    /// Generic plans are safe here because no sequential scan is allowed, and because where a
    /// literal would let a plan made at a quiet moment pick a partial index that grows between
    /// vacuums, the value is a parameter instead (see the write-back).
    static func prepareSession(_ connection: PostgresConnection) async throws {
        try await connection.execute(
            "SET jit = off; SET enable_seqscan = off; SET enable_bitmapscan = off; SET plan_cache_mode = force_generic_plan"
        )
    }

    /// Turns up to `limit` outbox rows not yet fanned out into deliveries.
    /// - Returns: how many changes were taken (less than `limit` means the outbox is drained).
    static func fanOut(limit: Int, on connection: PostgresConnection) async throws -> (changes: Int, deliveries: Int) {
        let results = try await connection.pipeline([fanOutStatements(limit: limit)])
        let result = try fanOutResult(try results[1].get())
        if let range = result.newChanges {
            try await supersede(changes: range, on: connection)
        }
        return (result.changes, result.deliveries)
    }

    /// The fan-out as one transaction: the exclusive lock (before the statement's snapshot),
    /// then the batch. Its second statement's rows go to ``fanOutResult(_:)``.
    ///
    /// A batch is the lowest ids of the capture queue (`captured`: rows the trigger copied)
    /// and of the outbox rows written there directly (snapshots, erasures: `NOT fanned_out`).
    /// Queued rows are completed, moved into the outbox and deleted from the queue; outbox
    /// rows are completed in place. Every visible row is taken, whatever its id: no watermark.
    static func fanOutStatements(limit: Int) -> [PostgresStatement] {
        [
            PostgresStatement("SELECT pg_advisory_xact_lock($1::bigint)", [String(fanOutLockKey)], prepared: true),
            PostgresStatement(fanOutSQL, [String(limit)], prepared: true),
        ]
    }

    /// The fan-out's text, built once (it is sent every round).
    static let fanOutSQL = """
        WITH picked AS (
            SELECT id, queued FROM (
                (SELECT q.id, true AS queued FROM consent_sync.captured q ORDER BY q.id LIMIT $1::integer)
                UNION ALL
                (SELECT c.id, false AS queued FROM consent_sync.changes c WHERE NOT c.fanned_out ORDER BY c.id LIMIT $1::integer)
            ) u ORDER BY id LIMIT $1::integer
        ), taken AS (
            DELETE FROM consent_sync.captured q WHERE q.id = ANY (ARRAY(SELECT id FROM picked WHERE queued))
            RETURNING \(queueColumns("q"))
        ), source AS (
            SELECT * FROM taken
            UNION ALL
            SELECT \(outboxColumns("c"))
            FROM consent_sync.changes c WHERE c.id = ANY (ARRAY(SELECT id FROM picked WHERE NOT queued))
        ), \(completion(of: "source")), moved AS (
            INSERT INTO consent_sync.changes (id, event_id, watch_id, table_name, operation, event_type, subject, purpose,
                status, previous_status, source, attributes, problem, txid, changed_at, fanned_out)
            SELECT b.id, b.event_id, b.watch_id, b.table_name, b.operation, b.event_type, b.subject, b.purpose,
                   b.status, b.previous_status, b.source, b.attributes, b.problem, b.txid, b.changed_at, true
            FROM batch b WHERE b.queued
        ), marked AS (
            UPDATE consent_sync.changes c SET fanned_out = true, event_id = b.event_id, \(completedColumns)
            FROM batch b
            WHERE c.id = ANY (ARRAY(SELECT id FROM picked WHERE NOT queued)) AND c.id = b.id
        ), pairs AS (
            SELECT b.id AS change_id, s.id AS subscriber_id, b.subject,
                   row_number() OVER (PARTITION BY s.id, b.subject ORDER BY b.id) AS position
            FROM batch b JOIN consent_sync.subscribers s
              -- A snapshot goes to the one subscriber that asked for it; subject.erased to
              -- every subscriber (each must erase), whatever its filters.
              ON (b.target_subscriber_id IS NULL OR s.id = b.target_subscriber_id)
             AND (b.event_type = 'subject.erased'
                  OR ((s.purposes IS NULL OR b.purpose = ANY (s.purposes))
                      AND (b.target_subscriber_id IS NOT NULL OR s.event_types IS NULL OR b.event_type = ANY (s.event_types))))
        ), inserted AS (
            INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject, next_attempt_at)
            SELECT p.change_id, p.subscriber_id, p.subject,
                   CASE WHEN p.position > 1 OR (
                            SELECT d.change_id FROM consent_sync.deliveries d
                            WHERE d.subscriber_id = p.subscriber_id AND d.subject = p.subject
                              AND d.state IN ('pending', 'in_flight')
                            ORDER BY d.change_id LIMIT 1) < p.change_id
                        THEN 'infinity'::timestamptz ELSE now() END
            FROM pairs p
            -- A change is fanned out once (the lock, and `fanned_out` or the queue row's delete
            -- in this transaction), so none of its deliveries exists yet; should one, it is
            -- kept, not doubled. A look in deliveries_by_change, not ON CONFLICT DO NOTHING,
            -- whose speculative insertion writes one more WAL record per delivery: measured
            -- alone, the look left the fan-out about 0.8 µs per delivery cheaper (of 15-16).
            -- OFFSET 0 keeps it a look per pair: as an anti-join, the generic plan merged the
            -- pairs with a walk of the whole index.
            WHERE NOT EXISTS (SELECT 1 FROM consent_sync.deliveries x
                              WHERE x.change_id = p.change_id AND x.subscriber_id = p.subscriber_id
                                AND (CASE WHEN x.replay_of IS NULL THEN 0 ELSE x.id END) = 0 OFFSET 0)
            ORDER BY p.change_id, p.subscriber_id
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch) AS changes, (SELECT count(*) FROM inserted) AS deliveries,
               (SELECT min(id) FROM batch) AS first, (SELECT max(id) FROM batch) AS last,
               EXISTS (SELECT 1 FROM consent_sync.subscribers WHERE newest_wins) AS newest_wins
        """

    /// The columns of a queued row (`captured`, alias `alias`) in the shape ``completion(of:)`` reads.
    static func queueColumns(_ alias: String) -> String {
        """
        \(alias).id, \(alias).watch_id, \(alias).table_name, \(alias).operation, \(alias).event_type, \(alias).subject, \
        \(alias).purpose, \(alias).status, \(alias).previous_status, \(alias).source, \(alias).attributes, \(alias).problem, \
        NULL::bigint AS target_subscriber_id, \(alias).txid, \(alias).changed_at, NULL::uuid AS event_id, true AS queued
        """
    }

    /// The columns of an outbox row (`changes`, alias `alias`) in the same shape.
    static func outboxColumns(_ alias: String) -> String {
        """
        \(alias).id, \(alias).watch_id, \(alias).table_name, \(alias).operation, \(alias).event_type, \(alias).subject, \
        \(alias).purpose, \(alias).status, \(alias).previous_status, \(alias).source, \(alias).attributes, \(alias).problem, \
        \(alias).target_subscriber_id, \(alias).txid, \(alias).changed_at, \(alias).event_id, false AS queued
        """
    }

    /// The CTEs `raw`, `checked` and `batch` that complete rows as the capture trigger left
    /// them (event_type NULL: the table's own status values, no event id): event id and type,
    /// statuses mapped through the watch, and why the row cannot be sent, if so. Rows written
    /// complete (snapshots, erasures, outbox rows of earlier versions) pass as they are.
    /// `source` names a relation of rows shaped by ``queueColumns(_:)`` or ``outboxColumns(_:)``.
    static func completion(of source: String) -> String {
        """
        raw AS (
            SELECT c.*, w.subject_columns, w.purpose_column, w.status_column, w.status_map,
                   consent_sync.map_status(w.status_map, c.status) AS mapped,
                   consent_sync.map_status(w.status_map, c.previous_status) AS mapped_previous
            FROM \(source) c LEFT JOIN consent_sync.watches w ON w.id = c.watch_id
        ), checked AS (
            SELECT r.*, CASE WHEN r.event_type IS NULL THEN CASE
                WHEN r.purpose = '' THEN format('the purpose (column %s) is NULL or empty', r.purpose_column)
                WHEN length(r.purpose) > 128 THEN format('the purpose is %s characters long; at most 128 are accepted', length(r.purpose))
                WHEN r.subject = '' THEN format('the subject id (column %s) is NULL or empty', array_to_string(r.subject_columns, ', '))
                WHEN length(r.subject) > 512 THEN 'the subject id is longer than 512 characters; at most 512 are accepted'
                WHEN r.operation <> 'DELETE' AND r.mapped IS NULL THEN format('status %s in column %s is not one of %s',
                    coalesce(quote_literal(left(r.status, 100)), 'NULL'), r.status_column,
                    CASE WHEN r.status_map IS NULL THEN 'granted, denied, withdrawn'
                         ELSE (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(r.status_map) AS k) END)
            END END AS found_problem
            FROM raw r
        ), batch AS (
            SELECT k.id, k.watch_id, k.table_name, k.operation, k.source, k.attributes, k.txid, k.changed_at, k.queued,
                   k.target_subscriber_id, coalesce(k.event_id, gen_random_uuid()) AS event_id,
                   CASE WHEN k.event_type IS NULL THEN left(k.subject, 512) ELSE k.subject END AS subject,
                   CASE WHEN k.event_type IS NULL THEN left(k.purpose, 128) ELSE k.purpose END AS purpose,
                   CASE WHEN k.event_type IS NOT NULL THEN k.event_type
                        WHEN k.found_problem IS NOT NULL THEN 'consent.invalid'
                        WHEN k.operation = 'DELETE' THEN 'consent.deleted'
                        ELSE 'consent.' || k.mapped END AS event_type,
                   CASE WHEN k.event_type IS NOT NULL THEN k.status WHEN k.operation = 'DELETE' THEN NULL ELSE k.mapped END AS status,
                   CASE WHEN k.event_type IS NOT NULL THEN k.previous_status ELSE k.mapped_previous END AS previous_status,
                   coalesce(k.problem, k.found_problem) AS problem
            FROM checked k
        )
        """
    }

    /// The columns that ``completion(of:)`` fills in (but the event id, which the queue has
    /// not), as `SET` assignments from `batch b`.
    static let completedColumns = """
        subject = b.subject, purpose = b.purpose, event_type = b.event_type,
        status = b.status, previous_status = b.previous_status, problem = b.problem
        """

    /// What one fan-out did; `newChanges` is set when a subscriber in newest-wins mode may have
    /// older deliveries to supersede (``supersede(changes:on:)``).
    struct FanOut: Sendable {
        var changes: Int
        var deliveries: Int
        var newChanges: ClosedRange<Int64>?
    }

    static func fanOutResult(_ rows: PostgresRows) throws -> FanOut {
        let row = try rows.first.orThrow("fan-out returned no row")
        var result = FanOut(changes: try row.int("changes"), deliveries: try row.int("deliveries"))
        if try row.bool("newest_wins"), let first = row.optionalString("first").flatMap(Int64.init), let last = row.optionalString("last").flatMap(Int64.init) {
            result.newChanges = first...last
        }
        return result
    }

    /// Claims due deliveries, at most `budget` per subscriber, the earliest change of each
    /// subject first, and leases them to `owner`.
    static func claim(
        owner: UUID,
        budgets: [(subscriberID: Int64, count: Int)],
        lease: Duration,
        on connection: PostgresConnection
    ) async throws -> [ClaimedDelivery] {
        let statement = claimStatement(owner: owner, budgets: budgets, lease: lease)
        return try claimResult(try await connection.query(statement.sql, statement.parameters))
    }

    /// The claim as one statement; its rows go to ``claimResult(_:)``.
    static func claimStatement(owner: UUID, budgets: [(subscriberID: Int64, count: Int)], lease: Duration) -> PostgresStatement {
        PostgresStatement(
            """
            WITH picked AS (
                SELECT d.id FROM unnest($2::bigint[], $3::integer[]) AS b(subscriber_id, n) CROSS JOIN LATERAL (
                    SELECT d.id FROM consent_sync.deliveries d
                    WHERE d.subscriber_id = b.subscriber_id AND d.state = 'pending' AND d.next_attempt_at <= now()
                      -- Parked deliveries are not in deliveries_due (schema 11); this says so to
                      -- the planner, which cannot tell it from `<= now()`.
                      AND d.next_attempt_at < 'infinity'
                      AND d.change_id = (
                          SELECT e.change_id FROM consent_sync.deliveries e
                          WHERE e.subscriber_id = d.subscriber_id AND e.subject = d.subject
                            AND e.state IN ('pending', 'in_flight')
                          ORDER BY e.change_id LIMIT 1)
                    ORDER BY d.next_attempt_at
                    LIMIT b.n
                    FOR UPDATE SKIP LOCKED
                ) d
                -- A pause or disable binds every claim after it commits, whether or not this
                -- instance has re-read its subscribers since.
                WHERE EXISTS (SELECT 1 FROM consent_sync.subscribers s WHERE s.id = b.subscriber_id AND s.state = 'enabled')
            ), claimed AS (
                UPDATE consent_sync.deliveries d
                SET state = 'in_flight', attempts = d.attempts + 1, lease_owner = $1::uuid,
                    lease_expires_at = now() + make_interval(secs => $4::double precision)
                WHERE d.id = ANY (ARRAY(SELECT id FROM picked))
                \(claimedReturning)
            )
            \(claimedRows())
            """,
            [
                owner.uuidString,
                postgresArray(budgets.map { String($0.subscriberID) }),
                postgresArray(budgets.map { String($0.count) }),
                String(lease.seconds),
            ],
            prepared: true
        )
    }

    /// What a claim (or a hand-over) returns from the deliveries it leased, in a CTE `claimed`.
    static let claimedReturning = """
        RETURNING d.id, d.change_id, d.subscriber_id, d.subject, d.attempts, d.created_at, d.requeued_at,
                          d.attempts_before_requeue, d.replay_of
        """

    /// The rows of the deliveries in `claimed`, with their changes, for ``claimResult(_:)``.
    ///
    /// Each change is read and sent once per result, on the first of its deliveries there; the
    /// others (the same change for other subscribers, mostly claimed or handed over in the same
    /// round) carry its id only. With three subscribers that was each change row looked up,
    /// converted to text and parsed three times. Measured alone (pgbench, results of 100 rows):
    /// about 14 % less of PostgreSQL's time with each change three times in a result, about 5 %
    /// more with every change once (one subscriber), the cost of numbering the rows.
    ///
    /// `followed` says whether a later delivery of the subject waits behind `cl`; by default a
    /// look in `deliveries_live_by_subject`. The hand-over knows it already from finding `cl`.
    static func claimedRows(followed: String = claimProbeForFollower) -> String {
        """
        SELECT cl.id, cl.subscriber_id, cl.attempts, cl.attempts_before_requeue, cl.replay_of,
                   extract(epoch FROM now() - coalesce(cl.requeued_at, cl.created_at))::double precision AS age,
                   cl.change_id, c.event_id, c.table_name, c.operation, c.event_type, c.subject, c.purpose,
                   c.status, c.previous_status, c.source, extract(epoch FROM c.changed_at)::double precision AS changed_at,
                   c.attributes::text AS attributes, c.problem, \(followed) AS followed
            FROM (SELECT claimed.*, row_number() OVER (PARTITION BY claimed.change_id ORDER BY claimed.id) AS nth FROM claimed) cl
            LEFT JOIN LATERAL (
                -- A condition on `cl` alone: a one-time filter, so that no other row looks it up.
                SELECT * FROM consent_sync.changes c WHERE c.id = cl.change_id AND cl.nth = 1 OFFSET 0
            ) c ON true
            -- The window's order: the rows are sorted once, before the changes are joined.
            ORDER BY cl.change_id, cl.id
        """
    }

    /// Whether a later delivery of its subject waits behind the claimed delivery `cl`.
    static let claimProbeForFollower = """
        EXISTS (SELECT 1 FROM consent_sync.deliveries n
                           WHERE n.subscriber_id = cl.subscriber_id AND n.subject = cl.subject
                             AND n.state IN ('pending', 'in_flight') AND n.change_id > cl.change_id)
        """

    /// The deliveries of ``claimedRows``: a row without its change's columns takes them from an
    /// earlier row of the same change.
    static func claimResult(_ rows: PostgresRows) throws -> [ClaimedDelivery] {
        // Positions found once per result: by name, each of a row's 20 values hashed its
        // column's name (about 0.5 us per delivery in a profiled drain).
        let column = try ClaimColumns(rows)
        var changes: [Int64: ConsentChange] = [:]
        return try rows.map { row in
            let id = try row.int64(at: column.id)
            let changeID = try row.int64(at: column.changeID)
            let change: ConsentChange
            if row.optionalString(at: column.eventID) == nil {
                change = try changes[changeID].orThrow("delivery \(id): its change \(changeID) was not returned")
            } else {
                let operation = try row.string(at: column.operation)
                change = ConsentChange(
                    id: changeID,
                    eventID: try row.string(at: column.eventID),
                    table: try row.string(at: column.table),
                    operation: try ConsentChange.Operation(rawValue: operation).orThrow("unknown operation '\(operation)'"),
                    eventType: try row.string(at: column.eventType),
                    subject: try row.string(at: column.subject),
                    purpose: try row.string(at: column.purpose),
                    status: row.optionalString(at: column.status),
                    previousStatus: row.optionalString(at: column.previousStatus),
                    source: row.optionalString(at: column.source),
                    changedAt: Date(timeIntervalSince1970: try row.double(at: column.changedAt)),
                    attributesJSON: row.optionalString(at: column.attributes),
                    problem: row.optionalString(at: column.problem)
                )
                changes[changeID] = change
            }
            return ClaimedDelivery(
                id: id,
                subscriberID: try row.int64(at: column.subscriberID),
                attempt: try row.int(at: column.attempts),
                age: .milliseconds(Int64(try row.double(at: column.age) * 1000)),
                attemptsBeforeRequeue: try row.int(at: column.attemptsBeforeRequeue),
                replayOf: row.optionalString(at: column.replayOf).flatMap(Int64.init),
                change: change,
                followed: try row.bool(at: column.followed)
            )
        }
    }

    /// Where ``claimedRows(followed:)``'s columns are in a result.
    private struct ClaimColumns {
        let id, changeID, subscriberID, attempts, attemptsBeforeRequeue, replayOf, age, followed: Int
        let eventID, table, operation, eventType, subject, purpose, status, previousStatus, source, changedAt, attributes, problem: Int

        init(_ rows: PostgresRows) throws {
            id = try rows.index(of: "id")
            changeID = try rows.index(of: "change_id")
            subscriberID = try rows.index(of: "subscriber_id")
            attempts = try rows.index(of: "attempts")
            attemptsBeforeRequeue = try rows.index(of: "attempts_before_requeue")
            replayOf = try rows.index(of: "replay_of")
            age = try rows.index(of: "age")
            followed = try rows.index(of: "followed")
            eventID = try rows.index(of: "event_id")
            table = try rows.index(of: "table_name")
            operation = try rows.index(of: "operation")
            eventType = try rows.index(of: "event_type")
            subject = try rows.index(of: "subject")
            purpose = try rows.index(of: "purpose")
            status = try rows.index(of: "status")
            previousStatus = try rows.index(of: "previous_status")
            source = try rows.index(of: "source")
            changedAt = try rows.index(of: "changed_at")
            attributes = try rows.index(of: "attributes")
            problem = try rows.index(of: "problem")
        }
    }

    /// Writes back finished attempts. A result is applied only while this instance still
    /// holds the lease for that attempt (fencing); the attempt is logged either way.
    /// - Returns: the ids whose result was applied.
    @discardableResult
    static func record(_ records: [AttemptRecord], owner: UUID, on connection: PostgresConnection) async throws -> Set<Int64> {
        guard !records.isEmpty else { return [] }
        let results = try await connection.pipeline([recordStatements(records, owner: owner)])
        return try recordResult(try results[1].get())
    }

    /// Recording as one transaction: the shared lock (before the statement's snapshot), then
    /// the results. Its second statement's rows go to ``recordResult(_:)``.
    ///
    /// With `handOver`, some of the finished deliveries (ended, of subscribers with a free slot
    /// for it) hand their subject's next delivery straight to `owner`, in a third statement of
    /// the same transaction (``handOverStatement(after:owner:lease:)``), instead of un-parking it
    /// for a later claim: one write of that row instead of two.
    static func recordStatements(_ records: [AttemptRecord], owner: UUID, handOver: [Int64] = [], lease: Duration = .zero) -> [PostgresStatement] {
        var statements = [
            PostgresStatement("SELECT pg_advisory_xact_lock_shared($1::bigint)", [String(fanOutLockKey)], prepared: true),
            PostgresStatement(
                """
                WITH input AS (
                    SELECT * FROM unnest($2::bigint[], $3::integer[], $4::text[], $5::double precision[],
                                         $6::integer[], $7::text[], $8::text[], $9::double precision[], $10::double precision[],
                                         $11::boolean[], $12::text[])
                        AS i(id, attempt, verdict, retry_in, status, error, excerpt, started_at, duration_ms, applied, applied_reason)
                ), updated AS (
                    UPDATE consent_sync.deliveries d SET
                        state = CASE i.verdict WHEN 'retry' THEN 'pending' ELSE i.verdict END,
                        next_attempt_at = CASE WHEN i.verdict = 'retry'
                                               THEN now() + make_interval(secs => i.retry_in) ELSE d.next_attempt_at END,
                        lease_owner = NULL, lease_expires_at = NULL,
                        last_status = i.status, last_error = i.error,
                        applied = i.applied, applied_reason = i.applied_reason,
                        completed_at = CASE WHEN i.verdict IN ('delivered', 'dead') THEN now() END
                    FROM input i
                    -- $13 is 'in_flight', as a parameter: the plan is made once for any values,
                    -- and a literal here lets it pick deliveries_leases (state = 'in_flight')
                    -- whenever statistics were taken while little was in flight; that walks
                    -- every lease index entry (dead ones too, until vacuum) instead of
                    -- looking up a round's ids in the primary key.
                    -- Joined on d.id = i.id alone: each result looks up its row in the primary
                    -- key. With `d.id = ANY ($2)` as well, the plan scanned that array's rows
                    -- and read the whole input again for each (90 x 90 rows for a round of
                    -- 90; 2.5 times slower).
                    WHERE d.id = i.id
                      AND d.state = $13::text AND d.lease_owner = $1::uuid AND d.attempts = i.attempt
                    RETURNING d.id, d.subscriber_id, d.subject, d.state
                ), logged AS (
                    INSERT INTO consent_sync.attempts
                        (delivery_id, attempt, started_at, duration_ms, status, error, response_excerpt, instance_id, applied, applied_reason)
                    SELECT i.id, i.attempt, to_timestamp(i.started_at), i.duration_ms, i.status, i.error, i.excerpt, $1::uuid,
                           i.applied, i.applied_reason
                    FROM input i\(records.contains(where: \.mayBeLogged) ? loggedOnce : "")
                ), unparked AS (
                    UPDATE consent_sync.deliveries p SET next_attempt_at = now()
                    WHERE p.id = ANY (ARRAY(
                        SELECT \(firstParked(after: "u"))
                        FROM updated u WHERE u.state IN ('delivered', 'dead') AND u.id <> ALL ($14::bigint[])))
                )
                SELECT id FROM updated
                """,
                [
                    owner.uuidString,
                    postgresArray(records.map { String($0.deliveryID) }),
                    postgresArray(records.map { String($0.attempt) }),
                    postgresArray(records.map { $0.verdict.rawValue }),
                    postgresArray(records.map { String($0.retryIn.seconds) }),
                    postgresArrayOfOptionals(records.map { $0.status.map(String.init) }),
                    postgresArrayOfOptionals(records.map { $0.error }),
                    postgresArrayOfOptionals(records.map { $0.responseExcerpt }),
                    postgresArray(records.map { String($0.startedAt.timeIntervalSince1970) }),
                    postgresArray(records.map { String($0.duration.seconds * 1000) }),
                    postgresArrayOfOptionals(records.map { $0.answer.map { $0.applied ? "true" : "false" } }),
                    postgresArrayOfOptionals(records.map { $0.answer?.reason }),
                    "in_flight",
                    postgresArray(handOver.map(String.init)),
                ],
                prepared: true
            ),
        ]
        if !handOver.isEmpty {
            statements.append(handOverStatement(after: handOver, owner: owner, lease: lease))
        }
        return statements
    }

    /// The first parked delivery of the subscriber and subject of the row `alias` (one that
    /// ended): what un-parking makes due.
    static func firstParked(after alias: String) -> String {
        """
        (SELECT q.id FROM consent_sync.deliveries q
                    WHERE q.subscriber_id = \(alias).subscriber_id AND q.subject = \(alias).subject
                      -- "live and not in flight" rather than "pending": only
                      -- deliveries_live_by_subject can serve it then, never a scan of
                      -- every parked delivery of the subscriber (chosen on a fresh table)
                      AND q.state IN ('pending', 'in_flight') AND q.state <> 'in_flight'
                      AND q.next_attempt_at = 'infinity'
                    ORDER BY q.change_id LIMIT 1)
        """
    }

    /// The hand-over, after the write-back in its transaction: for each of `ended` (deliveries
    /// that ended), the first live delivery of its subscriber and subject, when it is parked
    /// and the subscriber enabled, is leased to `owner`; otherwise the first parked one is
    /// un-parked, as the write-back does for the others. Its rows go to ``claimResult(_:)``.
    /// Order holds as in a claim: only the first live delivery of a subject is taken.
    ///
    /// The look for that first delivery reads the second too: whether one follows it (and so
    /// is handed over when it ends) comes from there, not from one more look per delivery.
    static func handOverStatement(after ended: [Int64], owner: UUID, lease: Duration) -> PostgresStatement {
        PostgresStatement(
            """
            WITH ended AS (
                SELECT e.subscriber_id, e.subject FROM consent_sync.deliveries e
                WHERE e.id = ANY ($2::bigint[]) AND e.state IN ('delivered', 'dead')
            ), heads AS (
                SELECT h.id, h.followed FROM ended e CROSS JOIN LATERAL (
                    SELECT q.id, q.state, q.next_attempt_at, lead(q.id) OVER (ORDER BY q.change_id) IS NOT NULL AS followed
                    FROM (SELECT q.id, q.state, q.next_attempt_at, q.change_id FROM consent_sync.deliveries q
                          WHERE q.subscriber_id = e.subscriber_id AND q.subject = e.subject
                            AND q.state IN ('pending', 'in_flight')
                          ORDER BY q.change_id LIMIT 2) q
                    ORDER BY q.change_id LIMIT 1
                ) h
                WHERE h.state = 'pending' AND h.next_attempt_at = 'infinity'
                  AND EXISTS (SELECT 1 FROM consent_sync.subscribers s WHERE s.id = e.subscriber_id AND s.state = 'enabled')
            ), claimed AS (
                UPDATE consent_sync.deliveries d
                SET state = 'in_flight', attempts = d.attempts + 1, lease_owner = $1::uuid, next_attempt_at = now(),
                    lease_expires_at = now() + make_interval(secs => $3::double precision)
                -- Joined on d.id = h.id alone: each is looked up in the primary key.
                FROM heads h
                WHERE d.id = h.id
                  -- Checked again on the row itself, should another transaction have changed it
                  -- meanwhile; as parameters ('pending', 'infinity'): with literals, the plan
                  -- walked every parked delivery in deliveries_due (before schema 11 took them
                  -- out of it) instead of looking up these ids.
                  AND d.state = $4::text AND d.next_attempt_at = $5::timestamptz
                \(claimedReturning), h.followed
            ), unparked AS (
                UPDATE consent_sync.deliveries p SET next_attempt_at = now()
                WHERE p.id = ANY (ARRAY(
                    SELECT \(firstParked(after: "e"))
                    FROM ended e
                    -- NOT IN, not NOT EXISTS: it is planned as one hash of `claimed`, where NOT
                    -- EXISTS became a nested loop reading all of `claimed` again for each ended
                    -- delivery (rounds of 100 ended: about 5,000 rows compared). Neither column is
                    -- ever NULL, so the two mean the same.
                    WHERE (e.subscriber_id, e.subject) NOT IN (SELECT c.subscriber_id, c.subject FROM claimed c)))
            )
            \(claimedRows(followed: "cl.followed"))
            """,
            [owner.uuidString, postgresArray(ended.map(String.init)), String(lease.seconds), "pending", "infinity"],
            prepared: true
        )
    }

    /// The write-back's condition on logging an attempt when its results were written before
    /// and the connection was lost before the answer: they may have been committed the first
    /// time. Each attempt is logged once (attempt numbers only grow, and a lease expiry logs
    /// its own row without an instance). Only then: it is an index probe per result.
    static let loggedOnce = """

                    WHERE NOT EXISTS (SELECT 1 FROM consent_sync.attempts a
                                      WHERE a.delivery_id = i.id AND a.attempt = i.attempt AND a.instance_id = $1::uuid)
        """

    static func recordResult(_ rows: PostgresRows) throws -> Set<Int64> {
        Set(try rows.map { try $0.int64("id") })
    }

    /// Whose run-out leases ``expireLeases(_:limit:on:)`` takes back.
    enum ExpiredLeases {
        /// Every instance's but `instance`'s: the others died, or lost the database. An
        /// instance's own leases may be of deliveries a round of its own has claimed and not yet
        /// started (a round can stall for longer than a lease), so its janitor, which runs beside
        /// its rounds, leaves them alone.
        case ofOthers(than: UUID)
        /// `instance`'s own, except those it still works on: claims whose answer it never read,
        /// results it could not write. Taken back by its relay loop between rounds, when it has
        /// no claim that it has not yet started.
        case ofOwn(UUID, workingOn: [Int64])
    }

    /// Returns deliveries whose lease ran out to `pending`, logging the lost attempt.
    /// - Returns: how many were taken back.
    static func expireLeases(_ whose: ExpiredLeases, limit: Int = 1000, on connection: PostgresConnection) async throws -> Int {
        let owners: String
        var parameters = [String(limit)]
        switch whose {
        case .ofOthers(let instance):
            owners = "lease_owner IS DISTINCT FROM $2::uuid"
            parameters.append(instance.uuidString)
        case .ofOwn(let instance, let workingOn):
            owners = "lease_owner = $2::uuid AND id <> ALL ($3::bigint[])"
            parameters += [instance.uuidString, postgresArray(workingOn.map(String.init))]
        }
        let rows = try await connection.query(
            """
            WITH expired AS (
                UPDATE consent_sync.deliveries SET state = 'pending', next_attempt_at = now(),
                       lease_owner = NULL, lease_expires_at = NULL, last_error = 'lease expired'
                WHERE id = ANY (ARRAY(SELECT id FROM consent_sync.deliveries
                                      WHERE state = 'in_flight' AND lease_expires_at < now() AND \(owners)
                                      ORDER BY lease_expires_at LIMIT $1::integer FOR UPDATE SKIP LOCKED))
                RETURNING id, attempts, lease_expires_at
            ), logged AS (
                INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at, error)
                SELECT id, attempts, now(), 'lease expired before a result was recorded (the instance stopped or lost its database connection)'
                FROM expired
            )
            SELECT count(*) AS n FROM expired
            """,
            parameters
        )
        return try rows.first?.int("n") ?? 0
    }

    /// Extends the leases of deliveries this instance is still working on, so that a request
    /// or a slow write-back never lets another instance take them over.
    static func renewLeases(owner: UUID, leases: [Int64: Duration], on connection: PostgresConnection) async throws {
        // One statement per lease length (there is usually one), with no join: joined to
        // unnest(ids), the planner re-ran the `id = ANY` scan per id (262 ms for 309 leases).
        // A row locked now is being written back (its lease is ending): skipped, which also
        // keeps this statement from deadlocking with the write-back's row locks.
        let byLength = Dictionary(grouping: leases, by: \.value)
        for (length, entries) in byLength {
            try await connection.query(
                """
                UPDATE consent_sync.deliveries SET lease_expires_at = now() + make_interval(secs => $3::double precision)
                WHERE id = ANY (ARRAY(SELECT id FROM consent_sync.deliveries
                                      WHERE id = ANY ($2::bigint[]) AND state = 'in_flight' AND lease_owner = $1::uuid
                                      FOR UPDATE SKIP LOCKED))
                  AND state = 'in_flight' AND lease_owner = $1::uuid
                """,
                [owner.uuidString, postgresArray(entries.map { String($0.key) }), String(length.seconds)]
            )
        }
    }

    /// Renews leases this instance has just claimed, before their requests start.
    /// - Returns: the claims still this instance's, as the same attempt (a delivery taken back
    ///   and claimed again in one round is there twice, and only its later claim is kept).
    static func keepLeases(owner: UUID, of claimed: [ClaimedDelivery], lease: Duration, on connection: PostgresConnection) async throws -> [ClaimedDelivery] {
        // No SKIP LOCKED, unlike the janitor's renewal: a row another session has locked (an
        // expiry, say) is waited for and looked at again, never counted as lost while still ours.
        let rows = try await connection.query(
            """
            UPDATE consent_sync.deliveries d SET lease_expires_at = now() + make_interval(secs => $4::double precision)
            FROM unnest($2::bigint[], $3::integer[]) AS c(id, attempt)
            WHERE d.id = c.id AND d.attempts = c.attempt AND d.state = 'in_flight' AND d.lease_owner = $1::uuid
            RETURNING d.id, d.attempts
            """,
            [owner.uuidString, postgresArray(claimed.map { String($0.id) }), postgresArray(claimed.map { String($0.attempt) }), String(lease.seconds)]
        )
        let attempts = Dictionary(try rows.map { (try $0.int64("id"), try $0.int("attempts")) }, uniquingKeysWith: { first, _ in first })
        return claimed.filter { attempts[$0.id] == $0.attempt }
    }

    /// Gives back leases this instance holds but will not finish (shutdown).
    static func releaseLeases(owner: UUID, ids: [Int64], on connection: PostgresConnection) async throws {
        guard !ids.isEmpty else { return }
        try await connection.query(
            """
            UPDATE consent_sync.deliveries SET state = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL
            WHERE id = ANY ($2::bigint[]) AND state = 'in_flight' AND lease_owner = $1::uuid
            """,
            [owner.uuidString, postgresArray(ids.map(String.init))]
        )
    }

    /// Tracks, per subscriber, since when every attempt has failed; returns the enabled
    /// subscribers failing for longer than `disableAfter` (nil: never disable).
    static func trackFailures(_ outcomes: [Int64: Bool], disableAfter: Duration?, on connection: PostgresConnection) async throws -> [Int64] {
        guard !outcomes.isEmpty else { return [] }
        let statement = trackFailuresStatement(outcomes, disableAfter: disableAfter)
        return try trackFailuresResult(try await connection.query(statement.sql, statement.parameters), disableAfter: disableAfter)
    }

    /// Failure tracking as one statement; its rows go to ``trackFailuresResult(_:disableAfter:)``.
    static func trackFailuresStatement(_ outcomes: [Int64: Bool], disableAfter: Duration?) -> PostgresStatement {
        let entries = Array(outcomes)
        return PostgresStatement(
            """
            WITH o AS (
                SELECT * FROM unnest($1::bigint[], $2::boolean[]) AS o(id, ok)
            ), flipped AS (
                UPDATE consent_sync.subscribers s
                SET failing_since = CASE WHEN o.ok THEN NULL ELSE now() END
                FROM o WHERE s.id = o.id AND o.ok = (s.failing_since IS NOT NULL)
            )
            SELECT s.id FROM consent_sync.subscribers s JOIN o ON o.id = s.id AND NOT o.ok
            WHERE s.state = 'enabled' AND s.failing_since < now() - make_interval(secs => $3::double precision)
            """,
            [
                postgresArray(entries.map { String($0.key) }),
                postgresArray(entries.map { $0.value ? "true" : "false" }),
                String(disableAfter?.seconds ?? 1e12),
            ],
            prepared: true
        )
    }

    static func trackFailuresResult(_ rows: PostgresRows, disableAfter: Duration?) throws -> [Int64] {
        guard disableAfter != nil else { return [] }
        return try rows.map { try $0.int64("id") }
    }

    struct BacklogLine: Sendable {
        var subscriber: String
        var backlog: Int
        var oldestSeconds: Double
        var dead: Int
    }

    /// Per subscriber: deliveries pending or in flight, the age of the oldest, and dead ones.
    static func backlog(on connection: PostgresConnection) async throws -> [BacklogLine] {
        let rows = try await connection.query(
            """
            SELECT s.name, live.n AS backlog, coalesce(live.oldest, 0) AS oldest,
                   (SELECT count(*) FROM consent_sync.deliveries d WHERE d.subscriber_id = s.id AND d.state = 'dead') AS dead
            FROM consent_sync.subscribers s
            CROSS JOIN LATERAL (
                SELECT count(*) AS n, extract(epoch FROM now() - min(d.created_at))::double precision AS oldest
                FROM consent_sync.deliveries d
                WHERE d.subscriber_id = s.id AND d.state IN ('pending', 'in_flight')
            ) live
            """
        )
        return try rows.map { row in
            BacklogLine(subscriber: try row.string("name"), backlog: try row.int("backlog"), oldestSeconds: try row.double("oldest"), dead: try row.int("dead"))
        }
    }

    /// Says whether this instance is idle: while any instance is, the capture trigger
    /// NOTIFYs; while all are busy, it does not (and commits do not queue on NOTIFY's lock).
    static func setIdle(_ idle: Bool, instance: UUID, on connection: PostgresConnection) async throws {
        try await connection.query("SELECT consent_sync.set_listener($1::uuid, $2::boolean)", [instance.uuidString, idle ? "true" : "false"])
    }

    /// Keeps this instance's row fresh and forgets instances not seen for `staleAfter`
    /// (stopped or crashed: an idle flag left behind would only cost NOTIFYs).
    /// - Returns: how many instances were seen within `staleAfter`, this one included.
    @discardableResult
    static func touchListener(instance: UUID, staleAfter: Duration, on connection: PostgresConnection) async throws -> Int {
        let rows = try await connection.query(
            """
            WITH touched AS (
                UPDATE consent_sync.listeners SET seen_at = now() WHERE instance_id = $1::uuid
            ), forgotten AS (
                DELETE FROM consent_sync.listeners
                WHERE seen_at < now() - make_interval(secs => $2::double precision) AND instance_id <> $1::uuid
                RETURNING idle
            )
            SELECT count(*) AS live, (SELECT count(*) FROM forgotten WHERE idle) AS forgotten_idle FROM consent_sync.listeners
            WHERE seen_at >= now() - make_interval(secs => $2::double precision)
            """,
            [instance.uuidString, String(staleAfter.seconds)]
        )
        if try rows.first?.int("forgotten_idle") ?? 0 > 0 {
            try await connection.query("SELECT consent_sync.recount_idle_listeners()")
        }
        return try rows.first?.int("live") ?? 1
    }

    static func removeListener(instance: UUID, on connection: PostgresConnection) async throws {
        try await connection.query("SELECT consent_sync.set_listener($1::uuid, NULL)", [instance.uuidString])
    }

    static func installationID(on connection: PostgresConnection) async throws -> String {
        let rows = try await connection.query("SELECT value FROM consent_sync.meta WHERE key = 'installation_id'")
        return try rows.first.orThrow("consent_sync.meta has no installation_id; run 'consent-sync migrate'").string("value")
    }
}

struct MissingValueError: Error, CustomStringConvertible {
    var description: String
}

extension Optional {
    func orThrow(_ message: @autoclosure () -> String) throws -> Wrapped {
        guard let value = self else { throw MissingValueError(description: message()) }
        return value
    }
}
