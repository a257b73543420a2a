import ConsentSyncEngine

/// Decides what to tell systemd, and when, from the relay's health and the time; ``SystemdService``
/// only sends what this returns.
///
/// - `READY=1` once, when the relay is first ready (connected, listening, migrated).
/// - `STATUS=…` when the one-line summary changes, at most every `statusInterval`.
/// - `WATCHDOG=1` every half watchdog interval, but only while the relay's loop has turned within
///   the watchdog interval: a hung loop stops the pings, and systemd restarts the process.
///   Once stopping, pings go on regardless (the loop no longer turns while requests drain;
///   `TimeoutStopSec=` bounds that phase).
/// - `STOPPING=1` once, when the relay starts stopping or the service is shut down.
/// - `RELOADING=1` / `READY=1` around a configuration reload (`Type=notify-reload`).
public struct SystemdNotificationPolicy: Sendable {
    /// `WATCHDOG_USEC`, or nil when systemd does not watch this process.
    public let watchdogInterval: Duration?
    /// Minimum time between two `STATUS=` updates.
    public let statusInterval: Duration
    /// When watching began: the grace before the relay's first loop turn.
    public let startedAt: ContinuousClock.Instant

    public private(set) var readySent = false
    public private(set) var stoppingSent = false
    public private(set) var isReloading = false
    public private(set) var lastStatus: String?
    private var statusSentAt: ContinuousClock.Instant?
    private var watchdogSentAt: ContinuousClock.Instant?

    public init(watchdogInterval: Duration?, statusInterval: Duration = .seconds(5), startedAt: ContinuousClock.Instant = .now) {
        self.watchdogInterval = watchdogInterval
        self.statusInterval = statusInterval
        self.startedAt = startedAt
    }

    /// The messages due at `now` given the relay's `snapshot`.
    public mutating func tick(_ snapshot: RelayHealth.Snapshot, now: ContinuousClock.Instant) -> [SystemdNotifier.Message] {
        var messages: [SystemdNotifier.Message] = []
        var statusNow = false
        if snapshot.stopping && !stoppingSent {
            stoppingSent = true
            messages.append(.stopping)
            statusNow = true
        }
        if snapshot.isReady && !readySent && !stoppingSent {
            readySent = true
            messages.append(.ready)
            statusNow = true
        }

        let status = Self.status(snapshot, liveness: LoopLiveness(snapshot, window: watchdogInterval ?? .seconds(30), startedAt: startedAt, now: now), stopping: stoppingSent)
        if status != lastStatus, statusNow || statusSentAt.map({ now - $0 >= statusInterval }) ?? true {
            lastStatus = status
            statusSentAt = now
            messages.append(.status(status))
        }

        if shouldPingWatchdog(snapshot, now: now) {
            watchdogSentAt = now
            messages.append(.watchdog)
        }
        return messages
    }

    /// True when a `WATCHDOG=1` is due at `now` and the loop is alive (or the relay is stopping).
    public func shouldPingWatchdog(_ snapshot: RelayHealth.Snapshot, now: ContinuousClock.Instant) -> Bool {
        guard let watchdogInterval else { return false }
        if let watchdogSentAt, now - watchdogSentAt < watchdogInterval / 2 { return false }
        if stoppingSent { return true }
        return LoopLiveness(snapshot, window: watchdogInterval, startedAt: startedAt, now: now).isAlive
    }

    /// `STOPPING=1`, unless it was already sent.
    public mutating func shutdown() -> [SystemdNotifier.Message] {
        guard !stoppingSent else { return [] }
        stoppingSent = true
        return [.stopping]
    }

    /// A reload begins: `RELOADING=1` with the CLOCK_MONOTONIC time. Nothing before the first
    /// `READY=1` or after `STOPPING=1` (systemd reloads only an active service).
    public mutating func reloading(monotonicMicroseconds: UInt64, now: ContinuousClock.Instant) -> [SystemdNotifier.Message] {
        guard readySent, !stoppingSent else { return [] }
        isReloading = true
        let status = "reloading configuration"
        lastStatus = status
        statusSentAt = now
        return [.reloading(monotonicMicroseconds: monotonicMicroseconds), .status(status)]
    }

    /// The reload is done: `READY=1` again, with a fresh status.
    public mutating func reloaded(_ snapshot: RelayHealth.Snapshot, now: ContinuousClock.Instant) -> [SystemdNotifier.Message] {
        guard isReloading else { return [] }
        isReloading = false
        guard !stoppingSent else { return [] }
        let status = Self.status(snapshot, liveness: LoopLiveness(snapshot, window: watchdogInterval ?? .seconds(30), startedAt: startedAt, now: now), stopping: false)
        lastStatus = status
        statusSentAt = now
        return [.ready, .status(status)]
    }

    /// The one-line summary for `STATUS=`, e.g. "delivering: 3 subscribers, backlog 12, in flight 2"
    /// or "waiting for database: connection failed: …".
    public static func status(_ snapshot: RelayHealth.Snapshot, liveness: LoopLiveness, stopping: Bool = false) -> String {
        let counts = "\(snapshot.subscribers) subscriber\(snapshot.subscribers == 1 ? "" : "s"), backlog \(snapshot.backlog), in flight \(snapshot.inFlight)"
        if stopping || snapshot.stopping {
            return "stopping: \(snapshot.inFlight) in flight"
        }
        if case .stalled(let age) = liveness {
            return "stalled: no loop turn for " + (age.map { "\($0.components.seconds) s" } ?? "ever")
        }
        if !snapshot.databaseReady {
            guard let lastError = snapshot.lastError else { return "connecting to database" }
            return "waiting for database: " + shortError(lastError)
        }
        if !snapshot.listening {
            return "delivering (polling, LISTEN reconnecting): " + counts
        }
        return "delivering: " + counts
    }

    /// The first line of an error, at most 80 characters.
    static func shortError(_ error: String) -> String {
        let firstLine = error.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return firstLine.count > 80 ? String(firstLine.prefix(79)) + "…" : firstLine
    }
}
