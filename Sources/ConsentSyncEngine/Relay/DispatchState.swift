import ConsentSyncCore

/// What this instance has in flight, per subscriber: decides how much to claim next.
/// A value type with no I/O, so its arithmetic is tested on its own.
struct DispatchState {
    var maxInFlight: Int
    private(set) var inFlight: [Int64: Int] = [:]
    private(set) var inFlightTotal = 0
    /// The earliest retry this instance scheduled itself, to wake up for it.
    private(set) var earliestRetry: ContinuousClock.Instant?
    /// Token buckets of rate-limited subscribers: this instance's share of the rate.
    private(set) var buckets: [Int64: TokenBucket] = [:]
    /// Daemons sharing the database, so that each takes its share of a rate limit.
    var instances = 1

    init(maxInFlight: Int) {
        self.maxInFlight = maxInFlight
    }

    /// How many deliveries to claim for each enabled subscriber: its free slots, at most
    /// `perRound`, and no more in all than the instance's free slots.
    mutating func budgets(for subscribers: some Sequence<Subscriber>, perRound: Int, now: ContinuousClock.Instant = .now) -> [(subscriberID: Int64, count: Int)] {
        var free = maxInFlight - inFlightTotal
        var result: [(subscriberID: Int64, count: Int)] = []
        let enabled = subscribers.filter(\.enabled).sorted(by: { $0.id < $1.id })
        // A fair share of the instance's free slots each, so that subscribers early in the
        // list cannot take every slot while later ones (with work due) get none.
        let share = max(1, free / max(1, enabled.count))
        for subscriber in enabled {
            guard free > 0 else { break }
            var slots = min(subscriber.limits.maxInFlight - inFlight[subscriber.id, default: 0], perRound, free, share)
            if let rate = subscriber.limits.ratePerSecond {
                var bucket = buckets[subscriber.id] ?? TokenBucket(rate: rate / Double(max(1, instances)), now: now)
                bucket.refill(rate: rate / Double(max(1, instances)), now: now)
                buckets[subscriber.id] = bucket
                slots = min(slots, Int(bucket.tokens.rounded(.down)))
            } else {
                buckets[subscriber.id] = nil
            }
            if slots > 0 {
                result.append((subscriber.id, slots))
                free -= slots
            }
        }
        return result
    }

    /// Takes a slot and, for a rate-limited subscriber, a token. The token is taken at `now`,
    /// as the request starts, not when the round's budget was made: a claim that took long
    /// must not count its own duration as refill on top of a full bucket, or a stalled round
    /// sends a full burst and then most of another at once.
    mutating func started(_ delivery: ClaimedDelivery, now: ContinuousClock.Instant = .now) {
        inFlight[delivery.subscriberID, default: 0] += 1
        inFlightTotal += 1
        buckets[delivery.subscriberID]?.spend(now: now)
    }

    /// Holds a slot of `subscriberID` for a delivery that may be handed over to this instance
    /// in the same round as the claim (see ``Relay``), so that the claim's budgets leave it free.
    mutating func reserve(_ subscriberID: Int64) {
        inFlight[subscriberID, default: 0] += 1
        inFlightTotal += 1
    }

    /// Gives back a slot held by ``reserve(_:)``; a delivery handed over takes it with ``started(_:)``.
    mutating func unreserve(_ subscriberID: Int64) {
        inFlight[subscriberID, default: 1] -= 1
        inFlightTotal -= 1
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
        // A rate-limited subscriber out of tokens may have work waiting: look again when one is back.
        var wake = pollInterval
        for bucket in buckets.values where bucket.tokens < 1 {
            wake = min(wake, bucket.untilNextToken)
        }
        guard let earliestRetry else { return wake }
        if earliestRetry <= now {
            self.earliestRetry = nil
            return .milliseconds(1)
        }
        return min(wake, earliestRetry - now)
    }
}

/// A token bucket holding up to one second's worth of requests.
struct TokenBucket: Equatable {
    var tokens: Double
    var rate: Double
    var updated: ContinuousClock.Instant

    init(rate: Double, now: ContinuousClock.Instant) {
        self.rate = rate
        self.tokens = max(1, rate)
        self.updated = now
    }

    mutating func refill(rate: Double, now: ContinuousClock.Instant) {
        self.rate = rate
        guard now > updated else { return }
        tokens = min(max(1, rate), tokens + (now - updated).seconds * rate)
        updated = now
    }

    /// Spends one token at `now`, after counting the refill up to then.
    mutating func spend(now: ContinuousClock.Instant) {
        refill(rate: rate, now: now)
        tokens -= 1
    }

    /// How long until `tokens` reaches 1.
    var untilNextToken: Duration {
        guard rate > 0 else { return .seconds(1) }
        return .milliseconds(max(1, Int64(((1 - tokens) / rate * 1000).rounded(.up))))
    }
}
