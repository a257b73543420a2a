/// The schema's versioned migrations, shipped inside the binary.
///
/// Each runs once, in order, in one transaction with the others that are missing,
/// under an advisory lock so that two `migrate` runs at once are safe.
/// Never edit a released migration: add a new one.
public enum Migrations {
    public struct Migration: Sendable {
        public var version: Int
        public var name: String
        public var sql: String
    }

    /// The advisory lock key (any constant; "consent-sync migrate" hashed by hand).
    static let lockKey: Int64 = 0x636F_6E73_656E_7401

    public static var latestVersion: Int { all.last?.version ?? 0 }

    /// Every migration, in order. Each version lives in its own file (`Migrations+V2.swift`, …).
    public static let all: [Migration] = [
        Migration(version: 1, name: "outbox, subscribers, deliveries, attempts, default consent table", sql: v1),
        Migration(version: 2, name: "subscriber states and events, dead-letter re-queue and replay", sql: v2),
        Migration(version: 3, name: "replays beside originals, per-subscriber retry, rate limit and TLS, failure tracking", sql: v3),
        Migration(version: 4, name: "signing secrets with expiry for rotation, encrypted at rest", sql: v4),
        Migration(version: 5, name: "length limits on the default consent table", sql: v5),
        Migration(version: 6, name: "watched tables, minimisation, pseudonymous ids, newest-wins, snapshots, receipts, erasure", sql: v6),
        Migration(version: 7, name: "a cheaper capture trigger: the fan-out maps statuses and finds problems", sql: v7),
        Migration(version: 8, name: "capture through the WAL: logical decoding messages read from a replication slot", sql: v8),
        Migration(version: 9, name: "deliveries by change: an index the retention's cascade can use", sql: v9),
        Migration(version: 10, name: "the references of deliveries and attempts checked once per statement, not per row", sql: v10),
        Migration(version: 11, name: "fewer index entries per delivery: parked deliveries out of deliveries_due, one index on attempts", sql: v11),
    ]

