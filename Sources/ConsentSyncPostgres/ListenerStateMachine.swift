/// The listener's decisions, free of I/O: when to connect, listen, probe a quiet connection,
/// give up on it and how long to wait before the next attempt. `ListenerRunner` executes the actions.
struct ListenerStateMachine: Sendable {
    typealias Instant = ContinuousClock.Instant

    enum Action: Sendable, Equatable {
        /// Open a connection, then report `connected()` or `connectFailed(reason:)`.
        case connect
        /// Run `LISTEN` for every channel, then report `subscribed(at:)` or `connectionLost(reason:)`.
        case listen
        /// Emit `.listening(reconnected:)`, then wait for input until `nextDeadline`.
        case emitListening(reconnected: Bool)
        /// Send a keepalive query, then report `keepaliveSent(at:)`.
        case sendKeepalive
        /// Close the connection if any, emit `.disconnected(reason)`, wait `delay`, then report `retryDelayElapsed()`.
        case closeAndRetry(reason: String, delay: Duration)
        /// Keep waiting for input.
        case wait
    }

    enum State: Sendable, Equatable {
        case idle
        /// `attempt` counts consecutive failures since the last successful `LISTEN`.
        case connecting(attempt: Int)
        case subscribing(attempt: Int)
        case listening(lastActivity: Instant, keepaliveSentAt: Instant?)
        case waitingToRetry(attempt: Int)
    }

    let backoff: PostgresListener.Backoff
    let keepalive: PostgresListener.Keepalive
    /// Picks the jitter; injectable so tests are deterministic.
    let random: @Sendable () -> Double

    private(set) var state: State = .idle
    private(set) var hasListened = false

    init(
        backoff: PostgresListener.Backoff,
        keepalive: PostgresListener.Keepalive,
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.backoff = backoff
        self.keepalive = keepalive
        self.random = random
    }

    mutating func start() -> Action {
        self.state = .connecting(attempt: 0)
        return .connect
    }

    mutating func connected() -> Action {
        guard case .connecting(let attempt) = self.state else { return .wait }
        self.state = .subscribing(attempt: attempt)
        return .listen
    }

    mutating func connectFailed(reason: String) -> Action {
        guard case .connecting(let attempt) = self.state else { return .wait }
        return self.retry(after: attempt, reason: reason)
    }

    mutating func subscribed(at now: Instant) -> Action {
        guard case .subscribing = self.state else { return .wait }
        self.state = .listening(lastActivity: now, keepaliveSentAt: nil)
        let reconnected = self.hasListened
        self.hasListened = true
        return .emitListening(reconnected: reconnected)
    }

    /// The connection failed while subscribing or listening.
    mutating func connectionLost(reason: String) -> Action {
        switch self.state {
        case .subscribing(let attempt):
            return self.retry(after: attempt, reason: reason)
        case .listening:
            return self.retry(after: 0, reason: reason)
        case .idle, .connecting, .waitingToRetry:
            return .wait
        }
    }

    mutating func retryDelayElapsed() -> Action {
        guard case .waitingToRetry(let attempt) = self.state else { return .wait }
        self.state = .connecting(attempt: attempt)
        return .connect
    }

    /// Anything arrived from the server: the connection is alive.
    mutating func inputReceived(at now: Instant) {
        guard case .listening(_, let sentAt) = self.state else { return }
        self.state = .listening(lastActivity: now, keepaliveSentAt: sentAt)
    }

    mutating func keepaliveSent(at now: Instant) {
        guard case .listening(let lastActivity, _) = self.state else { return }
        self.state = .listening(lastActivity: lastActivity, keepaliveSentAt: now)
    }

    mutating func keepaliveAnswered(at now: Instant) {
        guard case .listening = self.state else { return }
        self.state = .listening(lastActivity: now, keepaliveSentAt: nil)
    }

    var listening: Bool {
        if case .listening = self.state { return true }
        return false
    }

    /// Drops whatever state the machine is in and schedules a new connection attempt.
    mutating func restart(reason: String) -> Action {
        self.retry(after: 0, reason: reason)
    }

    var isAwaitingKeepalive: Bool {
        if case .listening(_, .some) = self.state { return true }
        return false
    }

    /// When the runner must call `deadlineReached(at:)` if nothing arrives before.
    var nextDeadline: Instant? {
        guard case .listening(let lastActivity, let sentAt) = self.state else { return nil }
        if let sentAt {
            return sentAt + self.keepalive.timeout
        }
        return lastActivity + self.keepalive.interval
    }

    mutating func deadlineReached(at now: Instant) -> Action {
        guard case .listening(let lastActivity, let sentAt) = self.state else { return .wait }
        if let sentAt {
            guard now >= sentAt + self.keepalive.timeout else { return .wait }
            return self.retry(after: 0, reason: "no reply to a keepalive query within \(self.keepalive.timeout)")
        }
        guard now >= lastActivity + self.keepalive.interval else { return .wait }
        return .sendKeepalive
    }

    private mutating func retry(after attempt: Int, reason: String) -> Action {
        self.state = .waitingToRetry(attempt: attempt + 1)
        return .closeAndRetry(reason: reason, delay: self.backoff.delay(attempt: attempt, randomUnit: self.random()))
    }
}
