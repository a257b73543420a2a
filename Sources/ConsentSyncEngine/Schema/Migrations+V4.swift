extension Migrations {
    /// Signing secrets in their own table: several per subscriber during a rotation, each
    /// with its expiry, stored encrypted (`enc:v1:<key id>:<base64>`, see `SecretKeyring`).
    static let v4 = #"""
    -- One row per signing secret. A subscriber has one active secret, or several while a
    -- rotation overlaps: requests then carry one signature per active secret. An expired
    -- secret is never used and is deleted by the next rotation or by a running daemon.
    --   secret: 'enc:v1:<key id>:<base64 nonce+ciphertext+tag>' (AES-256-GCM under the
    --   master key, bound to subscriber_id); 'whsec_...' only for secrets stored before
    --   version 4 or with secrets.allow_plaintext ('consent-sync keys rotate' encrypts them).
    CREATE TABLE consent_sync.subscriber_secrets (
        id            bigserial PRIMARY KEY,
        subscriber_id bigint      NOT NULL REFERENCES consent_sync.subscribers (id) ON DELETE CASCADE,
        secret        text        NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        -- NULL: active until the next rotation.
        expires_at    timestamptz
    );
    CREATE INDEX subscriber_secrets_by_subscriber ON consent_sync.subscriber_secrets (subscriber_id, id);

    INSERT INTO consent_sync.subscriber_secrets (subscriber_id, secret, created_at)
    SELECT s.id, u.secret, s.created_at
    FROM consent_sync.subscribers s CROSS JOIN LATERAL unnest(s.secrets) WITH ORDINALITY AS u (secret, position)
    ORDER BY s.id, u.position;
    ALTER TABLE consent_sync.subscribers DROP COLUMN secrets;
    """#
}
