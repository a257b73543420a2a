import ConsentSyncEngine

/// Whether the relay's loop is turning, as `/healthz` and the systemd watchdog judge it.
///
/// The relay stamps `lastLoopTurn` after every round, also after a failed one (a database
/// outage is not a hang). Before the first round there is no stamp: the process counts as
/// starting while it has been up for less than the window.
public enum LoopLiveness: Sendable, Equatable {
    /// The loop turned `age` ago, within the window.
    case alive(age: Duration)
    /// No turn yet; up for `uptime`, within the window.
    case starting(uptime: Duration)
    /// The last turn (`age` ago, or never) is older than the window: the loop is hung.
    case stalled(age: Duration?)

    /// Judges `snapshot` at `now`; `startedAt` is when watching began (the grace before the first turn).
    public init(
        _ snapshot: RelayHealth.Snapshot,
        window: Duration,
        startedAt: ContinuousClock.Instant,
        now: ContinuousClock.Instant
    ) {
        if let lastLoopTurn = snapshot.lastLoopTurn {
            let age = max(.zero, now - lastLoopTurn)
            self = snapshot.isAlive(within: window, now: now) ? .alive(age: age) : .stalled(age: age)
        } else {
            let uptime = max(.zero, now - startedAt)
            self = uptime <= window ? .starting(uptime: uptime) : .stalled(age: nil)
        }
    }

    /// Alive or still starting: not a reason to restart the process.
    public var isAlive: Bool {
        if case .stalled = self { return false }
        return true
    }

    /// Milliseconds since the last turn, when there was one.
    var loopAgeMilliseconds: Int64? {
        switch self {
        case .alive(let age): age.wholeMilliseconds
        case .stalled(let age): age?.wholeMilliseconds
        case .starting: nil
        }
    }
}

extension Duration {
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Whole microseconds, for `WATCHDOG_USEC`-style values.
    var wholeMicroseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}
