-- Step 1 of 2, as a superuser in the application's database:
--   psql -v ON_ERROR_STOP=1 -v db=app -f deploy/roles.sql
-- Two roles with the least privileges consent-sync needs:
--   consent_sync_owner  owns schema consent_sync; used only by 'consent-sync migrate'.
--   consent_sync        runs the daemon and the CLI; reads and writes consent-sync's own
--                       tables only, never the application's.
-- Set their passwords afterwards (\password consent_sync) and keep them in files
-- (systemd LoadCredential=, database.password_file), never in the config or on a command line.
CREATE ROLE consent_sync_owner LOGIN;
CREATE ROLE consent_sync LOGIN CONNECTION LIMIT 50;
GRANT CONNECT ON DATABASE :"db" TO consent_sync_owner, consent_sync;
GRANT CREATE ON DATABASE :"db" TO consent_sync_owner;
