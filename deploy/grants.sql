-- Step 2 of 2, as consent_sync_owner, after 'consent-sync migrate' (re-run after upgrades;
-- it is idempotent):
--   psql -v ON_ERROR_STOP=1 -v app=app_role -f deploy/grants.sql
-- The capture trigger runs with its owner's rights (SECURITY DEFINER), so the application's
-- role needs no rights on the outbox: only on the consent table it writes.
GRANT USAGE ON SCHEMA consent_sync TO consent_sync;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA consent_sync TO consent_sync;
-- UPDATE: the daemons set the idle flag (a sequence) that the capture trigger reads.
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA consent_sync TO consent_sync;
-- The same for tables and sequences a later 'migrate' (as this role) creates.
ALTER DEFAULT PRIVILEGES IN SCHEMA consent_sync GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO consent_sync;
ALTER DEFAULT PRIVILEGES IN SCHEMA consent_sync GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO consent_sync;
-- resync reads watched tables through this function, with the owner's rights.
GRANT EXECUTE ON FUNCTION consent_sync.resync_chunk(bigint, bigint, jsonb, integer) TO consent_sync;
-- With 'consent-sync capture logical', the daemons stream the replication slot (their role
-- needs the REPLICATION attribute then, see INSTALL.md) and queue what they read through
-- consent_sync.capture_queue(), with the owner's rights; like every function, it is
-- executable by default.
GRANT USAGE ON SCHEMA consent_sync TO :"app";
GRANT SELECT, INSERT, UPDATE, DELETE ON consent_sync.consents TO :"app";
-- For each table of the application attached with 'consent-sync watch add' (run as
-- consent_sync_owner): the owner needs TRIGGER to install the capture trigger, and SELECT and
-- UPDATE for 'consent-sync resync' (rows are locked FOR SHARE while read), e.g.
--   GRANT TRIGGER, SELECT, UPDATE ON crm.marketing_prefs TO consent_sync_owner;
