import ConsentSyncCore

/// What this instance has in flight, per subscriber: decides how much to claim next.
/// A value type with no I/O, so its arithmetic is tested on its own.
struct DispatchState {
    var maxInFlight: Int
    private(set) var inFlight: [Int64: Int] = [:]
    private(set) var inFlightTotal = 0
    /// The earliest retry this instance scheduled itself, to wake up for it.
    private(set) var earliestRetry: ContinuousClock.Instant?

    init(maxInFlight: Int) {
        self.maxInFlight = maxInFlight
    }

    /// How many deliveries to claim for each enabled subscriber: its free slots, at most
    /// `perRound`, and no more in all than the instance's free slots.
    func budgets(for subscribers: some Sequence<Subscriber>, perRound: Int) -> [(subscriberID: Int64, count: Int)] {
        var free = maxInFlight - inFlightTotal
        var result: [(subscriberID: Int64, count: Int)] = []
        for subscriber in subscribers.sorted(by: { $0.id < $1.id }) where subscriber.enabled {
            guard free > 0 else { break }
            let slots = min(subscriber.limits.maxInFlight - inFlight[subscriber.id, default: 0], perRound, free)
            if slots > 0 {
                result.append((subscriber.id, slots))
                free -= slots
            }
        }
        return result
    }

    mutating func started(_ delivery: ClaimedDelivery) {
        inFlight[delivery.subscriberID, default: 0] += 1
        inFlightTotal += 1
    }

    mutating func finished(_ record: AttemptRecord, now: ContinuousClock.Instant = .now) {
        inFlight[record.subscriberID, default: 1] -= 1
        inFlightTotal -= 1
        if record.verdict == .retry {
            let due = now + record.retryIn
            earliestRetry = min(earliestRetry ?? due, due)
        }
    }

    /// How long to sleep when there is nothing to do.
    mutating func nextWake(pollInterval: Duration, now: ContinuousClock.Instant = .now) -> Duration {
        guard let earliestRetry else { return pollInterval }
        if earliestRetry <= now {
            self.earliestRetry = nil
            return .milliseconds(1)
        }
        return min(pollInterval, earliestRetry - now)
    }
}
