extension Migrations {
    /// A change's deliveries through one index that every lookup by change can use.
    ///
    /// Deleting a change (receipt retention) cascades to its deliveries through the foreign key,
    /// and PostgreSQL's cascade looks them up with `WHERE change_id = $1` alone. The two indexes
    /// that led with `change_id` were both partial (originals, replays), so neither matched that
    /// condition and each deleted change scanned the whole table: a batch of 1,000 old changes
    /// meant 1,000 sequential scans of `deliveries`. This index serves the cascade and the
    /// replays' lookups, and replaces the replays' partial index.
    ///
    /// Building it holds off writes to `deliveries` until it is built (migrations run in one
    /// transaction, so not `CONCURRENTLY`); README, "Upgrading to schema version 9".
    static let v9 = #"""
    CREATE INDEX deliveries_by_change ON consent_sync.deliveries (change_id);
    DROP INDEX consent_sync.deliveries_replays_by_change;
    """#
}
