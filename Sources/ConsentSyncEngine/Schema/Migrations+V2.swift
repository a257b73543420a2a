extension Migrations {
    /// Subscriber states with an audit trail; re-queued dead letters and replays.
    static let v2 = #"""
    -- A subscriber is enabled, paused (by an operator, for a while) or disabled (by an operator,
    -- or by consent-sync after 410 Gone or failing for too long). Paused and disabled
    -- subscribers get no requests, but fan-out keeps creating their deliveries.
    ALTER TABLE consent_sync.subscribers
        ADD COLUMN state            text NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'paused', 'disabled')),
        ADD COLUMN state_reason     text,
        ADD COLUMN state_changed_at timestamptz;
    UPDATE consent_sync.subscribers SET state = 'disabled', state_changed_at = updated_at WHERE NOT enabled;
    -- `enabled` stays for readers written against version 1, derived from the state so that
    -- the two can never disagree. Write `state`, never `enabled`.
    ALTER TABLE consent_sync.subscribers DROP COLUMN enabled;
    ALTER TABLE consent_sync.subscribers ADD COLUMN enabled boolean GENERATED ALWAYS AS (state = 'enabled') STORED;

    -- Every change of a subscriber's state: who, when, why.
    CREATE TABLE consent_sync.subscriber_events (
        id            bigserial PRIMARY KEY,
        subscriber_id bigint      NOT NULL REFERENCES consent_sync.subscribers (id) ON DELETE CASCADE,
        at            timestamptz NOT NULL DEFAULT now(),
        action        text        NOT NULL CHECK (action IN ('pause', 'resume', 'enable', 'disable')),
        from_state    text        NOT NULL,
        to_state      text        NOT NULL,
        reason        text,
        actor         text        NOT NULL
    );
    CREATE INDEX subscriber_events_by_subscriber ON consent_sync.subscriber_events (subscriber_id, at);

    -- replay_of: the delivery this one sends again (`consent-sync replay`): a new delivery id,
    -- hence a new webhook-id, for the same change and event id. No foreign key: the original
    -- may be purged before its replay.
    -- requeued_at, attempts_before_requeue: set when a dead delivery is put back in the queue
    -- (`deliveries retry`); its attempts and their log are kept.
    ALTER TABLE consent_sync.deliveries
        ADD COLUMN replay_of               bigint,
        ADD COLUMN requeued_at             timestamptz,
        ADD COLUMN attempts_before_requeue integer NOT NULL DEFAULT 0;

    -- What operators did to deliveries (re-queued a dead one, created a replay): the attempts
    -- table logs HTTP tries only.
    CREATE TABLE consent_sync.delivery_events (
        id          bigserial PRIMARY KEY,
        delivery_id bigint      NOT NULL REFERENCES consent_sync.deliveries (id) ON DELETE CASCADE,
        at          timestamptz NOT NULL DEFAULT now(),
        action      text        NOT NULL CHECK (action IN ('retry', 'replay')),
        actor       text        NOT NULL,
        note        text
    );
    CREATE INDEX delivery_events_by_delivery ON consent_sync.delivery_events (delivery_id, at);
    """#
}
