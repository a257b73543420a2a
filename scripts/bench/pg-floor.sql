-- PostgreSQL's own cost of consent-sync's write pattern, without the daemon: per run, a
-- fan-out of 100 changes to the 3 subscribers (one outbox insert per change, one delivery
-- per pair), a claim of 300 (of one subscriber) and a write-back of 300 (state update and an attempt row), in
-- batches as the daemon does, without its per-subject order checks. `make bench` runs it as
-- the scenario `pgfloor`, with 1 and 2 clients. By hand, on a migrated database with exactly
-- three subscribers (ids 1-3), in the relay's session settings (DeliveryStore.prepareSession;
-- without them the planner scans the growing tables and the figures are 5 times worse):
--   PGOPTIONS="-c jit=off -c enable_seqscan=off -c enable_bitmapscan=off -c plan_cache_mode=force_generic_plan" \
--   pgbench -n -M prepared -f scripts/bench/pg-floor.sql -c 2 -j 2 -T 20 DBNAME
-- deliveries/s = runs/s x 300. See docs/benchmarks.md ("PostgreSQL alone").
\set base random(1, 2000000000)
BEGIN;
WITH ch AS (
  INSERT INTO consent_sync.changes (event_id, table_name, operation, event_type, subject, purpose, status, fanned_out)
  SELECT gen_random_uuid(), 'consent_sync.consents', 'UPDATE', 'consent.granted', 'cust-' || (:base + g), 'email', 'granted', true
  FROM generate_series(1, 100) g RETURNING id, subject)
INSERT INTO consent_sync.deliveries (change_id, subscriber_id, subject)
SELECT ch.id, s.id, ch.subject FROM ch CROSS JOIN consent_sync.subscribers s;
COMMIT;
BEGIN;
UPDATE consent_sync.deliveries d SET state = 'in_flight', attempts = d.attempts + 1, lease_owner = '00000000-0000-0000-0000-000000000001', lease_expires_at = now() + interval '30 s'
WHERE d.id = ANY (ARRAY(SELECT id FROM consent_sync.deliveries WHERE state = 'pending' AND next_attempt_at <= now() AND subscriber_id = 1 + (:base % 3) ORDER BY next_attempt_at LIMIT 300 FOR UPDATE SKIP LOCKED));
COMMIT;
BEGIN;
WITH done AS (
  UPDATE consent_sync.deliveries d SET state = 'delivered', lease_owner = NULL, lease_expires_at = NULL, last_status = 204, completed_at = now()
  WHERE d.id = ANY (ARRAY(SELECT id FROM consent_sync.deliveries WHERE state = 'in_flight' AND lease_expires_at > now() ORDER BY lease_expires_at LIMIT 300 FOR UPDATE SKIP LOCKED))
  RETURNING d.id, d.attempts)
INSERT INTO consent_sync.attempts (delivery_id, attempt, started_at, duration_ms, status) SELECT id, attempts, now(), 1.0, 204 FROM done;
COMMIT;
