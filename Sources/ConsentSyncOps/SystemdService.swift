import ConsentSyncEngine
import Logging
import ServiceLifecycle
import Synchronization

/// Keeps systemd informed about the relay: `READY=1`, `STATUS=`, `WATCHDOG=1` and `STOPPING=1`
/// as ``SystemdNotificationPolicy`` decides, plus ``reloading()`` / ``reloaded()`` around a reload.
///
/// Run it in the same `ServiceGroup` as the relay, before the relay in the services list: a group
/// shuts its services down in reverse order, so this one keeps pinging the watchdog while the
/// relay drains, and sends `STOPPING=1` as soon as the relay starts stopping.
///
/// Without `NOTIFY_SOCKET` it just waits for shutdown.
public final class SystemdService: Service {
    /// Pacing of the service.
    public struct Configuration: Sendable {
        /// Minimum time between two `STATUS=` updates.
        public var statusInterval: Duration
        /// How often health is looked at; shortened to a quarter of the watchdog interval when that is shorter.
        public var checkInterval: Duration

        public init(statusInterval: Duration = .seconds(5), checkInterval: Duration = .milliseconds(250)) {
            self.statusInterval = statusInterval
            self.checkInterval = checkInterval
        }
    }

    public let notifier: SystemdNotifier
    public let configuration: Configuration
    private let snapshot: @Sendable () -> RelayHealth.Snapshot
    private let logger: Logger
    private let state: Mutex<State>

    private struct State {
        var policy: SystemdNotificationPolicy
        /// Whether the last send failed: the first failure is a warning, repeats are debug.
        var failing = false
    }

    /// A service for `relay.health`, sending through `notifier` (from the environment by default).
    public convenience init(
        notifier: SystemdNotifier = SystemdNotifier(),
        health: RelayHealth,
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        self.init(notifier: notifier, snapshot: { health.snapshot }, configuration: configuration, logger: logger)
    }

    /// A service that reads health through `snapshot`.
    public init(
        notifier: SystemdNotifier,
        snapshot: @escaping @Sendable () -> RelayHealth.Snapshot,
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        self.notifier = notifier
        self.configuration = configuration
        self.snapshot = snapshot
        self.logger = logger
        self.state = Mutex(State(policy: SystemdNotificationPolicy(
            watchdogInterval: notifier.watchdogInterval,
            statusInterval: configuration.statusInterval
        )))
    }

    public func run() async throws {
        guard notifier.isEnabled else {
            // Nothing to tell; stay up like every other service until the group ends.
            try? await gracefulShutdown()
            return
        }
        let watchdogInterval = notifier.watchdogInterval
        state.withLock {
            $0.policy = SystemdNotificationPolicy(watchdogInterval: watchdogInterval, statusInterval: configuration.statusInterval)
        }
        logger.debug("notifying systemd", metadata: ["watchdog_ms": "\(watchdogInterval.map { "\($0.wholeMilliseconds)" } ?? "off")"])
        let checkInterval = watchdogInterval.map { min(configuration.checkInterval, $0 / 4) } ?? configuration.checkInterval

        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let snapshot = self.snapshot()
            send(state.withLock { $0.policy.tick(snapshot, now: .now) })
            _ = try? await cancelWhenGracefulShutdown { try await Task.sleep(for: checkInterval) }
        }
        send(state.withLock { $0.policy.shutdown() })
    }

    /// Tells systemd that a reload (SIGHUP) has begun: `RELOADING=1` and `MONOTONIC_USEC=`.
    public func reloading() {
        let microseconds = SystemdNotifier.monotonicMicroseconds()
        send(state.withLock { $0.policy.reloading(monotonicMicroseconds: microseconds, now: .now) })
    }

    /// Tells systemd that the reload is complete: `READY=1` again.
    public func reloaded() {
        let snapshot = self.snapshot()
        send(state.withLock { $0.policy.reloaded(snapshot, now: .now) })
    }

    private func send(_ messages: [SystemdNotifier.Message]) {
        guard !messages.isEmpty else { return }
        let outcome = Result { () throws(SystemdNotifierError) in try notifier.send(messages) }
        let failed = if case .failure = outcome { true } else { false }
        let wasFailing = state.withLock { state in
            defer { state.failing = failed }
            return state.failing
        }
        switch outcome {
        case .success:
            if wasFailing { logger.info("sd_notify works again") }
            logger.trace("sd_notify", metadata: ["message": "\(SystemdNotifier.datagram(messages))"])
        case .failure(let error):
            logger.log(level: wasFailing ? .debug : .warning, "sd_notify failed", metadata: ["error": "\(error)"])
        }
    }
}
