extension Migrations {
    /// Watched tables with a capture trigger generated per table; data minimisation,
    /// pseudonymous ids and newest-wins per subscriber; snapshots (resync), receipts with the
    /// receiver's answer, erasure and retention.
    static let v6 = #"""
    -- Tables whose changes are captured. `consent-sync watch add` records one here and
    -- generates its capture trigger with consent_sync.install_watch(); a later migration
    -- that improves the generator re-installs every watch, so upgrades keep them.
    CREATE TABLE consent_sync.watches (
        id              bigserial PRIMARY KEY,
        table_schema    text        NOT NULL,
        table_name      text        NOT NULL,
        -- Several columns make a composite subject id: their text values joined with ':'.
        subject_columns text[]      NOT NULL CHECK (cardinality(subject_columns) BETWEEN 1 AND 8),
        purpose_column  text        NOT NULL,
        status_column   text        NOT NULL,
        source_column   text,
        -- The only other columns captured and sent (as `attributes`): data minimisation.
        columns         text[]      NOT NULL DEFAULT '{}',
        -- The table's own status values mapped to granted/denied/withdrawn; NULL when it
        -- already uses those words.
        status_map      jsonb,
        created_at      timestamptz NOT NULL DEFAULT now(),
        UNIQUE (table_schema, table_name)
    );

    -- Raises a clear error unless `col` is a column of `rel` that can stand for a subject,
    -- purpose or status (`what`): any scalar that has a text form, not json, arrays or rows.
    CREATE FUNCTION consent_sync.watch_check_column(rel regclass, col text, what text, scalar boolean)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        t record;
    BEGIN
        SELECT a.atttypid, format_type(a.atttypid, a.atttypmod) AS name, ty.typtype, ty.typcategory
          INTO t
          FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
         WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column % (%) does not exist in table %', quote_ident(col), what, rel
                USING ERRCODE = '42703',
                      HINT = 'its columns are: ' || (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                                                      FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped);
        END IF;
        IF scalar AND (t.typcategory = 'A' OR t.typtype IN ('c', 'p', 'r', 'm')
                       OR t.atttypid IN ('json'::regtype, 'jsonb'::regtype, 'bytea'::regtype, 'xml'::regtype)) THEN
            RAISE EXCEPTION 'column % of table % has type %, which cannot hold a %', quote_ident(col), rel, t.name, what
                USING ERRCODE = '42804', HINT = 'use a text, number, uuid, boolean, enum or date column';
        END IF;
    END
    $fn$;

    -- The SQL expressions of a watch over a row called `alias` (NEW, OLD, or a table alias):
    -- the subject id, the mapped status (NULL when unmapped), the captured attributes, the
    -- source; and the status values it knows, for error messages. Shared by the capture
    -- trigger and resync, so that a snapshot says exactly what a live change would.
    CREATE FUNCTION consent_sync.watch_expressions(
        w consent_sync.watches, alias text,
        OUT subject text, OUT status text, OUT attrs text, OUT source text, OUT known text
    ) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        SELECT string_agg(format('%s.%I::text', alias, c), ' || '':'' || ' ORDER BY o)
          INTO subject
          FROM unnest(w.subject_columns) WITH ORDINALITY AS u (c, o);
        attrs := 'NULL';
        IF cardinality(w.columns) > 0 THEN
            SELECT 'jsonb_build_object(' || string_agg(format('%L, %s.%I', c, alias, c), ', ' ORDER BY o) || ')'
              INTO attrs
              FROM unnest(w.columns) WITH ORDINALITY AS u (c, o);
        END IF;
        source := CASE WHEN w.source_column IS NULL THEN 'NULL' ELSE format('%s.%I::text', alias, w.source_column) END;
        IF w.status_map IS NULL THEN
            status := format('CASE WHEN %1$s.%2$I::text IN (''granted'', ''denied'', ''withdrawn'') THEN %1$s.%2$I::text END', alias, w.status_column);
            known := 'granted, denied, withdrawn';
        ELSE
            SELECT format('CASE %s.%I::text %s END', alias, w.status_column, string_agg(format('WHEN %L THEN %L', key, value), ' ' ORDER BY key)),
                   string_agg(key, ', ' ORDER BY key)
              INTO status, known
              FROM jsonb_each_text(w.status_map);
        END IF;
    END
    $fn$;

