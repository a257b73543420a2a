extension Migrations {
    /// Capture through the WAL (`consent-sync capture logical`): the capture trigger writes a
    /// transactional logical decoding message instead of a row, and a daemon reads the
    /// messages of committed transactions from a replication slot into the capture queue.
    ///
    /// Measured with pgbench upserts on the default table at 16 clients (issue 4, item 9):
    /// the row insert (executor start-up, heap, index, sequence) was what remained of the
    /// capture cost; a message is one WAL record, written by a function call.
    static let v8 = #"""
    -- How captured changes leave the application's transaction. 'table': the trigger inserts
    -- into consent_sync.captured. 'logical': it writes a logical decoding message, which
    -- consent_sync.capture_from_wal() moves into consent_sync.captured. slot_name is set while
    -- a slot is in use (also while switching back to 'table' until drain_until is read);
    -- position is the end of the last transaction whose messages are in the queue.
    CREATE TABLE consent_sync.capture_state (
        singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
        mode        text        NOT NULL DEFAULT 'table' CHECK (mode IN ('table', 'logical')),
        slot_name   text,
        position    pg_lsn,
        drain_until pg_lsn,
        changed_at  timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO consent_sync.capture_state DEFAULT VALUES;

    -- What one message holds: a row of consent_sync.captured but its id and time (the
    -- commit's). Written as the record's text, read back with this type's input function.
    CREATE TYPE consent_sync.capture_message AS (
        watch_id bigint, table_name text, operation text, subject text, purpose text,
        status text, previous_status text, source text, attributes jsonb, txid xid8
    );

    -- The generator of schema 7 keeps the checks, the triggers and the 'table' body; in
    -- 'logical' mode the body is replaced by one that writes a message with the same values.
    ALTER FUNCTION consent_sync.install_watch(bigint) RENAME TO install_watch_table;

    CREATE FUNCTION consent_sync.install_watch(watch bigint)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $gen$
    DECLARE
        w consent_sync.watches;
        body text;
    BEGIN
        PERFORM consent_sync.install_watch_table(watch);
        IF (SELECT mode FROM consent_sync.capture_state) IS DISTINCT FROM 'logical' THEN
            RETURN;
        END IF;
        SELECT * INTO w FROM consent_sync.watches WHERE id = watch;
        -- No NOTIFY: the daemon reading the slot wakes the others once per batch.
        body := format($body$
    DECLARE
        lsn pg_catalog.pg_lsn;
    BEGIN
        IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
            lsn := pg_catalog.pg_logical_emit_message(true, 'consent_sync', ROW(%1$s, %2$L, 'DELETE',
                COALESCE(pg_catalog.left(%3$s, 513), ''), COALESCE(OLD.%5$I::pg_catalog.text, ''), NULL::pg_catalog.text,
                OLD.%6$I::pg_catalog.text, %7$s, %9$s, pg_catalog.pg_current_xact_id())::pg_catalog.text);
        ELSE
            lsn := pg_catalog.pg_logical_emit_message(true, 'consent_sync', ROW(%1$s, %2$L, TG_OP,
                COALESCE(pg_catalog.left(%4$s, 513), ''), COALESCE(NEW.%5$I::pg_catalog.text, ''), NEW.%6$I::pg_catalog.text,
                OLD.%6$I::pg_catalog.text, %8$s, %10$s, pg_catalog.pg_current_xact_id())::pg_catalog.text);
        END IF;
        RETURN NULL;
    END
    $body$,
            watch, w.table_schema || '.' || w.table_name,                                                        -- 1, 2
            (SELECT string_agg(format('OLD.%I::pg_catalog.text', c), ' OPERATOR(pg_catalog.||) '':'' OPERATOR(pg_catalog.||) ' ORDER BY o)
               FROM unnest(w.subject_columns) WITH ORDINALITY AS u (c, o)),                                      -- 3
            (SELECT string_agg(format('NEW.%I::pg_catalog.text', c), ' OPERATOR(pg_catalog.||) '':'' OPERATOR(pg_catalog.||) ' ORDER BY o)
               FROM unnest(w.subject_columns) WITH ORDINALITY AS u (c, o)),                                      -- 4
            w.purpose_column, w.status_column,                                                                  -- 5, 6
            CASE WHEN w.source_column IS NULL THEN 'NULL::pg_catalog.text' ELSE format('OLD.%I::pg_catalog.text', w.source_column) END,  -- 7
            CASE WHEN w.source_column IS NULL THEN 'NULL::pg_catalog.text' ELSE format('NEW.%I::pg_catalog.text', w.source_column) END,  -- 8
            CASE WHEN cardinality(w.columns) = 0 THEN 'NULL::pg_catalog.jsonb' ELSE
                (SELECT 'pg_catalog.jsonb_build_object(' || string_agg(format('%L, OLD.%I', c, c), ', ' ORDER BY o) || ')'
                   FROM unnest(w.columns) WITH ORDINALITY AS u (c, o)) END,                                      -- 9
            CASE WHEN cardinality(w.columns) = 0 THEN 'NULL::pg_catalog.jsonb' ELSE
                (SELECT 'pg_catalog.jsonb_build_object(' || string_agg(format('%L, NEW.%I', c, c), ', ' ORDER BY o) || ')'
                   FROM unnest(w.columns) WITH ORDINALITY AS u (c, o)) END);                                     -- 10
        EXECUTE format('CREATE OR REPLACE FUNCTION consent_sync.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L',
                       'capture_' || watch, body);
    END
    $gen$;

    -- Switches how changes are captured, for every watch at once. The watched tables are
    -- locked against writes meanwhile, so no transaction writes some rows one way and the
    -- rest the other. To 'logical': `slot` (a pgoutput slot, created by the caller, which
    -- cannot be done in a transaction) starts at its confirmed position. To 'table': the slot
    -- is read up to this switch (drain_until), then dropped by consent_sync.capture_from_wal().
    CREATE FUNCTION consent_sync.set_capture_mode(new_mode text, slot text)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        st consent_sync.capture_state;
        rel regclass;
    BEGIN
        SELECT * INTO st FROM consent_sync.capture_state FOR UPDATE;
        FOR rel IN SELECT to_regclass(format('%I.%I', table_schema, table_name)) FROM consent_sync.watches ORDER BY id LOOP
            IF rel IS NOT NULL THEN
                EXECUTE format('LOCK TABLE %s IN SHARE MODE', rel);
            END IF;
        END LOOP;
        IF new_mode = 'logical' THEN
            IF current_setting('wal_level') <> 'logical' THEN
                RAISE EXCEPTION 'capture through the WAL needs wal_level = logical (it is %)', current_setting('wal_level')
                    USING ERRCODE = '55000', HINT = 'set wal_level = logical in postgresql.conf and restart PostgreSQL';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'consent_sync_capture') THEN
                -- pgoutput needs a publication; an empty one sends only the messages.
                CREATE PUBLICATION consent_sync_capture;
            END IF;
            UPDATE consent_sync.capture_state SET mode = 'logical', slot_name = slot, drain_until = NULL, changed_at = now(),
                   position = CASE WHEN st.slot_name IS NOT DISTINCT FROM slot THEN st.position
                                   ELSE (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = slot) END;
        ELSIF new_mode = 'table' THEN
            UPDATE consent_sync.capture_state SET mode = 'table', changed_at = now(),
                   drain_until = CASE WHEN st.slot_name IS NULL THEN NULL ELSE pg_current_wal_lsn() END;
            IF st.slot_name IS NOT NULL THEN
                -- A transaction of ours after drain_until, for the reader to see.
                PERFORM pg_logical_emit_message(true, 'consent_sync.mark', '');
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown capture mode %', quote_literal(new_mode) USING HINT = 'use logical or table';
        END IF;
        PERFORM consent_sync.install_watch(id) FROM consent_sync.watches
        WHERE to_regclass(format('%I.%I', table_schema, table_name)) IS NOT NULL;
    END
    $fn$;

    -- Queues the capture messages (record texts, with their commit times and the end LSN of
    -- their transactions) read from the slot, in order, and moves the position to end_lsn
    -- (NULL: the caller moves it), in this transaction: what is queued and how far the slot
    -- was read commit together. Messages of transactions that end at or before the position
    -- were queued before (a restart, or the other reader) and are skipped. A message that is
    -- not a capture record (someone else's under our prefix, or damaged) is queued as a change
    -- that cannot be sent, with the reason. Wakes idle daemons.
    CREATE FUNCTION consent_sync.capture_queue(payloads text[], times timestamptz[], ends pg_lsn[], end_lsn pg_lsn)
    RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        old pg_lsn;
        taken integer;
    BEGIN
        SELECT position INTO old FROM consent_sync.capture_state FOR UPDATE;
        IF ends IS NOT NULL AND old IS NOT NULL THEN
            SELECT array_agg(u.p ORDER BY u.o), array_agg(u.t ORDER BY u.o) INTO payloads, times
            FROM unnest(payloads, times, ends) WITH ORDINALITY AS u (p, t, e, o) WHERE u.e > old;
        END IF;
        IF end_lsn IS NOT NULL AND (old IS NULL OR end_lsn > old) THEN
            UPDATE consent_sync.capture_state SET position = end_lsn;
        END IF;
        taken := coalesce(cardinality(payloads), 0);
        IF taken = 0 THEN RETURN 0; END IF;
        BEGIN
            INSERT INTO consent_sync.captured (watch_id, table_name, operation, subject, purpose, status, previous_status,
                                               source, attributes, txid, changed_at)
            SELECT (b.m).watch_id, (b.m).table_name, (b.m).operation, (b.m).subject, (b.m).purpose, (b.m).status,
                   (b.m).previous_status, (b.m).source, (b.m).attributes, (b.m).txid, b.committed_at
            FROM (SELECT u.ord, u.committed_at, u.payload::consent_sync.capture_message AS m
                  FROM unnest(payloads, times) WITH ORDINALITY AS u (payload, committed_at, ord)) b
            ORDER BY b.ord;
        EXCEPTION WHEN OTHERS THEN
            FOR i IN 1 .. taken LOOP
                BEGIN
                    INSERT INTO consent_sync.captured (watch_id, table_name, operation, subject, purpose, status,
                                                       previous_status, source, attributes, txid, changed_at)
                    SELECT (x.m).watch_id, (x.m).table_name, (x.m).operation, (x.m).subject, (x.m).purpose, (x.m).status,
                           (x.m).previous_status, (x.m).source, (x.m).attributes, (x.m).txid, times[i]
                    FROM (SELECT payloads[i]::consent_sync.capture_message AS m) x;
                EXCEPTION WHEN OTHERS THEN
                    INSERT INTO consent_sync.captured (table_name, operation, subject, purpose, problem, changed_at)
                    VALUES ('(logical decoding message)', 'INSERT', '', '', format(
                        'a logical decoding message with the prefix consent_sync is not a capture record (%s): %s',
                        SQLERRM, left(payloads[i], 200)), times[i]);
                END;
            END LOOP;
        END;
        IF pg_sequence_last_value('consent_sync.idle_listeners') > 0 THEN
            PERFORM pg_notify('consent_sync', '');
        END IF;
        RETURN taken;
    END
    $fn$;

    -- Transactions without a message of ours send nothing, so the slot's position would stay
    -- put while other writes (the daemons' own) pile up behind it, kept by PostgreSQL and read
    -- again after a restart. A message of ours, once that is more than `bytes` of WAL, gives
    -- the reader a transaction end to move to.
    CREATE FUNCTION consent_sync.capture_mark(bytes bigint)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        IF pg_wal_lsn_diff(pg_current_wal_lsn(), (SELECT position FROM consent_sync.capture_state)) > bytes THEN
            PERFORM pg_logical_emit_message(true, 'consent_sync.mark', '');
        END IF;
    END
    $fn$;

    -- The reading without a stream (SQL functions; `consent-sync capture table` reads the rest
    -- of the slot with it): moves the capture messages of committed transactions from the slot
    -- into consent_sync.captured, in commit order, at most about max_changes decoded rows
    -- (whole transactions); it decodes again from the slot's restart point on every call. Exactly once: position moves in this transaction with the rows, and the
    -- slot (which is not transactional) is advanced to it at the start of the next call;
    -- transactions ending at or before position are skipped. One caller at a time: the others
    -- get taken = -1 at once. taken = -2: no slot in use. A message with our prefix that is not
    -- a capture record is queued as a change that cannot be sent, with the reason.
    CREATE FUNCTION consent_sync.capture_from_wal(max_changes integer, OUT taken integer, OUT more boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        st consent_sync.capture_state;
        last_end pg_lsn;
        decoded integer;
        times timestamptz[];
        payloads text[];
    BEGIN
        more := false;
        SELECT * INTO st FROM consent_sync.capture_state FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN taken := -1; RETURN; END IF;
        IF st.slot_name IS NULL THEN taken := -2; RETURN; END IF;
        IF (SELECT active FROM pg_replication_slots WHERE slot_name = st.slot_name) THEN
            taken := -1; RETURN;                                 -- a daemon streams it
        END IF;
        IF st.position > (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = st.slot_name) THEN
            PERFORM pg_replication_slot_advance(st.slot_name, st.position);
        END IF;

        WITH raw AS MATERIALIZED (
            SELECT r.ord, r.data, get_byte(r.data, 0) AS kind,
                   sum((get_byte(r.data, 0) = 66)::integer) OVER (ORDER BY r.ord) AS txn       -- 'B' opens one
            FROM pg_logical_slot_peek_binary_changes(st.slot_name, NULL, max_changes,
                     'proto_version', '1', 'publication_names', 'consent_sync_capture', 'messages', 'true')
                 WITH ORDINALITY AS r (lsn, xid, data, ord)
        ), txns AS (
            -- 'C': flags, commit LSN, end LSN (bytes 10-17); 'B': final LSN, commit time (9-16, us since 2000)
            SELECT txn,
                   max(CASE WHEN kind = 67 THEN '0/0'::pg_lsn + ('x' || encode(substring(data FROM 11 FOR 8), 'hex'))::bit(64)::bigint END) AS end_lsn,
                   max(CASE WHEN kind = 66 THEN timestamptz '2000-01-01 00:00:00+00'
                            + ('x' || encode(substring(data FROM 10 FOR 8), 'hex'))::bit(64)::bigint * interval '1 microsecond' END) AS committed_at
            FROM raw GROUP BY txn
        )
        -- 'M': flags, LSN, then the prefix (NUL-ended) at byte 10, the length, the content
        SELECT (SELECT count(*) FROM raw), (SELECT max(end_lsn) FROM txns),
               array_agg(t.committed_at ORDER BY r.ord),
               array_agg(convert_from(substring(r.data FROM 28), current_setting('server_encoding')) ORDER BY r.ord)
        INTO decoded, last_end, times, payloads
        FROM raw r JOIN txns t USING (txn)
        WHERE r.kind = 77 AND substring(r.data FROM 11 FOR 13) = '\x636f6e73656e745f73796e6300'::bytea  -- 'consent_sync'
          AND (st.position IS NULL OR t.end_lsn > st.position);

        taken := consent_sync.capture_queue(payloads, times, NULL, NULL);

        IF last_end IS NOT NULL THEN
            UPDATE consent_sync.capture_state SET position = greatest(coalesce(position, last_end), last_end);
        END IF;
        more := decoded >= max_changes;
        PERFORM consent_sync.capture_mark(1048576);
        -- Back in 'table' mode and read up to the switch: the slot is no longer needed.
        IF st.mode = 'table' AND st.drain_until IS NOT NULL
           AND coalesce(greatest(last_end, st.position), st.position) >= st.drain_until THEN
            UPDATE consent_sync.capture_state SET slot_name = NULL, position = NULL, drain_until = NULL;
            PERFORM pg_drop_replication_slot(st.slot_name);
        END IF;
    END
    $fn$;
    """#
}
