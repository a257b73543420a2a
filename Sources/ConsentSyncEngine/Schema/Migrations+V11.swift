extension Migrations {
    /// Fewer index entries per delivery: none in `deliveries_due` for a parked delivery, and one
    /// index on `attempts` instead of two.
    ///
    /// Every delivery is written three times (fanned out, leased, ended), never HOT, so each
    /// index it is in costs an entry per version. A parked delivery (`next_attempt_at =
    /// 'infinity'`, waiting behind an earlier one of its subject) was in `deliveries_due`, though
    /// no claim ever reads it there: claims ask for `next_attempt_at <= now()`. In a drain of
    /// subjects with several changes most deliveries are parked when fanned out and handed over
    /// later, so that was an entry for most deliveries that nothing read. The claim now says
    /// `next_attempt_at < 'infinity'`, which lets the planner use the narrower index.
    ///
    /// An attempt was in its primary key (`id`) and in `attempts_by_delivery (delivery_id,
    /// attempt)`; everything that reads attempts finds them by delivery (the write-back's check
    /// after a lost answer, the cascade from deleted deliveries, the receipts), and nothing
    /// refers to an attempt's id. The primary key is now `(delivery_id, attempt, id)`: one entry
    /// per attempt, serving both. `id` stays, unique as before (a sequence), and still orders
    /// attempts by when they were logged.
    ///
    /// Measured in `docs/benchmarks.md` ("Fewer index entries per delivery"): 1,953 to 1,843
    /// bytes of WAL per delivery of a drain.
    ///
    /// Reads and writes of `deliveries` and `attempts` wait until the two indexes are built
    /// (dropping an index locks its table until the migration commits); deploy/INSTALL.md
    /// gives the time at 1,000,000.
    static let v11 = #"""
    DROP INDEX consent_sync.deliveries_due;
    CREATE INDEX deliveries_due ON consent_sync.deliveries (subscriber_id, next_attempt_at)
        WHERE state = 'pending' AND next_attempt_at < 'infinity';

    DROP INDEX consent_sync.attempts_by_delivery;
    ALTER TABLE consent_sync.attempts DROP CONSTRAINT attempts_pkey,
        ADD CONSTRAINT attempts_pkey PRIMARY KEY (delivery_id, attempt, id);
    """#
}