    -- (Re)creates the capture function consent_sync.capture_<id>() and the trigger
    -- consent_sync_capture of one watch, from its row: direct column access (no to_jsonb of
    -- the whole row), only the captured columns compared, identifiers and literals quoted by
    -- format(). Raises a clear error, and installs nothing, when the table or a column is wrong.
    CREATE FUNCTION consent_sync.install_watch(watch bigint)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $gen$
    DECLARE
        w consent_sync.watches;
        rel regclass;
        col text;
        fn text := format('consent_sync.%I', 'capture_' || watch);
        captured text[];
        e_new record;
        e_old record;
        known text;
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

        SELECT * INTO e_new FROM consent_sync.watch_expressions(w, 'NEW');
        SELECT * INTO e_old FROM consent_sync.watch_expressions(w, 'OLD');
        known := e_new.known;

        body := format($body$
    DECLARE
        subj text;
        purp text;
        raw text;
        st text;
        prev text;
        src text;
        attrs jsonb;
        kind text;
        problem text;
    BEGIN
        IF TG_OP = 'UPDATE' AND (%1$s) IS NOT DISTINCT FROM (%2$s) THEN
            RETURN NULL;  -- nothing captured changed
        END IF;
        IF TG_OP = 'DELETE' THEN
            subj := %3$s; purp := OLD.%5$I::text; raw := OLD.%6$I::text;
            prev := %8$s; src := %10$s; attrs := %12$s;
            kind := 'consent.deleted';
        ELSE
            subj := %4$s; purp := NEW.%5$I::text; raw := NEW.%6$I::text;
            st := %7$s; src := %11$s; attrs := %13$s;
            IF TG_OP = 'UPDATE' THEN prev := %8$s; END IF;
            kind := 'consent.' || st;
            IF st IS NULL THEN
                problem := format('status %%s in column %%s is not one of %%s', coalesce(quote_literal(left(raw, 100)), 'NULL'), %6$L, %9$L);
            END IF;
        END IF;
        IF coalesce(subj, '') = '' THEN
            problem := format('the subject id (column %%s) is NULL or empty', %14$L);
        ELSIF length(subj) > 512 THEN
            problem := format('the subject id is %%s characters long; at most 512 are accepted', length(subj));
            subj := left(subj, 512);
        END IF;
        IF coalesce(purp, '') = '' THEN
            problem := format('the purpose (column %%s) is NULL or empty', %5$L);
        ELSIF length(purp) > 128 THEN
            problem := format('the purpose is %%s characters long; at most 128 are accepted', length(purp));
            purp := left(purp, 128);
        END IF;
        IF problem IS NOT NULL THEN
            kind := 'consent.invalid';  -- recorded, and marked dead with the problem instead of being sent
        END IF;
        INSERT INTO consent_sync.changes
            (watch_id, table_name, operation, event_type, subject, purpose, status, previous_status, source, attributes, problem)
        VALUES (%15$s, %16$L, TG_OP, kind, coalesce(subj, ''), coalesce(purp, ''), st, prev, src, attrs, problem);
        -- NOTIFY takes a global lock at commit that serialises every notifying writer, so
        -- only wake a daemon that has said it is idle; a busy one finds this row anyway.
        IF EXISTS (SELECT 1 FROM consent_sync.listeners WHERE idle) THEN
            PERFORM pg_notify('consent_sync', '');
        END IF;
        RETURN NULL;
    END
    $body$,
            (SELECT string_agg(format('OLD.%I::text', c), ', ') FROM unnest(captured) AS c),  -- 1 (as text: every type has one, not every type has =)
            (SELECT string_agg(format('NEW.%I::text', c), ', ') FROM unnest(captured) AS c),  -- 2
            e_old.subject, e_new.subject,                                              -- 3, 4
            w.purpose_column, w.status_column,                                         -- 5, 6
            e_new.status, e_old.status, known,                                         -- 7, 8, 9
            e_old.source, e_new.source, e_old.attrs, e_new.attrs,                      -- 10-13
            array_to_string(w.subject_columns, ', '),                                  -- 14
            watch, w.table_schema || '.' || w.table_name);                             -- 15, 16

        EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                       'SET search_path = pg_catalog, pg_temp AS %L', fn, body);
        IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'consent_sync_capture') THEN
            EXECUTE format('DROP TRIGGER consent_sync_capture ON %s', rel);
        END IF;
        EXECUTE format('CREATE TRIGGER consent_sync_capture AFTER INSERT OR DELETE OR UPDATE OF %s ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION %s()',
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(captured) AS c), rel, fn);
    END
    $gen$;

    -- Drops a watch's trigger (when its table still exists) and function. Captured changes stay.
    CREATE FUNCTION consent_sync.uninstall_watch(watch bigint)
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
        END IF;
        EXECUTE format('DROP FUNCTION IF EXISTS consent_sync.%I()', 'capture_' || watch);
    END
    $fn$;

    ALTER TABLE consent_sync.changes
        ADD COLUMN watch_id bigint,
        -- Why this change cannot be sent (a NULL subject, an unmapped status, …): its
        -- deliveries are recorded as dead with this reason.
        ADD COLUMN problem text,
        -- Snapshots (`consent-sync resync`) go to one subscriber only.
        ADD COLUMN target_subscriber_id bigint REFERENCES consent_sync.subscribers (id) ON DELETE CASCADE,
        ADD COLUMN resync_id bigint,
        -- Set once the subject's personal data was removed (`consent-sync forget`): `subject`
        -- then holds its keyed hash.
        ADD COLUMN erased_at timestamptz,
        -- Set when retention removed the payload (attributes, source, previous status).
        ADD COLUMN pruned_at timestamptz;
    ALTER TABLE consent_sync.changes DROP CONSTRAINT changes_operation_check;
    ALTER TABLE consent_sync.changes ADD CONSTRAINT changes_operation_check
        CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT', 'ERASE'));
    -- `trace` and `forget` find a subject's changes.
    CREATE INDEX changes_by_subject ON consent_sync.changes (subject);

    -- The default table is a watch like any other.
    DROP TRIGGER consent_sync_capture ON consent_sync.consents;
    INSERT INTO consent_sync.watches (table_schema, table_name, subject_columns, purpose_column, status_column, source_column)
    VALUES ('consent_sync', 'consents', '{subject_id}', 'purpose', 'status', 'source');
    SELECT consent_sync.install_watch(id) FROM consent_sync.watches;

    ALTER TABLE consent_sync.subscribers
        -- Only these attributes (of those captured) go to this subscriber; NULL: all captured.
        ADD COLUMN fields text[],
        -- Sealed like the signing secrets; set: the subject id is sent as
        -- HMAC-SHA256(key, subject id) in hex, never in the clear.
        ADD COLUMN pseudonym_key text,
        -- Send only the newest waiting change per subject and purpose; older waiting ones
        -- become 'superseded'.
        ADD COLUMN newest_wins boolean NOT NULL DEFAULT false;

    ALTER TABLE consent_sync.deliveries DROP CONSTRAINT deliveries_state_check;
    ALTER TABLE consent_sync.deliveries ADD CONSTRAINT deliveries_state_check
        CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead', 'superseded'));
    ALTER TABLE consent_sync.deliveries
        -- The change that superseded this one (newest-wins).
        ADD COLUMN superseded_by bigint,
        -- The receiver's own verdict, when it answered {"applied": true|false, "reason": "…"}.
        ADD COLUMN applied boolean,
        ADD COLUMN applied_reason text;
    -- A change's deliveries: originals through deliveries_one_original (change_id first),
    -- replays through this one. Partial, so that the hot path (every delivery is inserted and
    -- updated several times, never HOT) maintains no extra index.
    CREATE INDEX deliveries_replays_by_change ON consent_sync.deliveries (change_id) WHERE replay_of IS NOT NULL;

    ALTER TABLE consent_sync.attempts
        ADD COLUMN applied boolean,
        ADD COLUMN applied_reason text;

    -- `consent-sync resync` jobs: the current state of watched tables as consent.snapshot
    -- events for one subscriber, in chunks, resumable from `position`.
    CREATE TABLE consent_sync.resyncs (
        id            bigserial PRIMARY KEY,
        subscriber_id bigint      NOT NULL REFERENCES consent_sync.subscribers (id) ON DELETE CASCADE,
        purpose       text,
        state         text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled')),
        -- Per watch id, the last key done: {"<watch id>": ["subject col values…", "purpose"]}.
        position      jsonb       NOT NULL DEFAULT '{}',
        rows          bigint      NOT NULL DEFAULT 0,
        actor         text        NOT NULL,
        started_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz
    );

    -- One chunk of a resync: the current state of up to `chunk` rows of a watched table after
    -- key `after` (its primary key, or subject, purpose and ctid without one), as
    -- consent.snapshot changes for the job's subscriber. The rows are locked FOR SHARE while
    -- read, so a live change in progress commits first (and its change comes first) and one
    -- starting now waits (and comes after): a snapshot never overtakes, nor follows, a newer
    -- live change of the same row. Returns {"rows": n, "last": [key as text…] or null}.
    -- SECURITY DEFINER: reading a watched table FOR SHARE needs SELECT and UPDATE on it, which
    -- the schema's owner has (it installed the trigger) and the daemon's role need not.
    CREATE FUNCTION consent_sync.resync_chunk(job bigint, watch bigint, after jsonb, chunk integer)
    RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        r consent_sync.resyncs;
        w consent_sync.watches;
        e record;
        rel regclass;
        keys text[];
        types text[];
        q text;
        result jsonb;
    BEGIN
        SELECT * INTO r FROM consent_sync.resyncs WHERE id = job;
        SELECT * INTO w FROM consent_sync.watches WHERE id = watch;
        IF r.id IS NULL OR w.id IS NULL THEN
            RAISE EXCEPTION 'no resync % or watch %', job, watch USING ERRCODE = '42704';
        END IF;
        rel := to_regclass(format('%I.%I', w.table_schema, w.table_name));
        IF rel IS NULL THEN
            RAISE EXCEPTION 'watched table %.% does not exist any more', quote_ident(w.table_schema), quote_ident(w.table_name)
                USING ERRCODE = '42P01', HINT = 'remove the watch with consent-sync watch remove';
        END IF;
        SELECT array_agg(a.attname::text ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
          INTO keys, types
          FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = rel AND i.indisprimary;
        IF keys IS NULL THEN
            SELECT array_agg(a.attname::text ORDER BY u.o), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY u.o)
              INTO keys, types
              FROM unnest(w.subject_columns || w.purpose_column) WITH ORDINALITY AS u (c, o)
              JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.c;
            keys := keys || 'ctid'::text;
            types := types || 'tid'::text;
        END IF;
        SELECT * INTO e FROM consent_sync.watch_expressions(w, 't');
        q := format($q$
            WITH picked AS (
                SELECT %1$s AS subj, t.%2$I::text AS purp, %3$s AS st, t.%4$I::text AS raw, %5$s AS src, (%6$s)::jsonb AS attrs,
                       jsonb_build_array(%7$s) AS k, %8$s
                FROM %9$s t
                WHERE ($1::jsonb IS NULL OR (%10$s) > (%11$s))
                  AND ($2::text IS NULL OR t.%2$I::text = $2)
                ORDER BY %10$s
                LIMIT $3
                FOR SHARE OF t
            ), checked AS (
                SELECT p.*, CASE
                    WHEN coalesce(subj, '') = '' THEN 'the subject id is NULL or empty'
                    WHEN length(subj) > 512 THEN 'the subject id is longer than 512 characters'
                    WHEN coalesce(purp, '') = '' THEN 'the purpose is NULL or empty'
                    WHEN length(purp) > 128 THEN 'the purpose is longer than 128 characters'
                    WHEN st IS NULL THEN format('status %%s is not one of %%s', coalesce(quote_literal(left(raw, 100)), 'NULL'), %12$L)
                END AS problem
                FROM picked p
            ), inserted AS (
                INSERT INTO consent_sync.changes
                    (watch_id, table_name, operation, event_type, subject, purpose, status, source, attributes, problem,
                     target_subscriber_id, resync_id)
                SELECT %13$s, %14$L, 'SNAPSHOT', CASE WHEN problem IS NULL THEN 'consent.snapshot' ELSE 'consent.invalid' END,
                       left(coalesce(subj, ''), 512), left(coalesce(purp, ''), 128), st, src, attrs, problem, $4, $5
                FROM checked
                RETURNING 1
            )
            SELECT jsonb_build_object('rows', (SELECT count(*) FROM inserted),
                                      'last', (SELECT k FROM picked ORDER BY %15$s LIMIT 1))
            $q$,
            e.subject, w.purpose_column, e.status, w.status_column, e.source, e.attrs,       -- 1-6
            (SELECT string_agg(format('t.%I::text', c), ', ') FROM unnest(keys) AS c),        -- 7
            (SELECT string_agg(format('t.%I AS key_%s', c, o), ', ') FROM unnest(keys) WITH ORDINALITY AS u (c, o)),  -- 8
            rel,                                                                             -- 9
            (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(keys) AS c),             -- 10
            (SELECT string_agg(format('($1->>%s)::%s', o - 1, ty), ', ')
               FROM unnest(keys, types) WITH ORDINALITY AS u (c, ty, o)),                    -- 11
            e.known,                                                                         -- 12
            watch, w.table_schema || '.' || w.table_name,                                    -- 13, 14
            (SELECT string_agg(format('key_%s DESC', o), ', ') FROM generate_series(1, cardinality(keys)) AS o)  -- 15
        );
        EXECUTE q INTO result USING after, r.purpose, chunk, r.subscriber_id, job;
        IF (result->>'rows')::integer > 0 AND EXISTS (SELECT 1 FROM consent_sync.listeners WHERE idle) THEN
            PERFORM pg_notify('consent_sync', '');
        END IF;
        RETURN result;
    END
    $fn$;

    REVOKE ALL ON FUNCTION consent_sync.resync_chunk(bigint, bigint, jsonb, integer) FROM PUBLIC;
    REVOKE ALL ON FUNCTION consent_sync.install_watch(bigint) FROM PUBLIC;
    REVOKE ALL ON FUNCTION consent_sync.uninstall_watch(bigint) FROM PUBLIC;

    -- `consent-sync forget`: the erasure event, and when the subject's data was removed.
    CREATE TABLE consent_sync.erasures (
        id           bigserial PRIMARY KEY,
        subject_hash text        NOT NULL,
        change_id    bigint      NOT NULL,
        actor        text        NOT NULL,
        requested_at timestamptz NOT NULL DEFAULT now(),
        completed_at timestamptz
    );
    CREATE INDEX erasures_open ON consent_sync.erasures (id) WHERE completed_at IS NULL;

    -- The key of the subject hashes kept in receipts after an erasure (so that `trace` can
    -- still find them), generated once per installation.
    INSERT INTO consent_sync.meta (key, value) VALUES ('receipt_hash_key', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
    ON CONFLICT (key) DO NOTHING;
    """#
}
