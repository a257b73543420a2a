extension Migrations {
    /// The references of deliveries (to their change and subscriber) and of attempts (to their
    /// delivery), checked once per statement.
    ///
    /// As foreign keys they were checked row by row: PostgreSQL runs one lookup of the parent
    /// (with a `FOR KEY SHARE` lock) per new row. In a fan-out of 1,000 changes to 3
    /// subscribers that was 7.5 µs of every delivery's 13 µs insert (38 against 15.5 ms, by
    /// hand), and the write-back paid about 3.5 µs more per attempt row. A statement trigger
    /// with the inserted rows as a transition table does the same check for the whole
    /// statement: the same locks, taken in one lookup per parent table (about 2 µs per
    /// delivery in that fan-out). A statement of one row pays more than with a foreign key
    /// (about 28 against 12 µs): the triggers pay off from about five rows per statement. An
    /// insert of nothing returns after one look at the empty transition table.
    ///
    /// What the foreign keys did, the triggers do:
    /// - a new row whose parent does not exist is refused (`foreign_key_violation`), and each
    ///   parent it names is locked `FOR KEY SHARE` until the inserting transaction ends: a
    ///   concurrent `DELETE` of that parent waits for it, then deletes the new rows too; a
    ///   `DELETE` that went first makes the insert fail;
    /// - deleting changes or subscribers deletes their deliveries, and deleting deliveries
    ///   their attempts (and, through the foreign key that remains, their events), in the same
    ///   statement;
    /// - the ids that rows refer to cannot change, nor a row's references;
    /// - `TRUNCATE` of a parent fails while rows referring to it are left, unless those are
    ///   truncated in the same statement.
    ///
    /// The functions run as their owner, as foreign-key checks do, with a fixed search path.
    static let v10 = #"""
    ALTER TABLE consent_sync.deliveries
        DROP CONSTRAINT deliveries_change_id_fkey,
        DROP CONSTRAINT deliveries_subscriber_id_fkey;
    ALTER TABLE consent_sync.attempts
        DROP CONSTRAINT attempts_delivery_id_fkey;

    -- Each parent is locked as a foreign key's check locks it; one that a concurrent
    -- transaction deleted is not returned, so the counts differ. The parents are looked up by
    -- an array of ids, a plan that can only probe the primary key: written as
    -- `IN (SELECT ... FROM added)`, the check kept a plan for the session that read far more
    -- than the rows it checked (a live run's fan-out took 2.2-2.5 ms a call instead of 0.3-0.4,
    -- with four times the buffers).
    CREATE FUNCTION consent_sync.check_delivery_references() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        ids bigint[];
        missing text;
    BEGIN
        IF NOT EXISTS (SELECT FROM added) THEN
            RETURN NULL;
        END IF;
        ids := ARRAY(SELECT DISTINCT subscriber_id FROM added);
        IF (SELECT count(*) FROM (SELECT FROM consent_sync.subscribers s WHERE s.id = ANY (ids) FOR KEY SHARE) l)
           < cardinality(ids) THEN
            SELECT format('subscriber %s', i) INTO missing FROM unnest(ids) i
            WHERE NOT EXISTS (SELECT FROM consent_sync.subscribers s WHERE s.id = i) LIMIT 1;
        ELSE
            ids := ARRAY(SELECT DISTINCT change_id FROM added);
            IF (SELECT count(*) FROM (SELECT FROM consent_sync.changes c WHERE c.id = ANY (ids) FOR KEY SHARE) l)
               < cardinality(ids) THEN
                SELECT format('change %s', i) INTO missing FROM unnest(ids) i
                WHERE NOT EXISTS (SELECT FROM consent_sync.changes c WHERE c.id = i) LIMIT 1;
            END IF;
        END IF;
        IF missing IS NOT NULL THEN
            RAISE foreign_key_violation USING
                MESSAGE = format('a new delivery names %s, which does not exist (or was deleted while it was written)', missing),
                SCHEMA = 'consent_sync', TABLE = 'deliveries';
        END IF;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER deliveries_references AFTER INSERT ON consent_sync.deliveries
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT
        EXECUTE FUNCTION consent_sync.check_delivery_references();

    CREATE FUNCTION consent_sync.check_attempt_references() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
        ids bigint[];
        missing bigint;
    BEGIN
        IF NOT EXISTS (SELECT FROM added) THEN
            RETURN NULL;
        END IF;
        ids := ARRAY(SELECT DISTINCT delivery_id FROM added);
        IF (SELECT count(*) FROM (SELECT FROM consent_sync.deliveries d WHERE d.id = ANY (ids) FOR KEY SHARE) l)
           < cardinality(ids) THEN
            SELECT i INTO missing FROM unnest(ids) i
            WHERE NOT EXISTS (SELECT FROM consent_sync.deliveries d WHERE d.id = i) LIMIT 1;
            RAISE foreign_key_violation USING
                MESSAGE = format('a new attempt names delivery %s, which does not exist (or was deleted while it was written)', missing),
                SCHEMA = 'consent_sync', TABLE = 'attempts';
        END IF;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER attempts_references AFTER INSERT ON consent_sync.attempts
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT
        EXECUTE FUNCTION consent_sync.check_attempt_references();

    -- The cascade: the rows of the deleted parents, looked up through an index by an array of
    -- ids (deliveries_by_change, attempts_by_delivery), whatever the planner guesses of
    -- `removed`. By subscriber no full index serves: one subscriber is removed at a time.
    CREATE FUNCTION consent_sync.delete_rows_of_removed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        IF TG_TABLE_NAME = 'changes' THEN
            DELETE FROM consent_sync.deliveries d WHERE d.change_id = ANY (ARRAY(SELECT id FROM removed));
        ELSIF TG_TABLE_NAME = 'subscribers' THEN
            DELETE FROM consent_sync.deliveries d WHERE d.subscriber_id = ANY (ARRAY(SELECT id FROM removed));
        ELSE
            DELETE FROM consent_sync.attempts a WHERE a.delivery_id = ANY (ARRAY(SELECT id FROM removed));
        END IF;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER delete_referring_rows AFTER DELETE ON consent_sync.changes
        REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.delete_rows_of_removed();
    CREATE TRIGGER delete_referring_rows AFTER DELETE ON consent_sync.subscribers
        REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.delete_rows_of_removed();
    CREATE TRIGGER delete_referring_rows AFTER DELETE ON consent_sync.deliveries
        REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.delete_rows_of_removed();

    -- Keys that rows refer to stay put. Each trigger fires only for an UPDATE that sets one of
    -- its columns, which none of the daemon's statements does.
    CREATE FUNCTION consent_sync.refuse_reference_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        RAISE foreign_key_violation USING
            MESSAGE = format('the %s of consent_sync.%s row %s cannot change: %s', TG_ARGV[0], TG_TABLE_NAME, OLD.id, TG_ARGV[1]),
            SCHEMA = 'consent_sync', TABLE = TG_TABLE_NAME;
    END
    $fn$;

    CREATE TRIGGER references_fixed BEFORE UPDATE OF id ON consent_sync.changes FOR EACH ROW
        WHEN (OLD.id IS DISTINCT FROM NEW.id)
        EXECUTE FUNCTION consent_sync.refuse_reference_change('id', 'deliveries refer to changes by it');
    CREATE TRIGGER references_fixed BEFORE UPDATE OF id ON consent_sync.subscribers FOR EACH ROW
        WHEN (OLD.id IS DISTINCT FROM NEW.id)
        EXECUTE FUNCTION consent_sync.refuse_reference_change('id', 'deliveries refer to subscribers by it');
    CREATE TRIGGER references_fixed BEFORE UPDATE OF id, change_id, subscriber_id ON consent_sync.deliveries FOR EACH ROW
        WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.change_id IS DISTINCT FROM NEW.change_id
              OR OLD.subscriber_id IS DISTINCT FROM NEW.subscriber_id)
        EXECUTE FUNCTION consent_sync.refuse_reference_change('id, change_id or subscriber_id', 'attempts refer to deliveries by id, and a delivery belongs to one change and one subscriber');
    CREATE TRIGGER references_fixed BEFORE UPDATE OF delivery_id ON consent_sync.attempts FOR EACH ROW
        WHEN (OLD.delivery_id IS DISTINCT FROM NEW.delivery_id)
        EXECUTE FUNCTION consent_sync.refuse_reference_change('delivery_id', 'an attempt belongs to one delivery');

    -- After a TRUNCATE of a parent, no row referring to it may be left (truncating those in
    -- the same statement is how to empty both, as with a foreign key).
    CREATE FUNCTION consent_sync.refuse_truncate_under_references() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
        IF (TG_TABLE_NAME = 'deliveries' AND EXISTS (SELECT FROM consent_sync.attempts))
           OR (TG_TABLE_NAME <> 'deliveries' AND EXISTS (SELECT FROM consent_sync.deliveries)) THEN
            RAISE foreign_key_violation USING
                MESSAGE = format('cannot truncate consent_sync.%s alone: %s refer to it', TG_TABLE_NAME,
                                 CASE WHEN TG_TABLE_NAME = 'deliveries' THEN 'attempts' ELSE 'deliveries' END),
                HINT = 'Truncate consent_sync.deliveries, attempts and delivery_events in the same statement, or DELETE.';
        END IF;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER references_left AFTER TRUNCATE ON consent_sync.changes
        FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.refuse_truncate_under_references();
    CREATE TRIGGER references_left AFTER TRUNCATE ON consent_sync.subscribers
        FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.refuse_truncate_under_references();
    CREATE TRIGGER references_left AFTER TRUNCATE ON consent_sync.deliveries
        FOR EACH STATEMENT EXECUTE FUNCTION consent_sync.refuse_truncate_under_references();
    """#
}
