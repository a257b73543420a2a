extension Migrations {
    /// A change's deliveries through one index that every lookup by change can use.
    ///
    /// Deleting a change (receipt retention) cascades to its deliveries through the foreign key,
    /// and PostgreSQL's cascade looks them up with `WHERE change_id = $1` alone. The two indexes
    /// that led with `change_id` were both partial (originals, replays), so neither matched that
    /// condition and each deleted change scanned the whole table: a batch of 1,000 old changes
    /// meant 1,000 sequential scans of `deliveries`.
    ///
    /// One full unique index replaces both, so the hot path (every delivery is inserted and
    /// updated twice, never HOT) maintains no more index entries than before: its third key is
    /// 0 for an original, so there is still one original per (change, subscriber) for the
    /// fan-out's `ON CONFLICT`, and a replay's own id, so replays never collide.
    ///
    /// Building it holds off writes to `deliveries` until it is built (migrations run in one
    /// transaction, so not `CONCURRENTLY`); deploy/INSTALL.md says so.
    static let v9 = #"""
    CREATE UNIQUE INDEX deliveries_by_change ON consent_sync.deliveries
        (change_id, subscriber_id, (CASE WHEN replay_of IS NULL THEN 0 ELSE id END));
    DROP INDEX consent_sync.deliveries_one_original;
    DROP INDEX consent_sync.deliveries_replays_by_change;
    """#
}