    static let v1 = #"""
    CREATE TABLE consent_sync.meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    );
    INSERT INTO consent_sync.meta (key, value) VALUES ('installation_id', gen_random_uuid()::text);

    -- The outbox: one row per captured change, written by the capture trigger in the
    -- application's own transaction. Ids are assigned at insert, not commit, so the
    -- fan-out never trusts a watermark: it takes every row not yet fanned out.
    CREATE TABLE consent_sync.changes (
        id              bigserial PRIMARY KEY,
        event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
        table_name      text        NOT NULL,
        operation       text        NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
        event_type      text        NOT NULL,
        subject         text        NOT NULL,
        purpose         text        NOT NULL,
        status          text,
        previous_status text,
        source          text,
        attributes      jsonb,
        txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
        changed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
        fanned_out      boolean     NOT NULL DEFAULT false
    );
    CREATE INDEX changes_not_fanned_out ON consent_sync.changes (id) WHERE NOT fanned_out;

    CREATE TABLE consent_sync.subscribers (
        id            bigserial PRIMARY KEY,
        name          text        NOT NULL UNIQUE,
        url           text        NOT NULL,
        secrets       text[]      NOT NULL,
        purposes      text[],
        event_types   text[],
        enabled       boolean     NOT NULL DEFAULT true,
        max_in_flight integer     NOT NULL DEFAULT 16 CHECK (max_in_flight BETWEEN 1 AND 10000),
        timeout_ms    integer     NOT NULL DEFAULT 10000 CHECK (timeout_ms BETWEEN 1 AND 3600000),
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now()
    );

    -- One row per (change, subscriber). A pending delivery that must wait for an earlier
    -- one of the same subject is "parked" with next_attempt_at = 'infinity'; finishing a
    -- delivery un-parks the next. The claim query still checks order, so parking is only
    -- there to keep blocked rows out of the claim's index range.
    CREATE TABLE consent_sync.deliveries (
        id               bigserial PRIMARY KEY,
        change_id        bigint      NOT NULL REFERENCES consent_sync.changes (id) ON DELETE CASCADE,
        subscriber_id    bigint      NOT NULL REFERENCES consent_sync.subscribers (id) ON DELETE CASCADE,
        subject          text        NOT NULL,
        state            text        NOT NULL DEFAULT 'pending'
                                     CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead')),
        attempts         integer     NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        lease_owner      uuid,
        lease_expires_at timestamptz,
        last_status      integer,
        last_error       text,
        created_at       timestamptz NOT NULL DEFAULT now(),
        completed_at     timestamptz,
        UNIQUE (change_id, subscriber_id)
    );
    CREATE INDEX deliveries_due ON consent_sync.deliveries (subscriber_id, next_attempt_at)
        WHERE state = 'pending';
    CREATE INDEX deliveries_live_by_subject ON consent_sync.deliveries (subscriber_id, subject, change_id)
        WHERE state IN ('pending', 'in_flight');
    CREATE INDEX deliveries_leases ON consent_sync.deliveries (lease_expires_at)
        WHERE state = 'in_flight';
    CREATE INDEX deliveries_dead ON consent_sync.deliveries (subscriber_id, completed_at)
        WHERE state = 'dead';

    -- The audit trail: one row per HTTP try.
    CREATE TABLE consent_sync.attempts (
        id               bigserial PRIMARY KEY,
        delivery_id      bigint           NOT NULL REFERENCES consent_sync.deliveries (id) ON DELETE CASCADE,
        attempt          integer          NOT NULL,
        started_at       timestamptz      NOT NULL,
        duration_ms      double precision,
        status           integer,
        error            text,
        response_excerpt text,
        instance_id      uuid
    );
    CREATE INDEX attempts_by_delivery ON consent_sync.attempts (delivery_id, attempt);

    -- Daemons that LISTEN, and whether each is idle (waiting for a NOTIFY) right now.
    CREATE TABLE consent_sync.listeners (
        instance_id uuid PRIMARY KEY,
        idle        boolean     NOT NULL DEFAULT false,
        seen_at     timestamptz NOT NULL DEFAULT now()
    );

    -- The capture trigger, generic over the watched table's column names:
    --   TG_ARGV[0] subject column, [1] purpose column, [2] status column,
    --   [3] source column or '' , [4] comma-separated columns sent as attributes or '',
    --   [5] comma-separated columns whose change alone is not a consent change (e.g. updated_at).
    -- SECURITY DEFINER: the application's role needs rights on its consent table only,
    -- not on the outbox.
    CREATE FUNCTION consent_sync.capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        new_row jsonb;
        old_row jsonb;
        row_data jsonb;
        ignored text[] := string_to_array(nullif(TG_ARGV[5], ''), ',');
        kept text[] := string_to_array(nullif(TG_ARGV[4], ''), ',');
        new_status text;
        old_status text;
        kind text;
        attrs jsonb;
    BEGIN
        IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
        IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
        IF TG_OP = 'UPDATE' AND (new_row - coalesce(ignored, '{}')) = (old_row - coalesce(ignored, '{}')) THEN
            RETURN NULL;  -- nothing that matters changed
        END IF;
        row_data := coalesce(new_row, old_row);
        new_status := new_row ->> TG_ARGV[2];
        old_status := old_row ->> TG_ARGV[2];
        kind := CASE WHEN TG_OP = 'DELETE' THEN 'consent.deleted' ELSE 'consent.' || coalesce(new_status, 'unknown') END;
        IF kept IS NOT NULL THEN
            SELECT jsonb_object_agg(key, value) INTO attrs FROM jsonb_each(row_data) WHERE key = ANY (kept);
        END IF;
        INSERT INTO consent_sync.changes
            (table_name, operation, event_type, subject, purpose, status, previous_status, source, attributes)
        VALUES
            (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, kind,
             row_data ->> TG_ARGV[0], row_data ->> TG_ARGV[1], new_status, old_status,
             CASE WHEN TG_ARGV[3] <> '' THEN row_data ->> TG_ARGV[3] END, attrs);
        -- NOTIFY takes a global lock at commit that serialises every notifying writer, so
        -- only wake a daemon that has said it is idle; a busy one finds this row anyway.
        IF EXISTS (SELECT 1 FROM consent_sync.listeners WHERE idle) THEN
            PERFORM pg_notify('consent_sync', '');
        END IF;
        RETURN NULL;
    END
    $fn$;

    -- The default consent table for new installations.
    CREATE TABLE consent_sync.consents (
        subject_id text        NOT NULL CHECK (subject_id <> ''),
        purpose    text        NOT NULL CHECK (purpose <> ''),
        status     text        NOT NULL CHECK (status IN ('granted', 'denied', 'withdrawn')),
        source     text,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (subject_id, purpose)
    );
    CREATE TRIGGER consent_sync_capture
        AFTER INSERT OR UPDATE OR DELETE ON consent_sync.consents
        FOR EACH ROW EXECUTE FUNCTION consent_sync.capture('subject_id', 'purpose', 'status', 'source', '', 'updated_at');
    """#
}
