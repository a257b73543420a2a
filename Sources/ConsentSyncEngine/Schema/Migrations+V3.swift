extension Migrations {
    /// Replays next to originals; per-subscriber retry, rate and TLS settings; failure tracking.
    static let v3 = #"""
    -- One original delivery per (change, subscriber); replays are extra rows for the same pair.
    CREATE UNIQUE INDEX deliveries_one_original ON consent_sync.deliveries (change_id, subscriber_id)
        WHERE replay_of IS NULL;
    ALTER TABLE consent_sync.deliveries DROP CONSTRAINT deliveries_change_id_subscriber_id_key;

    ALTER TABLE consent_sync.subscribers
        -- Requests per second to this subscriber over all daemons (approximately); NULL: no limit.
        ADD COLUMN rate_limit       double precision CHECK (rate_limit > 0),
        -- Overrides of the daemon's retry policy; NULL: the daemon's.
        ADD COLUMN max_attempts     integer CHECK (max_attempts BETWEEN 1 AND 10000),
        ADD COLUMN max_age_seconds  integer CHECK (max_age_seconds BETWEEN 1 AND 31536000),
        -- TLS files (PEM) for this subscriber: a CA bundle to verify it, a client certificate
        -- and key for mutual TLS. Paths on the daemon's machines, readable by the daemon.
        ADD COLUMN ca_bundle_path   text,
        ADD COLUMN client_cert_path text,
        ADD COLUMN client_key_path  text,
        ADD CONSTRAINT client_cert_and_key CHECK ((client_cert_path IS NULL) = (client_key_path IS NULL)),
        -- Since when every attempt has failed (NULL while the last one succeeded): a subscriber
        -- failing for relay.disable_after_failing_seconds is disabled.
        ADD COLUMN failing_since    timestamptz;
    """#
}
