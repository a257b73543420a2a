extension Migrations {
    /// A cheaper capture trigger: the application's transaction only copies the captured
    /// columns into a narrow queue; the fan-out maps statuses, finds problems, names the event
    /// type and moves the row into the outbox.
    ///
    /// Measured with pgbench upserts on the default table (issue 4): the v6 trigger cost half
    /// of the no-trigger write rate at 16 clients. What it did per row, each evaluated in the
    /// application's transaction: a dozen PL/pgSQL expressions (validation, status mapping),
    /// a `SET search_path` around the call, a query on `listeners`, an FK check, a CHECK
    /// constraint and a random UUID.
    static let v7 = #"""
    -- The idle flag the capture trigger reads: how many daemons wait for a NOTIFY. A sequence,
    -- because reading one (pg_sequence_last_value) is a function call, not a query; set by
    -- consent_sync.set_listener() under an advisory lock, so concurrent daemons cannot leave
    -- a stale count behind.
    CREATE SEQUENCE consent_sync.idle_listeners MINVALUE 0 START 0;
    SELECT setval('consent_sync.idle_listeners', (SELECT count(*) FROM consent_sync.listeners WHERE idle), true);

    -- Records whether a daemon is idle (NULL: forget it), then recounts the idle daemons.
    -- Each statement of a volatile function sees what committed before it started, and the
    -- lock is taken first, so the count includes every other daemon's last word.
    CREATE FUNCTION consent_sync.set_listener(instance uuid, is_idle boolean)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        PERFORM pg_advisory_xact_lock(7165066974071780356);  -- 0x636F_6E73_656E_7404, "listeners"
        IF is_idle IS NULL THEN
            DELETE FROM consent_sync.listeners WHERE instance_id = instance;
        ELSE
            INSERT INTO consent_sync.listeners (instance_id, idle) VALUES (instance, is_idle)
            ON CONFLICT (instance_id) DO UPDATE SET idle = excluded.idle, seen_at = now();
        END IF;
        PERFORM consent_sync.recount_idle_listeners();
    END
    $fn$;

    -- Sets the idle flag from the listeners table (also after forgetting stale daemons).
    CREATE FUNCTION consent_sync.recount_idle_listeners()
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        PERFORM pg_advisory_xact_lock(7165066974071780356);
        PERFORM setval('consent_sync.idle_listeners', (SELECT count(*) FROM consent_sync.listeners WHERE idle), true);
    END
    $fn$;

    -- The capture queue: what the capture trigger copied, until the fan-out moves it into
    -- consent_sync.changes, completed (event id and type, mapped statuses, problem), and
    -- deletes it here. Narrow and with one index, so the application's insert is cheap, and
    -- outbox rows are written once instead of inserted and then updated (never HOT: the
    -- update moved them out of a partial index). Ids come from the outbox's sequence.
    -- A row with event_type NULL holds the table's own status values (status: new,
    -- previous_status: old), a subject cut to 513 characters (the fan-out says "longer than
    -- 512") and the purpose as it was. Snapshots and erasures are still written to
    -- consent_sync.changes directly (fanned_out = false); the fan-out takes both, in id order.
    CREATE TABLE consent_sync.captured (
        id                   bigint      PRIMARY KEY DEFAULT nextval('consent_sync.changes_id_seq'),
        watch_id             bigint,
        table_name           text        NOT NULL,
        operation            text        NOT NULL,
        event_type           text,
        subject              text        NOT NULL,
        purpose              text        NOT NULL,
        status               text,
        previous_status      text,
        source               text,
        attributes           jsonb,
        problem              text,
        txid                 xid8        NOT NULL DEFAULT pg_current_xact_id(),
        changed_at           timestamptz NOT NULL DEFAULT clock_timestamp()
    );

    -- (Re)creates the capture function consent_sync.capture_<id>() of one watch and its two
    -- triggers: consent_sync_capture (INSERT, DELETE) and consent_sync_capture_update (an
    -- UPDATE that changed a captured column: the trigger's WHEN, checked by the executor
    -- without calling the function). The function is SECURITY DEFINER without a SET clause
    -- (which costs a configuration save and restore per call): every name in it is
    -- schema-qualified, operators included, so the caller's search_path cannot redirect it.
    CREATE OR REPLACE FUNCTION consent_sync.install_watch(watch bigint)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $gen$
    DECLARE
        w consent_sync.watches;
        rel regclass;
        col text;
        fn text := format('consent_sync.%I', 'capture_' || watch);
        captured text[];
        body text;
    BEGIN
        SELECT * INTO w FROM consent_sync.watches WHERE id = watch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no watch with id %', watch USING ERRCODE = '42704';
        END IF;
        rel := to_regclass(format('%I.%I', w.table_schema, w.table_name));
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table %.% does not exist', quote_ident(w.table_schema), quote_ident(w.table_name)
                USING ERRCODE = '42P01', HINT = 'give it as SCHEMA.TABLE, with the names exactly as in the catalog (case matters)';
        END IF;
        IF (SELECT relkind FROM pg_class WHERE oid = rel) NOT IN ('r', 'p') THEN
            RAISE EXCEPTION '% is not a table (a view or other relation cannot be watched)', rel USING ERRCODE = '42809';
        END IF;
        FOREACH col IN ARRAY w.subject_columns LOOP
            PERFORM consent_sync.watch_check_column(rel, col, 'subject id', true);
        END LOOP;
        PERFORM consent_sync.watch_check_column(rel, w.purpose_column, 'purpose', true);
        PERFORM consent_sync.watch_check_column(rel, w.status_column, 'status', true);
        IF w.source_column IS NOT NULL THEN
            PERFORM consent_sync.watch_check_column(rel, w.source_column, 'source', true);
        END IF;
        FOREACH col IN ARRAY w.columns LOOP
            PERFORM consent_sync.watch_check_column(rel, col, 'captured column', false);
        END LOOP;

        captured := w.subject_columns || w.purpose_column || w.status_column
                    || coalesce(ARRAY[w.source_column], '{}') || w.columns;
        captured := ARRAY(SELECT DISTINCT c FROM unnest(captured) AS c WHERE c IS NOT NULL ORDER BY c);

        body := format($body$
    BEGIN
        IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
            INSERT INTO consent_sync.captured (watch_id, table_name, operation, subject, purpose, previous_status, source, attributes)
            VALUES (%1$s, %2$L, 'DELETE', COALESCE(pg_catalog.left(%3$s, 513), ''), COALESCE(OLD.%5$I::pg_catalog.text, ''),
                    OLD.%6$I::pg_catalog.text, %7$s, %9$s);
        ELSE
            INSERT INTO consent_sync.captured (watch_id, table_name, operation, subject, purpose, status, previous_status, source, attributes)
            VALUES (%1$s, %2$L, TG_OP, COALESCE(pg_catalog.left(%4$s, 513), ''), COALESCE(NEW.%5$I::pg_catalog.text, ''),
                    NEW.%6$I::pg_catalog.text, OLD.%6$I::pg_catalog.text, %8$s, %10$s);
        END IF;
        -- NOTIFY takes a global lock at commit that serialises every notifying writer, so
        -- only wake daemons that said they are idle; a busy one finds this row anyway.
        IF pg_catalog.pg_sequence_last_value('consent_sync.idle_listeners'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0 THEN
            PERFORM pg_catalog.pg_notify('consent_sync', '');
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
            CASE WHEN w.source_column IS NULL THEN 'NULL' ELSE format('OLD.%I::pg_catalog.text', w.source_column) END,  -- 7
            CASE WHEN w.source_column IS NULL THEN 'NULL' ELSE format('NEW.%I::pg_catalog.text', w.source_column) END,  -- 8
            CASE WHEN cardinality(w.columns) = 0 THEN 'NULL' ELSE
                (SELECT 'pg_catalog.jsonb_build_object(' || string_agg(format('%L, OLD.%I', c, c), ', ' ORDER BY o) || ')'
                   FROM unnest(w.columns) WITH ORDINALITY AS u (c, o)) END,                                      -- 9
            CASE WHEN cardinality(w.columns) = 0 THEN 'NULL' ELSE
                (SELECT 'pg_catalog.jsonb_build_object(' || string_agg(format('%L, NEW.%I', c, c), ', ' ORDER BY o) || ')'
                   FROM unnest(w.columns) WITH ORDINALITY AS u (c, o)) END);                                     -- 10

        EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L', fn, body);
        EXECUTE format('DROP TRIGGER IF EXISTS consent_sync_capture ON %s', rel);
        EXECUTE format('DROP TRIGGER IF EXISTS consent_sync_capture_update ON %s', rel);
        EXECUTE format('CREATE TRIGGER consent_sync_capture AFTER INSERT OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()', rel, fn);
        -- Compared as text: every type has one, not every type has =. Parsed here, under this
        -- function's search_path, and stored with the operators resolved.
        EXECUTE format('CREATE TRIGGER consent_sync_capture_update AFTER UPDATE OF %s ON %s FOR EACH ROW '
                       'WHEN ((%s) IS DISTINCT FROM (%s)) EXECUTE FUNCTION %s()',
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(captured) AS c), rel,
                       (SELECT string_agg(format('OLD.%I::text', c), ', ') FROM unnest(captured) AS c),
                       (SELECT string_agg(format('NEW.%I::text', c), ', ') FROM unnest(captured) AS c),
                       fn);
    END
    $gen$;

    CREATE OR REPLACE FUNCTION consent_sync.uninstall_watch(watch bigint)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        w consent_sync.watches;
        rel regclass;
    BEGIN
        SELECT * INTO w FROM consent_sync.watches WHERE id = watch;
        IF NOT FOUND THEN RETURN; END IF;
        rel := to_regclass(format('%I.%I', w.table_schema, w.table_name));
        IF rel IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER IF EXISTS consent_sync_capture ON %s', rel);
            EXECUTE format('DROP TRIGGER IF EXISTS consent_sync_capture_update ON %s', rel);
        END IF;
        EXECUTE format('DROP FUNCTION IF EXISTS consent_sync.%I()', 'capture_' || watch);
    END
    $fn$;

    -- A status of a watched table in the words of the events: through the watch's map, or
    -- as it is when it is one of them already (no map). NULL: not a known status.
    CREATE FUNCTION consent_sync.map_status(status_map jsonb, raw text)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$  -- no SET clause: it would stop inlining
        SELECT CASE WHEN status_map IS NULL THEN CASE WHEN raw IN ('granted', 'denied', 'withdrawn') THEN raw END
                    ELSE status_map ->> raw END
    $fn$;

    -- Re-install every watch whose table still exists, with the new generator.
    SELECT consent_sync.install_watch(id) FROM consent_sync.watches
    WHERE to_regclass(format('%I.%I', table_schema, table_name)) IS NOT NULL;
    """#
}
