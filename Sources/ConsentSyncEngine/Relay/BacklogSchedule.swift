/// When the janitor next counts the backlog per subscriber (metrics, `STATUS=`): every
/// `interval`, or less often when counting is slow, so that it takes at most a hundredth of
/// the time. The count reads every pending delivery: 0.35–0.44 s at 1,000,000 (measured by
/// the benchmark's big backlog), which every 10 s was 4 % of a core taken from the drain; at
/// that size it now runs about every 40 s.
struct BacklogSchedule {
    /// A count may take at most 1 / `spacing` of the time between counts.
    static let spacing = 100

    /// The configured interval (`relay.backlog_interval_ms`); a reload applies at once.
    var interval: Duration
    private var last: (start: ContinuousClock.Instant, duration: Duration)?

    init(interval: Duration) {
        self.interval = interval
    }

    /// Whether a count is due at `now` (the first one always is).
    func isDue(at now: ContinuousClock.Instant) -> Bool {
        guard let last else { return true }
        return now >= last.start + max(interval, last.duration * Self.spacing)
    }

    /// Records a count that started at `start` and took `duration`.
    mutating func counted(startedAt start: ContinuousClock.Instant, took duration: Duration) {
        last = (start, duration)
    }
}
